"""Segment stage: per-frame instance ids of the moving objects, stable over time.

Backends (models/segmentation):
- motion (default, no weights): objects whose optical flow disagrees with the camera's own motion, found and
  tracked from the flow stage's output; nothing to prompt. A static scene gives an all-zero map and a warning.
- sam: segment-anything (official checkpoints vit_b / vit_l / vit_h) prompted with --point / --box, each
  object's mask carried frame to frame along the flow and re-prompted (Track-Anything style). Needs torchvision.
- sam2: SAM 2 video model (transformers' Sam2VideoModel, e.g. facebook/sam2.1-hiera-tiny) with the same prompts.

Prompts are given in pixels of the original video (before --max-side resizing), x right, y down, on a frame
index (default 0); one object per prompt, ids in prompt order.

Outputs: instances.npy (T,H,W) uint8 (0 = background, 1..K objects), objects.json (backend, per-object frames,
coverage and area, camera models used by motion), preview.mp4 (objects tinted on the frames) and preview.png
(a grid of four frames).
"""

from __future__ import annotations

import json

import cv2
import numpy as np

from models.errors import InputError
from models.segmentation import Prompt, object_stats, overlay
from monodyn_cli.pipeline import StageSpec
from monodyn_cli.stages.configs import SegmentConfig
from monodyn_cli.stages.outputs import DECODE, FLOW, SEGMENT
from monodyn_cli.workspace import StageContext

NAME, VERSION = "segment", 2  # 2: further static planes in the motion backend




def prompts_for(cfg: SegmentConfig, meta: dict) -> list[Prompt]:
    """The config's prompts in decoded-frame pixels (points first, then boxes, each in the given order).

    Bounds are checked in the original video's pixels so that the error names what the user typed."""
    native_w, native_h = meta.get("native_width", meta["width"]), meta.get("native_height", meta["height"])
    sx, sy = meta["width"] / native_w, meta["height"] / native_h
    prompts = []
    for x, y, f in cfg.points:
        if not (0 <= x <= native_w and 0 <= y <= native_h):
            raise InputError(f"--point {x:g},{y:g}@{f} is outside the {native_w}x{native_h} video")
        prompts.append(Prompt(int(f), point=(x * sx, y * sy)))
    for x0, y0, x1, y1, f in cfg.boxes:
        if not (0 <= min(x0, x1) and max(x0, x1) <= native_w and 0 <= min(y0, y1) and max(y0, y1) <= native_h):
            raise InputError(f"--box {x0:g},{y0:g},{x1:g},{y1:g}@{f} is outside the {native_w}x{native_h} video")
        prompts.append(Prompt(int(f), box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy)))
    for p, text in zip(prompts, [f"--point {x:g},{y:g}@{f}" for x, y, f in cfg.points]
                       + [f"--box {a:g},{b:g},{c:g},{d:g}@{f}" for a, b, c, d, f in cfg.boxes]):
        if not 0 <= p.frame < meta["num_frames"]:
            raise InputError(f"{text}: frame {p.frame} is outside the decoded video (frames 0..{meta['num_frames'] - 1})")
        if p.box is not None and (p.box[2] <= p.box[0] or p.box[3] <= p.box[1]):
            raise InputError(f"{text}: a box needs X0 < X1 and Y0 < Y1")
    return prompts


# ---- running ---------------------------------------------------------------------------------------------

def _load_flow(ctx: StageContext) -> dict[str, np.ndarray]:
    flow = ctx.inputs["flow"]
    return {name: np.load(flow.file(getattr(FLOW, name)), mmap_mode="r")
            for name in ("flow_fw", "flow_bw", "valid_fw", "valid_bw")}


def _preview_grid(frames: np.ndarray) -> np.ndarray:
    """Four evenly spaced frames in a 2x2 grid (a row of two for a two-frame video)."""
    picks = np.linspace(0, len(frames) - 1, min(4, len(frames))).round().astype(int)
    tiles = [frames[i] for i in picks]
    if len(tiles) == 4:
        return np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
    return np.concatenate(tiles, 1)


