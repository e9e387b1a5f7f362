"""What commands write for people to look at: the one output policy every writing command follows, colour-mapped
depth, side-by-side frames.

The policy (`check_output`, `Outputs`): an output never destroys anything.
- Refused before any work: a path that is an input (the clip a workspace was made from, or a file the command
  reads), that lies in a workspace's own state (state.json, stage and fit folders; only OUTPUT_FOLDERS such as
  renders/ and export/ take outputs), that is a workspace itself, or that exists and is no regular file (a
  device, a FIFO, a folder where a file is meant) or, for folder outputs, a folder with files monodyn did not write.
- Written under temporary names (models.files) and renamed into place by `Outputs.commit` only after the whole
  result succeeded; a failure removes every temporary and every folder the run created.
- A killed run leaves temporaries (and, in a workspace, a journal `.outputs-<pid>-*.json` naming them): the next
  run in that workspace, or the next write into that folder, removes them; `monodyn status` lists them.
"""

from __future__ import annotations

import json
import os
import re
import stat
import uuid
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from models.errors import InputError
from models.files import (
    fsync,
    fsync_tree,
    remove,
    remove_stale_temps,
    replace_folder,
    stale_temps,
    temp_name,
    write_json_atomic,
    writer_alive,
)
from monodyn_cli.workspace import OUTPUT_FOLDERS

JOURNAL = re.compile(r"^\.outputs-(?P<pid>\d+)-[0-9a-f]{8}\.json$")


def workspace_around(path: Path) -> Path | None:
    """The workspace that is `path` or holds it (found by its workspace.json), or None."""
    path = Path(path).resolve()
    return next((p for p in (path, *path.parents) if (p / "workspace.json").is_file()), None)


