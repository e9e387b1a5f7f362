"""Soft Z-buffer rendering: the segmentation a scale combination implies, in 2D, without re-rendering.

Every object is volume-rendered ONCE, alone, at unit scale: per pixel its opacity alpha_o and z-depth D_o. Under a
scale combination s (s_0 = 1 for the background) object o's depth becomes s_o D_o while its opacity and
silhouette stay the same (scaling about the camera), so the frame is a stack of one layer per object, and the
segmentation is their alpha compositing in depth order:

    w_o = alpha_o * prod_{j != o} (1 - alpha_j * front_jo),   front_jo = sigmoid((log s_o D_o - log s_j D_j) / tau)

front_jo is the (soft) probability that object j is in front of object o; as tau -> 0 it is the exact layered
composite. For H combinations this costs H x pixels x O^2 multiply-adds instead of H volume renders.

Validity pseudo-label of a combination (the paper's p-bar): for each object j, the share of its mask pixels on
which it does not win, err_j = sum_{r in mask j} (1 - w_j(r) / sum_o w_o(r)) / |mask j|; valid <=> max_j err_j <=
tolerance over the objects j >= 1. The background's own error is left out: silhouettes do not change with scale,
so an object that spills onto background pixels covers them at every scale that keeps it in front of the
background (its error is a floor set by the reconstruction, not by the scales). Opacities are binarised for
labelling (an object is a layer where its alone opacity exceeds 1/2): only pixels where the true object is present
count (where it is missing no scale can help), and pixels where no other object is present are skipped (they are
right for every scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def soft_zbuffer(depth: Float[Tensor, "P O"], alpha: Float[Tensor, "P O"], scales: Float[Tensor, "H O"],
                 temperature: float = 0.01) -> Float[Tensor, "H P O"]:
    """Per-object weights of every pixel under every scale combination (see module doc); they sum to at most
    the pixel's total opacity. depth: unit-scale z-depth (> 0 where alpha > 0). A loop over object pairs (O is
    small), each step vectorised over combinations and pixels."""
    logz = torch.log(depth.clamp_min(1e-8))[None] + torch.log(scales)[:, None, :]  # (H, P, O)
    O = depth.shape[1]
    out = []
    for o in range(O):
        w = alpha[None, :, o].expand(logz.shape[0], -1)
        for j in range(O):
            if j != o:
                front = torch.sigmoid((logz[..., o] - logz[..., j]) / temperature)  # j in front of o
                w = w * (1.0 - alpha[None, :, j] * front)
        out.append(w)
    return torch.stack(out, -1)


def hard_zbuffer(depth: Float[Tensor, "P O"], alpha: Float[Tensor, "P O"], scales: Float[Tensor, "H O"],
                 min_alpha: float = 0.5) -> Int[Tensor, "H P"]:
    """The nearest object with opacity > min_alpha per pixel (-1 where there is none): the tau -> 0 limit
    for opaque objects."""
    z = depth[None] * scales[:, None, :]
    z = torch.where(alpha[None] > min_alpha, z, torch.full_like(z, float("inf")))
    nearest = z.argmin(-1)
    return torch.where(torch.isinf(z.amin(-1)), torch.full_like(nearest, -1), nearest)


@dataclass
class ZBufferCache:
    """Per-object unit-scale depth and opacity of the pixels that can decide validity, their mask labels, and
    the number of mask pixels of every object in the whole sampled set (the denominators)."""

    depth: Float[Tensor, "P O"]
    alpha: Float[Tensor, "P O"]
    labels: Int[Tensor, " P"]
    counts: Float[Tensor, " O"]

    @staticmethod
    def build(depth: Float[Tensor, "P O"], alpha: Float[Tensor, "P O"], labels: Int[Tensor, " P"],
              min_alpha: float = 0.5) -> "ZBufferCache":
        """Keep the pixels where the labelled object and at least one other are present (alone opacity >
        min_alpha), with opacities binarised; labels < 0 (unknown) are dropped."""
        O = depth.shape[1]
        known = labels >= 0
        counts = torch.bincount(labels[known], minlength=O).to(depth.dtype)
        lab = labels.clamp_min(0)
        own = alpha.gather(1, lab[:, None])[:, 0]
        others = alpha.scatter(1, lab[:, None], 0.0).amax(1)
        keep = known & (own > min_alpha) & (others > min_alpha)
        # layers: an object is present (opaque) where its own opacity exceeds min_alpha, absent elsewhere, so
        # faint haze never decides an occlusion
        return ZBufferCache(depth[keep], (alpha[keep] > min_alpha).to(alpha.dtype), labels[keep], counts)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def errors(self, scales: Float[Tensor, "H O"], temperature: float = 0.01, chunk: int = 64) -> Float[Tensor, "H O"]:
        """err[h, j]: share of object j's mask pixels that another object covers under combination h.

        With binarised layers the labelled object's weight is prod_{o != j} (1 - a_o front_oj) and the total
        opacity is 1, so the error of a pixel is 1 minus that product (`soft_zbuffer` restricted to the label)."""
        H, O = scales.shape
        out = scales.new_zeros(H, O)
        if len(self) == 0:
            return out
        logd = torch.log(self.depth.clamp_min(1e-8))  # (P, O)
        others = self.alpha.scatter(1, self.labels[:, None], 0.0)  # present layers except the pixel's own
        for i in range(0, H, chunk):
            logz = logd[None] + torch.log(scales[i:i + chunk])[:, None, :]  # (h, P, O)
            own = logz.gather(2, self.labels[None, :, None].expand(logz.shape[0], -1, 1))
            front = torch.sigmoid((own - logz) / temperature)  # object o in front of the pixel's own object
            wrong = 1.0 - torch.prod(1.0 - others[None] * front, dim=-1)  # (h, P)
            out[i:i + chunk] = scales.new_zeros(wrong.shape[0], O).index_add_(1, self.labels, wrong)
        return out / self.counts.clamp_min(1.0)

    def validity_labels(self, scales: Float[Tensor, "H O"], temperature: float = 0.01, tolerance: float = 0.02
                        ) -> tuple[Bool[Tensor, " H"], Float[Tensor, "H O"]]:
        """0/1 pseudo-labels (valid <=> every object's error <= tolerance; the background's is not counted, see
        the module doc) and the errors (background included)."""
        err = self.errors(scales, temperature)
        worst = err[:, 1:].amax(-1) if err.shape[1] > 1 else err.new_zeros(err.shape[0])
        return worst <= tolerance, err
