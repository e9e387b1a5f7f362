"""Cached render frames: `monodyn render` asked twice for the same frames samples them once.

A renderer whose output is a pure function of its weights, its options, the clip and the asked cameras and
times sets `Renderer.cache_key` (gcd: diffusion sampling is the slow part of its render). The frames are stored
as `<workspace>/render_cache/<key>.npz` (rgb uint8, depth float16), where the key also covers the clip's frames,
cameras and times and the path's cameras and times. Files are written to a temporary name and renamed, so a
killed render leaves either a whole entry or none; only the newest `KEEP` entries are kept.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
from jaxtyping import Float, UInt8

FOLDER = "render_cache"
KEEP = 8


def _digest(h: "hashlib._Hash", *arrays) -> None:
    for a in arrays:
        a = np.ascontiguousarray(a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())


def frames_key(renderer_key: str, scene, cameras, times) -> str:
    """sha256 over the renderer's key, the clip (frames, cameras, times) and the asked cameras and times."""
    h = hashlib.sha256(renderer_key.encode())
    _digest(h, scene.frames, scene.cameras.K, scene.cameras.w2c, scene.times)
    _digest(h, cameras.K, cameras.w2c, np.array([cameras.width, cameras.height]), times)
    return h.hexdigest()[:24]


def load(workspace: Path, key: str) -> tuple[UInt8[np.ndarray, "N H W 3"], Float[np.ndarray, "N H W"]] | None:
    """The cached (rgb, depth) for `key`, or None (absent or unreadable: then it is rendered again)."""
    path = Path(workspace) / FOLDER / f"{key}.npz"
    try:
        with np.load(path) as f:
            rgb, depth = f["rgb"], f["depth"].astype(np.float32)
    except (OSError, KeyError, ValueError):
        return None
    os.utime(path)  # recently used entries survive pruning
    return rgb, depth


def save(workspace: Path, key: str, rgb: UInt8[np.ndarray, "N H W 3"], depth: Float[np.ndarray, "N H W"]) -> None:
    """Store an entry atomically and prune the cache to the newest KEEP entries."""
    folder = Path(workspace) / FOLDER
    folder.mkdir(exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.tmp.npz"
    np.savez(tmp, rgb=rgb, depth=depth.astype(np.float16))
    tmp.replace(folder / f"{key}.npz")
    entries = sorted(folder.glob("[!.]*.npz"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in entries[KEEP:]:
        old.unlink(missing_ok=True)
    now = time.time()
    for stale in folder.glob(".*.tmp.npz"):  # left by a killed render (an hour old: not one still writing)
        if now - stale.stat().st_mtime > 3600:
            stale.unlink(missing_ok=True)

