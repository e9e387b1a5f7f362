"""The on-disk cache of stages.

Layout of a workspace (e.g. `clip.monodyn/`):

    workspace.json            what the workspace was made from (input path, created)
    state.json                the current key of every stage (written by atomic rename)
    .lock                     held (flock) by the run that writes into the workspace
    logs/<time>.log           one log file per run
    <stage>/<key16>/          a stage's outputs + manifest.json (written LAST, by atomic rename)

A stage's key = sha256(stage name, stage version, canonical JSON of its config, keys of its inputs). A folder
with a manifest is complete: the same key is skipped. A folder without one is what a killed run left behind:
it is deleted and redone. Nothing outside the workspace is ever written.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from models.errors import InputError, MonodynError
from models.files import fsync_tree, write_json_atomic

MANIFEST = "manifest.json"
# folders of a workspace that hold what commands write for people (not stage results): the only places inside a
# workspace an output may go (monodyn_cli/outputs.py)
OUTPUT_FOLDERS = ("renders", "export", "report", "eval", "osn", "dyst")


class WorkspaceBusyError(MonodynError):
    """Another monodyn run holds the workspace lock."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def stage_key(stage: str, version: int, config: dict, inputs: dict[str, str]) -> str:
    """Content hash that names a stage's output folder (first 16 hex digits of a sha256)."""
    payload = canonical_json({"stage": stage, "version": version, "config": config, "inputs": inputs})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_json(path: Path) -> Any:
    """A JSON file of the workspace; a truncated or unreadable one is an InputError naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        why = e.strerror if isinstance(e, OSError) else "not valid JSON"
        raise InputError(f"{path} is corrupt or unreadable ({why}); delete it and rerun the command that wrote it "
                         "(e.g. `monodyn preprocess --force STAGE`)") from None


def load_manifest(folder: Path) -> dict | None:
    """The manifest of a result folder if it is complete: readable, and every output it lists present with the
    size it records (a deleted or truncated output makes the folder incomplete, to be redone). None otherwise."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    if not isinstance(manifest, dict):
        return None
    sizes = manifest.get("sizes") or {}
    for name in manifest.get("outputs", []):
        f = Path(folder) / name
        if not f.exists() or (name in sizes and f.is_file() and f.stat().st_size != sizes[name]):
            return None
    return manifest


def output_sizes(folder: Path, outputs: list[str]) -> dict[str, int]:
    """Byte sizes of the listed output files (folders are checked for existence only)."""
    return {name: (Path(folder) / name).stat().st_size for name in outputs if (Path(folder) / name).is_file()}


def lock_holder(root: Path) -> int | None:
    """The pid of the monodyn run holding the workspace's lock, or None when no run holds it."""
    path = Path(root) / ".lock"
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = path.read_text().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@dataclass
class StageResult:
    """A completed stage: its folder and manifest."""

    stage: str
    key: str
    path: Path
    manifest: dict
    cached: bool = False

    def file(self, name: str) -> Path:
        return self.path / name


@dataclass
class StageContext:
    """What a stage's run function receives: its config, its inputs' results, the folder to write into."""

    out: Path
    config: dict
    inputs: dict[str, StageResult]
    progress: "Progress"
    log: Callable[[str], None]
    extra: dict = field(default_factory=dict)  # values computed by the stage for the manifest (e.g. metrics)


class Progress:
    """Progress reporting handed to stages; the CLI supplies a Rich implementation, tests a silent one."""

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """Yield `advance(n)`; the default implementation reports nothing."""
        yield lambda n=1, **info: None

    def warn(self, message: str) -> None:
        pass


