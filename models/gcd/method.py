"""`GCDMethod`: the registry's entry for `monodyn render --method gcd` (pretrained: no per-video fit).

Weights, in order: `--gcd-checkpoint PATH`, `$MONODYN_GCD`, the cache (`~/.cache/monodyn/gcd/`, where
`monodyn weights convert gcd` puts converted official checkpoints), then the small model shipped in this
repository (`models/gcd/pretrained/gcd-small`). Each is a model folder (gcd.json + unet/ vae/ image_encoder/)
or a folder of them: the newest wins and the renderer's `notice` names it and the others. An official
Lightning `*.ckpt` is refused with the one command that converts it (reading 20 GB per render is what the
conversion avoids). `--gcd-weights official` skips the shipped model and says what to download.

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
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from models.cameras import Cameras, mean_image_up
from models.errors import InputError, WeightsNotFoundError
from models.gcd.model import CONFIG_FILE, FORMAT_VERSION, GCDModel
from models.registry import RenderOutput, times_per_camera, weights_key
from models.scene import Scene
from models.weights import KNOWN, cache_dir

ENV = KNOWN["gcd"].env
BUNDLED = Path(__file__).resolve().parent / "pretrained" / "gcd-small"
OFFICIAL_SOURCE = KNOWN["gcd"].source
MODES = ("direct", "gradual")
WEIGHTS = ("auto", "small", "official")


@dataclass
class GCDRenderOptions:
    gcd_checkpoint: str | None = None
    """GCD weights: a model folder (from `monodyn weights convert gcd` or `monodyn train gcd`) or a folder of them
    (default: $MONODYN_GCD, then ~/.cache/monodyn/gcd, then the small model shipped with monodyn)."""
    gcd_weights: str = "auto"
    """Which weights when no --gcd-checkpoint is given: auto (env, cache, then the shipped small model),
    small (the shipped model) or official (env or cache only; an error says what to download)."""
    mode: str | None = None
    """direct: every output frame shows its own target camera. gradual: within each 14-frame window the camera
    moves from the input view to the target (frame k gets k/13 of its offset; GCD's 'gradual' setting).
    Default: the model's own (gradual for a converted kubric_gradual_* checkpoint, else direct)."""
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
        if self.mode is not None and self.mode not in MODES:
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
    """The cache folder `monodyn weights fetch gcd` fills; any *.ckpt or `monodyn train gcd` folder in it counts."""
    return cache_dir() / Path(KNOWN["gcd"].filenames[0]).parent


def _convert_hint(ckpt: Path) -> str:
    return (f"{ckpt} is an official Lightning checkpoint: convert it once with `monodyn weights convert gcd {ckpt}` "
            f"(add --config TRAIN.yaml when you have its training YAML), then render loads the converted folder")


def candidates(folder: Path) -> list[Path]:
    """Converted model folders (gcd.json) in `folder` and one level below, newest first; official *.ckpt
    files after them."""
    if (folder / CONFIG_FILE).exists():
        return [folder]
    if not folder.is_dir():
        return []
    models = sorted((p for p in folder.iterdir() if (p / CONFIG_FILE).exists()),
                    key=lambda p: (-(p / CONFIG_FILE).stat().st_mtime_ns, p.name))
    return models + sorted(folder.glob("*.ckpt"))


@dataclass
class Weights:
    path: Path
    notice: str  # one line saying which weights, and which others were passed over


def _pick(path: Path, origin: str) -> Weights:
    """The weights at `path` (a model folder, or a folder holding several): the newest converted folder."""
    if path.is_file():
        if path.suffix == ".ckpt":
            raise InputError(_convert_hint(path))
        raise WeightsNotFoundError(f"{origin} {path}: not a GCD model folder (no {CONFIG_FILE})")
    found = candidates(path)
    if not found:
        raise WeightsNotFoundError(f"{origin} {path}: no GCD model folder (with {CONFIG_FILE}) in it")
    if found[0].suffix == ".ckpt":
        raise InputError(_convert_hint(found[0]))
    others = [p.name for p in found[1:]]
    notice = f"GCD weights: {found[0]} ({origin})"
    if others:
        notice += (f"; also found {', '.join(others)} (the newest converted folder wins: pass --gcd-checkpoint "
                   f"to choose)")
    return Weights(found[0], notice)


def resolve_weights(options: GCDRenderOptions) -> Weights:
    """Where the weights come from (see the module docstring); a precise error when nowhere."""
    if options.gcd_checkpoint:
        return _pick(Path(options.gcd_checkpoint).expanduser(), "--gcd-checkpoint")
    if options.gcd_weights != "small":
        env = os.environ.get(ENV)
        if env:
            path = Path(env).expanduser()
            if not path.exists():
                raise WeightsNotFoundError(f"{ENV}={env}: no such file or folder")
            return _pick(path, ENV)
        cache = cache_folder()
        if candidates(cache):
            return _pick(cache, "cache")
        if options.gcd_weights == "official":
            raise WeightsNotFoundError(
                f"GCD official weights not found: `monodyn weights fetch gcd` downloads {KNOWN['gcd'].url} (about 20 "
                f"GB; or download {OFFICIAL_SOURCE}), convert it once with `monodyn weights convert gcd FILE` (it lands "
                f"in {cache}/), or pass --gcd-checkpoint FOLDER or set {ENV}=FOLDER")
    if (BUNDLED / CONFIG_FILE).exists():
        return Weights(BUNDLED, f"GCD weights: the small model shipped with monodyn ({BUNDLED.name})")
    raise WeightsNotFoundError(
        f"no GCD weights: the small model is not in this installation ({BUNDLED}); make it with `monodyn train "
        f"gcd --out {BUNDLED}`, or download {OFFICIAL_SOURCE} and convert it with `monodyn weights convert gcd FILE`")


def center_crop_box(height: int, width: int, aspect: float) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of the largest centred box of `aspect` = width / height."""
    if width > aspect * height:
        w = max(1, round(aspect * height))
        return 0, (width - w) // 2, height, w
    h = max(1, round(width / aspect))
    return (height - h) // 2, 0, h, width


class GCDRenderer:
    """Holds a GCD model and the clip; renders one window of up to 14 target cameras per call.

    Frames are centre-cropped to the model's aspect (as the official data is) before resizing; the output fills
    the same centred box of the target image, with alpha 0 outside it. The look-at point and "up" are those the
    render paths use (`Scene.look_at_point`, `mean_image_up`), so an orbit reaches GCD as a pure Δazimuth."""

    def __init__(self, model: GCDModel, scene: Scene, options: GCDRenderOptions, device: torch.device,
                 cache_key: str | None = None, notice: str | None = None):
        self.model, self.scene, self.options, self.device = model.to(device), scene, options, device
        self.chunk = model.cfg.num_frames
        self.cache_key = cache_key  # sampling is deterministic for a seed: the CLI caches the frames
        if cache_key is not None and model.cfg.warp:  # the warp reads the depth stage's result: new depth, new frames
            import hashlib

            depth = b"none" if scene.depth is None else np.ascontiguousarray(scene.depth).tobytes()
            self.cache_key = f"{cache_key}:depth-{hashlib.sha256(depth).hexdigest()[:16]}"
        self.notice = notice
        self.mode = options.mode or model.cfg.mode
        self.center = scene.look_at_point()
        self.up = mean_image_up(scene.cameras)

    @property
    def aspect(self) -> float:
        return self.model.cfg.width / self.model.cfg.height

    def input_frames(self, idx: Tensor) -> Float[Tensor, "N 3 h w"]:
        """The input frames at `idx`, centre-cropped to the model's aspect and resized to its size, in [-1, 1]."""
        cfg = self.model.cfg
        top, left, h, w = center_crop_box(self.scene.height, self.scene.width, self.aspect)
        x = np.asarray(self.scene.frames[idx.numpy()])[:, top:top + h, left:left + w]
        x = torch.from_numpy(x.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
        if x.shape[-2:] != (cfg.height, cfg.width):
            x = F.interpolate(x, size=(cfg.height, cfg.width), mode="bilinear", align_corners=False, antialias=True)
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

    def warp_conditioning(self, idx: Tensor, targets: Cameras, height: int, width: int) -> Float[Tensor, "1 T 5 h w"]:
        """`GCDModel.warp_latents` of the input frames `idx` forward-warped by the clip's depth (the depth stage's)
        into `targets` (images of height x width), cut to the model's centred box. Without depth every pixel is
        invalid and the model renders from the cameras alone, as it learnt with warp dropout."""
        from models.gcd.warp import warp_frames

        cfg, sel = self.model.cfg, idx.numpy()
        frames = torch.from_numpy(np.asarray(self.scene.frames[sel]).astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
        if self.scene.depth is None:
            depth = torch.zeros(len(sel), self.scene.height, self.scene.width)
        else:
            depth = torch.from_numpy(np.asarray(self.scene.depth[sel], np.float32))
        src = self.scene.cameras[idx]
        dst = targets.to("cpu")
        warped, mask = warp_frames(frames, depth, src.K, src.w2c, dst.K, dst.w2c, (height, width),
                                   center_crop_box(height, width, self.aspect), (cfg.height, cfg.width))
        return self.model.warp_latents(warped[None].to(self.device), mask[None].to(self.device))

    @torch.no_grad()
    def render(self, cameras: Cameras, times: Float[Tensor, " N"]) -> RenderOutput:
        """rgb (N,H,W,3) in [0,1] at the cameras' size; depth is zeros (GCD predicts no geometry); alpha is 1 in
        the centred box of the model's aspect and 0 outside."""
        from models.gcd.sampling import sample

        times = times_per_camera(times, len(cameras)).cpu()
        T = self.model.cfg.num_frames
        H, W = cameras.height, cameras.width
        top, left, h, w = center_crop_box(H, W, self.aspect)
        rgb = []
        for s in range(0, len(cameras), T):  # windows of T (the CLI already hands over one window per call)
            cams, t = cameras[s:s + T], times[s:s + T]
            n = len(cams)
            idx, d = self.deltas(cams, t)
            if self.mode == "gradual":
                d = d * torch.linspace(0.0, 1.0, T)[:n, None]
            pad = T - n  # a short last window: repeat its last frame
            idx = torch.cat([idx, idx[-1:].expand(pad)])
            d = torch.cat([d, d[-1:].expand(pad, 3)])
            frames = self.input_frames(idx)[None].to(self.device)
            warp = None
            if self.model.cfg.warp:
                targets = cams[torch.cat([torch.arange(n), torch.full((pad,), n - 1)])]
                warp = self.warp_conditioning(idx, targets, H, W)
            x = 0
            for k in range(self.options.samples):
                out = sample(self.model, frames, d[None].to(self.device), steps=self.options.steps,
                             cfg_min=self.options.cfg_min, cfg_max=self.options.cfg_max, seed=self.options.seed + k,
                             warp=warp)
                x = x + (out[0, :n].float().cpu() + 1) / 2 / self.options.samples
            if x.shape[-2:] != (h, w):
                x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            rgb.append(x.clamp(0, 1).permute(0, 2, 3, 1))
        box = torch.cat(rgb)
        N = len(box)
        rgb, alpha = torch.zeros(N, H, W, 3), torch.zeros(N, H, W)
        rgb[:, top:top + h, left:left + w] = box
        alpha[:, top:top + h, left:left + w] = 1.0
        return RenderOutput(rgb=rgb, depth=torch.zeros(N, H, W), alpha=alpha)


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
        weights = _pick(Path(ckpt), "checkpoint") if ckpt is not None else resolve_weights(options)
        model = GCDModel.load(weights.path)
        return GCDRenderer(model, scene, options, resolve_device(device), weights_key(self.name, weights.path, options),
                           weights.notice)
