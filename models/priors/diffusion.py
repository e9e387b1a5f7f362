"""Loading the parts of a Stable-Diffusion-layout model (LDM3D, or AnimateDiff's SD 1.5 base) from a local folder or
the Hugging Face cache, frozen, and the prompt embeddings they are conditioned on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from models.errors import InputError
from models.weights import WeightSpec, hub_source, offline_error


@dataclass
class DiffusionParts:
    vae: object          # diffusers AutoencoderKL
    unet: object         # diffusers UNet2DConditionModel (or UNetMotionModel)
    text_encoder: object  # transformers CLIPTextModel
    tokenizer: object    # transformers CLIPTokenizer
    scheduler: object    # diffusers DDPMScheduler (its training noise schedule)


def load_parts(spec: WeightSpec, explicit: str | None, option: str, device: torch.device) -> DiffusionParts:
    """The vae / unet / text_encoder / tokenizer / scheduler subfolders of `spec`'s model (explicit path, its
    environment variable, the monodyn cache, the Hugging Face cache), frozen and on `device`."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    source = hub_source(spec, explicit or None, option)
    try:
        kw = {"local_files_only": True}
        parts = DiffusionParts(AutoencoderKL.from_pretrained(source, subfolder="vae", **kw),
                               UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kw),
                               CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw),
                               CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw),
                               DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kw))
    except (OSError, ValueError) as e:
        if source == spec.hub_id:
            raise offline_error(spec, option) from None
        raise InputError(f"{source} is not a complete {spec.name} folder (vae/, unet/, text_encoder/, tokenizer/, "
                         f"scheduler/): {str(e).splitlines()[0]}") from None
    for m in (parts.vae, parts.unet, parts.text_encoder):
        m.requires_grad_(False)
        m.to(device).eval()
    return parts


@torch.no_grad()
def prompt_embeddings(parts: DiffusionParts, prompts: list[str]) -> Float[Tensor, "P L D"]:
    """CLIP text embeddings of `prompts`, padded to the tokenizer's length."""
    tok = parts.tokenizer(prompts, padding="max_length", max_length=parts.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt")
    device = next(parts.text_encoder.parameters()).device
    return parts.text_encoder(tok.input_ids.to(device))[0]
