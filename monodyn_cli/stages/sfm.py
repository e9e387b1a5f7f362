"""SfM stage: a camera (K and world-to-camera pose) for every frame, sparse background points, exports.

How the cameras are found (each step says why it was taken in sfm.json and, when it is a fallback, in a warning):
1. `--static-camera` / `--sfm none`: one fixed camera, no SfM.
2. Background tracks (objects masked out) are checked first: a background that does not move means a static
   camera -> fixed camera without running COLMAP (COLMAP fails or returns garbage on it).
3. COLMAP (pycolmap) on the background: SIFT with object masks, sequential matching, one shared camera,
   incremental mapping. It counts as failed when it builds no model, registers too few frames, or the cameras
   barely translate relative to the scene depth.
4. If COLMAP failed and one homography explains the background between frames (a camera turning about its
   centre), the rotations come from the chained homographies ("rotation-fallback", no translation), with the
   focal length from --focal or estimated from the rotation. Otherwise: fixed camera ("static-fallback").
Frames COLMAP did not register get interpolated poses (slerp + linear centre) and are listed.

World frame (all modes): z up (the mean image-up of the cameras), camera 0 at the origin looking along +y,
one unit = the median depth of the sparse points (fallback modes: scale unknown, unit kept). The focal
length of a fixed camera without --focal is a guess: --fov across the longer image side.

Outputs: cameras.json (Cameras.to_dict: K (T,3,3), w2c (T,4,4), OpenCV axes), registered.npy (T,) bool,
points3d.npy (N,3) float32 + points_rgb.npy (N,3) uint8 (background points), sparse_depth.npz (flat arrays per
observation: frame (M,) int32, xy (M,2) float32 pixel positions with centres at +0.5, depth (M,) float32 z-depth,
point (M,) int32 row of points3d.npy), images/<t:05d>.png (the frames), colmap/sparse/0/*.bin (COLMAP's format,
in our world; image_path = images/), transforms.json (nerfstudio, time normalised to [0, 1]), sfm.json
(mode, reason, statistics, bounds, normalisation), colmap.log. Per-object SfM (--per-object-sfm) is a stage of
its own (monodyn_cli/stages/object_sfm.py): turning it on leaves this stage's key, and everything after it, alone.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from models.cameras import Cameras
from models.errors import InputError, StageError
from models.sfm.align import transform_w2c, upright_normalization
from models.sfm.colmap import (
    ColmapOptions,
    SparseModel,
    capture_log,
    fixed_camera_reconstruction,
    run_colmap,
    write_images,
    write_masks,
)
from models.sfm.validate import (
    MotionCheck,
    baseline_ratio,
    chain_homographies,
    check_camera_motion,
    focal_from_homographies,
    fov_focal,
    interpolate_poses,
    rotations_from_homographies,
)
from monodyn_cli.paths import write_transforms_json
from monodyn_cli.pipeline import StageSpec
from monodyn_cli.stages.configs import SfmConfig
from monodyn_cli.stages.outputs import DECODE, SEGMENT, SFM
from monodyn_cli.workspace import StageContext

NAME, VERSION = "sfm", 1


@dataclass
class Solution:
    """Cameras for every frame plus what they came from (world already normalised)."""

    mode: str                                 # colmap | rotation-fallback | static-fallback
    reason: str                               # why this mode (empty for a good COLMAP run)
    w2c: np.ndarray                           # (T,4,4)
    K: np.ndarray                             # (3,3)
    registered: np.ndarray                    # (T,) bool: pose from SfM (False: interpolated or fixed)
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    colors: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint8))
    obs: dict = field(default_factory=dict)   # frame, xy, depth, point (flat arrays)
    model: SparseModel | None = None
    stats: dict = field(default_factory=dict)
    focal_source: str = "colmap"              # colmap | --focal | rotation | fov guess


def run(ctx: StageContext, cfg: SfmConfig) -> list[str]:
    cfg.validate()
    decode = ctx.inputs["decode"]
    frames = np.load(decode.file(DECODE.frames))
    timestamps = np.load(decode.file(DECODE.timestamps))
    meta = json.loads(decode.file(DECODE.meta).read_text())
    T, H, W = frames.shape[:3]
    instances = _load_instances(ctx, (T, H, W))
    objects = instances > 0 if instances is not None else None
    background = None if objects is None else ~_dilate(objects, cfg.mask_dilate)
    focal = cfg.focal * W / float(meta.get("native_width") or W) if cfg.focal else None
    work = ctx.out / ".work"
    log_path = ctx.out / SFM.log
    log_path.touch()

    names = write_images(frames, ctx.out / "images")
    with ctx.progress.task("sfm", 4) as advance_bar:
        done = [0]

        def advance(n: int = 1) -> None:
            done[0] += n
            advance_bar(n)

        sol = _solve_background(ctx, cfg, frames, background, names, timestamps, focal, work, log_path, advance)
        advance(max(0, 4 - done[0]))  # the fallbacks skip some steps
        _warn(ctx, sol, cfg)
        outputs = _write_background(ctx, sol, names, timestamps, W, H)
    shutil.rmtree(work, ignore_errors=True)
    return outputs + [SFM.log]


# ---- inputs -------------------------------------------------------------------------------------------------

def _load_instances(ctx: StageContext, shape: tuple[int, int, int]) -> np.ndarray | None:
    seg = ctx.inputs.get("segment")
    if seg is None or not seg.file(SEGMENT.instances).exists():
        return None
    inst = np.load(seg.file(SEGMENT.instances))
    if inst.shape != shape:
        raise InputError(f"segment instances {inst.shape} do not match the frames {shape}; "
                         "rerun `monodyn preprocess --force segment`")
    return inst


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return np.stack([cv2.dilate(m.astype(np.uint8), kernel) > 0 for m in mask])


def _subset(n: int, max_frames: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(int))


# ---- the background cameras ---------------------------------------------------------------------------------

def _solve_background(ctx, cfg, frames, background, names, timestamps, focal, work, log_path, advance) -> Solution:
    T, H, W = frames.shape[:3]
    if cfg.static_camera or cfg.method == "none":
        why = "--static-camera" if cfg.static_camera else "--sfm none"
        return _fixed_camera(T, W, H, focal, cfg.fov, f"forced by {why}", {})

    start = time.perf_counter()
    motion = check_camera_motion(frames, background)
    advance(1)
    stats = {"motion": motion.summary(), "seconds": {"motion_check": round(time.perf_counter() - start, 2)}}
    ctx.log(f"sfm: background motion {motion.summary()}")
    if motion.kind == "static":
        reason = (f"the background moves at most {motion.max_motion_px:.2f} px over the clip: the camera is static")
        return _fixed_camera(T, W, H, focal, cfg.fov, reason, stats)

    subset = _subset(T, cfg.max_frames)
    masks_dir = None
    if background is not None:
        masks_dir = work / "masks"
        write_masks(background[subset], masks_dir, [names[i] for i in subset])
    opts = ColmapOptions(camera_model=cfg.camera_model, focal=focal, max_features=cfg.max_features,
                         overlap=cfg.overlap, num_threads=cfg.threads, seed=cfg.seed)
    start = time.perf_counter()
    model, colmap_stats = _colmap(ctx.out / "images", [names[i] for i in subset], work / "colmap", opts,
                                  masks_dir, log_path, advance)
    stats["seconds"]["colmap"] = round(time.perf_counter() - start, 2)
    stats["colmap"] = colmap_stats
    failure = _colmap_failure(model, colmap_stats, cfg, len(subset), log_path)
    if failure is None:
        return _from_colmap(model, subset, T, timestamps, focal, stats)
    stats["colmap_failure"] = failure

    if motion.kind == "rotation":
        H0t = chain_homographies(frames, background)
        if H0t is not None:
            return _rotation_only(H0t, W, H, focal, cfg.fov, motion, failure, stats)
    if motion.max_motion_px < 0.05 * max(H, W):
        hint = (f"; the background drifts only {motion.max_motion_px:.1f} px over the clip: the camera barely "
                "moves")
    else:
        hint = ("; the background moves with parallax, so the camera seems to translate: a larger --max-side, "
                "more frames, or masks of the moving things (segment stage) may let COLMAP succeed")
    return _fixed_camera(T, W, H, focal, cfg.fov, failure + hint, stats)


def _colmap(image_dir, names, workdir, opts, mask_dir, log_path, advance) -> tuple[SparseModel | None, dict]:
    """run_colmap with its log in colmap.log and its (unexpected) exceptions as a StageError."""
    try:
        with capture_log(log_path):
            return run_colmap(image_dir, names, workdir, opts, mask_dir, progress=lambda step: advance(1))
    except (RuntimeError, ValueError) as e:
        raise StageError(f"COLMAP failed: {e} (see {log_path})") from e


def _colmap_failure(model: SparseModel | None, stats: dict, cfg: SfmConfig, n: int, log_path: Path) -> str | None:
    """Why the COLMAP result is unusable, or None when it is good."""
    where = f"(see {log_path})"
    if model is None:
        return (f"COLMAP built no model from {n} frames {where}: {stats.get('features_per_image', 0):.0f} "
                f"features per frame, {stats.get('verified_pairs', 0)} verified frame pairs")
    reg = int(model.registered.sum())
    if reg < max(2, cfg.min_registered * n):
        return f"COLMAP registered {reg} of {n} frames {where}"
    depths = model.obs_depth()
    ratio = baseline_ratio(model.w2c, model.registered, float(np.median(depths)) if len(depths) else 0.0)
    stats["baseline_ratio"] = round(ratio, 5)
    if ratio < cfg.min_baseline:
        return (f"the camera travels only {100 * ratio:.2f}% of the scene depth (COLMAP {where}): "
                "too little translation for 3D")
    return None


def posed_clip(model: SparseModel, subset: np.ndarray, T: int, timestamps: np.ndarray,
               origin: np.ndarray | None = None) -> tuple:
    """A COLMAP model of the frames `subset` (of T) in our normalisation (upright, unit scale; about `origin` when
    given), as per-frame poses for the whole clip (interpolated between registered frames) and its observations.
    Returns (sim, registered (T,) bool, w2c (T,4,4), obs {frame, xy, depth, point}). Transforms `model` in place."""
    sim = upright_normalization(model.w2c[model.registered], model.obs_depth(), origin=origin)
    model.transform(sim)
    registered = np.zeros(T, bool)
    registered[subset[model.registered]] = True
    w2c = np.tile(np.eye(4), (T, 1, 1))
    w2c[subset] = model.w2c
    w2c = interpolate_poses(w2c, registered, timestamps)
    depth = model.obs_depth()
    keep = depth > 0
    obs = {"frame": subset[model.obs_frame[keep]].astype(np.int32), "xy": model.obs_xy[keep].astype(np.float32),
           "depth": depth[keep].astype(np.float32), "point": model.obs_point[keep].astype(np.int32)}
    return sim, registered, w2c, obs


def _from_colmap(model: SparseModel, subset: np.ndarray, T: int, timestamps: np.ndarray, focal: float | None,
                 stats: dict) -> Solution:
    sim, registered, w2c, obs = posed_clip(model, subset, T, timestamps)
    stats.update({"sfm_frames": subset.tolist(), "registered": int(registered.sum()),
                  "num_points": int(len(model.points)),
                  "mean_reprojection_error_px": round(model.mean_reprojection_error, 4),
                  "mean_track_length": round(float(model.track_length.mean()), 3) if len(model.points) else 0.0,
                  "num_models": model.num_models, "camera_model": model.camera_model,
                  "camera_params": [round(p, 6) for p in model.camera_params],
                  "normalisation": {"scale": sim.scale, "R": sim.R.tolist(), "t": sim.t.tolist(),
                                    "note": "x_ours = scale * R @ x_colmap + t"}})
    return Solution("colmap", "", w2c, model.K, registered, model.points, model.colors, obs, model, stats,
                    "--focal" if focal else "colmap")


def _fixed_camera(T: int, W: int, H: int, focal: float | None, fov: float, reason: str, stats: dict) -> Solution:
    f = focal if focal else fov_focal(W, H, fov)
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    w2c = np.tile(np.eye(4), (T, 1, 1))
    w2c = transform_w2c(w2c, upright_normalization(w2c, None))
    return Solution("static-fallback", reason, w2c, K, np.zeros(T, bool), stats=stats,
                    focal_source="--focal" if focal else "fov guess")


def _rotation_only(H0t: np.ndarray, W: int, H: int, focal: float | None, fov: float, motion: MotionCheck,
                   failure: str, stats: dict) -> Solution:
    f_est = focal_from_homographies(H0t, W, H)
    f, source = (focal, "--focal") if focal else ((f_est, "rotation") if f_est else (fov_focal(W, H, fov),
                                                                                     "fov guess"))
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    w2c = np.tile(np.eye(4), (len(H0t), 1, 1))
    w2c[:, :3, :3] = rotations_from_homographies(H0t, K)
    w2c = transform_w2c(w2c, upright_normalization(w2c, None))
    reason = (f"{failure}; one homography explains {100 * motion.homography_inliers:.0f}% of the background "
              "tracks between frames: the camera turns without moving")
    stats["focal_estimated_px"] = f_est
    return Solution("rotation-fallback", reason, w2c, K, np.zeros(len(H0t), bool), stats=stats, focal_source=source)


def _warn(ctx: StageContext, sol: Solution, cfg: SfmConfig) -> None:
    focal_note = {"fov guess": f"the focal length is a guess ({cfg.fov:g} degree field of view; pass --focal PX "
                               "if you know it)",
                  "rotation": "the focal length is estimated from the rotation",
                  "--focal": "the focal length is --focal", "colmap": ""}[sol.focal_source]
    if sol.mode == "static-fallback" and not (cfg.static_camera or cfg.method == "none"):
        ctx.progress.warn(f"sfm: using one fixed camera because {sol.reason}; {focal_note}. If the camera is "
                          "static, --static-camera skips this check")
    elif sol.mode == "rotation-fallback":
        ctx.progress.warn(f"sfm: rotation-only cameras because {sol.reason}; no translation and no 3D points; "
                          f"{focal_note}. Use --static-camera to treat the camera as fixed instead")
    if sol.mode != "colmap":
        return
    subset = np.asarray(sol.stats.get("sfm_frames", np.arange(len(sol.registered))))
    missing = subset[~sol.registered[subset]]
    if len(missing):
        ctx.progress.warn(f"sfm: {len(missing)} of {len(subset)} frames not registered by COLMAP "
                          f"(frames {_ranges(missing)}); their poses are interpolated")
    if len(subset) < len(sol.registered):
        ctx.log(f"sfm: COLMAP ran on {len(subset)} of {len(sol.registered)} frames (--sfm-max-frames "
                f"{cfg.max_frames}); the others are interpolated")


def _ranges(idx: np.ndarray) -> str:
    """[0,1,2,5,7,8] -> '0-2, 5, 7-8'."""
    parts, start = [], None
    for i, v in enumerate(idx):
        if start is None:
            start = v
        if i + 1 == len(idx) or idx[i + 1] != v + 1:
            parts.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ", ".join(parts)


# ---- writing --------------------------------------------------------------------------------------------------

def _cameras(K: np.ndarray, w2c: np.ndarray, W: int, H: int) -> Cameras:
    T = len(w2c)
    return Cameras(torch.tensor(np.broadcast_to(K, (T, 3, 3)).copy(), dtype=torch.float32),
                   torch.tensor(w2c, dtype=torch.float32), W, H)


def _write_sparse(folder: Path, sol_points: np.ndarray, colors: np.ndarray, obs: dict) -> None:
    np.save(folder / SFM.points, np.asarray(sol_points, np.float32).reshape(-1, 3))
    np.save(folder / SFM.points_rgb, np.asarray(colors, np.uint8).reshape(-1, 3))
    np.savez(folder / SFM.sparse_depth,
             frame=obs.get("frame", np.zeros(0, np.int32)), xy=obs.get("xy", np.zeros((0, 2), np.float32)),
             depth=obs.get("depth", np.zeros(0, np.float32)), point=obs.get("point", np.zeros(0, np.int32)))


def _bounds(points: np.ndarray, obs: dict, w2c: np.ndarray) -> dict:
    """Scene centre and radius from the points (5-95th percentile box; radius: 95th percentile distance), near
    and far from the observed depths. Without points: an assumed unit sphere one unit in front of camera 0."""
    if len(points) >= 8:
        lo, hi = np.percentile(points, 5, axis=0), np.percentile(points, 95, axis=0)
        center = (lo + hi) / 2
        radius = float(np.percentile(np.linalg.norm(points - center, axis=1), 95))
        d = obs["depth"]
        return {"center": center.tolist(), "radius": radius, "near": float(np.percentile(d, 1)),
                "far": float(np.percentile(d, 99)), "assumed": False}
    c2w0 = np.linalg.inv(w2c[0])
    return {"center": (c2w0[:3, 3] + c2w0[:3, 2]).tolist(), "radius": 1.0, "near": None, "far": None,
            "assumed": True}


def _write_background(ctx: StageContext, sol: Solution, names: list[str], timestamps: np.ndarray, W: int,
                      H: int) -> list[str]:
    out = ctx.out
    T = len(names)
    cams = _cameras(sol.K, sol.w2c, W, H)
    (out / SFM.cameras).write_text(json.dumps(cams.to_dict()))
    np.save(out / SFM.registered, sol.registered)
    _write_sparse(out, sol.points, sol.colors, sol.obs)
    sparse = out / SFM.colmap
    sparse.mkdir(parents=True, exist_ok=True)
    if sol.model is not None:
        rec = sol.model.reconstruction
    else:  # fallback cameras in COLMAP's format too (no points), so every mode exports the same files
        rec = fixed_camera_reconstruction(names, sol.K, sol.w2c, W, H)
    rec.write(sparse)
    times = np.arange(T) / max(T - 1, 1)  # normalised time of each frame
    write_transforms_json(out / SFM.transforms, cams, [f"{SFM.images}/{n}" for n in names], times.tolist(),
                          extra={"monodyn_sfm_mode": sol.mode})
    interpolated = np.flatnonzero(~sol.registered).tolist() if sol.mode == "colmap" else []
    bounds = _bounds(sol.points, sol.obs, sol.w2c)
    info = {"mode": sol.mode, "reason": sol.reason, "num_frames": T,
            "registered": int(sol.registered.sum()), "registered_fraction": float(sol.registered.mean()),
            "interpolated_frames": interpolated, "num_points": int(len(sol.points)),
            "focal_px": float(sol.K[0, 0]), "focal_source": sol.focal_source, "width": W, "height": H,
            "bounds": bounds,
            "world": "z up (mean image-up of the cameras), camera 0 at the origin looking along +y; "
                     + ("1 unit = median depth of the sparse points" if sol.mode == "colmap" else "scale unknown"),
            "time": "transforms.json time = frame index / (T - 1)", **sol.stats}
    (out / SFM.info).write_text(json.dumps(info, indent=2, default=_json_default))
    ctx.extra["mode"] = sol.mode
    ctx.extra["interpolated_frames"] = interpolated
    if sol.reason:
        ctx.extra["reason"] = sol.reason
    if sol.mode == "colmap":
        ctx.extra["summary"] = (f"colmap: {int(sol.registered.sum())}/{T} frames registered, {len(sol.points)} "
                                f"points, {sol.stats['mean_reprojection_error_px']:.2f} px, f={sol.K[0, 0]:.0f}")
    else:
        ctx.extra["summary"] = f"{sol.mode}: f={sol.K[0, 0]:.0f} ({sol.focal_source})"
    files = [f"{SFM.images}/{n}" for n in names] + [SFM.cameras, SFM.registered, SFM.points, SFM.points_rgb,
                                                    SFM.sparse_depth, SFM.transforms, SFM.info]
    return files + [str(p.relative_to(out)) for p in sorted(sparse.iterdir())]


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


SPEC = StageSpec(NAME, VERSION, ("decode", "segment"), run)
SPEC_NO_SEGMENT = StageSpec(NAME, VERSION, ("decode",), run)
