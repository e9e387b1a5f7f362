"""Where the static Gaussians leave the background empty: the measure, and the fill that lifts those pixels.

Static Gaussians lifted from a few keyframes miss what only other frames saw (a wall that enters in the last
quarter of the clip), and densification only splits what exists, so such holes stay black from every camera.
`fill_static_holes` renders the static set into every input frame and lifts the background pixels it leaves
empty, frame after frame, so that each frame's additions count for the next.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch
from jaxtyping import Bool, Float

from models.gaussians.model import GaussianSet
from models.scene import Scene
from models.splatting import rasterization

EMPTY_ALPHA = 0.5  # a pixel whose static alpha is below this renders (mostly) the background colour


@torch.no_grad()
def static_alpha(gaussians: GaussianSet, scene: Scene, t: int, factor: float = 0.5) -> Float[np.ndarray, "H W"]:
    """The static set's alpha in input frame t, rendered at `factor` of the frame size (holes worth filling are
    many pixels wide; this is 4x cheaper) and brought back to (H, W) by nearest neighbour."""
    cam = scene.cameras[t].scaled(factor)
    g = gaussians
    _, alpha, _ = rasterization(g.means, g.quats, g.scales, g.opacities, g.colors, cam.w2c.float(), cam.K.float(),
                                cam.width, cam.height)
    return cv2.resize(alpha[0, ..., 0].numpy(), (scene.width, scene.height), interpolation=cv2.INTER_NEAREST)


def seen_background(scene: Scene, t: int) -> Bool[np.ndarray, "H W"]:
    """Pixels of frame t that show the static scene: everything off the (slightly dilated) object masks."""
    if scene.instances is None:
        return np.ones((scene.height, scene.width), bool)
    moving = cv2.dilate((np.asarray(scene.instances[t]) > 0).astype(np.uint8), np.ones((5, 5), np.uint8))
    return moving == 0


def empty_background_share(gaussians: GaussianSet, scene: Scene, frames: list[int] | None = None) -> float:
    """Share of the seen background pixels (over `frames`, default all) where the static set renders empty."""
    empty = seen = 0
    for t in range(scene.num_frames) if frames is None else frames:
        bg = seen_background(scene, t)
        empty += int((bg & (static_alpha(gaussians, scene, t) < EMPTY_ALPHA)).sum())
        seen += int(bg.sum())
    return empty / max(seen, 1)


def fill_static_holes(gaussians: GaussianSet, scene: Scene,
                      lift: Callable[[int, np.ndarray], GaussianSet | None], min_pixels: int = 16) -> GaussianSet:
    """`gaussians` plus, for every input frame in turn, the Gaussians `lift(t, empty)` makes for the background
    pixels `empty` (H,W) bool that the set so far leaves empty in frame t (frames with fewer than `min_pixels`
    such pixels are skipped). `lift` returns None when it has no depth there."""
    current = gaussians
    for t in range(scene.num_frames):
        empty = seen_background(scene, t) & (static_alpha(current, scene, t) < EMPTY_ALPHA)
        if int(empty.sum()) < min_pixels:
            continue
        new = lift(t, empty)
        if new is not None and len(new):
            current = concat_sets([current, new])
    return current


def concat_sets(parts: list[GaussianSet]) -> GaussianSet:
    """One set holding every Gaussian of `parts`, in order."""
    cat = lambda name: torch.cat([getattr(p, name).detach() for p in parts])
    return GaussianSet(cat("means"), cat("log_scales"), cat("quats"), cat("opacity_logits"), cat("color_logits"))
