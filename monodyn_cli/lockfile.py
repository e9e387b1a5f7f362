"""requirements.lock: the exact environment `make` installs, and how the running one differs from it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

# beside pyproject.toml in a checkout; `make lock` points MONODYN_LOCK at the candidate lock it is testing
LOCK = Path(os.environ.get("MONODYN_LOCK") or Path(__file__).resolve().parents[1] / "requirements.lock")


@dataclass(frozen=True)
class Drift:
    name: str
    locked: str
    installed: str | None  # None: not installed


def read_lock(path: Path | None = None) -> dict[str, str]:
    """{normalised name: pinned version} for every `name==version[ ; marker]` line whose marker holds here."""
    pins = {}
    for line in (path or LOCK).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, _, marker = line.partition(";")
        name, sep, version = spec.partition("==")
        if sep and (not marker.strip() or Marker(marker.strip()).evaluate()):
            pins[canonicalize_name(name.strip())] = version.strip()
    return pins


def drift(path: Path | None = None) -> list[Drift]:
    """Locked packages whose installed version differs (a local label such as +cpu is ignored) or is missing."""
    out = []
    for name, locked in sorted(read_lock(path).items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            out.append(Drift(name, locked, None))
            continue
        if installed.split("+", 1)[0] != locked:
            out.append(Drift(name, locked, installed))
    return out
