"""Training DyST (a `models.fitting.FitTask`, driven by `run_fit`: budgets, resume states, metrics.jsonl).

Batches alternate: every `real_every`-th step is a real-clip batch (latents from the target itself) when the
training set has clips, the others are synthetic batches with the latent control swap (or, `swap=False`,
latents from the target itself: the ablation). Synthetic batches also train the orbit head: the camera
latent of the dynamics-source view (same pose, another camera), moved by the true (d-azimuth,
d-elevation), must give the target's camera latent (estimated from the camera source, gradient stopped).

Loss = L2 on `rays` random target pixels per scene (+ `head_weight` x the head's latent L2). AdamW, linear
warm-up then cosine decay over the schedule position (steps or minutes budget). All randomness comes from one
numpy Generator and the seeded initialisation, both in the resume state: the same seed gives the same weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from models.dyst.config import CONFIG, VERSION, WEIGHTS, DySTConfig
from models.dyst.data import Batch, TrainingSet, real_batch, synth_batch
from models.dyst.model import DyST, count_parameters
from models.errors import InputError
from models.files import atomic_write
from models.parallel import Parallel


@dataclass
class TrainConfig:
    seed: int = 0
    batch: int = 8
    rays: int = 192
    lr: float = 5e-4
    warmup: int = 200
    weight_decay: float = 0.01
    real_every: int = 4  # every 4th batch is real (when clips are present); 0: synthetic only
    swap: bool = True
    head_weight: float = 1.0
    dynamic_fraction: float = 0.5  # share of a synthetic target's rays drawn on its dynamic pixels
    nearest: bool = False  # swap: the dynamics latent from the target pose's closest other camera (else a random one)

    def validate(self) -> None:
        if self.batch < 1 or self.rays < 1:
            raise InputError(f"--batch and --rays must be positive, got {self.batch} and {self.rays}")
        if not self.lr > 0:
            raise InputError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.dynamic_fraction <= 1.0:
            raise InputError(f"--dynamic-fraction must be in [0, 1], got {self.dynamic_fraction}")
        if self.real_every < 0:
            raise InputError(f"--real-every must be >= 0, got {self.real_every}")


def build_model(cfg: DySTConfig, seed: int) -> DyST:
    """The network with weights initialised from `seed` alone (independent of the global RNG)."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return DyST(cfg)
    finally:
        torch.random.set_rng_state(state)