class Workspace:
    def __init__(self, root: Path):
        self.root = Path(root)

    # ---- creation / locking -------------------------------------------------------------------
    @staticmethod
    def default_for(input_path: Path) -> Path:
        """`clip.mp4` -> `clip.monodyn/` beside it; a folder `frames/` -> `frames.monodyn/`."""
        p = Path(str(input_path).rstrip("/*"))
        return p.parent / f"{p.stem if p.is_file() or p.suffix else p.name}.monodyn"

    def ensure(self, source: str | None = None) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"workspace path exists and is not a folder: {self.root}")
        info = self.root / "workspace.json"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not info.exists():
                write_json_atomic(info, {"monodyn_workspace": 1, "source": source, "created": time.time()})
        except OSError as e:
            raise InputError(f"cannot create the workspace {self.root} ({e.strerror or e}): pass --workspace DIR in a "
                             "writable place") from None

    def check_exists(self, how: str = "--workspace DIR") -> None:
        """`how`: the way the command takes a workspace, for the message."""
        if not (self.root / "workspace.json").exists():
            raise InputError(f"not a monodyn workspace: {self.root} (run `monodyn preprocess VIDEO` first, "
                             f"or pass {how})")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock for the duration of a run; a second run fails fast instead of interleaving writes."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WorkspaceBusyError(f"workspace {self.root} is in use by another monodyn run; "
                                         "wait for it to finish") from None
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # ---- state ----------------------------------------------------------------------------------
    def _state(self) -> dict:
        path = self.root / "state.json"
        return read_json(path) if path.exists() else {}

    def _set_current(self, stage: str, key: str | None) -> None:
        state = self._state()
        if key is None:
            state.pop(stage, None)
        else:
            state[stage] = key
        write_json_atomic(self.root / "state.json", state)

    def current(self, stage: str) -> StageResult | None:
        """The stage's most recent complete result, or None."""
        key = self._state().get(stage)
        if key is None:
            return None
        path = self.root / stage / key
        manifest = load_manifest(path)
        if manifest is None:
            return None
        return StageResult(stage, key, path, manifest, cached=True)

    def require(self, stage: str, hint: str = "run `monodyn preprocess` first") -> StageResult:
        res = self.current(stage)
        if res is None:
            holder = lock_holder(self.root)
            if holder is not None:
                raise InputError(f"workspace {self.root} has no completed '{stage}' stage yet: a monodyn run (pid "
                                 f"{holder}) is working in it; wait for it to finish")
            raise InputError(f"workspace {self.root} has no completed '{stage}' stage; {hint}")
        return res

    def entries(self) -> list[dict]:
        """Every stage folder with its state, for `monodyn status` (complete, crashed, and stale ones).

        Preprocessing stages live in <stage>/<key>; fits in fit/<method>/<key> (reported as stage "fit:<method>")."""
        state = self._state()
        fits_path = self.root / "fit" / "current.json"
        fits = read_json(fits_path) if fits_path.exists() else {}
        order = ["decode", "flow", "segment", "sfm", "depth"]
        not_stages = {"logs", "fit", "render_cache", *OUTPUT_FOLDERS}
        stage_dirs = [p for p in self.root.iterdir() if p.is_dir() and p.name not in not_stages and p.name[0] != "."]
        stage_dirs.sort(key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
        groups = [(p.name, p, state.get(p.name)) for p in stage_dirs]
        if (self.root / "fit").is_dir():
            groups += [(f"fit:{p.name}", p, fits.get(p.name)) for p in sorted((self.root / "fit").iterdir()) if p.is_dir()]
        rows = []
        for name, stage_dir, current in groups:
            for key_dir in sorted(p for p in stage_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                manifest = load_manifest(key_dir)
                size = sum(f.stat().st_size for f in key_dir.rglob("*") if f.is_file())
                rows.append({"stage": name, "key": key_dir.name, "manifest": manifest, "bytes": size,
                             "current": current == key_dir.name, "mtime": key_dir.stat().st_mtime})
        return rows

    # ---- running a stage ------------------------------------------------------------------------
    def run_stage(self, stage: str, version: int, config: dict, inputs: dict[str, StageResult],
                  run: Callable[[StageContext], list[str] | None], progress: Progress | None = None,
                  force: bool = False, log: Callable[[str], None] = lambda s: None) -> StageResult:
        """Return the cached result for this (stage, version, config, inputs) or compute it.

        `run(ctx)` writes its files into ctx.out and returns the list of output names (or None: every
        file written). The manifest is written last by atomic rename, so a killed run leaves a folder
        without a manifest, which the next run deletes and redoes.
        """
        progress = progress or Progress()
        input_keys = {name: res.key for name, res in inputs.items()}
        key = stage_key(stage, version, config, input_keys)
        folder = self.root / stage / key
        manifest = None if force else load_manifest(folder)
        if manifest is not None:
            self._set_current(stage, key)
            log(f"{stage}: cached {key}")
            return StageResult(stage, key, folder, manifest, cached=True)
        if (folder / MANIFEST).exists() and not force:
            progress.warn(f"{stage} result {folder} is damaged (manifest unreadable or an output missing or "
                          "truncated); redoing it")
        if folder.exists():
            # Either a crash leftover (no manifest) or --force: move aside first so a kill during the
            # deletion cannot leave a half-deleted folder that still has its manifest.
            trash = folder.with_name(f".trash-{key}-{os.getpid()}")
            os.replace(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)
            log(f"{stage}: {'forced' if force else 'repairing incomplete'} {key}")
        folder.mkdir(parents=True)
        ctx = StageContext(out=folder, config=config, inputs=inputs, progress=progress, log=log)
        start = time.perf_counter()
        outputs = run(ctx)
        seconds = time.perf_counter() - start
        if outputs is None:
            outputs = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        missing = [o for o in outputs if not (folder / o).exists()]
        if missing:
            raise MonodynError(f"stage {stage} did not write {missing} (bug)")
        fsync_tree(folder)
        manifest = {"stage": stage, "version": version, "key": key, "inputs": input_keys, "config": config,
                    "outputs": outputs, "sizes": output_sizes(folder, outputs), "seconds": round(seconds, 3),
                    "created": time.time(), **ctx.extra}
        write_json_atomic(folder / MANIFEST, manifest)
        self._set_current(stage, key)
        log(f"{stage}: done {key} in {seconds:.1f}s")
        return StageResult(stage, key, folder, manifest, cached=False)

    def clean_trash(self) -> None:
        for trash in [*self.root.glob("*/.trash-*"), *self.root.glob("fit/*/.trash-*")]:
            shutil.rmtree(trash, ignore_errors=True)


