"""The official video prior: AnimateDiff (Guo et al. 2023) - Stable Diffusion 1.5 with a motion adapter, diffusers'
UNetMotionModel - giving score distillation on short clips rendered from one novel camera at consecutive times,
so what the image prior fills in stays put from frame to frame."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from models.errors import InputError
from models.priors.diffusion import DiffusionParts, load_parts, prompt_embeddings
from models.priors.sds import sample_timesteps, sds_loss
from models.weights import KNOWN, hub_source, offline_error

PROMPT = "a video of a scene"


def load_animatediff(base: str | None, adapter: str | None, device: torch.device) -> DiffusionParts:
    """SD 1.5's parts with the U-Net turned into a UNetMotionModel by the motion adapter (`--video-prior-checkpoint`
    or $MONODYN_ANIMATEDIFF for the adapter, $MONODYN_ANIMATEDIFF_BASE for SD 1.5, then the caches)."""
    from diffusers import MotionAdapter, UNetMotionModel

    parts = load_parts(KNOWN["animatediff-base"], base, "--video-prior-base", torch.device("cpu"))
    spec = KNOWN["animatediff"]
    source = hub_source(spec, adapter or None, "--video-prior-checkpoint")
    try:
        motion = MotionAdapter.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as e:
        if source == spec.hub_id:
            raise offline_error(spec, "--video-prior-checkpoint") from None
        raise InputError(f"{source} is not an AnimateDiff motion adapter: {str(e).splitlines()[0]}") from None
    parts.unet = UNetMotionModel.from_unet2d(parts.unet, motion).requires_grad_(False).to(device).eval()
    parts.vae.to(device)
    parts.text_encoder.to(device)
    return parts


class VideoScore:
    """SDS of a rendered clip (F,3,H,W) in [0,1] (one camera, consecutive times): `__call__(clip, generator)` ->
    loss. Resized to `size` on the long side; classifier-free guidance against the empty prompt."""

    def __init__(self, parts: DiffusionParts, size: int = 256, guidance_scale: float = 7.5,
                 t_range: tuple[float, float] = (0.02, 0.98)):
        self.parts, self.size, self.guidance_scale, self.t_range = parts, size, guidance_scale, t_range
        self.text = prompt_embeddings(parts, [PROMPT, ""])
        self.alphas = parts.scheduler.alphas_cumprod
        self.factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)

    def __call__(self, clip: Float[Tensor, "F 3 H W"], generator: torch.Generator) -> Tensor:
        n_frames, _, H, W = clip.shape
        step = 8 * self.factor
        s = self.size / max(H, W)
        size = (max(step, round(H * s / step) * step), max(step, round(W * s / step) * step))
        x = F.interpolate(clip, size=size, mode="bilinear", align_corners=False) * 2 - 1
        vae = self.parts.vae
        z = vae.encode(x.to(vae.dtype)).latent_dist.mean * vae.config.scaling_factor  # (F,4,h,w)
        z = z.permute(1, 0, 2, 3)[None]  # (1,4,F,h,w): the motion U-Net's layout
        t = sample_timesteps(1, self.parts.scheduler.config.num_train_timesteps, generator, *self.t_range,
                             device=z.device)
        noise = torch.randn(z.shape, generator=generator).to(z.device)
        with torch.no_grad():
            noisy = self.parts.scheduler.add_noise(z.detach(), noise, t)
            text = self.text.repeat_interleave(n_frames, 0)  # one prompt per frame, as AnimateDiffPipeline passes them
            eps = self.parts.unet(noisy.repeat(2, 1, 1, 1, 1), t.repeat(2), encoder_hidden_states=text).sample
            cond, uncond = eps.float().chunk(2)
            eps = uncond + self.guidance_scale * (cond - uncond)
        return sds_loss(z, eps, noise, 1 - self.alphas.to(z.device)[t])
