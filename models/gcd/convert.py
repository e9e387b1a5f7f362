"""The official GCD checkpoints (Lightning `*.ckpt`, sgm names) -> our diffusers/transformers modules.

Key prefixes of an official state dict (../shared/METHODS.md section 1):
    model.diffusion_model.*                      the UNet (sgm VideoUNet) incl. GCD's aux_label_emb
    conditioner.embedders.0.open_clip.model.visual.*   OpenCLIP ViT-H/14 image tower
    conditioner.embedders.5.proj.*               GCD's SphericalEmbedder (13 -> 128)
    first_stage_model.*                          the VAE (temporal decoder)
Renames follow diffusers' scripts/convert_svd_to_diffusers.py (written out here as rules, with the block
index arithmetic of SVD's layout: `layers_per_block` resnets (+ attentions) then one down/upsampler per
level). Everything is checked: a key left over or missing is an error naming it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from models.errors import InputError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CAMERA_PREFIX = "conditioner.embedders.5."
CLIP_MARKER = "open_clip.model.visual."

_RESNET = [("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
           ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut.")]


def _unet_resnet(rest: str) -> str:
    """Inside an sgm VideoResBlock -> diffusers SpatioTemporalResBlock."""
    if rest.startswith("time_mixer."):
        return rest
    if rest.startswith("time_stack."):
        part, rest = "temporal_res_block.", rest[len("time_stack."):]
    else:
        part = "spatial_res_block."
    for old, new in _RESNET:
        if rest.startswith(old):
            return part + new + rest[len(old):]
    raise KeyError(rest)


def _unet_attention(rest: str) -> str:
    """Inside an sgm SpatialVideoTransformer -> diffusers TransformerSpatioTemporalModel."""
    rest = re.sub(r"^time_stack\.", "temporal_transformer_blocks.", rest)
    rest = re.sub(r"^time_pos_embed\.0\.", "time_pos_embed.linear_1.", rest)
    return re.sub(r"^time_pos_embed\.2\.", "time_pos_embed.linear_2.", rest)


def unet_key(key: str, layers_per_block: int, attention_down: list[bool], attention_up: list[bool]) -> str:
    """One sgm UNet key (without the model.diffusion_model. prefix) -> its GCDUNet name."""
    simple = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
              "label_emb.0.0.": "add_embedding.linear_1.", "label_emb.0.2.": "add_embedding.linear_2.",
              "aux_label_emb.0.": "aux_label_emb.0.", "aux_label_emb.2.": "aux_label_emb.2.",
              "input_blocks.0.0.": "conv_in.", "out.0.": "conv_norm_out.", "out.2.": "conv_out."}
    for old, new in simple.items():
        if key.startswith(old):
            return new + key[len(old):]
    L = layers_per_block
    m = re.match(r"input_blocks\.(\d+)\.(\d+)\.(.*)", key)
    if m:
        i, j, rest = int(m[1]), int(m[2]), m[3]
        b, l = (i - 1) // (L + 1), (i - 1) % (L + 1)
        if l == L:  # the level's downsampler
            return f"down_blocks.{b}.downsamplers.0.conv." + rest.removeprefix("op.")
        if j == 0:
            return f"down_blocks.{b}.resnets.{l}." + _unet_resnet(rest)
        return f"down_blocks.{b}.attentions.{l}." + _unet_attention(rest)
    m = re.match(r"middle_block\.(\d)\.(.*)", key)
    if m:
        j, rest = int(m[1]), m[2]
        if j == 1:
            return "mid_block.attentions.0." + _unet_attention(rest)
        return f"mid_block.resnets.{j // 2}." + _unet_resnet(rest)
    m = re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)", key)
    if m:
        i, j, rest = int(m[1]), int(m[2]), m[3]
        u, l = i // (L + 1), i % (L + 1)
        if j == 0:
            return f"up_blocks.{u}.resnets.{l}." + _unet_resnet(rest)
        if j == 1 and attention_up[u]:
            return f"up_blocks.{u}.attentions.{l}." + _unet_attention(rest)
        return f"up_blocks.{u}.upsamplers.0." + rest  # conv.weight / conv.bias
    raise KeyError(key)


def _vae_resnet(rest: str) -> str:
    if rest.startswith("time_mixer."):
        return rest
    if rest.startswith("mix_factor"):
        return "time_mixer." + rest
    if rest.startswith("time_stack."):
        return "temporal_res_block." + _unet_resnet(rest[len("time_stack."):]).removeprefix("spatial_res_block.")
    return rest.replace("nin_shortcut.", "conv_shortcut.")


def _vae_attention(rest: str) -> str:
    for old, new in (("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."),
                     ("proj_out.", "to_out.0.")):
        if rest.startswith(old):
            return new + rest[len(old):]
    raise KeyError(rest)


def vae_key(key: str, num_levels: int) -> str:
    """One sgm VAE key (without first_stage_model.) -> its AutoencoderKLTemporalDecoder name."""
    simple = {"encoder.norm_out.": "encoder.conv_norm_out.", "decoder.norm_out.": "decoder.conv_norm_out.",
              "decoder.conv_out.time_mix_conv.": "decoder.time_conv_out.", "decoder.time_mix_conv.": "decoder.time_conv_out."}
    for old, new in simple.items():
        if key.startswith(old):
            return new + key[len(old):]
    if re.match(r"(encoder|decoder)\.(conv_in|conv_out)\.", key) or key.startswith("quant_conv."):
        return key
    m = re.match(r"encoder\.down\.(\d+)\.(block\.(\d+)|downsample)\.(.*)", key)
    if m:
        if m[2] == "downsample":
            return f"encoder.down_blocks.{m[1]}.downsamplers.0.{m[4]}"
        return f"encoder.down_blocks.{m[1]}.resnets.{m[3]}." + m[4].replace("nin_shortcut.", "conv_shortcut.")
    m = re.match(r"(encoder|decoder)\.mid\.(block_(\d)|attn_1)\.(.*)", key)
    if m:
        if m[2] == "attn_1":
            return f"{m[1]}.mid_block.attentions.0." + _vae_attention(m[4])
        rest = m[4] if m[1] == "encoder" else _vae_resnet(m[4])
        if m[1] == "decoder" and not rest.startswith(("temporal_res_block.", "time_mixer.")):
            rest = "spatial_res_block." + rest
        elif m[1] == "encoder":
            rest = rest.replace("nin_shortcut.", "conv_shortcut.")
        return f"{m[1]}.mid_block.resnets.{int(m[3]) - 1}." + rest
    m = re.match(r"decoder\.up\.(\d+)\.(block\.(\d+)|upsample)\.(.*)", key)
    if m:
        u = num_levels - 1 - int(m[1])
        if m[2] == "upsample":
            return f"decoder.up_blocks.{u}.upsamplers.0.{m[4]}"
        rest = _vae_resnet(m[4])
        if not rest.startswith(("temporal_res_block.", "time_mixer.")):
            rest = "spatial_res_block." + rest
        return f"decoder.up_blocks.{u}.resnets.{m[3]}." + rest
    raise KeyError(key)


def clip_state(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """OpenCLIP visual tower (keys after '...visual.') -> transformers CLIPVisionModelWithProjection."""
    out = {}
    for key, v in sd.items():
        m = re.match(r"transformer\.resblocks\.(\d+)\.(.*)", key)
        if m:
            base, rest = f"vision_model.encoder.layers.{m[1]}.", m[2]
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]  # weight / bias
                for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0), strict=True):
                    out[f"{base}self_attn.{name}.{kind}"] = part
                continue
            for old, new in (("attn.out_proj.", "self_attn.out_proj."), ("ln_1.", "layer_norm1."),
                             ("ln_2.", "layer_norm2."), ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2.")):
                if rest.startswith(old):
                    out[base + new + rest[len(old):]] = v
                    break
            else:
                raise KeyError(key)
            continue
        simple = {"conv1.weight": "vision_model.embeddings.patch_embedding.weight",
                  "class_embedding": "vision_model.embeddings.class_embedding",
                  "positional_embedding": "vision_model.embeddings.position_embedding.weight",
                  "ln_pre.weight": "vision_model.pre_layrnorm.weight", "ln_pre.bias": "vision_model.pre_layrnorm.bias",
                  "ln_post.weight": "vision_model.post_layernorm.weight",
                  "ln_post.bias": "vision_model.post_layernorm.bias"}
        if key == "proj":
            out["visual_projection.weight"] = v.t().contiguous()
        elif key in simple:
            out[simple[key]] = v
        else:
            raise KeyError(key)
    return out


def convert_state_dict(sd: dict[str, Tensor], unet_config: dict, vae_levels: int) -> dict[str, dict[str, Tensor]]:
    """An official (sgm) state dict -> {"unet": ..., "vae": ..., "image_encoder": ...} in our modules' names.
    Keys of other conditioner parts without weights, and the EMA / loss / optimizer leftovers are ignored."""
    L = unet_config.get("layers_per_block", 2)
    if not isinstance(L, int):
        raise InputError("the sgm mapping assumes one layers_per_block for every level")
    down = [t.startswith("CrossAttn") for t in unet_config["down_block_types"]]
    up = [t.startswith("CrossAttn") for t in unet_config["up_block_types"]]
    out: dict[str, dict[str, Tensor]] = {"unet": {}, "vae": {}, "image_encoder": {}}
    clip = {}
    for key, v in sd.items():
        try:
            if key.startswith(UNET_PREFIX):
                out["unet"][unet_key(key[len(UNET_PREFIX):], L, down, up)] = v
            elif key.startswith(CAMERA_PREFIX):
                out["unet"]["camera_embedder." + key[len(CAMERA_PREFIX):]] = v
            elif key.startswith(VAE_PREFIX):
                k = key[len(VAE_PREFIX):]
                if k.startswith("loss."):
                    continue
                new = vae_key(k, vae_levels)
                if new.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")) and v.ndim == 4:
                    v = v[:, :, 0, 0]
                out["vae"][new] = v
            elif CLIP_MARKER in key:
                clip[key.split(CLIP_MARKER, 1)[1]] = v
        except KeyError as e:
            raise InputError(f"unexpected key in the GCD checkpoint: {key} ({e}); is this a GCD / SVD checkpoint?") from None
    out["image_encoder"] = clip_state(clip) if clip else {}
    return out


def read_lightning_state(path: Path) -> dict[str, Tensor]:
    """The `state_dict` of a Lightning checkpoint (memory-mapped: the official files are ~20 GB)."""
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # not a torch.save file at all (text, truncated): pickle's own words would not help
        raise InputError(f"cannot read {path} as a PyTorch Lightning checkpoint (not a torch.save file, or damaged); "
                         "give an official GCD *.ckpt or a folder written by `monodyn train gcd`") from None
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not any(k.startswith(UNET_PREFIX) for k in sd):
        raise InputError(f"{path} has no GCD/SVD weights (no '{UNET_PREFIX}*' keys in its state_dict)")
    return sd


def check_state(module: torch.nn.Module, state: dict[str, Tensor], what: str, source: Path) -> None:
    """A readable error listing a few missing / unexpected / wrongly shaped keys (`module` may live on the meta
    device: only names and shapes are compared)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        raise InputError(f"{source}: the {what} weights do not match the official GCD architecture "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {bad[:3]})")
