"""Regularisers on render outputs that a training loop adds to its photometric loss.

    out = render_rays(...)
    loss = mse(out.rgb, gt) \
        + 1e-3 * distortion_loss(out.samples).mean() \
        + 1e-3 * opacity_entropy_loss(out.alpha) \
        + 1e-3 * sparsity_loss(out.weights_dynamic)       # dynamic field explains only what moves
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from models.rendering.volume import PackedSamples, accumulate, segment_exclusive_cumsum


def distortion_loss(samples: PackedSamples, weights: Float[Tensor, "M"] | None = None, scale: float = 1.0
                    ) -> Float[Tensor, "N"]:
    """mip-NeRF 360 distortion loss per ray, O(M) on packed samples sorted by distance within each ray:
        sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (t1_i - t0_i)
    with m = interval midpoints; distances are world units divided by `scale` (pass e.g. far - near to
    make it scale-free). weights default to samples.weights (set by render_rays)."""
    w = samples.weights if weights is None else weights
    ri, n = samples.ray_indices, samples.n_rays
    t0, t1 = samples.t_starts / scale, samples.t_ends / scale
    m = 0.5 * (t0 + t1)
    w_before = segment_exclusive_cumsum(w, ri, n).to(w.dtype)
    wm_before = segment_exclusive_cumsum(w * m, ri, n).to(w.dtype)
    pairwise = 2.0 * w * (m * w_before - wm_before)
    own = w.square() * (t1 - t0) / 3.0
    return accumulate(pairwise + own, ri, n)


def distortion_loss_reference(weights: Float[Tensor, "N K"], t_starts: Float[Tensor, "N K"],
                              t_ends: Float[Tensor, "N K"]) -> Float[Tensor, "N"]:
    """O(K^2) version on padded samples (pad with weight 0), for tests."""
    m = 0.5 * (t_starts + t_ends)
    pair = (weights[:, :, None] * weights[:, None, :] * (m[:, :, None] - m[:, None, :]).abs()).sum((1, 2))
    return pair + (weights.square() * (t_ends - t_starts)).sum(1) / 3.0


def opacity_entropy_loss(alpha: Float[Tensor, "*B"], eps: float = 1e-6) -> Float[Tensor, ""]:
    """Mean binary entropy of accumulated opacity: pushes rays to fully opaque or fully empty."""
    a = alpha.clamp(eps, 1.0 - eps)
    return -(a * torch.log(a) + (1.0 - a) * torch.log(1.0 - a)).mean()


def sparsity_loss(values: Float[Tensor, "*B"]) -> Float[Tensor, ""]:
    """Mean absolute value, e.g. of out.weights_dynamic (prefer static explanations) or of sample
    densities."""
    return values.abs().mean()


def share_entropy_loss(part_weights: Float[Tensor, "*B 2"], eps: float = 1e-6) -> Float[Tensor, ""]:
    """Binary entropy of the dynamic share of each ray's opacity (weights_dynamic / alpha): pushes each
    pixel to be explained by one field, not a mix (D^2NeRF-style separation)."""
    share = part_weights[..., 1] / part_weights.sum(-1).clamp_min(eps)
    return opacity_entropy_loss(share, eps)
