"""Score distillation sampling (DreamFusion, Poole et al. 2022) on diffusers components.

For an image x rendered differentiably and encoded to latents z, noise it to z_t = sqrt(a_t) z + sqrt(1 - a_t) eps
at a random timestep t and let the frozen diffusion model predict eps_hat(z_t; y, t). The SDS gradient
w(t) (eps_hat - eps) is applied to z without differentiating through the U-Net; `sds_loss` is the usual
surrogate whose gradient with respect to z is exactly that (averaged over the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor


def sds_loss(latents: Float[Tensor, "B ..."], eps_pred: Float[Tensor, "B ..."], noise: Float[Tensor, "B ..."],
             weight: Float[Tensor, " B"]) -> Float[Tensor, ""]:
    """Scalar loss whose gradient with respect to `latents` is weight[b] * (eps_pred - noise)[b] / B."""
    shape = (-1,) + (1,) * (latents.dim() - 1)
    grad = torch.nan_to_num((weight.view(shape) * (eps_pred - noise)).detach())
    target = (latents - grad).detach()
    return 0.5 * F.mse_loss(latents, target, reduction="sum") / latents.shape[0]


def sample_timesteps(n: int, num_train_timesteps: int, generator: torch.Generator, lo: float = 0.02, hi: float = 0.98,
                     device: str | torch.device = "cpu") -> Int[Tensor, " n"]:
    """Uniform integer timesteps in [lo, hi] of the training range (DreamFusion's 0.02-0.98)."""
    a, b = int(lo * num_train_timesteps), max(int(hi * num_train_timesteps), int(lo * num_train_timesteps) + 1)
    return torch.randint(a, b, (n,), generator=generator).to(device)


def x0_from_eps(noisy: Float[Tensor, "B ..."], eps: Float[Tensor, "B ..."], alpha_bar: Float[Tensor, " B"]
                ) -> Float[Tensor, "B ..."]:
    """The clean latents implied by a noise prediction: (z_t - sqrt(1 - a) eps) / sqrt(a)."""
    shape = (-1,) + (1,) * (noisy.dim() - 1)
    a = alpha_bar.view(shape)
    return (noisy - (1 - a).sqrt() * eps) / a.sqrt()
