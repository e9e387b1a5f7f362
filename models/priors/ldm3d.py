"""The official RGB-D prior: LDM3D (Stan et al. 2023; diffusers' StableDiffusionLDM3DPipeline parts), customised on
the clip by a LoRA fine-tune (DreamBooth-style: the frames and their depths under one rare-token prompt), then
distilled into the fit by score distillation on novel-view renders.

RGB-D convention: the 4-channel model (Intel/ldm3d-4c) encodes rgb and one depth channel, each in [-1, 1]; its
depth is relative inverse depth, which is our normalised disparity (rgbd.py). The 6-channel Intel/ldm3d packs a
16-bit depth into two 8-bit channels, which no gradient can pass: it is refused with the name of the 4-channel one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from models.errors import InputError
from models.files import atomic_write
from models.priors.diffusion import DiffusionParts, load_parts, prompt_embeddings
from models.priors.sds import sample_timesteps, sds_loss, x0_from_eps
from models.weights import KNOWN

PROMPT = "a photo of sks scene"  # DreamBooth: a rare token bound to this clip by the fine-tune
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_FILE, LORA_CONFIG = "lora.safetensors", "lora.json"


def load_ldm3d(explicit: str | None, device: torch.device) -> DiffusionParts:
    """LDM3D's parts (`--prior-checkpoint`, $MONODYN_LDM3D, the monodyn cache, the Hugging Face cache)."""
    parts = load_parts(KNOWN["ldm3d"], explicit, "--prior-checkpoint", device)
    channels = parts.vae.config.in_channels
    if channels != 4:
        raise InputError(f"this LDM3D autoencoder takes {channels} channels (Intel/ldm3d packs depth into two 8-bit "
                         "channels, which no gradient passes): use the 4-channel Intel/ldm3d-4c")
    return parts


def encode_rgbd(parts: DiffusionParts, rgb: Float[Tensor, "B 3 H W"], disparity: Float[Tensor, "B 1 H W"]
                ) -> Float[Tensor, "B 4 h w"]:
    """Latents (scaled by the VAE's scaling factor) of rgb in [0, 1] and normalised disparity (0 far, 1 near)."""
    x = torch.cat([rgb * 2 - 1, disparity.clamp(0, 1) * 2 - 1], 1)
    return parts.vae.encode(x.to(parts.vae.dtype)).latent_dist.mean * parts.vae.config.scaling_factor


def decode_rgbd(parts: DiffusionParts, latents: Float[Tensor, "B 4 h w"]
                ) -> tuple[Float[Tensor, "B 3 H W"], Float[Tensor, "B 1 H W"]]:
    x = parts.vae.decode(latents / parts.vae.config.scaling_factor).sample.float()
    return (x[:, :3] * 0.5 + 0.5).clamp(0, 1), x[:, 3:4] * 0.5 + 0.5


@dataclass
class LoraOptions:
    rank: int = 4
    steps: int = 200
    lr: float = 1e-4
    size: int = 256  # long side of the frames it is fine-tuned on (divisible by 8 x the VAE's downsampling)
    seed: int = 0


def add_lora(unet, rank: int) -> None:
    """LoRA adapters (peft) on the U-Net's attention projections; only they train."""
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS))


def finetune_lora(parts: DiffusionParts, frames: Float[Tensor, "T 3 H W"], disparity: Float[Tensor, "T 1 H W"],
                  opts: LoraOptions, out: Path, progress=None) -> list[float]:
    """DreamBooth with LoRA: the usual noise-prediction loss on the clip's RGB-D frames under `PROMPT`; writes
    `lora.safetensors` + `lora.json` into `out` and returns the loss per step. `progress(n)` advances a bar."""
    from peft.utils import get_peft_model_state_dict

    unet, sched = parts.unet, parts.scheduler
    device = next(unet.parameters()).device
    add_lora(unet, opts.rank)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr)
    gen = torch.Generator().manual_seed(opts.seed)
    text = prompt_embeddings(parts, [PROMPT])
    with torch.no_grad():
        latents = torch.cat([encode_rgbd(parts, frames[i:i + 4].to(device), disparity[i:i + 4].to(device))
                             for i in range(0, len(frames), 4)])
    losses = []
    unet.train()
    for _ in range(opts.steps):
        i = torch.randint(0, len(latents), (1,), generator=gen)
        z = latents[i]
        noise = torch.randn(z.shape, generator=gen).to(device)
        t = sample_timesteps(1, sched.config.num_train_timesteps, gen, 0.0, 1.0, device)
        pred = unet(sched.add_noise(z, noise, t), t, encoder_hidden_states=text).sample
        loss = F.mse_loss(pred.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(1)
    unet.eval().requires_grad_(False)
    tensors = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(unet).items()}
    atomic_write(out / LORA_FILE, lambda p: save_file(tensors, str(p)))
    meta = {"rank": opts.rank, "steps": opts.steps, "lr": opts.lr, "prompt": PROMPT, "targets": LORA_TARGETS,
            "final_loss": sum(losses[-10:]) / max(len(losses[-10:]), 1)}
    atomic_write(out / LORA_CONFIG, lambda p: p.write_text(json.dumps(meta, indent=2)))
    return losses


