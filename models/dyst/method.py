"""`DySTMethod`: the registry entry for `monodyn render --method dyst` (pretrained; no per-video fit).

A renderer encodes the clip once: Z from 3 frames spread over it (first, middle, last), then the camera and
dynamics latents of every frame (estimated from the frame itself). An output frame at normalised time t gets
the dynamics latent interpolated at t and the camera latent of t, both possibly replaced by another clip's
(--camera-from / --dynamics-from) or held at one frame (--freeze-*). When its camera is not the input camera
of that moment, the orbit head moves the camera latent by the (d-azimuth, d-elevation) between the two about
the look-at point; distance, roll and zoom changes are not representable and are ignored.

The model has no geometry: depth is returned as zeros and alpha as ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from models.cameras import Cameras, mean_image_up
from models.dyst.config import RETRAIN, VERSION, WEIGHTS, DySTConfig, read_meta
from models.dyst.data import input_frames, squash
from models.dyst.geometry import relative_move
from models.dyst.model import DyST
from models.dyst.options import DySTRenderOptions, load_other_scene, parse_clip_ref
from models.errors import InputError
from models.registry import RenderOutput, times_per_camera
from models.scene import Scene

BUNDLED = Path(__file__).resolve().parent / "pretrained"
ENV = "MONODYN_DYST_CHECKPOINT"


def find_checkpoint(explicit: str | Path | None = None) -> Path:
    """--dyst-checkpoint, then $MONODYN_DYST_CHECKPOINT, then $MONODYN_CACHE/dyst/model, then the bundled model."""
    from models.weights import cache_dir

    if explicit is not None:
        return Path(explicit)
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    cached = cache_dir() / "dyst" / "model"
    if (cached / WEIGHTS).exists():
        return cached
    if (BUNDLED / WEIGHTS).exists():
        return BUNDLED
    raise InputError(f"no DyST checkpoint: the bundled one ({BUNDLED}) is missing; train one with `monodyn train "
                     f"dyst --out DIR` and pass --dyst-checkpoint DIR (or set {ENV})")


def load_model(ckpt: Path, device: str | torch.device = "cpu") -> tuple[DyST, dict]:
    """The network (eval mode) and its config.json content; one-line errors for a wrong or stale checkpoint."""
    ckpt = Path(ckpt)
    meta = read_meta(ckpt)
    cfg = DySTConfig.from_json(meta["config"])
    try:
        tensors = load_file(str(ckpt / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise InputError(f"{ckpt / WEIGHTS} is unreadable ({e}); {RETRAIN}") from None
    model = DyST(cfg)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        lines = str(e).splitlines()
        raise InputError(f"{ckpt / WEIGHTS} does not match its config ({(lines[1] if len(lines) > 1 else lines[0]).strip()}"
                         f"); {RETRAIN}") from None
    return model.to(device).eval(), meta


class ClipLatents:
    """One clip encoded by DyST: Z (1,M,D) and per-frame camera / dynamics latents (T,L) at `times` (T,)."""

    def __init__(self, model: DyST, scene: Scene, device: torch.device, batch: int = 32):
        cfg = model.cfg
        frames = squash(scene.frames, cfg.height, cfg.width).to(device)
        self.frames = frames
        self.times = scene.times.to(device)
        self.inputs = input_frames(np.arange(len(frames)), cfg.input_views)
        with torch.no_grad():
            self.z = model.encode(frames[self.inputs][None])
            cams, dyns = [], []
            for i in range(0, len(frames), batch):
                f = frames[i:i + batch]
                c, d = model.estimate(self.z.expand(len(f), -1, -1), f)
                cams.append(c)
                dyns.append(d)
        self.camera, self.dynamics = torch.cat(cams), torch.cat(dyns)


def interpolate(latents: Float[Tensor, "T L"], times: Float[Tensor, " T"], t: Float[Tensor, " N"]) -> Float[Tensor, "N L"]:
    """Piecewise-linear latent at normalised times t (clamped to the clip's range)."""
    if len(latents) == 1:
        return latents.expand(len(t), -1)
    order = torch.argsort(times)
    times, latents = times[order], latents[order]
    t = t.clamp(float(times[0]), float(times[-1]))
    hi = torch.searchsorted(times, t).clamp(1, len(times) - 1)
    lo = hi - 1
    w = ((t - times[lo]) / (times[hi] - times[lo]).clamp_min(1e-12)).clamp(0, 1)[:, None]
    return latents[lo] * (1 - w) + latents[hi] * w


class DySTRenderer:
    """Holds the model and the encoded clip; renders any cameras at any normalised times."""

    chunk = 8
    cache_key = None  # fast, and --camera-from / --dynamics-from read other workspaces the key would not cover

    def __init__(self, model: DyST, scene: Scene, options: DySTRenderOptions, device: torch.device):
        self.model, self.scene, self.options, self.device = model, scene, options, device
        self.clip = ClipLatents(model, scene, device)
        self.camera_seq, self.camera_times = self._source(options.camera_from, "--camera-from", "camera",
                                                          options.freeze_camera, "--freeze-camera")
        self.dynamics_seq, self.dynamics_times = self._source(options.dynamics_from, "--dynamics-from", "dynamics",
                                                              options.freeze_dynamics, "--freeze-dynamics")
        cams = scene.cameras
        self.center = scene.look_at_point()
        self.up = mean_image_up(cams)
        self.input_eyes = cams.centers
        self.input_times = scene.times

    def _source(self, ref: str | None, option: str, kind: str, freeze: int | None, freeze_option: str
                ) -> tuple[Tensor, Tensor]:
        clip = self.clip
        frame = None
        if ref is not None:
            path, frame = parse_clip_ref(ref, option)
            other = load_other_scene(path)
            clip = ClipLatents(self.model, other, self.device)
            where = f"{option} {path}"
        else:
            frame, where = freeze, freeze_option
        seq = clip.camera if kind == "camera" else clip.dynamics
        if frame is not None:
            if not 0 <= frame < len(seq):
                raise InputError(f"{where}: frame {frame} is outside the clip's frames 0..{len(seq) - 1}")
            return seq[frame:frame + 1], clip.times[frame:frame + 1]
        return seq, clip.times

    @torch.no_grad()
    def latents(self, cameras: Cameras, times: Float[Tensor, " N"]) -> tuple[Float[Tensor, "N L"], Float[Tensor, "N L"]]:
        """Camera and dynamics latents of each output frame (orbit head applied where the camera moved)."""
        times = times.to(self.device).float()
        cam = interpolate(self.camera_seq, self.camera_times, times)
        dyn = interpolate(self.dynamics_seq, self.dynamics_times, times)
        nearest = (self.input_times[None, :] - times.cpu()[:, None]).abs().argmin(1)
        daz, delv = relative_move(cameras.centers.cpu().float(), self.input_eyes[nearest], self.center, self.up)
        moved = (daz.abs() > 1e-3) | (delv.abs() > 1e-3)
        if bool(moved.any()):
            orbit = self.model.orbit(cam, daz.to(self.device), delv.to(self.device))
            cam = torch.where(moved.to(self.device)[:, None], orbit, cam)
        return cam, dyn

    @torch.no_grad()
    def render(self, cameras: Cameras, times: Float[Tensor, " N"]) -> RenderOutput:
        times = times_per_camera(times, len(cameras))
        cam, dyn = self.latents(cameras, times)
        cfg, H, W = self.model.cfg, cameras.height, cameras.width
        s = self.options.dyst_decode_scale
        h, w = min(H, max(1, round(cfg.height * s))), min(W, max(1, round(cfg.width * s)))
        z = self.clip.z.expand(len(cam), -1, -1)
        rgb = self.model.render_image(z, cam, dyn, h, w)
        if (h, w) != (H, W):
            rgb = torch.nn.functional.interpolate(rgb.permute(0, 3, 1, 2), size=(H, W), mode="bilinear",
                                                  align_corners=False).permute(0, 2, 3, 1)
        rgb = rgb.clamp(0, 1)
        N = len(cam)
        return RenderOutput(rgb, torch.zeros(N, H, W, device=rgb.device), torch.ones(N, H, W, device=rgb.device))


class DySTMethod:
    name = "dyst"
    Config = None
    RenderOptions = DySTRenderOptions
    version = VERSION

    def fit(self, scene, cfg, out, progress, resume=False):
        raise InputError("dyst is pretrained and needs no fit: render directly with `monodyn render --method dyst` "
                         "(train a model with `monodyn train dyst`)")

    def load(self, ckpt: Path | None, scene: Scene, options: DySTRenderOptions | None = None,
             device: str = "auto") -> DySTRenderer:
        from models.devices import resolve_device

        options = options or DySTRenderOptions()
        options.validate()
        dev = resolve_device(device)
        model, _ = load_model(ckpt if ckpt is not None else find_checkpoint(options.dyst_checkpoint), dev)
        return DySTRenderer(model, scene, options, dev)
