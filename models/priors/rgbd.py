"""RGB-D image helpers shared by the priors: normalised disparity, backward warping, lifting pixels to points.

Depth enters every prior as disparity (1 / z) normalised per image between robust bounds of the pixels the fit
covers (LDM3D's convention; the percentiles follow a public reimplementation of DpDy), so a prior sees the
same range at any scene scale and its predictions map back to the fit's units with the same bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from models.cameras import pixel_grid, project, unproject

LOW, HIGH = 0.05, 0.95  # quantiles of the covered pixels' disparity that map to 0 and 1
COVERED = 0.5  # alpha above which a rendered pixel counts as covered


@dataclass
class DisparityRange:
    """Per-image bounds (N,) of the normalisation disparity -> (disparity - lo) / (hi - lo)."""

    lo: Float[Tensor, " N"]
    hi: Float[Tensor, " N"]

    @classmethod
    def of(cls, depth: Float[Tensor, "N H W"], weight: Float[Tensor, "N H W"]) -> "DisparityRange":
        """Bounds from the disparity of pixels with weight > COVERED (the whole image where none are)."""
        disp = 1.0 / depth.detach().clamp_min(1e-6)
        lo, hi = [], []
        for d, w in zip(disp, weight.detach()):
            vals = d[w > COVERED]
            vals = vals if vals.numel() >= 4 else d.reshape(-1)
            q = torch.quantile(vals.float(), torch.tensor([LOW, HIGH], device=vals.device))
            lo.append(q[0])
            hi.append(torch.maximum(q[1], q[0] * 1.05 + 1e-6))  # a flat image still gets a usable range
        return cls(torch.stack(lo), torch.stack(hi))

    def normalise(self, depth: Float[Tensor, "N H W"]) -> Float[Tensor, "N H W"]:
        """Depth (z > 0) -> normalised disparity (0 at the far bound, 1 at the near one)."""
        disp = 1.0 / depth.clamp_min(1e-6)
        return (disp - self.lo[:, None, None]) / (self.hi - self.lo)[:, None, None]

    def depth(self, normalised: Float[Tensor, "N H W"]) -> Float[Tensor, "N H W"]:
        """Inverse of `normalise`; values at or beyond the far end of the range are clamped to a finite depth."""
        disp = normalised * (self.hi - self.lo)[:, None, None] + self.lo[:, None, None]
        floor = 0.25 * self.lo[:, None, None].clamp_min(1e-6)  # at most 4x farther than the far bound
        return 1.0 / torch.maximum(disp, floor)


def backward_warp(src_rgb: Float[Tensor, "H W 3"], src_depth: Float[Tensor, "H W"], src_K: Float[Tensor, "3 3"],
                  src_w2c: Float[Tensor, "4 4"], dst_depth: Float[Tensor, "h w"], dst_K: Float[Tensor, "3 3"],
                  dst_w2c: Float[Tensor, "4 4"], rel_tol: float = 0.03
                  ) -> tuple[Float[Tensor, "h w 3"], Bool[Tensor, "h w"]]:
    """The source image seen from the destination camera: each destination pixel's 3D point (from `dst_depth`)
    projected into the source and sampled there (bilinear). `seen`: the point lands inside the source image in
    front of it and is not occluded there (its depth matches the source depth within `rel_tol`); elsewhere
    the warped rgb is 0. This is what a perfect fit of the source frame renders at the destination camera."""
    h, w = dst_depth.shape
    H, W = src_depth.shape
    pts = unproject(pixel_grid(w, h, device=dst_depth.device).reshape(-1, 2), dst_depth.reshape(-1), dst_K, dst_w2c)
    xy, z = project(pts, src_K, src_w2c)
    grid = torch.stack([xy[:, 0] / W * 2 - 1, xy[:, 1] / H * 2 - 1], -1)[None, None]  # pixel centres at +0.5
    rgb = F.grid_sample(src_rgb.permute(2, 0, 1)[None], grid, align_corners=False)[0, :, 0].T
    src_z = F.grid_sample(src_depth[None, None], grid, mode="nearest", align_corners=False)[0, 0, 0]
    inside = (z > 0) & (grid[0, 0].abs() <= 1).all(-1)
    seen = inside & ((src_z - z).abs() < rel_tol * z)
    return (rgb * seen[:, None]).reshape(h, w, 3), seen.reshape(h, w)

