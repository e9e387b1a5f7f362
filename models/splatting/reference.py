"""Dense PyTorch twin of the tile rasterizer: every Gaussian against every pixel, autograd for gradients.

Memory is C·H·W·N, so it is for tests on small images only. It applies the fast paths' rules exactly:
the tile rectangle of `binning.tile_rects`, σ < 0 and α < 1/255 skipped, α clamped to 0.99, and a pixel
stops (without the Gaussian that would take T to ≤ 1e-4) as soon as transmittance runs out.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4


def rasterize_dense(means2d: Float[Tensor, "C N 2"], conics: Float[Tensor, "C N 3"], colors: Float[Tensor, "C N D"],
                    opacities: Float[Tensor, "C N"], order: Int[Tensor, "C N"], rects: Int[Tensor, "C N 4"],
                    width: int, height: int, tile_size: int,
                    backgrounds: Float[Tensor, "C D"] | None = None
                    ) -> tuple[Float[Tensor, "C H W D"], Float[Tensor, "C H W 1"]]:
    """Front-to-back alpha compositing of the Gaussians in `order` (per camera) at every pixel centre."""
    device, dtype = means2d.device, means2d.dtype
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    px = (xs.reshape(-1, 1) + 0.5).to(dtype)
    py = (ys.reshape(-1, 1) + 0.5).to(dtype)
    ptx, pty = xs.reshape(-1, 1) // tile_size, ys.reshape(-1, 1) // tile_size
    images, alphas = [], []
    for cam in range(means2d.shape[0]):
        o = order[cam]
        m, con, col, op, r = means2d[cam, o], conics[cam, o], colors[cam, o], opacities[cam, o], rects[cam, o]
        dx, dy = m[:, 0] - px, m[:, 1] - py  # [P, N]
        sigma = 0.5 * (con[:, 0] * dx * dx + con[:, 2] * dy * dy) + con[:, 1] * dx * dy
        alpha = torch.clamp(op * torch.exp(-sigma), max=ALPHA_MAX)
        in_tile = (ptx >= r[:, 0]) & (ptx < r[:, 2]) & (pty >= r[:, 1]) & (pty < r[:, 3])
        keep = in_tile & (sigma >= 0) & (alpha >= ALPHA_MIN)
        alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
        one_minus = 1 - alpha
        T_after = torch.cumprod(one_minus, dim=1)
        T_before = torch.cat([torch.ones_like(T_after[:, :1]), T_after[:, :-1]], dim=1)
        stop = keep & (T_after <= T_MIN)
        included = torch.cumsum(stop.int(), dim=1) == 0
        weights = torch.where(included, alpha * T_before, torch.zeros_like(alpha))
        T_final = torch.where(included, one_minus, torch.ones_like(one_minus)).prod(dim=1, keepdim=True)
        img = weights @ col
        if backgrounds is not None:
            img = img + T_final * backgrounds[cam]
        images.append(img.reshape(height, width, -1))
        alphas.append((1 - T_final).reshape(height, width, 1))
    return torch.stack(images), torch.stack(alphas)
