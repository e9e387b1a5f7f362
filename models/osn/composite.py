"""Scaled composite rendering on the Gaussian core: every object's Gaussians placed in the world at its scale,
concatenated, rasterised once.

Object o's Gaussians live in its own frame (`models.osn.objects`). At normalised time t and scale s its
object-to-world map is a similarity M = F^-1 (rotation R, scale s, translation b): a Gaussian's mean goes to
M x, its size is multiplied by s and its orientation turned by R (`place`). Scaling about the camera this way
leaves every Gaussian's projection in an input view unchanged and multiplies its depth by s (the scale ambiguity
OSN resolves by occlusions).

All placed objects are concatenated into ONE rasterisation (`render_composite`): the colour channels carry each
Gaussian's rgb and a one-hot of its object, so the same alpha compositing gives the image, the expected depth and
each object's share of every pixel (`object_weights`, for the segmentation loss). One object alone gives its
opacity and depth (the soft Z-buffer's layers, `models.osn.zbuffer`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from models.gaussians.model import GaussianSet, quat_multiply, rotmat_to_quat
from models.splatting import rasterization


@dataclass
class Placed:
    """Gaussians in the world: means (N,3), quats (N,4) wxyz, scales (N,3), opacities (N,), colors (N,3)."""

    means: Float[Tensor, "N 3"]
    quats: Float[Tensor, "N 4"]
    scales: Float[Tensor, "N 3"]
    opacities: Float[Tensor, " N"]
    colors: Float[Tensor, "N 3"]

    def __len__(self) -> int:
        return int(self.means.shape[0])


def place(g: GaussianSet, object_to_world: Float[Tensor, "4 4"]) -> Placed:
    """Object-frame Gaussians mapped by a similarity (scale s = cube root of |det|): means M x, sizes x s, rotations
    R q. Differentiable in the Gaussians' parameters."""
    M = object_to_world.to(g.means)
    A, b = M[:3, :3], M[:3, 3]
    s = torch.linalg.det(A).abs() ** (1.0 / 3.0)
    q = rotmat_to_quat((A / s)[None])[0]
    return Placed(g.means @ A.T + b, quat_multiply(q[None], g.quats), g.scales * s, g.opacities, g.colors)


@dataclass
class CompositeOutput:
    """rgb (H,W,3) over the background colour; depth (H,W) expected z-depth; alpha (H,W); object_weights (H,W,O)
    each object's share of the pixel (sums to alpha); meta: the rasteriser's (means2d for densification) and
    `counts`, the Gaussians of each object in the concatenation."""

    rgb: Float[Tensor, "H W 3"]
    depth: Float[Tensor, "H W"]
    alpha: Float[Tensor, "H W"]
    object_weights: Float[Tensor, "H W O"]
    meta: dict


def render_composite(placed: list[Placed], viewmat: Float[Tensor, "4 4"], K: Float[Tensor, "3 3"], width: int,
                     height: int, background: Float[Tensor, "3"] | None = None, backend: str = "auto"
                     ) -> CompositeOutput:
    """Rasterise the concatenation of `placed` (one entry per object) in one camera (see module doc)."""
    O = len(placed)
    dev = viewmat.device
    counts = [len(p) for p in placed]
    ids = torch.repeat_interleave(torch.arange(O, device=dev), torch.tensor(counts, device=dev))
    onehot = torch.nn.functional.one_hot(ids, O).to(viewmat.dtype)
    cat = lambda key: torch.cat([getattr(p, key) for p in placed])  # noqa: E731
    colors = torch.cat([cat("colors"), onehot], -1)
    bg = torch.zeros(1, 3 + O, device=dev, dtype=viewmat.dtype)
    if background is not None:
        bg[0, :3] = background.to(bg)
    out, alpha, meta = rasterization(cat("means"), cat("quats"), cat("scales"), cat("opacities"), colors,
                                     viewmat[None], K[None], width, height, render_mode="RGB+ED", backgrounds=bg,
                                     backend=backend)
    out, alpha = out[0], alpha[0, ..., 0]
    meta["counts"] = counts
    return CompositeOutput(out[..., :3], out[..., -1], alpha, out[..., 3:3 + O], meta)
