"""The one method interface and the registry of methods (DESIGN.md, "One method interface").

Two kinds of method share it:
- per-video methods (dpdy, osn) optimise a checkpoint on one clip (`fit`), then `load` it;
- pretrained generative methods (gcd, dyst) are trained once (`monodyn train`), have `Config = None`, and
  `load` their weights (`ckpt=None`: the method finds them from its render options, the environment or
  the cache) conditioned on the clip's `Scene`.

`load` returns a `Renderer` that holds the model, so rendering many frames loads it once; there is no
module-level model cache. Methods are imported lazily by name, so the CLI's start-up does not pay for
importing every method.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from jaxtyping import Float
from torch import Tensor

from models.cameras import Cameras
from models.errors import InputError
from models.methods import METHODS
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


@dataclass
class NoRenderOptions:
    """A method without render options of its own."""

    def validate(self) -> None:
        pass


@runtime_checkable
class Renderer(Protocol):
    chunk: int | None
    """How many cameras one `render` call should get: 1 for per-frame methods (a progress bar per frame),
    a window length for video models (gcd: 14), None for the whole path at once."""

    cache_key: str | None
    """Everything besides the clip and the asked cameras and times that the output depends on (weights and
    options, see `weights_key`): `monodyn render` then stores the frames and serves a repeated request from
    disk. None: not cached (cheap to render, or depends on more than that)."""

    def render(self, cameras: Cameras, times: Float[Tensor, " N"]) -> RenderOutput:
        """One image per camera at the matching normalised time in [0, 1]; shapes as in `RenderOutput`."""


@runtime_checkable
class Method(Protocol):
    name: str
    Config: type | None
    """Per-video fit options (a dataclass; its field docstrings are the `monodyn fit` help), or None for a
    pretrained method that needs no fit."""
    RenderOptions: type
    """Method-specific render options (a dataclass with `validate()`), parsed like fit options."""
    version: int
    """Checkpoint format: `load` refuses another version with a one-line 'refit with ...' error, and the fit
    cache key includes it."""

    def fit(self, scene: Scene, cfg, out: Path, progress: FitProgress, resume: bool = False) -> Path:
        """Optimise on `scene`, writing a checkpoint directory into `out`; returns `out`."""

    def load(self, ckpt: Path | None, scene: Scene, options, device: str = "auto") -> Renderer:
        """A renderer holding the model from `ckpt` (None for pretrained methods) on `device`."""


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def times_per_camera(times, n: int) -> Float[Tensor, " N"]:
    """A renderer's `times` as one float32 normalised time per camera: (N,) as given, or one time for all."""
    import torch

    times = torch.as_tensor(times, dtype=torch.float32).reshape(-1)
    if times.numel() == 1 and n > 1:
        times = times.expand(n)
    if times.numel() != n:
        raise InputError(f"render: {n} cameras but {times.numel()} times")
    return times


def check_render_output(out: RenderOutput, n: int, height: int, width: int, method: str) -> RenderOutput:
    """The Method boundary's shape check: a renderer must return n images of height x width."""
    from models.errors import MethodContractError

    expect = {"rgb": (n, height, width, 3), "depth": (n, height, width), "alpha": (n, height, width)}
    for name, shape in expect.items():
        got = tuple(getattr(out, name).shape)
        if got != shape:
            raise MethodContractError(f"{method} returned {name} of shape {got}, expected {shape}")
    return out


def weights_key(method: str, weights: Path, options) -> str:
    """A renderer's `cache_key`: sha256 over the method, every file under `weights` (name, size, modification
    time) and the render options."""
    import dataclasses
    import hashlib

    h = hashlib.sha256(method.encode())
    weights = Path(weights)
    files = sorted(p for p in weights.rglob("*") if p.is_file()) if weights.is_dir() else [weights]
    for p in files:
        st = p.stat()
        name = p.relative_to(weights) if weights.is_dir() else p.name
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(repr(dataclasses.asdict(options) if dataclasses.is_dataclass(options) else options).encode())
    return h.hexdigest()
