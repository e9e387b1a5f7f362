"""DyST sizes and the checkpoint format (diffusers-style: `config.json` with every size + `model.safetensors`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from models.errors import InputError

VERSION = 1  # checkpoint format; bump when the architecture or the meaning of a tensor changes
CONFIG, WEIGHTS = "config.json", "model.safetensors"
RETRAIN = "retrain with `monodyn train dyst` (or use the bundled model: drop --dyst-checkpoint)"


@dataclass(frozen=True)
class DySTConfig:
    """Every size needed to rebuild the network. Images are squashed (not cropped) to `width` x `height`."""

    width: int = 32
    height: int = 24
    channels: tuple[int, ...] = (32, 64)  # CNN stages: conv 3x3 s1 then one stride-2 conv per entry, then to dim
    dim: int = 96  # token width
    heads: int = 4
    mlp: int = 192
    encoder_layers: int = 3
    estimator_layers: int = 2
    decoder_layers: int = 2
    latent: int = 8  # camera and dynamics control latents each
    octaves: int = 6  # Fourier octaves of the pixel query (x, y in [-1, 1])
    input_views: int = 3
    head_hidden: int = 64  # orbit head: (camera latent, d-azimuth, d-elevation) -> camera latent

    @property
    def stride(self) -> int:
        return 2 ** (len(self.channels) + 1)

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (rows, cols) of one view."""
        return self.height // self.stride, self.width // self.stride

    def validate(self) -> None:
        if self.width % self.stride or self.height % self.stride:
            raise InputError(f"dyst image size {self.width}x{self.height} must be a multiple of the CNN stride "
                             f"{self.stride}")
        if self.dim % self.heads:
            raise InputError(f"dyst dim {self.dim} must be divisible by heads {self.heads}")
        if self.input_views < 1 or self.latent < 1:
            raise InputError("dyst needs at least one input view and a latent of at least 1 dimension")

    def to_json(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @staticmethod
    def from_json(d: dict) -> "DySTConfig":
        names = {f.name for f in fields(DySTConfig)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"dyst config has unknown sizes {sorted(unknown)}; {RETRAIN}")
        d = dict(d)
        if "channels" in d:
            d["channels"] = tuple(d["channels"])
        return DySTConfig(**d)


def read_meta(ckpt: Path) -> dict:
    """config.json of a checkpoint folder, checked: method dyst, this format version."""
    from models.checkpoints import read_checkpoint_config

    return read_checkpoint_config(ckpt, "dyst", VERSION, RETRAIN, files=(CONFIG, WEIGHTS))
