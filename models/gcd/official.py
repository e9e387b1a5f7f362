"""The official GCD checkpoints, converted once into our folder format (`monodyn weights convert gcd`).

An official file is a ~20 GB Lightning `*.ckpt` (sgm names, optimizer state included). Reading and renaming it
on every render costs minutes, so it is converted once: the UNet and the CLIP image tower to float16 (SVD
ships its UNet in fp16; CLIP runs in fp16 everywhere), the VAE kept in float32 (VAE encoders are where fp16
overflows), into `gcd.json` + `unet/`, `vae/`, `image_encoder/` that `GCDModel.load` reads (~4.6 GB).

The settings a checkpoint was trained with come from its training YAML (`configs/train_kubric_max90.yaml` in
github.com/basilevh/gcd), `data.params`: `delta_azimuth_range` / `delta_elevation_range` give the motion-bucket
normalisation and the range render accepts, `delta_radius_range` / `radius_range` the Δr scale, `move_time`
the mode (13: gradual, 0: direct). Without the YAML they are read from the file name (kubric_{gradual,direct}_
max{90,180}) and the conversion says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from models.errors import InputError

UNET_DTYPE = CLIP_DTYPE = torch.float16
VAE_DTYPE = torch.float32
# Kubric-4D training ranges of the two released families (METHODS.md section 1; the YAMLs' data.params)
FAMILIES = {"max90": ((90.0, 30.0), 3.0), "max180": ((180.0, 60.0), 3.0)}
KUBRIC_RADIUS = (12.0, 18.0)


@dataclass
class OfficialSettings:
    """What a checkpoint was trained with, as our GCDConfig needs it."""

    max_azimuth: float
    max_elevation: float
    max_radius: float  # metres
    radius_scale: float  # the camera radius the metres are relative to (the middle of the training range)
    mode: str  # "gradual" or "direct"
    cond_aug: float = 0.02
    width: int = 384
    height: int = 256
    num_frames: int = 14
    source: str = "yaml"  # "yaml" or "file name"

    def apply(self, cfg) -> None:
        """Into a GCDConfig: motion bucket 255 at the largest trained move, render range = the trained range."""
        cfg.motion_norm = (self.max_azimuth, self.max_elevation)
        cfg.max_delta = (self.max_azimuth, self.max_elevation, self.max_radius / self.radius_scale)
        cfg.radius_scale = self.radius_scale
        cfg.mode, cfg.cond_aug = self.mode, self.cond_aug
        cfg.width, cfg.height, cfg.num_frames = self.width, self.height, self.num_frames
        cfg.notes = {**cfg.notes, "settings_from": self.source}


def _half_range(values, key: str, source: Path) -> float:
    try:
        lo, hi = (float(v) for v in values)
    except (TypeError, ValueError):
        raise InputError(f"{source}: data.params.{key} must be a [low, high] pair, got {values!r}") from None
    return max(abs(lo), abs(hi))


def settings_from_yaml(path: Path) -> OfficialSettings:
    """The settings from an official training YAML (its `data.params`)."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
        params = doc["data"]["params"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        raise InputError(f"{path}: not a GCD training config (expected YAML with data.params, as "
                         "configs/train_kubric_max90.yaml of github.com/basilevh/gcd)") from None
    missing = [k for k in ("delta_azimuth_range", "delta_elevation_range", "move_time") if k not in params]
    if missing:
        raise InputError(f"{path}: data.params lacks {', '.join(missing)}; give the YAML the checkpoint was trained with")
    radius = params.get("radius_range", KUBRIC_RADIUS)
    mode = "gradual" if int(params["move_time"]) > 0 else "direct"
    return OfficialSettings(
        max_azimuth=_half_range(params["delta_azimuth_range"], "delta_azimuth_range", path),
        max_elevation=_half_range(params["delta_elevation_range"], "delta_elevation_range", path),
        max_radius=_half_range(params.get("delta_radius_range", (-3.0, 3.0)), "delta_radius_range", path),
        radius_scale=0.5 * sum(float(r) for r in radius), mode=mode, cond_aug=float(params.get("cond_aug", 0.02)),
        width=int(params.get("frame_width", 384)), height=int(params.get("frame_height", 256)),
        num_frames=int(params.get("model_frames", 14)), source="yaml")


def settings_from_name(name: str) -> OfficialSettings:
    """The settings of a released checkpoint from its name, e.g. kubric_gradual_max90.ckpt."""
    family = re.search(r"max(90|180)(?!\d)", name)
    mode = re.search(r"(gradual|direct)", name)
    if family is None or mode is None:
        raise InputError(f"cannot tell the training settings of {name} from its name (expected e.g. "
                         "kubric_gradual_max90.ckpt): pass the training YAML with --config")
    (az, el), dr = FAMILIES["max" + family[1]]
    return OfficialSettings(max_azimuth=az, max_elevation=el, max_radius=dr, radius_scale=sum(KUBRIC_RADIUS) / 2,
                            mode=mode[1], source="file name")


def _cast(state: dict[str, Tensor], dtype: torch.dtype, advance: Callable[[int], None]) -> dict[str, Tensor]:
    """Contiguous copies in `dtype` (reading each from the memory-mapped checkpoint once)."""
    out = {}
    for k, v in state.items():
        out[k] = v.to(dtype).contiguous()
        advance(1)
    return out


@dataclass
class Conversion:
    """An official checkpoint read (memory-mapped), renamed and checked; `write` puts it on disk."""

    source: Path
    settings: OfficialSettings
    configs: dict
    model: torch.nn.Module  # the GCDModel on the meta device: configs and expected names, no weights
    parts: dict[str, dict[str, Tensor]]

    @property
    def tensors(self) -> int:
        return sum(len(p) for p in self.parts.values())

    def write(self, out: Path, advance: Callable[[int], None] = lambda n: None) -> None:
        """gcd.json + unet/ vae/ image_encoder/ into the existing folder `out`; advance(1) per tensor written."""
        import json

        from safetensors.torch import save_file

        from models.gcd.model import CONFIG_FILE

        out = Path(out)
        files = {"unet": ("diffusion_pytorch_model.safetensors", UNET_DTYPE),
                 "vae": ("diffusion_pytorch_model.safetensors", VAE_DTYPE),
                 "image_encoder": ("model.safetensors", CLIP_DTYPE)}
        for name, (filename, dtype) in files.items():
            module = getattr(self.model, name)
            (out / name).mkdir(parents=True, exist_ok=True)
            if name == "image_encoder":
                module.config.save_pretrained(out / name)
            else:
                module.save_config(out / name)
            save_file(_cast(self.parts[name], dtype, advance), str(out / name / filename), metadata={"format": "pt"})
        cfg = self.configs["gcd"]
        cfg.notes = {**cfg.notes, "converted_from": self.source.name}
        (out / CONFIG_FILE).write_text(json.dumps(cfg.to_json(), indent=1))  # last: marks a complete folder


def read_official(ckpt: Path, config: Path | None = None) -> Conversion:
    """Read an official checkpoint (memory-mapped), take its settings from `config` (the training YAML) or its
    name, rename its weights and check them against the architecture (built on the meta device: no memory)."""
    from models.gcd import model as gcd_model
    from models.gcd.convert import check_state, convert_state_dict, read_lightning_state

    ckpt = Path(ckpt)
    settings = settings_from_yaml(config) if config is not None else settings_from_name(ckpt.name)
    configs = gcd_model.official_configs()
    settings.apply(configs["gcd"])
    with torch.device("meta"):
        model = gcd_model.GCDModel.from_configs(configs)
    sd = read_lightning_state(ckpt)
    # the built UNet's full config: official_configs() leaves SVD's block layout to the class defaults
    parts = convert_state_dict(sd, dict(model.unet.config), len(configs["vae"]["block_out_channels"]))
    if "quant_conv.weight" not in parts["vae"]:  # sgm's VAE has none: the identity
        c = model.vae.quant_conv.weight.shape[0]
        parts["vae"]["quant_conv.weight"] = torch.eye(c).view(c, c, 1, 1)
        parts["vae"]["quant_conv.bias"] = torch.zeros(c)
    for name, what in (("unet", "UNet"), ("vae", "VAE"), ("image_encoder", "CLIP image encoder")):
        check_state(getattr(model, name), parts[name], what, ckpt)
    return Conversion(ckpt, settings, configs, model, parts)
