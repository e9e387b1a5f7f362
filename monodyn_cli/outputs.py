"""What commands write for people to look at: output-path checks, colour-mapped depth, side-by-side frames."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from models.errors import InputError


def check_writable(out: Path, folder: bool = False) -> None:
    """Make sure `out` (a file, or with folder=True a folder) can be written, before any work is done."""
    out = Path(out)
    target = out if folder else out.parent
    if folder and out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder: choose another with --output DIR")
    if not folder and out.is_dir():
        raise InputError(f"output {out} is a folder: pass a file name, e.g. --output {out / 'render.mp4'}")
    try:
        target.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=target, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"cannot write to {target} ({e.strerror or e}): choose another place with --output") from None


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
