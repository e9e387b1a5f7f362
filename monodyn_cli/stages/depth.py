"""Depth stage: per-frame z-depth in the SfM world units, from SfM points alone or Depth Anything aligned to them.

Backends:
- depth-anything: Depth Anything (V2 small by default) predicts relative disparity per frame; it is aligned to the
  SfM sparse depth per frame by a robust scale + shift in disparity space (models/depth.py), ignoring SfM points
  on moving objects when the segment stage ran. Writes depth.npy (dense) and disparity.npy (the raw prediction,
  for losses that only need affine-invariant depth).
- sfm: the SfM points splatted into per-frame sparse depth maps (0 = unknown).
- none: no depth; only depth_meta.json says so.

Outputs: depth.npy (T,H,W) float16 z-depth (camera-space z, not ray length) in SfM world units, 0 = unknown;
depth_meta.json (backend, per-frame scale/shift, residuals, fallback frames); preview.png (frames beside their
colour-mapped inverse depth).
"""

from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import torch

from models.devices import resolve_device
from models.errors import InputError, StageError
from monodyn_cli.outputs import colorize_depth
from monodyn_cli.pipeline import StageSpec
from monodyn_cli.stages.configs import DepthConfig
from monodyn_cli.stages.outputs import DECODE, DEPTH, SEGMENT, SFM
from monodyn_cli.workspace import StageContext, StageResult

NAME, VERSION = "depth", 1
DYNAMIC_DILATE_PX = 4  # SfM points this close to a moving object are dropped too (depth edges, mask slop)
FLOAT16_MAX = 65504.0




# ---- reading the sfm and segment stages' outputs -----------------------------------------------------------

def _first(data, names):
    for n in names:
        if n in data:
            return np.asarray(data[n])
    return None


