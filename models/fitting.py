"""The one fit driver of the per-video methods (in the way nerfstudio's Trainer drives a pipeline).

A method hands `run_fit` a `FitTask` (one optimisation step, its full state, its portable checkpoint); the
driver owns everything around the steps:

- budgets: steps and/or minutes; the elapsed time carries across resume;
- the schedule position `progress` in [0, 1] = max(step / steps, elapsed / minutes budget), handed to each step;
- resume state: ONE file `train_state.pt` (task state incl. parameters, step, elapsed seconds) written
  atomically every `checkpoint_every` steps, so a kill at any moment leaves the old or the new complete state,
  never a model from one step paired with optimizer state from another; deleted when the fit finishes;
- metrics: `metrics.jsonl` in the checkpoint folder (one JSON object per logged step) and the
  `progress(step, total, **metrics)` callback of `models.registry.FitProgress`.

A deterministic task (all randomness from generators in its state) resumed from a kill gives the same metrics
and the same saved tensors as an uninterrupted run. With a minutes budget the result depends on the machine.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from models.errors import InputError
from models.files import atomic_write, remove_stale_temps
from models.registry import FitProgress

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
STATE_FORMAT = 1


class FitTask(Protocol):
    """What a method supplies to `run_fit`.

    Optional: `finish(step: int) -> dict[str, float]`, work after the last step that must be in the saved
    result but is no step of its own (OSN's final scale-network pass). It runs once per (re)started fit that
    reaches the end, before `save`, on the state the loop left, so it must be deterministic given that state.
    """

    def train_step(self, step: int, progress: float) -> dict[str, float]:
        """One optimisation step (`step` counts from 0; `progress` in [0, 1] is the schedule position).
        Returns its metrics, including "loss" (and "psnr" when known)."""

    def state_dict(self) -> dict:
        """Everything needed to resume bit for bit: parameters, optimizer(s), generator states, schedule state."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned (tensors arrive on the CPU)."""

    def save(self, out: Path, step: int, seconds: float) -> None:
        """Write the portable checkpoint (config.json + *.safetensors) into `out`, each file via `atomic_write`."""


@dataclass
class Budget:
    """Stop at `steps` steps or after `minutes` of fitting (None or 0: no time limit), whichever comes first."""

    steps: int
    minutes: float | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise InputError(f"--steps must be at least 1, got {self.steps}")
        if self.minutes is not None and not self.minutes >= 0:
            raise InputError(f"--minutes must be >= 0 (0 = no time limit), got {self.minutes}")

    def progress(self, step: int, seconds: float) -> float:
        """Schedule position in [0, 1]: the larger of the step share and the time share."""
        p = step / self.steps
        if self.minutes:
            p = max(p, seconds / (60.0 * self.minutes))
        return min(p, 1.0)


def run_fit(task: FitTask, out: Path, budget: Budget, progress: FitProgress, *, checkpoint_every: int = 0,
            resume: bool = False, log_every: int = 10, parallel=None) -> Path:
    """Run `task` until the budget ends, then `task.save(out, ...)`; returns `out`.

    parallel: a `models.parallel.Parallel` when several processes train together: only rank 0 writes (metrics,
    resume states, the result) and reports progress, and rank 0's clock ends a time budget for all.

    checkpoint_every: steps between resume states (0 = none). resume: continue from `out/train_state.pt` when
    it exists (else start over). log_every: steps between metrics lines / progress calls (and at the end)."""
    from models.parallel import Parallel

    parallel = parallel or Parallel()
    main = parallel.is_main
    out = Path(out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)
    parallel.barrier()
    state_path, metrics_path = out / STATE_FILE, out / METRICS_FILE
    step, elapsed, metrics = 0, 0.0, {}
    if resume and state_path.exists():
        # our own file, written by this code: not a portable format (that is task.save's), so plain pickle
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state.get("format") != STATE_FORMAT:
            raise InputError(f"{state_path} is from another monodyn version; fit again without --resume")
        task.load_state_dict(state["task"])
        step, elapsed, metrics = int(state["step"]), float(state["elapsed"]), dict(state["metrics"])
        parallel.barrier()  # every process has read the state before rank 0 may overwrite it
        if main:
            _truncate_metrics(metrics_path, step)
    elif main:
        state_path.unlink(missing_ok=True)
        metrics_path.unlink(missing_ok=True)

    log = _MetricsLog(metrics_path)
    start = time.perf_counter() - elapsed  # elapsed seconds carry across resume
    logged = step
    while step < budget.steps:
        now = budget.progress(step, parallel.agree(time.perf_counter() - start))  # one clock read (a collective)
        if now >= 1.0:
            break
        metrics = task.train_step(step, now)
        step += 1
        seconds = time.perf_counter() - start
        if main and log_every > 0 and step % log_every == 0:
            log.write(step, seconds, metrics)
            progress(step, budget.steps, **metrics)
            logged = step
        if main and checkpoint_every > 0 and step % checkpoint_every == 0 and step < budget.steps:
            state = {"format": STATE_FORMAT, "step": step, "elapsed": seconds, "metrics": metrics,
                     "task": task.state_dict()}
            atomic_write(state_path, lambda p: torch.save(state, p))

    finish = getattr(task, "finish", None)
    extra = finish(step) if finish is not None else {}
    seconds = time.perf_counter() - start
    if main:
        if extra or logged != step:
            metrics = {**metrics, **extra}
            log.write(step, seconds, metrics)
        progress(step, budget.steps, **metrics)
        task.save(out, step, seconds)
        state_path.unlink(missing_ok=True)  # after the checkpoint: a kill in between resumes and saves again
    parallel.barrier()
    return out


class _MetricsLog:
    """Appends one JSON object per logged step; non-finite numbers become null (keeps every line valid JSON)."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, step: int, seconds: float, metrics: dict[str, float]) -> None:
        row = {"step": step, "seconds": round(seconds, 3), **{k: _finite(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def _finite(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the lines up to the resumed step (a killed run may have logged later steps or half a line)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            pass
    atomic_write(path, lambda p: p.write_text("".join(keep)))
