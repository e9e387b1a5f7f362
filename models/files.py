"""Writing files so that no reader, and no killed writer, ever leaves half of one under its final name.

Every temporary is `.<stem>.tmp-<pid>-<8 hex><suffix>` beside its target (the suffix kept, so writers that
choose a format by extension still work). The pid in the name tells a later run whether its writer is still
alive: `stale_temps` finds those of dead writers, which nothing else would ever clean up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

TEMP = re.compile(r"^\..+\.tmp-(?P<pid>\d+)-[0-9a-f]{8}(\.[^.]*)?$")


def temp_name(path: Path) -> Path:
    """A fresh temporary name beside `path`, marked with this process's pid."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` writes the file at a temporary name in the same folder; it is fsynced and renamed onto `path`,
    so readers see the old file or the new one, never a part. The temporary is removed if anything fails.

    A `path` that is itself a temporary (one that `monodyn_cli.outputs.Outputs` reserved and will rename into place)
    is written directly: a temporary of a temporary would be one no journal names, left behind by a kill."""
    path = Path(path)
    if TEMP.match(path.name):
        write(path)
        return path
    tmp = temp_name(path)
    try:
        write(tmp)
        fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync(path.parent)
    return path


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so that readers see either the old file or the whole new one, never a torn write."""
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, default=str)))


def fsync(path: Path) -> None:
    """Make a file's bytes (or a folder's renames) durable; best effort where a platform cannot open folders."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """`fsync` a file, or every file below a folder."""
    path = Path(path)
    for f in (path.rglob("*") if path.is_dir() else [path]):
        if f.is_file():
            fsync(f)


def replace_folder(tmp: Path, target: Path) -> None:
    """Put the finished folder `tmp` at `target` by renames: an existing `target` is moved aside first and deleted
    after, so `target` is never half written."""
    old = temp_name(target)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    remove(old)


def writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except OverflowError:
        return False  # no such pid can exist
    return True


def is_stale_temp(path: Path) -> bool:
    """A temporary (file or folder) of a writer that no longer runs."""
    m = TEMP.match(Path(path).name)
    return m is not None and not writer_alive(int(m["pid"]))


def stale_temps(folder: Path, recursive: bool = False) -> list[Path]:
    """Temporaries of dead writers in `folder` (with recursive=True, anywhere below it)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(".*.tmp-*") if recursive else folder.glob(".*.tmp-*")
    return sorted(p for p in found if is_stale_temp(p))


def remove(path: Path) -> None:
    """Delete a file or a folder tree, whichever it is (gone already is fine)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass


def remove_stale_temps(folder: Path, recursive: bool = False) -> list[Path]:
    """Delete the temporaries that killed writers left in `folder`; returns what was removed."""
    found = stale_temps(folder, recursive)
    for p in found:
        remove(p)
    return found
