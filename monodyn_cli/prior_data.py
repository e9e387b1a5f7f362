"""Training pairs for the shipped RGB-D prior (`monodyn train prior`), made cheaply without fitting anything.

Synthetic pairs: a `monodyn synth` scene rendered from its input camera, held-out cameras at random azimuths
(15-100 degrees) and two fixed cameras. For frame t, the input frame is warped into each other camera with
that camera's ground-truth depth (`models.priors.rgbd.backward_warp`): exactly what a perfect fit of the input
renders there, with holes where the input never looked. The pair is (render = the warp, its alpha = the seen
mask, its normalised disparity; reference = the input frame) -> the ground truth rgb and disparity.

Real pairs: a frame of a real clip with holes cut into it (a band at one side, as an orbit leaves, and blobs),
a frame a few steps away as the reference, the frame itself as the target; no depth (its loss is masked).

The set is written once to `<cache>/prior/<key16>.npz` (key = everything that determines the arrays).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

SEED0 = 5000
RENDER_SCALE = 1.5  # scenes are rendered this much larger than the training size, then area-downsampled
SYNTH_FRAMES = 4


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def synth_pairs(seed: int, height: int, width: int) -> dict[str, np.ndarray]:
    """The pairs of one synthetic scene (see the module docstring), at width x height."""
    import cv2
    import torch

    from models.priors.rgbd import DisparityRange, backward_warp
    from monodyn_cli.synth import SynthConfig
    from monodyn_cli.synth.writer import generate_scene

    rng = np.random.default_rng([seed, 23])
    big_w, big_h = int(round(width * RENDER_SCALE)), int(round(height * RENDER_SCALE))
    cfg = SynthConfig(seed=seed, frames=SYNTH_FRAMES, width=big_w, height=big_h, objects=int(rng.integers(1, 4)),
                      movers=("rigid", "mixed", "articulated")[int(rng.integers(3))],
                      heldout_azimuths=tuple(float(a) * rng.choice([-1, 1]) for a in rng.uniform(15, 100, 3)),
                      fixed_cameras=2)
    views = generate_scene(cfg).views
    src = views["input"]
    shrink = lambda a: cv2.resize(np.ascontiguousarray(a, np.float32), (width, height), interpolation=cv2.INTER_AREA)
    out: dict[str, list] = {k: [] for k in ("target", "target_disp", "render", "alpha", "render_disp", "reference")}
    for name, view in views.items():
        if name == "input":
            continue
        for t in range(SYNTH_FRAMES):
            s_rgb = torch.as_tensor(np.asarray(src.rgb[t]), dtype=torch.float32) / 255
            d_depth = torch.as_tensor(np.asarray(view.depth[t]), dtype=torch.float32)
            warped, seen = backward_warp(s_rgb, torch.as_tensor(np.asarray(src.depth[t])), src.cameras.K[t],
                                         src.cameras.w2c[t], d_depth, view.cameras.K[t], view.cameras.w2c[t])
            alpha = shrink(seen.float().numpy())
            depth = shrink(d_depth.numpy())
            rng_ = DisparityRange.of(torch.as_tensor(depth)[None], torch.as_tensor(alpha)[None])
            disp = rng_.normalise(torch.as_tensor(depth)[None])[0].numpy()
            out["target"].append(shrink(np.asarray(view.rgb[t]) / 255.0))
            out["target_disp"].append(disp)
            out["render"].append(shrink(warped.numpy()))  # premultiplied by alpha, as a render over black is
            out["alpha"].append(alpha)
            full_disp = rng_.normalise(d_depth[None])[0].numpy()  # bounds of the small image, full-size map
            out["render_disp"].append(shrink(full_disp * seen.float().numpy()))
            out["reference"].append(shrink(np.asarray(src.rgb[t]) / 255.0))
    return {k: np.stack(v) for k, v in out.items()}


def real_pairs(frames: np.ndarray, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`count` pairs from one clip's frames (T,h,w,3) uint8: holes cut into frame t, frame t +- k as reference."""
    T, h, w = frames.shape[:3]
    out: dict[str, list] = {k: [] for k in ("target", "target_disp", "render", "alpha", "render_disp", "reference")}
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(count):
        t = int(rng.integers(T))
        k = int(rng.integers(2, 9)) * int(rng.choice([-1, 1]))
        ref = int(np.clip(t + k, 0, T - 1))
        seen = np.ones((h, w), np.float32)
        band = int(rng.uniform(0.1, 0.45) * w)
        if rng.random() < 0.5:
            seen[:, :band] = 0
        else:
            seen[:, w - band:] = 0
        for _ in range(int(rng.integers(0, 4))):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.2) * w
            seen[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 0
        img = frames[t] / 255.0
        out["target"].append(img)
        out["target_disp"].append(np.zeros((h, w), np.float32))
        out["render"].append(img * seen[..., None])
        out["alpha"].append(seen)
        out["render_disp"].append(np.zeros((h, w), np.float32))
        out["reference"].append(frames[ref] / 255.0)
    return {k: np.stack(v) for k, v in out.items()}


def build_pairs(cache: Path, scenes: int, height: int, width: int, clips: list[Path], real_per_clip: int,
                advance: Callable[[int], None] | None = None) -> Path:
    """The cached pair file (built now when missing): <cache>/prior/<key>.npz."""
    from monodyn_cli.dyst_data import read_clip
    from monodyn_cli.synth.scene import SCENE_VERSION

    clips = [Path(p).resolve() for p in clips]
    stamp = [(str(p), p.stat().st_size if p.is_file() else len(list(p.rglob("*")))) for p in clips]
    key = _key({"v": 1, "scene": SCENE_VERSION, "scenes": scenes, "h": height, "w": width, "clips": stamp,
                "real": real_per_clip, "frames": SYNTH_FRAMES, "scale": RENDER_SCALE})
    path = Path(cache) / f"{key}.npz"
    if path.exists():
        return path
    parts = []
    for s in range(scenes):
        parts.append({**synth_pairs(SEED0 + s, height, width), "has_depth": None})
        if advance:
            advance(1)
    rng = np.random.default_rng(7)
    for clip in clips:
        parts.append({**real_pairs(read_clip(clip, height, width), real_per_clip, rng), "has_depth": False})
        if advance:
            advance(1)
    arrays = {}
    for name in ("target", "render", "reference"):
        arrays[name] = (np.concatenate([p[name] for p in parts]) * 255 + 0.5).clip(0, 255).astype(np.uint8)
    arrays["alpha"] = (np.concatenate([p["alpha"] for p in parts]) * 255 + 0.5).astype(np.uint8)
    for name in ("target_disp", "render_disp"):
        arrays[name] = np.concatenate([p[name] for p in parts]).clip(-4, 4).astype(np.float16)
    arrays["has_depth"] = np.concatenate([np.full(len(p["target"]), p["has_depth"] is None) for p in parts])
    from models.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    def write(p: Path) -> None:
        with open(p, "wb") as f:  # a file object: np.savez would append .npz to the temporary name
            np.savez(f, **arrays)

    atomic_write(path, write)
    return path
