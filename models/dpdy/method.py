"""`DpDyMethod`: the registry's entry point for `monodyn fit --method dpdy` / render / eval.

Checkpoint directory (`out`):
    config.json          {"method", "version", "config": DpDyConfig fields, "arch": module sizes + normalisation
                          (space map, near/far, scene centre/radius, background), "step", "seconds"}
    model.safetensors    every tensor of `DpDyModel` (fields, scene-flow head, background, occupancy grid)
    train_state.pt       while fitting only: model + Adam + RNG + sampler state for `resume=True`
All three are written atomically (temporary file, then os.replace); the resume state is written last, so
whatever it holds is complete, and it is removed when the fit finishes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from models.cameras import Cameras
from models.dpdy.config import DpDyConfig
from models.dpdy.losses import Guidance
from models.dpdy.model import DpDyModel, method_output
from models.dpdy.trainer import Trainer
from models.errors import InputError
from models.registry import FitProgress, RenderOutput
from models.scene import Scene

VERSION = 1
CONFIG, WEIGHTS, STATE = "config.json", "model.safetensors", "train_state.pt"


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def save_model(out: Path, model: DpDyModel, cfg: DpDyConfig, step: int, seconds: float) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic(out / WEIGHTS, lambda p: save_file(tensors, str(p)))
    meta = {"method": "dpdy", "version": VERSION, "config": dataclasses.asdict(cfg), "arch": model.arch,
            "step": step, "seconds": round(seconds, 2)}
    _atomic(out / CONFIG, lambda p: p.write_text(json.dumps(meta, indent=2)))


def load_model(ckpt: Path, device: str | torch.device = "cpu") -> DpDyModel:
    ckpt = Path(ckpt)
    if not (ckpt / CONFIG).exists() or not (ckpt / WEIGHTS).exists():
        raise InputError(f"{ckpt} is not a dpdy checkpoint (needs {CONFIG} and {WEIGHTS}); run "
                         "`monodyn fit --method dpdy`")
    meta = json.loads((ckpt / CONFIG).read_text())
    if meta.get("method") != "dpdy":
        raise InputError(f"{ckpt} holds a {meta.get('method')!r} checkpoint, not dpdy")
    model = DpDyModel(meta["arch"])
    model.load_state_dict(load_file(str(ckpt / WEIGHTS)))
    return model.to(device).eval()


@functools.lru_cache(maxsize=4)
def _cached_model(ckpt: str, device: str, stamp: int) -> DpDyModel:
    # stamp = mtime of the weights: a refit in the same process is not served from the cache
    return load_model(Path(ckpt), device)


class DpDyMethod:
    name = "dpdy"
    Config = DpDyConfig

    def fit(self, scene: Scene, cfg: DpDyConfig, out: Path, progress: FitProgress, resume: bool = False,
            guidance: Guidance | None = None) -> Path:
        """Fit the static + dynamic fields to `scene`, writing a checkpoint directory into `out`.

        guidance(render, cameras, times) -> scalar: an optional prior on novel-view renders (e.g. SDS), added
        with cfg.guidance_weight every cfg.guidance_every steps."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(scene, cfg, guidance)
        if resume and (out / STATE).exists():
            trainer.load_state_dict(torch.load(out / STATE, map_location=trainer.device, weights_only=True))
        metrics: dict[str, float] = {}
        while not trainer.done():
            metrics = trainer.train_step()
            step = trainer.step
            if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0 and not trainer.done():
                self._checkpoint(out, trainer)
            if step % 10 == 0 or trainer.done():
                progress(step, cfg.steps, loss=metrics["loss"], psnr=metrics["psnr"])
        save_model(out, trainer.model, cfg, trainer.step, trainer.elapsed)
        (out / STATE).unlink(missing_ok=True)
        return out

    @staticmethod
    def _checkpoint(out: Path, trainer: Trainer) -> None:
        save_model(out, trainer.model, trainer.cfg, trainer.step, trainer.elapsed)
        state = trainer.state_dict()
        _atomic(out / STATE, lambda p: torch.save(state, p))

    def render(self, ckpt: Path, cameras: Cameras, times: Float[Tensor, "N"], device: str = "cpu",
               n_samples: int | None = None, **kwargs) -> RenderOutput:
        """One image per camera at the matching normalised time. n_samples overrides the fit's sample count.
        extras: "dynamic" / "static" opacity shares (N, H, W)."""
        if kwargs:
            raise InputError(f"unknown dpdy render option(s): {', '.join(sorted(kwargs))} (available: n_samples)")
        ckpt = Path(ckpt)
        weights = ckpt / WEIGHTS
        stamp = weights.stat().st_mtime_ns if weights.exists() else 0
        model = _cached_model(str(ckpt.resolve()), str(device), stamp)
        times = torch.as_tensor(times, dtype=torch.float32, device=device).reshape(-1)
        if times.numel() == 1 and len(cameras) > 1:
            times = times.expand(len(cameras))
        if times.numel() != len(cameras):
            raise InputError(f"render: {len(cameras)} cameras but {times.numel()} times")
        cams = cameras.to(device)
        with torch.no_grad():
            out = model.render_image(Cameras(cams.K.float(), cams.w2c.float(), cams.width, cams.height), times,
                                     n_samples=n_samples)
        return method_output(out)
