"""The fit driver: device choice, budgets, a tiny deterministic task fitted to its analytic optimum, kill ->
resume equal to an uninterrupted run, atomic writes, metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models import fitting
from models.devices import resolve_device
from models.errors import InputError
from models.files import atomic_write
from models.fitting import Budget, run_fit

# ---- device ------------------------------------------------------------------------------------------------

def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(" CPU ") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(InputError, match=f"--device {name}: no CUDA device.*use --device cpu"):
            resolve_device(name)
    with pytest.raises(InputError, match="unknown device; use auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    with pytest.raises(InputError, match="not a device"):
        resolve_device("cuda:x")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(InputError, match="2 CUDA device.*cuda:0 .. cuda:1"):
        resolve_device("cuda:2")


# ---- a tiny deterministic task ------------------------------------------------------------------------------

class Stop(Exception):
    pass


class Quadratic:
    """Fit w (4,) to minimise E|x.w - y|^2 with y = x.w* + noise, x ~ N(0, I): the optimum is w*. Batches come
    from a torch.Generator in the task state; the learning rate follows `progress`. `stop_at` simulates a kill."""

    W_STAR = torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __init__(self, seed: int = 0, stop_at: int | None = None, step_seconds: float = 0.0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.w = torch.nn.Parameter(torch.randn(4))
        self.opt = torch.optim.Adam([self.w], lr=0.1)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.stop_at, self.step_seconds = stop_at, step_seconds
        self.steps_run: list[int] = []
        self.saved: list[tuple[int, float]] = []

    def train_step(self, step: int, progress: float) -> dict[str, float]:
        if step == self.stop_at:
            raise Stop
        if self.step_seconds:
            import time
            time.sleep(self.step_seconds)
        self.steps_run.append(step)
        for g in self.opt.param_groups:
            g["lr"] = 0.1 * 0.05 ** progress
        x = torch.randn(64, 4, generator=self.gen)
        y = x @ self.W_STAR + 0.01 * torch.randn(64, generator=self.gen)
        loss = ((x @ self.w - y) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": float(loss.detach()), "w0": float(self.w.detach()[0])}

    def state_dict(self) -> dict:
        return {"w": self.w.detach().clone(), "opt": self.opt.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])

    def save(self, out: Path, step: int, seconds: float) -> None:
        self.saved.append((step, seconds))
        atomic_write(out / "model.safetensors", lambda p: save_file({"w": self.w.detach()}, str(p)))
        atomic_write(out / "config.json", lambda p: p.write_text(json.dumps({"step": step})))


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_loss_goes_down_to_the_analytic_optimum(tmp_path):
    calls = []
    task = Quadratic()
    out = run_fit(task, tmp_path / "a", Budget(steps=300), lambda s, t, **m: calls.append((s, t, m)), log_every=25)
    w = load_file(str(out / "model.safetensors"))["w"]
    assert torch.allclose(w, Quadratic.W_STAR, atol=0.02), w
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(25, 301, 25))
    assert rows[-1]["loss"] < 1e-3 < rows[0]["loss"]
    assert all(isinstance(r["seconds"], float) for r in rows)
    assert [c[0] for c in calls] == list(range(25, 301, 25)) + [300] and {c[1] for c in calls} == {300}
    assert "loss" in calls[-1][2]
    assert task.steps_run == list(range(300)) and task.saved[0][0] == 300
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.jsonl", "model.safetensors"]


def test_killed_then_resumed_equals_uninterrupted(tmp_path):
    quiet = lambda *a, **k: None
    run_fit(Quadratic(), tmp_path / "a", Budget(steps=50), quiet, checkpoint_every=10, log_every=5)

    with pytest.raises(Stop):  # killed at step 27: the last resume state is at step 20
        run_fit(Quadratic(stop_at=27), tmp_path / "b", Budget(steps=50), quiet, checkpoint_every=10, log_every=5)
    state = torch.load(tmp_path / "b" / "train_state.pt", weights_only=False)
    assert state["step"] == 20 and state["elapsed"] > 0
    assert metrics(tmp_path / "b")[-1]["step"] == 25  # logged past the state: dropped on resume
    (tmp_path / "b" / "metrics.jsonl").open("a").write('{"step": 26, "lo')  # a half-written line
    (tmp_path / "b" / ".model.safetensors.tmp-99999999-deadbeef").write_bytes(b"partial")  # a killed writer's temp file

    resumed = Quadratic()
    run_fit(resumed, tmp_path / "b", Budget(steps=50), quiet, checkpoint_every=10, log_every=5, resume=True)
    assert resumed.steps_run == list(range(20, 50))
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert torch.equal(a["w"], b["w"])
    assert without_time(metrics(tmp_path / "a")) == without_time(metrics(tmp_path / "b"))
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["config.json", "metrics.jsonl", "model.safetensors"]

    # a plain (non-resume) rerun starts over, even with a state file there
    again = Quadratic()
    with pytest.raises(Stop):
        run_fit(Quadratic(stop_at=15), tmp_path / "c", Budget(steps=50), quiet, checkpoint_every=10)
    run_fit(again, tmp_path / "c", Budget(steps=50), quiet, checkpoint_every=10, log_every=5)
    assert again.steps_run == list(range(50)) and not (tmp_path / "c" / "train_state.pt").exists()


def test_kill_right_after_a_checkpoint(tmp_path):
    quiet = lambda *a, **k: None
    run_fit(Quadratic(), tmp_path / "a", Budget(steps=40), quiet, checkpoint_every=8)
    with pytest.raises(Stop):
        run_fit(Quadratic(stop_at=32), tmp_path / "b", Budget(steps=40), quiet, checkpoint_every=8)
    assert torch.load(tmp_path / "b" / "train_state.pt", weights_only=False)["step"] == 32
    run_fit(Quadratic(), tmp_path / "b", Budget(steps=40), quiet, checkpoint_every=8, resume=True)
    assert torch.equal(load_file(str(tmp_path / "a" / "model.safetensors"))["w"],
                       load_file(str(tmp_path / "b" / "model.safetensors"))["w"])


def test_minutes_budget_stops_the_loop_and_elapsed_time_carries(tmp_path):
    seen = []
    task = Quadratic(step_seconds=0.01)
    orig = task.train_step
    task.train_step = lambda step, p: (seen.append(p), orig(step, p))[1]
    run_fit(task, tmp_path / "a", Budget(steps=10_000, minutes=0.3 / 60), lambda *a, **k: None, log_every=5)
    n = len(task.steps_run)
    assert 5 <= n < 100  # ~30 steps of 10 ms
    step, seconds = task.saved[0]
    assert step == n and seconds >= 0.3
    assert all(b >= a for a, b in zip(seen, seen[1:])) and seen[-1] > 0.5  # time drives the schedule
    assert metrics(tmp_path / "a")[-1]["step"] == n  # the end is always logged

    # elapsed time carries across resume: a state saved at 0.25 s of a 0.3 s budget leaves ~0.05 s
    with pytest.raises(Stop):
        run_fit(Quadratic(stop_at=3), tmp_path / "b", Budget(steps=100, minutes=10), lambda *a, **k: None,
                checkpoint_every=2)
    path = tmp_path / "b" / "train_state.pt"
    state = torch.load(path, weights_only=False)
    state["elapsed"] = 0.25
    torch.save(state, path)
    resumed = Quadratic(step_seconds=0.01)
    run_fit(resumed, tmp_path / "b", Budget(steps=100, minutes=0.3 / 60), lambda *a, **k: None, resume=True)
    assert 1 <= len(resumed.steps_run) <= 10 and resumed.saved[0][1] >= 0.3


def test_budget_validation_and_progress():
    with pytest.raises(InputError, match="--steps must be at least 1"):
        Budget(steps=0)
    with pytest.raises(InputError, match="--minutes"):
        Budget(steps=1, minutes=-1)
    assert Budget(10).progress(5, 1e9) == 0.5
    assert Budget(10, minutes=1).progress(2, 30) == 0.5 and Budget(10, minutes=1).progress(9, 30) == 0.9
    assert Budget(10, minutes=0).progress(2, 1e9) == 0.2 and Budget(10, 1).progress(20, 1e9) == 1.0


def test_finish_runs_after_the_last_step_and_is_logged(tmp_path):
    task = Quadratic()
    task.finish = lambda step: {"final_w0": float(task.w.detach()[0]) + step}
    run_fit(task, tmp_path / "a", Budget(steps=20), lambda *a, **k: None, log_every=10)
    rows = metrics(tmp_path / "a")
    assert [r["step"] for r in rows] == [10, 20, 20] and "final_w0" in rows[-1] and "loss" in rows[-1]


# ---- atomic writes and metrics ------------------------------------------------------------------------------

def test_atomic_write_replaces_or_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write(path, lambda p: p.write_text("old"))
    assert path.read_text() == "old"

    def broken(p: Path) -> None:
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    atomic_write(path, lambda p: p.write_text("new"))
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]

    def interrupted(p: Path) -> None:  # Ctrl-C is no Exception: still cleaned up
        p.write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_metrics_lines_are_valid_json_even_for_nan(tmp_path):
    class NaNTask(Quadratic):
        def train_step(self, step, progress):
            m = super().train_step(step, progress)
            return {**m, "bad": float("nan"), "inf": float("inf")}

    run_fit(NaNTask(), tmp_path / "a", Budget(steps=6), lambda *a, **k: None, log_every=2)
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    for line in lines:
        row = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
        assert row["bad"] is None and row["inf"] is None and isinstance(row["loss"], float)
    assert fitting.METRICS_FILE == "metrics.jsonl"