def load_sparse_depth(path, num_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SfM points seen per frame as flat arrays: frame (N,) int, xy (N,2) pixel positions (centres at +0.5),
    z (N,) camera-space depth.

    Reads sparse_depth.npz with flat arrays (frame|frame_index|frames|obs_frame|t, xy|uv|pixels|obs_xy,
    z|depth|depths|obs_depth), with
    per-frame entries (xy_<t>/z_<t>, or <t> -> (n,3) x,y,z), or with a dense `depth` (T,H,W) map (0 = none).
    """
    try:
        data = np.load(path)
    except (OSError, ValueError) as e:
        raise StageError(f"cannot read SfM sparse depth {path}: {e}") from None
    with data:
        files = set(data.files)
        frame = _first(data, ("frame", "frame_index", "frames", "obs_frame", "t"))
        xy = _first(data, ("xy", "uv", "pixels", "obs_xy"))
        z = _first(data, ("z", "depth", "depths", "obs_depth"))
        if frame is not None and xy is not None and z is not None and z.ndim == 1:
            return frame.astype(np.int64).reshape(-1), xy.astype(np.float32).reshape(-1, 2), z.astype(np.float32)
        if z is not None and z.ndim == 3:  # dense sparse-depth maps
            t, r, c = np.nonzero(z > 0)
            xy = np.stack([c + 0.5, r + 0.5], -1).astype(np.float32)
            return t.astype(np.int64), xy, z[t, r, c].astype(np.float32)
        frames, xys, zs = [], [], []
        for t in range(num_frames):
            for xy_name, z_name in ((f"xy_{t}", f"z_{t}"), (f"xy_{t:04d}", f"z_{t:04d}"),
                                    (f"xy_{t:05d}", f"z_{t:05d}")):
                if xy_name in files and z_name in files:
                    xys.append(np.asarray(data[xy_name], np.float32).reshape(-1, 2))
                    zs.append(np.asarray(data[z_name], np.float32).reshape(-1))
                    frames.append(np.full(len(zs[-1]), t, np.int64))
                    break
            else:
                for name in (str(t), f"{t:04d}", f"{t:05d}", f"frame_{t:04d}"):
                    if name in files:
                        a = np.asarray(data[name], np.float32).reshape(-1, 3)
                        xys.append(a[:, :2])
                        zs.append(a[:, 2])
                        frames.append(np.full(len(a), t, np.int64))
                        break
        if not frames:
            raise StageError(f"{path} has no sparse depth this stage understands (arrays: {sorted(files)}); "
                             "redo the sfm stage with `--force sfm`")
        return np.concatenate(frames), np.concatenate(xys), np.concatenate(zs)


def _sfm_image_size(sfm: StageResult) -> tuple[int, int] | None:
    path = sfm.file(SFM.cameras)
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    return int(d["width"]), int(d["height"])


def load_dynamic_mask(segment: StageResult | None, shape: tuple[int, int, int]) -> np.ndarray | None:
    """(T,H,W) bool, True on moving objects, from the segment stage's instances.npy (0 = background; None
    when the stage did not run or wrote no masks)."""
    if segment is None:
        return None
    path = segment.file(SEGMENT.instances)
    if not path.exists():
        return None
    m = np.load(path, mmap_mode="r")
    if tuple(m.shape) != tuple(shape):
        raise StageError(f"segment mask {path} has shape {tuple(m.shape)}, frames are {shape}; "
                         "redo the segment stage with `--force segment`")
    return np.asarray(m) != 0


# ---- running -----------------------------------------------------------------------------------------------

def load_model(cfg: DepthConfig):
    from models import depth as mdepth
    from models.weights import KNOWN, hub_source, offline_error

    spec = KNOWN["depth-anything"]
    source = hub_source(spec, cfg.checkpoint, "--depth-checkpoint")
    try:
        return mdepth.load_depth_anything(source, resolve_device(cfg.device))
    except OSError:
        raise offline_error(spec, "--depth-checkpoint") from None
    except (ValueError, KeyError) as e:
        raise InputError(f"{source} is not a Depth Anything checkpoint ({str(e).splitlines()[0]})") from None


def dense_depth(prediction: torch.Tensor, kind: str, frame: np.ndarray, xy: np.ndarray, z: np.ndarray,
                dynamic: np.ndarray | None, cfg: DepthConfig, warn=lambda msg: None):
    """Align a (T,H,W) prediction to the sparse points; returns (depth (T,H,W) float32, Alignment)."""
    from models.depth import TooFewPointsError, align_depth, normalize_median

    static = None
    if dynamic is not None and cfg.mask_dynamic:
        k = 2 * DYNAMIC_DILATE_PX + 1
        kernel = np.ones((k, k), np.uint8)
        grown = np.stack([cv2.dilate(m.astype(np.uint8), kernel) for m in dynamic]) > 0
        static = torch.from_numpy(~grown)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            depth, alignment = align_depth(prediction, torch.from_numpy(frame), torch.from_numpy(xy),
                                           torch.from_numpy(z), space=kind, static=static,
                                           min_points=cfg.min_points, max_depth_factor=cfg.max_depth_factor)
        except TooFewPointsError as e:
            warn(f"depth: {e}; each frame's depth is scaled to median 1 world unit instead (shift unknown, "
                 "far depth distorted)")
            depth, alignment = normalize_median(prediction, kind, cfg.max_depth_factor)
    for w in caught:
        warn(str(w.message))
    return depth.numpy(), alignment


def run(ctx: StageContext, cfg: DepthConfig) -> list[str]:
    from models.depth import predict, prediction_kind, sparse_depth_map

    if cfg.backend not in {"none", "sfm", "depth-anything"}:
        raise InputError(f"--depth must be none, sfm or depth-anything, not {cfg.backend!r}")
    meta: dict = {"backend": cfg.backend, "units": "SfM world units, camera-space z; 0 = unknown"}
    if cfg.backend == "none":
        (ctx.out / DEPTH.meta).write_text(json.dumps(meta, indent=2))
        ctx.extra["summary"] = "no depth (backend none)"
        return [DEPTH.meta]

    frames = np.load(ctx.inputs["decode"].file(DECODE.frames), mmap_mode="r")
    T, H, W = frames.shape[:3]
    sfm = ctx.inputs["sfm"]
    frame, xy, z = load_sparse_depth(sfm.file(SFM.sparse_depth), T)
    size = _sfm_image_size(sfm)
    if size is not None and size != (W, H):  # SfM ran at another resolution: bring pixels to frame size
        xy = xy * np.array([W / size[0], H / size[1]], np.float32)
    outputs = [DEPTH.depth, DEPTH.meta, DEPTH.preview]

    if cfg.backend == "sfm":
        depth = sparse_depth_map(torch.from_numpy(frame), torch.from_numpy(xy), torch.from_numpy(z), T, H, W).numpy()
        meta["points"] = np.bincount(frame[(frame >= 0) & (frame < T)], minlength=T).tolist()
        summary = (f"sfm: {int((depth > 0).sum())} sparse depths, median {np.median(z):.3g}" if z.size
                   else "sfm: no points")
    else:
        model = load_model(cfg)
        kind = prediction_kind(model)
        with ctx.progress.task("depth (Depth Anything)", T) as advance:
            prediction = predict(model, frames, cfg.input_size, cfg.batch_size, advance)
        dynamic = load_dynamic_mask(ctx.inputs.get("segment"), (T, H, W))
        depth, alignment = dense_depth(prediction, kind, frame, xy, z, dynamic, cfg, ctx.progress.warn)
        np.save(ctx.out / "disparity.npy" if kind == "disparity" else ctx.out / "prediction.npy",
                prediction.numpy().astype(np.float16))
        outputs.insert(1, "disparity.npy" if kind == "disparity" else "prediction.npy")
        meta.update(prediction=kind, dynamic_mask=dynamic is not None and cfg.mask_dynamic,
                    model=getattr(model.config, "_name_or_path", None), **alignment.to_dict())
        valid = float((depth > 0).mean())
        aligned = bool(alignment.points.sum() > 0)
        meta["aligned"] = aligned
        if aligned:
            rel = float(np.nanmedian(alignment.rel_error.numpy()))
            summary = (f"depth-anything aligned to SfM: median rel. error {rel:.1%}, {valid:.0%} of pixels known, "
                       f"{int(alignment.fallback.sum())} fallback frames")
        else:
            summary = f"depth-anything, not aligned (too few SfM points): median depth 1 unit, {valid:.0%} known"
    if (depth > FLOAT16_MAX).any():
        ctx.progress.warn(f"depth: {int((depth > FLOAT16_MAX).sum())} values beyond float16 range marked unknown")
        depth = np.where(depth > FLOAT16_MAX, 0.0, depth)
    np.save(ctx.out / DEPTH.depth, depth.astype(np.float16))
    (ctx.out / DEPTH.meta).write_text(json.dumps(meta, indent=2))
    cv2.imwrite(str(ctx.out / DEPTH.preview), preview(frames, depth, sparse=cfg.backend == "sfm")[..., ::-1])
    ctx.extra["summary"] = summary
    return outputs


def preview(frames: np.ndarray, depth: np.ndarray, sparse: bool = False, rows: int = 4) -> np.ndarray:
    """A few frames (left) beside their colour-mapped depth (right), one shared colour scale, RGB uint8."""
    picks = np.linspace(0, len(frames) - 1, min(rows, len(frames))).round().astype(int)
    colours = colorize_depth(np.asarray(depth[picks], np.float32))
    out = []
    for i, c in zip(picks, colours):
        if sparse:  # points are single pixels: grow them so the preview shows them
            known = (c.sum(-1) > 0).astype(np.uint8)
            grown = cv2.dilate(c, np.ones((3, 3), np.uint8))
            c = np.where(cv2.dilate(known, np.ones((3, 3), np.uint8))[..., None] > 0, grown, 0).astype(np.uint8)
        out.append(np.concatenate([np.asarray(frames[i]), c], axis=1))
    return np.concatenate(out, axis=0)


SPEC = StageSpec(NAME, VERSION, ("decode", "sfm"), run)
# With the segment stage's moving-object masks (SfM points on moving objects are ignored when aligning).
SPEC_WITH_SEGMENT = StageSpec(NAME, VERSION, ("decode", "segment", "sfm"), run)
