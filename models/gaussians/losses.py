"""Loss terms of the dynamic Gaussian fit: photometric (L1 + D-SSIM), depth (metric for SfM points, affine-invariant
for dense predictions), 2D tracks through rendered 3D positions, masks, and motion smoothness."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from models.cameras import project
from models.filters import gaussian_window, separable_blur


def ssim(a: Float[Tensor, "H W C"], b: Float[Tensor, "H W C"]) -> Float[Tensor, ""]:
    """Mean SSIM (11x11 Gaussian window, sigma 1.5, valid region) of two images in [0, 1]."""
    x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    g = gaussian_window()

    def blur(z: Tensor) -> Tensor:
        return separable_blur(z, g)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean()


def photometric_loss(pred: Float[Tensor, "H W 3"], target: Float[Tensor, "H W 3"], ssim_weight: float = 0.2
                     ) -> Float[Tensor, ""]:
    """(1 - w) L1 + w (1 - SSIM), as 3DGS."""
    return (1 - ssim_weight) * (pred - target).abs().mean() + ssim_weight * (1 - ssim(pred, target))


def metric_disparity_loss(pred_depth: Float[Tensor, " M"], prior_depth: Float[Tensor, " M"], unit: float
                          ) -> Float[Tensor, ""]:
    """Mean |unit / pred - unit / prior|: disparity error in units of the scene radius (near points weigh more,
    as their depth is better known)."""
    if pred_depth.numel() == 0:
        return pred_depth.sum() * 0
    return (unit / pred_depth.clamp(min=1e-6) - unit / prior_depth).abs().mean()


def affine_invariant_loss(pred: Float[Tensor, " M"], prior: Float[Tensor, " M"]) -> Float[Tensor, ""]:
    """L1 after the least-squares scale and shift that best map `prior` onto `pred` (MiDaS-style; the prior's
    scale and shift are unknown per frame). Both in the same space (e.g. disparity)."""
    if pred.numel() < 2:
        return pred.sum() * 0
    a = torch.stack([prior, torch.ones_like(prior)], -1)
    sol = torch.linalg.lstsq(a, pred.detach()[:, None]).solution
    return (pred - (a @ sol)[:, 0]).abs().mean() / pred.detach().abs().mean().clamp(min=1e-6)


def track_loss(positions: Float[Tensor, "H W 3"], alpha: Float[Tensor, "H W"], target_xy: Float[Tensor, "H W 2"],
               valid: Bool[Tensor, "H W"], K: Float[Tensor, "3 3"], w2c: Float[Tensor, "4 4"], scale: float
               ) -> Float[Tensor, ""]:
    """Rendered 3D positions (composited, not yet divided by alpha) projected with another frame's camera must land
    on the tracked pixel: mean L1 in pixels x `scale`, over valid pixels the render covers."""
    sel = valid & (alpha.detach() > 0.5)
    if not bool(sel.any()):
        return positions.sum() * 0
    xy, _ = project(positions[sel] / alpha[sel, None], K, w2c)
    return ((xy - target_xy[sel]).abs().sum(-1) * scale).mean()


def motion_smoothness(translations: Float[Tensor, "B T 3"], rotations: Float[Tensor, "B T 4"], unit: float
                      ) -> Float[Tensor, ""]:
    """Squared second differences over time of the bases' translations (in units of `unit`) and rotations."""
    if translations.shape[1] < 3:
        return translations.sum() * 0
    acc_t = translations[:, 2:] - 2 * translations[:, 1:-1] + translations[:, :-2]
    q = F.normalize(rotations, dim=-1)
    acc_q = q[:, 2:] - 2 * q[:, 1:-1] + q[:, :-2]
    return (acc_t / unit).square().sum(-1).mean() + acc_q.square().sum(-1).mean()
