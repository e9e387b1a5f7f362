"""`GCDMethod`: the registry's entry for `monodyn render --method gcd` (pretrained: no per-video fit).

Weights, in order: `--gcd-checkpoint PATH` (an official Lightning `*.ckpt`, or a folder written by `monodyn
train gcd`), `$MONODYN_GCD`, the cache (`~/.cache/monodyn/gcd/`: such a folder or a `*.ckpt` in it), then
the small model shipped in this repository (`models/gcd/pretrained/gcd-small`). `--gcd-weights official`
skips the shipped model and says exactly what to download when no official file is found.

The renderer holds the clip's `Scene`. Each `render` call gets up to 14 target cameras (one GCD window) with
normalised times; for each it takes the input frame nearest in time and that frame's camera, converts the
target to (Δazimuth, Δelevation, Δr) about the look-at point (`geometry.py`) and samples one 14-frame clip.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from models.cameras import Cameras
from models.errors import InputError, WeightsNotFoundError
from models.gcd.model import FORMAT_VERSION, GCDModel
from models.registry import RenderOutput, times_per_camera, weights_key
from models.scene import Scene

ENV = "MONODYN_GCD"
BUNDLED = Path(__file__).resolve().parent / "pretrained" / "gcd-small"
OFFICIAL_SOURCE = ("https://gcd.cs.columbia.edu/checkpoints/kubric_gradual_max90.ckpt (or kubric_direct_max90, "
                   "kubric_gradual_max180, kubric_direct_max180; listed in the README of github.com/basilevh/gcd, "
                   "'Pretrained models')")
MODES = ("direct", "gradual")
WEIGHTS = ("auto", "small", "official")


@dataclass
class GCDRenderOptions:
    gcd_checkpoint: str | None = None
    """GCD weights: an official Lightning *.ckpt or a folder from `monodyn train gcd` (default: $MONODYN_GCD,
    then ~/.cache/monodyn/gcd, then the small model shipped with monodyn)."""
    gcd_weights: str = "auto"
    """Which weights when no --gcd-checkpoint is given: auto (env, cache, then the shipped small model),
    small (the shipped model) or official (env or cache only; an error says what to download)."""
    mode: str = "direct"
    """direct: every output frame shows its own target camera. gradual: within each 14-frame window the camera
    moves from the input view to the target (frame k gets k/13 of its offset; GCD's 'gradual' setting)."""
    steps: int = 25
    """Euler steps of the EDM sampler."""
    cfg_min: float = 1.0
    """Classifier-free guidance scale at the first frame of a window (rising linearly to --cfg-max)."""
    cfg_max: float = 1.5
    """Classifier-free guidance scale at the last frame of a window."""
    seed: int = 0
    """Sampling seed (the same seed gives the same video)."""
    samples: int = 1
    """Average this many samples (seeds seed, seed+1, ...): an estimate of the posterior mean, blurrier but with
    a higher PSNR; 1 = one sharp sample, as GCD renders."""

    def validate(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.gcd_weights not in WEIGHTS:
            raise InputError(f"--gcd-weights must be one of {', '.join(WEIGHTS)}, got {self.gcd_weights!r}")
        if not 1 <= self.samples <= 64:
            raise InputError(f"--samples must be within 1..64, got {self.samples}")
        if not 1 <= self.steps <= 1000:
            raise InputError(f"--steps must be within 1..1000, got {self.steps}")
        for name, v in (("--cfg-min", self.cfg_min), ("--cfg-max", self.cfg_max)):
            if not (np.isfinite(v) and 0.0 <= v <= 20.0):
                raise InputError(f"{name} must be a guidance scale within 0..20, got {v}")
        if self.gcd_checkpoint is not None and not Path(self.gcd_checkpoint).expanduser().exists():
            raise InputError(f"--gcd-checkpoint {self.gcd_checkpoint}: no such file or folder")


def cache_folder() -> Path:
    return Path(os.environ.get("MONODYN_CACHE", Path.home() / ".cache" / "monodyn")).expanduser() / "gcd"


def _usable(path: Path) -> Path | None:
    """A GCD model folder, an official *.ckpt, or the single *.ckpt inside a folder."""
    if path.is_file():
        return path
    if (path / "gcd.json").exists():
        return path
    ckpts = sorted(path.glob("*.ckpt")) if path.is_dir() else []
    return ckpts[0] if ckpts else None


def resolve_weights(options: GCDRenderOptions) -> Path:
    """Where the weights come from (see the module docstring); a precise error when nowhere."""
    if options.gcd_checkpoint:
        path = Path(options.gcd_checkpoint).expanduser()
        found = _usable(path) if path.exists() else None
        if found is None:
            raise WeightsNotFoundError(f"--gcd-checkpoint {path}: not a GCD *.ckpt nor a folder with gcd.json")
        return found
    if options.gcd_weights != "small":
        env = os.environ.get(ENV)
        if env:
            path = Path(env).expanduser()
            found = _usable(path) if path.exists() else None
            if found is None:
                raise WeightsNotFoundError(f"{ENV}={env}: not a GCD *.ckpt nor a folder with gcd.json")
            return found
        cache = cache_folder()
        if cache.exists() and (found := _usable(cache)) is not None:
            return found
        if options.gcd_weights == "official":
            raise WeightsNotFoundError(
                f"GCD official weights not found: download {OFFICIAL_SOURCE} (about 20 GB), then pass "
                f"--gcd-checkpoint PATH, set {ENV}=PATH, or put the file in {cache}/")
    if (BUNDLED / "gcd.json").exists():
        return BUNDLED
    raise WeightsNotFoundError(
        f"no GCD weights: the small model is not in this installation ({BUNDLED}); make it with `monodyn train "
        f"gcd --out {BUNDLED}`, or download {OFFICIAL_SOURCE} and pass --gcd-checkpoint PATH, set {ENV}=PATH or "
        f"put it in {cache_folder()}/")


def load_model(path: Path) -> GCDModel:
    """A GCD model from our folder format or from an official Lightning checkpoint."""
    path = Path(path)
    if path.is_dir():
        return GCDModel.load(path)
    from models.gcd.convert import convert_state_dict, load_into, read_lightning_state
    from models.gcd.model import official_configs

    sd = read_lightning_state(path)
    configs = official_configs()
    if "max180" in path.name:
        configs["gcd"].motion_norm = (180.0, 60.0)
    model = GCDModel.from_configs(configs)
    parts = convert_state_dict(sd, configs["unet"], len(configs["vae"]["block_out_channels"]))
    vae_state = parts["vae"]
    if "quant_conv.weight" not in vae_state:  # sgm's VAE has none: the identity
        c = model.vae.quant_conv.weight.shape[0]
        vae_state["quant_conv.weight"] = torch.eye(c).view(c, c, 1, 1)
        vae_state["quant_conv.bias"] = torch.zeros(c)
    load_into(model.unet, parts["unet"], "UNet", path)
    load_into(model.vae, vae_state, "VAE", path)
    load_into(model.image_encoder, parts["image_encoder"], "CLIP image encoder", path)
    return model.eval()


class GCDRenderer:
    """Holds a GCD model and the clip; renders one window of up to 14 target cameras per call."""

    def __init__(self, model: GCDModel, scene: Scene, options: GCDRenderOptions, device: torch.device,
                 cache_key: str | None = None):
        from models.gcd.geometry import image_up

        self.model, self.scene, self.options, self.device = model.to(device), scene, options, device
        self.chunk = model.cfg.num_frames
        self.cache_key = cache_key  # sampling is deterministic for a seed: the CLI caches the frames
        self.center = scene.look_at_point()
        self.up = image_up(scene.cameras)

    def input_frames(self, idx: Tensor) -> Float[Tensor, "N 3 h w"]:
        """The input frames at `idx`, resized to the model's size, in [-1, 1]."""
        cfg = self.model.cfg
        x = torch.from_numpy(np.asarray(self.scene.frames[idx.numpy()], dtype=np.float32) / 255.0)
        x = x.permute(0, 3, 1, 2)
        if x.shape[-2:] != (cfg.height, cfg.width):
            x = torch.nn.functional.interpolate(x, size=(cfg.height, cfg.width), mode="bilinear",
                                                align_corners=False, antialias=True)
        return x * 2 - 1

    def deltas(self, cameras: Cameras, times: Float[Tensor, " N"]) -> tuple[Tensor, Float[Tensor, "N 3"]]:
        """(input frame index per target, (Δaz deg, Δel deg, Δr/r) per target), checked against the model's range."""
        from models.gcd.geometry import camera_deltas, check_range, nearest_frames

        idx = nearest_frames(times.cpu(), self.scene.times)
        cams = cameras.to("cpu")
        inputs = self.scene.cameras[idx]
        inputs = Cameras(inputs.K, inputs.w2c, self.scene.width, self.scene.height)
        d = camera_deltas(inputs, cams, self.center, self.up)
        check_range(d, self.model.cfg.max_delta)
        return idx, d

    @torch.no_grad()
    def render(self, cameras: Cameras, times: Float[Tensor, " N"]) -> RenderOutput:
        """rgb (N,H,W,3) in [0,1] at the cameras' size; depth is zeros (GCD predicts no geometry); alpha ones."""
        from models.gcd.sampling import sample

        times = times_per_camera(times, len(cameras)).cpu()
        T = self.model.cfg.num_frames
        rgb = []
        for s in range(0, len(cameras), T):  # windows of T (the CLI already hands over one window per call)
            cams, t = cameras[s:s + T], times[s:s + T]
            n = len(cams)
            idx, d = self.deltas(cams, t)
            if self.options.mode == "gradual":
                d = d * torch.linspace(0.0, 1.0, T)[:n, None]
            pad = T - n  # a short last window: repeat its last frame
            idx = torch.cat([idx, idx[-1:].expand(pad)])
            d = torch.cat([d, d[-1:].expand(pad, 3)])
            frames = self.input_frames(idx)[None].to(self.device)
            x = 0
            for k in range(self.options.samples):
                out = sample(self.model, frames, d[None].to(self.device), steps=self.options.steps,
                             cfg_min=self.options.cfg_min, cfg_max=self.options.cfg_max, seed=self.options.seed + k)
                x = x + (out[0, :n].float().cpu() + 1) / 2 / self.options.samples
            if x.shape[-2:] != (cameras.height, cameras.width):
                x = torch.nn.functional.interpolate(x, size=(cameras.height, cameras.width), mode="bilinear",
                                                    align_corners=False)
            rgb.append(x.clamp(0, 1).permute(0, 2, 3, 1))
        rgb = torch.cat(rgb)
        N, H, W = rgb.shape[:3]
        return RenderOutput(rgb=rgb, depth=torch.zeros(N, H, W), alpha=torch.ones(N, H, W))


class GCDMethod:
    name = "gcd"
    Config = None
    RenderOptions = GCDRenderOptions
    version = FORMAT_VERSION

    def fit(self, scene, cfg, out, progress, resume=False):
        raise InputError("gcd is pretrained and needs no fit: render directly with `monodyn render --method gcd`")

    def load(self, ckpt: Path | None, scene: Scene, options: GCDRenderOptions | None = None,
             device: str = "auto") -> GCDRenderer:
        from models.devices import resolve_device

        options = options or GCDRenderOptions()
        options.validate()
        path = Path(ckpt) if ckpt is not None else resolve_weights(options)
        model = load_model(path)
        if model.cfg.version != self.version:
            raise InputError(f"{path}: GCD model format {model.cfg.version}, expected {self.version}: retrain with "
                             f"`monodyn train gcd` or re-download the weights")
        return GCDRenderer(model, scene, options, resolve_device(device), weights_key(self.name, path, options))
