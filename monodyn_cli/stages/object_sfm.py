"""Per-object SfM stage (optional, `monodyn preprocess --per-object-sfm`): COLMAP on each segmented object's own
(dilated) pixels gives the camera relative to the object per frame (camera-from-object, w2o), its sparse points
and their depth in the object's units.

OSN poses every object from its flow tracks (models/gaussians/motion_init.py) and uses these poses instead where
COLMAP succeeds. It is a stage of its own, after sfm: turning it on runs only it; the sfm, depth and fit caches
keep their keys (only an OSN fit, which reads it, changes). It runs with the sfm stage's COLMAP options (read from
that stage's manifest) and its frames (sfm/images).

Outputs: objects.json (per object: ok, reason, hint, statistics, bounds, normalisation) and
objects/<id>/{cameras.json, registered.npy, sparse_depth.npz, points3d.npy, points_rgb.npy} for the objects it
posed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time

import numpy as np

from models.errors import InputError
from models.sfm.colmap import ColmapOptions, write_images, write_masks
from monodyn_cli.pipeline import StageSpec
from monodyn_cli.stages.configs import ObjectSfmConfig, SfmConfig
from monodyn_cli.stages.outputs import DECODE, OBJECT_SFM, SFM
from monodyn_cli.stages.sfm import (
    _bounds,
    _cameras,
    _colmap,
    _dilate,
    _json_default,
    _load_instances,
    _subset,
    _write_sparse,
    posed_clip,
)
from monodyn_cli.workspace import StageContext

NAME, VERSION = "object_sfm", 1


def run(ctx: StageContext, cfg: ObjectSfmConfig) -> list[str]:
    decode, sfm = ctx.inputs["decode"], ctx.inputs["sfm"]
    frames = np.load(decode.file(DECODE.frames))
    timestamps = np.load(decode.file(DECODE.timestamps))
    T, H, W = frames.shape[:3]
    instances = _load_instances(ctx, (T, H, W))
    if instances is None:
        raise InputError("--per-object-sfm needs the segment stage's instance masks; run `monodyn preprocess` "
                         "with segmentation")
    known = {f.name for f in dataclasses.fields(SfmConfig)}
    sfm_cfg = SfmConfig(**{k: v for k, v in sfm.manifest.get("config", {}).items() if k in known})
    info = json.loads(sfm.file(SFM.info).read_text())
    # the background's focal length when SfM measured it (COLMAP, a turning camera, --focal); else COLMAP's own
    focal = float(info["focal_px"]) if info.get("focal_source") in ("colmap", "rotation", "--focal") else None
    image_dir = sfm.path / SFM.images
    if not image_dir.is_dir():  # an sfm result without its frames: write them here
        names = write_images(frames, ctx.out / ".work" / "images")
        image_dir = ctx.out / ".work" / "images"
    else:
        names = sorted(p.name for p in image_dir.iterdir())
    work = ctx.out / ".work"
    log_path = ctx.out / OBJECT_SFM.log
    log_path.touch()
    n_objects = int((np.unique(instances) > 0).sum())
    with ctx.progress.task("object_sfm", 3 * max(n_objects, 1)) as advance:
        outputs = _per_object(ctx, sfm_cfg, instances, names, timestamps, focal, image_dir, work, log_path, advance)
    shutil.rmtree(work, ignore_errors=True)
    return outputs + [OBJECT_SFM.log]


# Fewer triangulated points than this: a degenerate model (a handful of points fits almost any poses). COLMAP's
# mapper thresholds are kept at their defaults for objects: relaxed ones (15 inliers, 2 degrees) registered small
# synthetic objects, but with depth-reversed (Necker-flipped) poses, and flipped a large object that the defaults
# got right; a clear failure is better than wrong poses.
MIN_OBJECT_POINTS = 20


def _per_object(ctx, cfg, instances, names, timestamps, focal, image_dir, work, log_path, advance
                ) -> list[str]:
    """SfM on each object's (dilated) pixels alone: the camera relative to the object, per frame (w2o)."""
    T, H, W = instances.shape
    min_pixels = max(64, int(0.002 * H * W))
    summary, outputs = {}, []
    for k in [int(v) for v in np.unique(instances) if v > 0]:
        mask = _dilate(instances == k, cfg.mask_dilate)
        visible = np.flatnonzero(mask.reshape(T, -1).sum(1) >= min_pixels)
        entry = {"ok": False, "visible_frames": int(len(visible)), "focal_fixed": focal is not None}
        summary[str(k)] = entry
        if len(visible) < 3:
            entry["reason"] = f"visible (>= {min_pixels} px) in only {len(visible)} frames; SfM needs at least 3"
            entry["hint"] = ("it appears too briefly for SfM; OSN poses it from its flow tracks instead, or leave it out of the "
                             "segmentation (motion: a larger --min-object-area; sam/sam2: no prompt on it)")
            advance(3)
            continue
        visible = visible[_subset(len(visible), cfg.max_frames)]
        vnames = [names[i] for i in visible]
        write_masks(mask[visible], work / f"masks_obj{k}", vnames)
        opts = ColmapOptions(camera_model=cfg.camera_model, focal=focal, max_features=cfg.max_features,
                             overlap=cfg.overlap, num_threads=cfg.threads, seed=cfg.seed)
        with open(log_path, "a") as f:
            f.write(f"\n==== per-object SfM: object {k} ({len(visible)} frames) ====\n")
        start = time.perf_counter()
        model, stats = _colmap(image_dir, vnames, work / f"colmap_obj{k}", opts, work / f"masks_obj{k}",
                               log_path, advance)
        entry["colmap"] = stats
        entry["seconds"] = round(time.perf_counter() - start, 2)
        reg = 0 if model is None else int(model.registered.sum())
        n_points = 0 if model is None else len(model.points)
        if reg < max(3, 0.5 * len(visible)) or n_points < MIN_OBJECT_POINTS:
            entry["reason"] = (f"COLMAP registered {reg} of {len(visible)} frames with {n_points} points on the "
                               f"object's pixels ({stats.get('features_per_image', 0):.0f} features per frame)")
            entry["hint"] = ("the object may be too small (it needs ~100 SIFT features per frame), textureless, "
                             "non-rigid, or turn too little relative to the camera; try a larger --max-side, more "
                             "frames (--sfm-max-frames), or, if it is a spurious region, a larger --min-object-area")
            ctx.progress.warn(f"object_sfm: per-object SfM failed for object {k}: {entry['reason']}; {entry['hint']}")
            continue
        center = np.median(model.points, axis=0) if len(model.points) else None
        sim, registered, w2o, obs = posed_clip(model, visible, T, timestamps, origin=center)
        folder = ctx.out / OBJECT_SFM.object_cameras.format_id(k).rsplit("/", 1)[0]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cameras.json").write_text(json.dumps(_cameras(model.K, w2o, W, H).to_dict()))
        np.save(folder / "registered.npy", registered)
        _write_sparse(folder, model.points, model.colors, obs)
        entry.update({"ok": True, "registered": int(registered.sum()), "num_points": int(len(model.points)),
                      "mean_reprojection_error_px": round(model.mean_reprojection_error, 4),
                      "focal_px": float(model.K[0, 0]), "bounds": _bounds(model.points, obs, w2o),
                      "normalisation": {"scale": sim.scale, "R": sim.R.tolist(), "t": sim.t.tolist()}})
        outputs += [o.format_id(k) for o in (OBJECT_SFM.object_cameras, OBJECT_SFM.object_registered, OBJECT_SFM.object_points,
                                              OBJECT_SFM.object_points_rgb, OBJECT_SFM.object_sparse_depth)]
    (ctx.out / OBJECT_SFM.objects).write_text(json.dumps(
        {"objects": summary, "convention": "objects/<id>/cameras.json: w2c = camera-from-object (w2o) per frame; "
                                           "frames where the object was not registered hold interpolated poses "
                                           "(registered.npy)"}, indent=2, default=_json_default))
    ok = sum(e["ok"] for e in summary.values())
    ctx.extra["objects"] = {k: {"ok": e["ok"], **({"reason": e["reason"]} if "reason" in e else {})}
                            for k, e in summary.items()}
    ctx.extra["summary"] = ctx.extra.get("summary", "") + f"; objects {ok}/{len(summary)} ok"
    return outputs + ["objects.json"]


SPEC = StageSpec(NAME, VERSION, ("decode", "segment", "sfm"), run)
