"""`DpDyMethod`: the registry's entry point for `monodyn fit --method dpdy` / render / eval / export.

Checkpoint directory (`out`):
    config.json          {"method", "version", "config": DpDyConfig fields, "arch": set sizes, scene centre/radius,
                          background, image size, "step", "seconds"}
    model.safetensors    every tensor of `DynamicGaussians` (static + dynamic sets, motion bases, blend logits,
                          instance ids)
    train_state.pt       while fitting only (models/fitting.py): everything needed to resume
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from models.cameras import Cameras
from models.checkpoints import read_checkpoint_config
from models.devices import resolve_device
from models.dpdy.config import DpDyConfig
from models.dpdy.guidance import Guidance
from models.dpdy.task import CONFIG, VERSION, WEIGHTS, DpDyTask
from models.errors import InputError
from models.files import atomic_write
from models.fitting import Budget, run_fit
from models.gaussians.model import DynamicGaussians
from models.registry import FitProgress, NoRenderOptions, RenderOutput, times_per_camera
from models.scene import Scene

PRIOR_STATS = "prior.json"


def load_model(ckpt: Path, device: str | torch.device = "cpu") -> tuple[DynamicGaussians, dict]:
    """The fitted Gaussians and the checkpoint's config.json content."""
    ckpt = Path(ckpt)
    meta = read_checkpoint_config(ckpt, "dpdy", VERSION, "refit with `monodyn fit --method dpdy --force`",
                                  files=(CONFIG, WEIGHTS))
    try:
        tensors = load_file(str(ckpt / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise InputError(f"{ckpt / WEIGHTS} is unreadable ({e}); refit with `monodyn fit --method dpdy --force`")
    model = DynamicGaussians.from_sizes(meta["arch"]["sizes"])
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise InputError(f"{ckpt / WEIGHTS} does not match its config ({first}); refit with "
                         "`monodyn fit --method dpdy --force`") from None
    return model.to(device).eval(), meta


class DpDyRenderer:
    """Holds one fitted model on one device; renders any cameras at any normalised times."""

    chunk = 1
    cache_key = None  # renders in seconds from a checkpoint; not worth disk space

    def __init__(self, model: DynamicGaussians, meta: dict, device: torch.device):
        self.model, self.meta, self.device = model, meta, device

    @torch.no_grad()
    def render(self, cameras: Cameras, times: Float[Tensor, " N"]) -> RenderOutput:
        """rgb (N,H,W,3), depth (N,H,W) expected z, alpha (N,H,W); extras "dynamic": the dynamic Gaussians' share."""
        times = times_per_camera(times, len(cameras))
        out = self.model.render_cameras(cameras.to(self.device), times.to(self.device))
        out.rgb = out.rgb.clamp(0, 1)
        return out


class DpDyMethod:
    name = "dpdy"
    Config = DpDyConfig
    RenderOptions = NoRenderOptions
    version = VERSION  # checkpoint format: part of the fit cache key, so a new format is never served from cache

    def fit(self, scene: Scene, cfg: DpDyConfig, out: Path, progress: FitProgress, resume: bool = False,
            guidance: Guidance | None = None) -> Path:
        """Fit the static + dynamic Gaussians to `scene`, writing a checkpoint directory into `out`.

        guidance(task, step, progress) -> {name: loss}: the hook on novel views; default: the prior of cfg.prior
        (models/priors/build.py). Its time and the Gaussians it lifted go to `prior.json` in `out`."""
        cfg.validate()
        device = resolve_device(cfg.device)
        if guidance is None:
            from models.priors.build import build_prior

            guidance = build_prior(cfg, device)
        task = DpDyTask(scene, cfg, device, guidance)
        start = time.perf_counter()
        run_fit(task, Path(out), Budget(cfg.steps, cfg.minutes or None), progress,
                checkpoint_every=cfg.checkpoint_every, resume=resume)
        stats = getattr(guidance, "stats", None)
        if stats is not None:
            info = {**stats.names, "calls": stats.calls, "seconds": round(stats.seconds, 2), "lifted": stats.lifted,
                    "fit_seconds_this_run": round(time.perf_counter() - start, 2)}
            atomic_write(Path(out) / PRIOR_STATS, lambda p: p.write_text(json.dumps(info, indent=2)))
        return Path(out)

    def fit_notes(self, ckpt: Path) -> list[str]:
        """What the prior did (printed by `monodyn fit`)."""
        path = Path(ckpt) / PRIOR_STATS
        if not path.exists():
            return []
        s = json.loads(path.read_text())
        share = 100 * s["seconds"] / max(s["fit_seconds_this_run"], 1e-9)
        return [f"prior {s['prior']} (video prior {s['video']}): {s['calls']} steps, {s['seconds']:.1f}s "
                f"({share:.0f}% of the fit), {s['lifted']} Gaussians lifted into unseen parts"]

    def load(self, ckpt: Path | None, scene: Scene | None = None, options: NoRenderOptions | None = None,
             device: str | torch.device = "auto") -> DpDyRenderer:
        if ckpt is None:
            raise InputError("dpdy renders a fitted checkpoint: run `monodyn fit --method dpdy` first")
        dev = resolve_device(str(device))
        model, meta = load_model(ckpt, dev)
        return DpDyRenderer(model, meta, dev)
