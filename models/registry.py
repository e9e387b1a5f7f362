"""The one method interface and the registry of methods (DESIGN.md, "One method interface").

A method turns a preprocessed `Scene` into a checkpoint directory (`config.json` + `*.safetensors`) and
renders any cameras at any normalised times from it. Methods are imported lazily by name, so the CLI's
start-up does not pay for importing every method.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from jaxtyping import Float
from torch import Tensor

from models.cameras import Cameras
from models.errors import InputError
from models.scene import Scene

# progress(step, total, **metrics): called by fit loops; the CLI turns it into a progress bar
FitProgress = Callable[..., None]


@dataclass
class RenderOutput:
    """rgb (N,H,W,3) in [0,1]; depth (N,H,W) camera z-depth in world units; alpha (N,H,W) accumulated opacity.
    extras: method-specific maps of shape (N,H,W[,C]) (e.g. dynamic weight)."""

    rgb: Float[Tensor, "N H W 3"]
    depth: Float[Tensor, "N H W"]
    alpha: Float[Tensor, "N H W"]
    extras: dict[str, Tensor] = field(default_factory=dict)


class Method(Protocol):
    name: str
    Config: type  # a dataclass; its fields' docstrings are the CLI help

    def fit(self, scene: Scene, cfg, out: Path, progress: FitProgress, resume: bool = False) -> Path:
        """Optimise / run on `scene`, writing a checkpoint directory into `out`; returns `out`."""

    def render(self, ckpt: Path, cameras: Cameras, times: Float[Tensor, "N"], **kwargs) -> RenderOutput:
        """Render one image per camera at the matching normalised time in [0, 1]."""


# name -> "module:Class"; a method lands here when its implementation does
METHODS: dict[str, str] = {
    "dpdy": "models.dpdy.method:DpDyMethod",
    "osn": "models.osn.method:OSNMethod",
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)()