def workspace_inputs(root: Path) -> list[Path]:
    """What the workspace at `root` was made from: the clip, image folder or npz recorded in workspace.json
    (for a glob of images, the folder it names)."""
    try:
        source = json.loads((Path(root) / "workspace.json").read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return []
    if not source:
        return []
    path = Path(source)
    return [path.parent if not path.exists() and any(c in source for c in "*?[") else path]


def empty_folder(path: Path) -> bool:
    return not any(Path(path).iterdir())


def _kind(mode: int) -> str:
    return ("FIFO" if stat.S_ISFIFO(mode) else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "socket" if stat.S_ISSOCK(mode) else "special file")


def check_output(target: Path, *, workspace: Path | None = None, inputs: Iterable[Path] = (), folder: bool = False,
                 replaceable: Callable[[Path], bool] = empty_folder, option: str = "--output") -> Path:
    """Refuse an output path that would destroy something (see the module docstring); return it unchanged.
    `workspace`: the workspace the command works on (any workspace around `target` is found as well);
    `inputs`: further files the command reads; `replaceable(folder)`: whether an existing folder may be replaced
    (default: only an empty one)."""
    target = Path(target)
    where = target.resolve()
    name = f"{option} {target}"
    try:
        mode = target.stat().st_mode  # follows a symlink: what would be written over is its target
    except (FileNotFoundError, NotADirectoryError):  # absent (under a file: creating its folder will say so)
        mode = None
    except OSError as e:
        raise InputError(f"cannot use {name} ({e.strerror}): choose another path") from None
    if mode is not None and folder:
        if not stat.S_ISDIR(mode):
            raise InputError(f"{name} exists and is not a folder: choose a new folder name")
    elif mode is not None:
        if stat.S_ISDIR(mode):
            raise InputError(f"{name} is a folder: pass the name of a file (in it or elsewhere)")
        if not stat.S_ISREG(mode):
            raise InputError(f"{name} is a {_kind(mode)}, not a regular file: choose a file name (monodyn writes a new "
                             "file and renames it into place, which would replace it)")
    roots = {r for r in (Path(workspace).resolve() if workspace else None, workspace_around(where)) if r is not None}
    for root in roots:
        fix = f"choose a path outside it or under its output folders ({', '.join(f + '/' for f in OUTPUT_FOLDERS[:3])} ...)"
        if where == root:
            raise InputError(f"{name} is the workspace {root} itself: {fix}")
        if root in where.parents and where.relative_to(root).parts[0] not in OUTPUT_FOLDERS:
            inside = root / where.relative_to(root).parts[0]
            what = f"among the files of the workspace {root}" if where == inside and not where.is_dir() else \
                f"inside the workspace's own state ({inside})"
            raise InputError(f"{name} is {what}: {fix}")
    for source in [*(i for r in roots for i in workspace_inputs(r)), *inputs]:
        source = Path(source).resolve()
        same = where == source or (mode is not None and source.exists() and os.path.samefile(where, source))
        if same or source in where.parents or (folder and where in source.parents):
            what = "is" if same else "is inside" if source in where.parents else "holds"
            raise InputError(f"{name} {what} the input {source}: choose another path (monodyn never writes over what "
                             "it reads)")
    if mode is not None and folder and not replaceable(target):
        raise InputError(f"{name} is a folder with files monodyn did not write: choose a new or empty folder (an "
                         "output never replaces what it did not make)")
    return target


class Outputs:
    """The files and folders one command writes. `file(target)` / `folder(target)` check the target and return a
    temporary to write into (created at once: it reserves the name and proves the place writable before any
    work); `commit()` renames them all into place. Used as a context manager, leaving without `commit()` (an
    error, Ctrl-C) removes every temporary and every folder this run created."""

    def __init__(self, workspace: Path | None = None, inputs: Iterable[Path] = ()):
        self.workspace = Path(workspace) if workspace is not None else None
        self.inputs = list(inputs)
        self.pending: list[tuple[Path, Path]] = []  # (temporary, target)
        self.made: list[Path] = []  # folders this run created, parents first
        self.kept: list[tuple[Path, Callable[[Path], bool]]] = []  # work folders written in place
        self.journal = None
        if self.workspace is not None:
            clean_stale(self.workspace)
            self.journal = self.workspace / f".outputs-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, *exc) -> None:
        if self.pending or self.made or self.kept:
            self.abort()

    def file(self, target: Path, option: str = "--output") -> Path:
        target = check_output(target, workspace=self.workspace, inputs=self.inputs, option=option)
        return self._reserve(target, lambda tmp: open(tmp, "x").close(), option)

    def folder(self, target: Path, replaceable: Callable[[Path], bool] = empty_folder, option: str = "--output") -> Path:
        target = check_output(target, workspace=self.workspace, inputs=self.inputs, folder=True,
                              replaceable=replaceable, option=option)
        return self._reserve(target, lambda tmp: tmp.mkdir(), option)

    def work_folder(self, target: Path, keep: Callable[[Path], bool], option: str = "--out") -> Path:
        """A folder written in place (a training run's checkpoint with its resume state); any existing folder is
        accepted, as only the command's own files in it are replaced. Made by this run and failed without
        `keep(folder)` true (e.g. no resume state yet), it is removed."""
        target = check_output(target, workspace=self.workspace, inputs=self.inputs, folder=True,
                              replaceable=lambda p: True, option=option)
        if not target.exists():
            self.mkdirs(target, option)
            self.kept.append((target, keep))
        return target

    def commit(self) -> None:
        """Put every result in place (a replaced folder is swapped, then deleted); the run succeeded."""
        for tmp, target in self.pending:
            fsync_tree(tmp)
            if tmp.is_dir() and target.is_dir():
                replace_folder(tmp, target)
            else:
                os.replace(tmp, target)
            fsync(target.parent)
        self.pending, self.made, self.kept = [], [], []
        self._drop_journal()

    def abort(self) -> None:
        for tmp, _ in self.pending:
            remove(tmp)
        for folder, keep in self.kept:
            if not keep(folder):
                remove(folder)
        for folder in reversed(self.made):
            try:
                folder.rmdir()  # only when empty: never what someone else put there meanwhile
            except OSError:
                pass
        self.pending, self.made, self.kept = [], [], []
        self._drop_journal()

    # ---- helpers ----------------------------------------------------------------------------------------------
    def _reserve(self, target: Path, create: Callable[[Path], None], option: str) -> Path:
        self.mkdirs(target.parent, option)
        remove_stale_temps(target.parent)
        tmp = temp_name(target)
        self.pending.append((tmp, target))
        self._write_journal()
        try:
            create(tmp)
        except OSError as e:
            raise InputError(f"cannot write to {target.parent} ({e.strerror or e}): choose another place with "
                             f"{option}") from None
        return tmp

    def mkdirs(self, folder: Path, option: str = "--output") -> None:
        """Create `folder` and its missing parents; those this run made are removed again (when empty) on failure."""
        missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
        for p in missing:
            try:
                p.mkdir()
            except FileExistsError:
                continue
            except OSError as e:
                raise InputError(f"cannot write to {p} ({e.strerror or e}): choose another place with {option}") from None
            self.made.append(p)
        if missing:
            self._write_journal()

    def _write_journal(self) -> None:
        if self.journal is not None:
            write_json_atomic(self.journal, {"pid": os.getpid(), "temporaries": [str(t) for t, _ in self.pending],
                                             "folders": [str(p) for p in self.made]})

    def _drop_journal(self) -> None:
        if self.journal is not None:
            self.journal.unlink(missing_ok=True)


def _dead_journals(root: Path) -> list[tuple[Path, dict]]:
    found = []
    for path in Path(root).glob(".outputs-*.json"):
        m = JOURNAL.match(path.name)
        if m and not writer_alive(int(m["pid"])):
            try:
                found.append((path, json.loads(path.read_text())))
            except (OSError, ValueError):
                found.append((path, {}))
    return found


def stale_outputs(root: Path) -> list[Path]:
    """Temporaries that killed runs left, in the workspace at `root` or (named by its journals) anywhere else."""
    listed = [Path(t) for _, doc in _dead_journals(root) for t in doc.get("temporaries", []) if Path(t).exists()]
    return sorted(set(listed) | set(stale_temps(root, recursive=True)))


def clean_stale(root: Path) -> list[Path]:
    """Remove what killed runs left (see `stale_outputs`), and the empty folders they had made; returns the
    temporaries removed."""
    removed = stale_outputs(root)
    for p in removed:
        remove(p)
    for journal, doc in _dead_journals(root):
        for folder in reversed(doc.get("folders", [])):
            try:
                Path(folder).rmdir()
            except OSError:
                pass
        journal.unlink(missing_ok=True)
    return removed


def colorize_depth(depth: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """(…,H,W) depth -> (…,H,W,3) uint8 turbo colours of inverse depth (near = warm) on a robust (2-98 %)
    range over all frames; unknown (<= 0) is black."""
    from matplotlib import colormaps

    known = depth > 0
    inv = np.where(known, 1.0 / np.where(known, depth, 1.0), 0.0)
    if lo is None or hi is None:
        vals = inv[known]
        lo, hi = (np.percentile(vals, 2), np.percentile(vals, 98)) if vals.size else (0.0, 1.0)
    t = np.clip((inv - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = (colormaps["turbo"](t)[..., :3] * 255).astype(np.uint8)
    rgb[~known] = 0
    return rgb


def side_by_side_frames(scene, rgb: np.ndarray, times) -> np.ndarray:
    """(N,H,W,3) uint8 renders at normalised `times` (N,) -> input frame nearest in time | render, the input
    resized to the render's height: (N,H,W'+W,3)."""
    import cv2

    idx = (np.asarray(times, np.float64) * (scene.num_frames - 1)).round().astype(int)
    h = rgb.shape[1]
    left = np.stack([cv2.resize(np.asarray(scene.frames[i]), (round(scene.width * h / scene.height), h),
                                interpolation=cv2.INTER_AREA) for i in idx])
    return np.concatenate([left, rgb], axis=2)
