"""Prompted video segmentation with segment-anything, carried through the video along optical flow.

Track-Anything style: each prompt (a point or a box on one frame) is one object. SAM segments it on its
prompt frame; then, frame by frame, the object's mask is warped to the next frame along the flow and SAM
is prompted again with that warped mask's box (a little enlarged) and a positive click at its most interior
point. Going forward from the prompt frame and backward to frame 0, so an object prompted mid-video is
segmented in the whole clip. Ids are the prompts' order (prompt i -> id i + 1) and never change.

The tracking needs no SAM: `track_prompts` takes any `predict(t, box, points, labels) -> mask` callable, and
`sam_predictor` builds one from the official segment-anything package and checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
from jaxtyping import Bool, Float, UInt8

from models.errors import InputError, MonodynError
from models.segmentation import Prompt, bbox, interior_point, mask_iou, masks_to_ids, validate_prompts, warp_labels

SAM_MODELS = ("vit_b", "vit_l", "vit_h")


class Predictor(Protocol):
    def __call__(self, t: int, box: Float[np.ndarray, "4"] | None, points: Float[np.ndarray, "N 2"] | None,
                 labels: np.ndarray | None) -> Bool[np.ndarray, "H W"]:
        """Mask of the object on frame t given a box (x0, y0, x1, y1) and/or clicks (x, y) with labels
        (1 = on the object, 0 = not), in pixels."""
        ...


@dataclass
class TrackConfig:
    box_margin: float = 0.1  # enlarge the warped mask's box by this fraction of its size per side
    min_iou: float = 0.3     # a new mask overlapping the warped one less than this is a jump: keep the warped one
    min_pixels: int = 16     # a warped mask smaller than this: the object left the view (tracking stops)


def _prompt_query(p: Prompt) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    box = np.asarray(p.box, np.float32) if p.box is not None else None
    if p.point is None:
        return box, None, None
    return box, np.asarray([p.point], np.float32), np.ones(1, np.int64)


def _follow(prop: np.ndarray, t: int, predict: Predictor, cfg: TrackConfig) -> np.ndarray | None:
    """Re-segment an object on frame t from its mask warped there; None when it has left the view."""
    if prop.sum() < cfg.min_pixels:
        return None
    h, w = prop.shape
    x0, y0, x1, y1 = bbox(prop)
    mx, my = cfg.box_margin * (x1 - x0), cfg.box_margin * (y1 - y0)
    box = np.asarray([max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my)], np.float32)
    point = np.asarray([interior_point(prop)], np.float32)
    mask = np.asarray(predict(t, box, point, np.ones(1, np.int64)), bool)
    return mask if mask_iou(mask, prop) >= cfg.min_iou else prop


def track_prompts(num_frames: int, flow_fw: Float[np.ndarray, "P H W 2"], flow_bw: Float[np.ndarray, "P H W 2"],
                  prompts: list[Prompt], predict: Predictor, cfg: TrackConfig | None = None,
                  advance: Callable[[int], None] = lambda n=1: None) -> UInt8[np.ndarray, "T H W"]:
    """Instance ids (T, H, W) uint8 for the prompted objects: prompt i is id i + 1 on every frame.

    flow_fw[t] / flow_bw[t]: flow t -> t+1 / t+1 -> t (P = T - 1 pairs). Frames are visited in order
    (forward from the earliest prompt, then backward from the latest), every object on a frame before the
    next frame, so a predictor that caches one frame's image embedding computes it at most twice.
    `advance` is called once per frame visited. Where objects overlap, the smaller one wins.
    """
    cfg = cfg or TrackConfig()
    h, w = flow_fw.shape[1:3]
    validate_prompts(prompts, num_frames, h, w)
    if len(prompts) > 255:
        raise InputError(f"{len(prompts)} prompts: at most 255 objects fit the uint8 id maps")
    k = len(prompts)
    masks = np.zeros((k, num_frames, h, w), bool)
    for f in sorted({p.frame for p in prompts}):
        for i, p in enumerate(prompts):
            if p.frame == f:
                masks[i, f] = np.asarray(predict(f, *_prompt_query(p)), bool)
    starts = np.array([p.frame for p in prompts])
    alive = np.ones(k, bool)
    for t in range(int(starts.min()) + 1, num_frames):  # forward: objects prompted before t
        for i in np.nonzero(alive & (starts < t))[0]:
            m = _follow(warp_labels(masks[i, t - 1], flow_bw[t - 1]), t, predict, cfg)
            alive[i] = m is not None
            if m is not None:
                masks[i, t] = m
        advance(1)
    alive[:] = True
    for t in range(int(starts.max()) - 1, -1, -1):  # backward: objects prompted after t
        for i in np.nonzero(alive & (starts > t))[0]:
            m = _follow(warp_labels(masks[i, t + 1], flow_fw[t]), t, predict, cfg)
            alive[i] = m is not None
            if m is not None:
                masks[i, t] = m
        advance(1)
    return np.stack([masks_to_ids(masks[:, t]) for t in range(num_frames)])


def sam_predictor(frames: UInt8[np.ndarray, "T H W 3"], checkpoint: str | Path | None = None,
                  model_type: str = "vit_b", device: str = "cpu") -> Predictor:
    """A `Predictor` backed by the official segment-anything model (weights via models.weights).

    The image embedding of the last frame asked for is kept, so several objects on one frame cost one
    encoder pass. A single click is ambiguous (part or whole), so for it SAM's three candidates are
    scored and the best is taken; box prompts return one mask.
    """
    from models.weights import KNOWN, require_weights

    if model_type not in SAM_MODELS:
        raise InputError(f"unknown SAM model {model_type!r}; use one of {', '.join(SAM_MODELS)}")
    try:
        from segment_anything import SamPredictor, sam_model_registry
    except ImportError as e:
        if "torchvision" in str(e):
            raise MonodynError("segment-anything needs torchvision, which is not installed: `pip install "
                               "torchvision` (the build matching your torch), or use --segment sam2 / motion") from None
        raise MonodynError(f"segment-anything is not installed ({e}): `pip install segment-anything`, "
                           "or use --segment sam2 / motion") from None
    import torch

    path = require_weights(KNOWN[f"sam-{model_type}"], checkpoint, option="--sam-checkpoint")
    try:
        sam = sam_model_registry[model_type](checkpoint=str(path))
    except (RuntimeError, KeyError) as e:
        raise InputError(f"{path} is not a SAM {model_type} checkpoint ({str(e).splitlines()[0]})") from None
    predictor = SamPredictor(sam.to(device).eval())
    current = {"t": None}

    def predict(t, box, points, labels):
        if current["t"] != t:
            predictor.set_image(np.ascontiguousarray(frames[t]))
            current["t"] = t
        multi = box is None and points is not None and len(points) == 1
        with torch.no_grad():
            masks, scores, _ = predictor.predict(point_coords=points, point_labels=labels, box=box,
                                                 multimask_output=multi)
        return masks[int(np.argmax(scores))]

    return predict
