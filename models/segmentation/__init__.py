"""Per-frame instance segmentation of a video: id maps (T,H,W) uint8, 0 = background, 1..K objects with ids
that stay the same across frames.

Backends (one module each):
    motion.py      no weights: objects whose optical flow disagrees with the camera-induced flow
    sam_tam.py     segment-anything prompted per frame, masks carried along the flow (Track-Anything style)
    sam2_video.py  SAM 2 promptable video segmentation (transformers' Sam2VideoModel)

This file holds what they share: prompts and their validation, warping id maps along flow, turning binary
masks into one id map, statistics and the coloured overlay used for previews.

Flow convention (models/flow_ops.py): flow_fw[t] maps pixels of frame t to frame t+1, flow_bw[t] maps
pixels of frame t+1 to frame t; (..., H, W, 2) with [..., 0] = dx, [..., 1] = dy in pixels. Time is a frame
index everywhere in this package.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from jaxtyping import Bool, Float, Int, UInt8

from models.errors import InputError


@dataclass(frozen=True)
class Prompt:
    """One object to segment, given on one frame: a positive point (x, y) or a box (x0, y0, x1, y1).

    Coordinates are pixels of the frames handed to the segmenter (x right, y down, pixel centres at +0.5).
    """

    frame: int
    point: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None

    def describe(self) -> str:
        if self.box is not None:
            return "box {:g},{:g},{:g},{:g}@{}".format(*self.box, self.frame)
        return "point {:g},{:g}@{}".format(*self.point, self.frame)


def validate_prompts(prompts: list[Prompt], num_frames: int, height: int, width: int) -> None:
    """Raise an InputError naming the first prompt that is off the image or off the video."""
    for p in prompts:
        if (p.point is None) == (p.box is None):
            raise InputError(f"prompt on frame {p.frame} needs exactly one of a point or a box")
        if not 0 <= p.frame < num_frames:
            raise InputError(f"{p.describe()}: frame {p.frame} is outside the video (frames 0..{num_frames - 1})")
        xs = (p.point[0],) if p.point is not None else (p.box[0], p.box[2])
        ys = (p.point[1],) if p.point is not None else (p.box[1], p.box[3])
        if min(xs) < 0 or max(xs) > width or min(ys) < 0 or max(ys) > height:
            raise InputError(f"{p.describe()} is outside the {width}x{height} image")
        if p.box is not None and (p.box[2] <= p.box[0] or p.box[3] <= p.box[1]):
            raise InputError(f"{p.describe()}: a box needs x0 < x1 and y0 < y1")


def warp_labels(labels: Int[np.ndarray, "H W"] | Bool[np.ndarray, "H W"],
                flow: Float[np.ndarray, "H W 2"]) -> np.ndarray:
    """Pull a label map of frame b back to frame a along flow a -> b (nearest neighbour, 0 outside).

    To carry frame t's ids to frame t+1 pass flow_bw[t]; to carry frame t+1's ids to frame t pass flow_fw[t].
    """
    h, w = labels.shape
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    # float32 holds any id below 2**24 exactly, and cv2.remap takes no int32 / bool maps
    out = cv2.remap(labels.astype(np.float32), xs + flow[..., 0].astype(np.float32), ys + flow[..., 1].astype(np.float32),
                    cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.astype(labels.dtype)


def warp_scalar(values: Float[np.ndarray, "H W"], flow: Float[np.ndarray, "H W 2"]) -> Float[np.ndarray, "H W"]:
    """Bilinear pull of a float map of frame b back to frame a along flow a -> b (0 outside the image)."""
    h, w = values.shape
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(values.astype(np.float32), xs + flow[..., 0].astype(np.float32),
                     ys + flow[..., 1].astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                     borderValue=0)


def masks_to_ids(masks: Bool[np.ndarray, "K H W"], scores: Float[np.ndarray, "K H W"] | None = None
                 ) -> UInt8[np.ndarray, "H W"]:
    """One id map from K binary masks (id k+1 for mask k). Where masks overlap, the higher score wins;
    without scores the smaller mask wins (a small object in front of a large one stays visible)."""
    k = masks.shape[0]
    if k == 0:
        return np.zeros(masks.shape[1:], np.uint8)
    if scores is None:
        areas = masks.reshape(k, -1).sum(1).astype(np.float32)
        scores = np.broadcast_to((-areas)[:, None, None], masks.shape)
    ranked = np.where(masks, scores, -np.inf)
    best = ranked.argmax(0)
    return np.where(masks.any(0), best + 1, 0).astype(np.uint8)


def bbox(mask: Bool[np.ndarray, "H W"]) -> tuple[float, float, float, float] | None:
    """Tight box (x0, y0, x1, y1) in pixel-edge coordinates, or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def interior_point(mask: Bool[np.ndarray, "H W"]) -> tuple[float, float] | None:
    """The pixel centre deepest inside the mask (farthest from its boundary), or None when empty.

    A good positive click for a promptable segmenter: unlike the centroid it is inside the object even
    when the object is a ring or an L.
    """
    if not mask.any():
        return None
    dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return x + 0.5, y + 0.5


def mask_iou(a: Bool[np.ndarray, "... H W"], b: Bool[np.ndarray, "... H W"]) -> np.ndarray:
    inter = np.logical_and(a, b).sum((-2, -1))
    union = np.logical_or(a, b).sum((-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def object_stats(ids: UInt8[np.ndarray, "T H W"]) -> list[dict]:
    """Per object: id, frames it appears in (first, last, count), mean area fraction where present."""
    t, h, w = ids.shape
    counts = np.stack([np.bincount(f.ravel(), minlength=256) for f in ids])  # (T, 256) pixels per id
    objects = []
    for k in np.nonzero(counts[:, 1:].sum(0))[0] + 1:
        present = np.nonzero(counts[:, k])[0]
        area = counts[present, k] / float(h * w)
        objects.append({"id": int(k), "first_frame": int(present[0]), "last_frame": int(present[-1]),
                        "num_frames": int(len(present)), "coverage": round(len(present) / t, 4),
                        "mean_area": round(float(area.mean()), 5), "max_area": round(float(area.max()), 5)})
    return objects


def palette(n: int) -> UInt8[np.ndarray, "N 3"]:
    """n well-separated RGB colours (golden-angle hues), the same for the same id in every preview."""
    hues = (np.arange(n) * 137.508) % 360.0
    hsv = np.stack([hues / 2.0, np.full(n, 220.0), np.full(n, 255.0)], -1).astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def overlay(frames: UInt8[np.ndarray, "T H W 3"], ids: UInt8[np.ndarray, "T H W"], alpha: float = 0.5
            ) -> UInt8[np.ndarray, "T H W 3"]:
    """Frames with each object tinted in its colour and outlined; background untouched."""
    colours = np.concatenate([np.zeros((1, 3), np.uint8), palette(255)])
    tint = colours[ids].astype(np.float32)
    fg = (ids > 0)[..., None]
    out = np.where(fg, (1 - alpha) * frames.astype(np.float32) + alpha * tint, frames.astype(np.float32))
    # outline: pixels whose id differs from a 4-neighbour's, drawn in full colour
    edge = np.zeros(ids.shape, bool)
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[:, :-1] |= ids[:, 1:] != ids[:, :-1]
    edge[:, :, 1:] |= ids[:, :, 1:] != ids[:, :, :-1]
    edge[:, :, :-1] |= ids[:, :, 1:] != ids[:, :, :-1]
    edge &= ids > 0
    out = np.where(edge[..., None], tint, out)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