def load_lora(parts: DiffusionParts, folder: Path) -> None:
    """Put the LoRA written by `finetune_lora` into the (fresh) U-Net."""
    from peft.utils import set_peft_model_state_dict

    try:
        meta = json.loads((Path(folder) / LORA_CONFIG).read_text())
        tensors = load_file(str(Path(folder) / LORA_FILE))
    except (OSError, ValueError) as e:
        raise InputError(f"{folder} holds no LoRA of the RGB-D prior ({e}); refit with --force") from None
    add_lora(parts.unet, meta["rank"])
    set_peft_model_state_dict(parts.unet, tensors)
    parts.unet.requires_grad_(False)


class LDM3DScore:
    """SDS from LDM3D on RGB-D renders: `__call__(rgb, alpha, disparity, reference, generator)` -> (loss, x0 rgb,
    x0 disparity).

    rgb (B,3,H,W) in [0,1] and normalised disparity (B,1,H,W) are resized to `size` on the long side (a multiple
    of 8 x the VAE's downsampling); classifier-free guidance with `PROMPT` against the empty prompt. The x0
    estimate (decoded, at the input size) is what the hook lifts into empty pixels."""

    def __init__(self, parts: DiffusionParts, size: int = 512, guidance_scale: float = 7.5,
                 t_range: tuple[float, float] = (0.02, 0.98)):
        self.parts, self.size, self.guidance_scale, self.t_range = parts, size, guidance_scale, t_range
        self.text = prompt_embeddings(parts, [PROMPT, ""])
        self.alphas = parts.scheduler.alphas_cumprod
        self.factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)

    def model_size(self, h: int, w: int) -> tuple[int, int]:
        step = 8 * self.factor
        s = self.size / max(h, w)
        return max(step, round(h * s / step) * step), max(step, round(w * s / step) * step)

    def __call__(self, rgb: Float[Tensor, "B 3 H W"], alpha: Float[Tensor, "B 1 H W"],
                 disparity: Float[Tensor, "B 1 H W"], reference: Float[Tensor, "B 3 H W"], generator: torch.Generator,
                 fill: bool = False) -> tuple[Tensor, Float[Tensor, "B 3 H W"], Float[Tensor, "B 1 H W"]]:
        """(loss, x0 rgb, x0 disparity). alpha, reference and fill are the shipped prior's conditions: LDM3D, a
        text-to-RGB-D model customised on the clip, has no use for them."""
        B, _, H, W = rgb.shape
        size = self.model_size(H, W)
        x = F.interpolate(torch.cat([rgb, disparity], 1), size=size, mode="bilinear", align_corners=False)
        z = encode_rgbd(self.parts, x[:, :3], x[:, 3:])
        n = self.parts.scheduler.config.num_train_timesteps
        t = sample_timesteps(B, n, generator, *self.t_range, device=z.device)
        noise = torch.randn(z.shape, generator=generator).to(z.device)
        with torch.no_grad():
            noisy = self.parts.scheduler.add_noise(z.detach(), noise, t)
            text = self.text.repeat_interleave(B, 0)  # [cond x B, uncond x B]
            eps = self.parts.unet(noisy.repeat(2, 1, 1, 1), t.repeat(2), encoder_hidden_states=text).sample.float()
            cond, uncond = eps.chunk(2)
            eps = uncond + self.guidance_scale * (cond - uncond)
            alpha_bar = self.alphas.to(z.device)[t]
            x0_rgb, x0_disp = decode_rgbd(self.parts, x0_from_eps(noisy, eps, alpha_bar))
        loss = sds_loss(z, eps, noise, 1 - alpha_bar)
        back = lambda a: F.interpolate(a, size=(H, W), mode="bilinear", align_corners=False)
        return loss, back(x0_rgb), back(x0_disp)
