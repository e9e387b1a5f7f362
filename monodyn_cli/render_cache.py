"""Rendering a camera path in a renderer's chunks, with cached frames: asked twice for the same frames, `monodyn
render` and `monodyn eval` sample them once.

A renderer whose output is a pure function of its weights, its options, the clip and the asked cameras and
times sets `Renderer.cache_key` (gcd: diffusion sampling is the slow part of its render). The frames are stored
as `<workspace>/render_cache/<key>.npz` (rgb uint8, depth float16), where the key also covers the clip's frames,
cameras and times and the path's cameras and times. Files are written to a temporary name and renamed, so a
killed render leaves either a whole entry or none (and a temporary the next save removes); only the newest
`KEEP` entries are kept.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from jaxtyping import Float, UInt8

from models.files import atomic_write, remove_stale_temps

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
    """Store an entry atomically and prune the cache to the newest KEEP entries (and what killed renders left)."""
    folder = Path(workspace) / FOLDER
    folder.mkdir(exist_ok=True)

    def write(path: Path) -> None:
        with open(path, "wb") as f:  # a file object: np.savez would append .npz to a temporary name
            np.savez(f, rgb=rgb, depth=depth.astype(np.float16))

    atomic_write(folder / f"{key}.npz", write)
    entries = sorted(folder.glob("[!.]*.npz"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in entries[KEEP:]:
        old.unlink(missing_ok=True)
    remove_stale_temps(folder)


class Rendered(NamedTuple):
    rgb: UInt8[np.ndarray, "N H W 3"]
    depth: Float[np.ndarray, "N H W"] | None
    cached: bool  # served from the cache
    coverage: Float[np.ndarray, " N"]  # per frame, the share of pixels that show the scene (`coverage`)


def coverage(rgb: UInt8[np.ndarray, "N H W 3"], alpha: Float[np.ndarray, "N H W"] | None = None) -> Float[np.ndarray, " N"]:
    """Per frame, the share of pixels that show the scene: rendered alpha >= 0.5 and not black. Black counts as
    empty too, since methods without an alpha of their own (gcd, dyst) report alpha 1 everywhere."""
    shown = rgb.max(-1) > 2
    if alpha is not None:
        shown &= alpha >= 0.5
    return shown.mean((1, 2))


def render_frames(renderer, method: str, scene, cameras, times, device: str, progress, label: str,
                  workspace: Path | None = None, keep_depth: bool = False) -> Rendered:
    """(rgb, depth or None, served from the cache, coverage) for `cameras` (N) at `times` (N), in
    `renderer.chunk`s, every output checked against the method contract. With a `workspace` and a renderer
    `cache_key`, the frames are looked up in and stored to the workspace's cache (depth is then always kept, for a
    later --depth)."""
    from models.registry import check_render_output

    key = frames_key(renderer.cache_key, scene, cameras, times) if workspace is not None and renderer.cache_key else None
    if key and (hit := load(workspace, key)) is not None:
        return Rendered(hit[0], hit[1], True, coverage(hit[0]))
    rgb, depth, shown = [], [], []
    chunk = renderer.chunk or len(cameras)
    with progress.task(label, len(cameras)) as advance:
        for i in range(0, len(cameras), chunk):
            j = min(i + chunk, len(cameras))
            result = renderer.render(cameras[i:j].to(device), times[i:j].to(device))
            width = result.rgb.shape[2]  # a method may tile several variants side by side (osn --scale-samples)
            check_render_output(result, j - i, cameras.height, width, method)
            chunk_rgb = (result.rgb.clamp(0, 1) * 255).round().byte().cpu().numpy()
            rgb += list(chunk_rgb)
            shown += list(coverage(chunk_rgb, result.alpha.float().cpu().numpy()))
            if keep_depth or key:
                depth += list(result.depth.float().cpu().numpy())
            advance(j - i)
    rgb_all, depth_all = np.stack(rgb), (np.stack(depth) if depth else None)
    if key:
        save(workspace, key, rgb_all, depth_all)
    return Rendered(rgb_all, depth_all, False, np.asarray(shown))