def batch_loss(model: DyST, b: Batch, head_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """L2 render loss of one batch (+ the orbit head's latent loss on synthetic batches)."""
    z = model.encode(b.inputs)
    if b.same_sources:
        cam, dyn = model.estimate(z, b.camera_source)
        ref_cam = None
    else:
        both = model.estimate(z.repeat(2, 1, 1), torch.cat([b.camera_source, b.dynamics_source]))
        cam = both[0][:len(z)]
        dyn = both[1][len(z):]
        ref_cam = both[0][len(z):]
    pred = model.decode(z, b.xy, cam, dyn)
    mse = ((pred - b.rgb) ** 2).mean()
    loss, metrics = mse, {"mse": mse.item(), "psnr": -10 * math.log10(max(mse.item(), 1e-12))}
    if b.reference is not None and head_weight > 0:
        if ref_cam is None:  # no swap: the reference view needs an estimate of its own
            ref_cam = model.estimate(z, b.reference)[0]
        moved = model.orbit(ref_cam.detach(), b.d_azimuth, b.d_elevation)
        target = cam.detach()
        head = ((moved - target) ** 2).mean() / target.var(0).mean().clamp_min(1e-6)
        loss = loss + head_weight * head
        metrics["head"] = head.item()
    metrics["loss"] = loss.item()
    return loss, metrics


class DySTTask:
    """One training run (FitTask protocol of models/fitting.py)."""

    def __init__(self, data: TrainingSet, model_cfg: DySTConfig, cfg: TrainConfig, device: str | torch.device = "cpu",
                 info: dict | None = None, parallel: Parallel | None = None):
        cfg.validate()
        model_cfg.validate()
        self.parallel = parallel or Parallel(device=torch.device(device))
        self.parallel.check_batch(cfg.batch)
        device = self.parallel.device
        if (data.width, data.height) != (model_cfg.width, model_cfg.height):
            raise InputError(f"training set is {data.width}x{data.height} but the model is "
                             f"{model_cfg.width}x{model_cfg.height}; rebuild the set or change --width/--height")
        self.data, self.model_cfg, self.cfg, self.device = data, model_cfg, cfg, torch.device(device)
        self.info = dict(info or {})
        self.model = build_model(model_cfg, cfg.seed).to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     betas=(0.9, 0.99))
        self.rng = np.random.default_rng([cfg.seed, 1])
        self.running: dict[str, float] = {}  # running mean PSNR of synthetic and of real batches

    def _lr(self, step: int, progress: float) -> float:
        warm = min(1.0, (step + 1) / max(self.cfg.warmup, 1))
        return self.cfg.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    def is_real(self, step: int) -> bool:
        return bool(self.cfg.real_every > 0 and self.data.real and step % self.cfg.real_every == self.cfg.real_every - 1)

    def next_batch(self, step: int) -> Batch:
        if self.is_real(step):
            b = real_batch(self.rng, self.data, self.cfg.batch, self.cfg.rays, self.model_cfg.input_views)
        else:
            b = synth_batch(self.rng, self.data, self.cfg.batch, self.cfg.rays, self.cfg.swap,
                            self.model_cfg.input_views, self.cfg.dynamic_fraction, self.cfg.nearest)
        return b

    def _shard(self, b: Batch, pos: torch.Tensor) -> Batch:
        """The items `pos` of a global batch, on this process's device."""
        fields = {}
        for name in ("inputs", "camera_source", "dynamics_source", "xy", "rgb", "reference", "d_azimuth",
                     "d_elevation"):
            v = getattr(b, name)
            fields[name] = None if v is None else v[pos].to(self.device)
        return Batch(**fields, same_sources=b.same_sources)

    def gradients(self, step: int) -> dict[str, float]:
        """Draw a global batch (the same on every process), compute this process's shards' gradients and average
        them over the processes. The orbit head's loss is normalised by its shard's latent variance."""
        par = self.parallel
        self.model.train()
        b = self.next_batch(step)
        self.opt.zero_grad(set_to_none=True)
        metrics: dict[str, float] = {}
        for pos in par.shards(self.cfg.batch):
            with par.autocast():
                loss, m = batch_loss(self.model, self._shard(b, pos), self.cfg.head_weight)
            (loss / par.accumulate).backward()
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + v / par.accumulate
        par.average_gradients(list(self.model.parameters()))
        return metrics

    def train_step(self, step: int, progress: float) -> dict[str, float]:
        for g in self.opt.param_groups:
            g["lr"] = self._lr(step, progress)
        metrics = self.gradients(step)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        # the log samples every 20th step, which with real_every=4 is always a real batch: keep running means
        # of each kind so the curves show both
        kind = "psnr_real" if self.is_real(step) else "psnr_synth"
        old = self.running.get(kind)
        self.running[kind] = metrics["psnr"] if old is None else 0.95 * old + 0.05 * metrics["psnr"]
        return {**metrics, **self.running}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "rng": self.rng.bit_generator.state,
                "running": dict(self.running)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.rng.bit_generator.state = state["rng"]
        self.running = dict(state.get("running", {}))

    def save(self, out: Path, step: int, seconds: float) -> None:
        save_checkpoint(Path(out), self.model, {"train": asdict(self.cfg), "step": step,
                                                "seconds": round(seconds, 1), **self.info})


def save_checkpoint(out: Path, model: DyST, extra: dict | None = None) -> Path:
    """config.json (method, version, every size, training facts) + model.safetensors, each atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"method": "dyst", "version": VERSION, "config": model.cfg.to_json(),
            "parameters": count_parameters(model), **(extra or {})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS, lambda p: save_file(tensors, str(p)))
    atomic_write(out / CONFIG, lambda p: p.write_text(json.dumps(meta, indent=1)))
    return out
