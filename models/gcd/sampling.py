"""GCD's sampler: Euler steps on the EDM (Karras) noise schedule with per-frame classifier-free guidance.

sgm's EulerEDMSampler with EDMDiscretization (σ ∈ [0.002, 700], ρ = 7) and LinearPredictionGuider (scale
linspace(1.0, 1.5) over the frames): the unconditional pass zeroes both image conditionings (the per-frame
tokens and the concatenated latents) and keeps the camera and micro-conditioning.
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from models.gcd.model import GCDModel


def edm_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0
               ) -> Float[Tensor, " S1"]:
    """`steps` noise levels from sigma_max down to sigma_min (Karras et al. 2022), then a final 0."""
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


@torch.no_grad()
def sample(model: GCDModel, frames: Float[Tensor, "B T 3 H W"], deltas_deg: Float[Tensor, "B T 3"], *,
           steps: int = 25, cfg_min: float = 1.0, cfg_max: float = 1.5, seed: int = 0,
           warp: Float[Tensor, "B T 5 h w"] | None = None, callback: Callable[[int], None] | None = None
           ) -> Float[Tensor, "B T 3 H W"]:
    """Output frames (pixels in [-1, 1]) for input frames in [-1, 1] and per-frame camera deltas
    (Δazimuth deg, Δelevation deg, Δr relative). Deterministic for a seed (noise from a CPU generator).
    A model with `cfg.warp` also takes `warp`: `GCDModel.warp_latents` of the frames warped into the targets
    (the unconditional pass zeroes it with the other image conditioning)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    device, dtype = frames.device, frames.dtype
    B, T = frames.shape[:2]
    noise = torch.randn(frames.shape, generator=gen).to(device, dtype)
    tokens = model.image_tokens(frames)
    concat = model.encode_latents(frames + model.cfg.cond_aug * noise)
    if model.cfg.warp != (warp is not None):
        raise ValueError("a model with cfg.warp samples with `warp`, others without it")
    micro = model.micro_conditioning(deltas_deg)
    cfg = model.cfg
    sigmas = edm_sigmas(steps, cfg.sigma_min, cfg.sigma_max, cfg.rho).to(device)
    x = torch.randn(concat.shape, generator=gen).to(device, dtype) * (1 + sigmas[0] ** 2).sqrt()
    if warp is not None:
        concat = torch.cat([concat, warp.to(concat)], dim=2)
    scale = torch.linspace(cfg_min, cfg_max, T, device=device, dtype=dtype).view(1, T, 1, 1, 1)
    guided = not (cfg_min == 1.0 and cfg_max == 1.0)
    if guided:  # one batched pass: unconditional first, conditional second
        tokens2 = torch.cat([torch.zeros_like(tokens), tokens])
        concat2 = torch.cat([torch.zeros_like(concat), concat])
        micro2, deltas2 = torch.cat([micro, micro]), torch.cat([deltas_deg, deltas_deg])
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        if guided:
            d_u, d_c = model.denoise(torch.cat([x, x]), s.expand(2 * B), tokens2, concat2, micro2, deltas2).chunk(2)
            denoised = d_u + scale * (d_c - d_u)
        else:
            denoised = model.denoise(x, s.expand(B), tokens, concat, micro, deltas_deg)
        x = x + (x - denoised) / s * (s_next - s)
        if callback is not None:
            callback(i)
    return model.decode_latents(x / model.latent_scale).clamp(-1, 1)