def run(ctx: StageContext, cfg: SegmentConfig) -> list[str]:
    decode = ctx.inputs["decode"]
    frames = np.load(decode.file(DECODE.frames), mmap_mode="r")
    meta = json.loads(decode.file(DECODE.meta).read_text())
    t_count = len(frames)
    prompts = prompts_for(cfg, meta)
    info: dict = {"backend": cfg.backend}
    if cfg.backend == "motion":
        from models.segmentation.motion import MotionConfig, segment_motion

        if prompts:
            ctx.progress.warn("--point/--box prompts are used by --segment sam/sam2 only; motion ignores them")
        flow = _load_flow(ctx)
        mcfg = MotionConfig(min_area=cfg.min_area, max_objects=cfg.max_objects, refine=cfg.refine)
        with ctx.progress.task("segment (motion)", 2 * t_count - 1) as advance:
            res = segment_motion(flow["flow_fw"], flow["flow_bw"], flow["valid_fw"], flow["valid_bw"],
                                 np.asarray(frames), mcfg, advance)
        ids = res.ids
        info["camera_models"] = {k: res.models.count(k) for k in sorted(set(res.models))}
    elif cfg.backend in ("sam", "sam2"):
        if not prompts:
            raise InputError(f"--segment {cfg.backend} needs at least one prompt: --point X,Y[@FRAME] or "
                             "--box X0,Y0,X1,Y1[@FRAME] (pixels of the original video)")
        info["prompts"] = [p.describe() for p in prompts]
        from models.devices import resolve_device  # torch: only for the sam backends

        if cfg.backend == "sam":
            from models.segmentation.sam_tam import sam_predictor, track_prompts

            predict = sam_predictor(np.asarray(frames), cfg.sam_checkpoint, cfg.sam_model, resolve_device(cfg.device))
            flow = _load_flow(ctx)
            with ctx.progress.task("segment (sam)", t_count) as advance:
                ids = track_prompts(t_count, np.asarray(flow["flow_fw"], np.float32),
                                    np.asarray(flow["flow_bw"], np.float32), prompts, predict, advance=advance)
        else:
            from models.segmentation.sam2_video import load_sam2_video, segment_video_sam2

            model = load_sam2_video(cfg.sam2_checkpoint, resolve_device(cfg.device))
            first = min(p.frame for p in prompts)  # frames from there to the end, then back to 0
            with ctx.progress.task("segment (sam2)", t_count + (first > 0)) as advance:
                ids = segment_video_sam2(model, np.asarray(frames), prompts, advance)
    else:
        raise InputError(f"--segment must be motion, sam or sam2, not {cfg.backend!r}")

    objects = object_stats(ids)
    for obj in objects:
        if cfg.backend != "motion" and obj["id"] <= len(prompts):
            obj["prompt"] = prompts[obj["id"] - 1].describe()
    coverage = float((ids > 0).mean())
    if not objects:
        ctx.progress.warn("segment: no moving object found (the scene may be static); instances.npy is all "
                          "background" if cfg.backend == "motion" else "segment: the prompts gave empty masks")
    np.save(ctx.out / SEGMENT.instances, ids)
    (ctx.out / SEGMENT.objects).write_text(json.dumps(
        {**info, "num_frames": t_count, "width": int(ids.shape[2]), "height": int(ids.shape[1]),
         "num_objects": len(objects), "foreground_fraction": round(coverage, 5), "objects": objects}, indent=2))
    from monodyn_cli.video_io import write_mp4

    tinted = overlay(np.asarray(frames), ids)
    write_mp4(ctx.out / SEGMENT.preview_video, tinted, fps=float(meta.get("fps") or 24.0))
    cv2.imwrite(str(ctx.out / SEGMENT.preview), _preview_grid(tinted)[..., ::-1])
    ctx.extra["summary"] = f"{len(objects)} object{'s' * (len(objects) != 1)} ({cfg.backend}), mean coverage {100 * coverage:.0f}%"
    ctx.log(f"segment: {ctx.extra['summary']}; " + ", ".join(
        f"id {o['id']}: frames {o['first_frame']}-{o['last_frame']}, mean area {100 * o['mean_area']:.1f}%" for o in objects))
    return [SEGMENT.instances, SEGMENT.objects, SEGMENT.preview_video, SEGMENT.preview]


SPEC = StageSpec(NAME, VERSION, ("decode", "flow"), run)
