"""Separable Gaussian filtering of image batches: SSIM's local statistics, shared by the training loss
(models/gaussians/losses.py) and the evaluation metric (monodyn_cli/metrics.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Float[Tensor, " size"]:
    """Normalised 1D Gaussian window (float64)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def separable_blur(x: Float[Tensor, "N C H W"], window: Float[Tensor, " k"]) -> Float[Tensor, "N C h w"]:
    """Separable 'valid' convolution of every channel with the 1D window along rows, then columns."""
    C, k = x.shape[1], window.numel()
    wy = window.view(1, 1, k, 1).expand(C, 1, k, 1).to(x)
    wx = window.view(1, 1, 1, k).expand(C, 1, 1, k).to(x)
    return F.conv2d(F.conv2d(x, wy, groups=C), wx, groups=C)
