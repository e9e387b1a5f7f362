"""Many clips, one chain of commands each: monodyn batch CLIPS... --run "CHAIN", e.g. the chain
"preprocess, fit --method dpdy, render".

A chain is a list of monodyn commands; every stage of every clip runs as its own `python -m monodyn_cli` process,
so a stage that fails (or crashes) ends only its clip's chain, and its error line is kept. Locally the clips run one
after the other. On Ray each clip is one task that runs its chain where it lands; each stage is a task of its own
pinned to that node, with the CPU and GPU request of `STAGE_RESOURCES`, so a fit waits for a GPU while another
clip's preprocessing uses the CPUs. Workspaces are written where `--workspaces` says (shared storage on a cluster),
or, with `copy_back`, on the worker's disk and sent back to the driver as a tar archive when the chain ends.
"""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from models.errors import InputError

# (CPUs, GPUs) a stage asks Ray for; GPUs only where the cluster has any (fit and render use CUDA when present)
STAGE_RESOURCES = {"preprocess": (2, 0), "fit": (2, 1), "render": (1, 1), "eval": (1, 1), "export": (1, 0),
                   "report": (1, 0)}
STAGES = tuple(STAGE_RESOURCES)


@dataclass(frozen=True)
class Stage:
    command: str
    args: tuple[str, ...] = ()

    def __str__(self) -> str:
        return " ".join([self.command, *self.args])


@dataclass
class StageResult:
    stage: str
    ok: bool
    seconds: float
    line: str  # the last line of its output: the result (e.g. "wrote ...mp4") or the error


@dataclass
class ClipResult:
    clip: str
    workspace: str
    stages: list[StageResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.stages) and all(s.ok for s in self.stages)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)


def parse_chain(text: str) -> list[Stage]:
    """'preprocess --max-side 160, fit --method dpdy --minutes 5, render --orbit 30' -> stages, checked."""
    stages = []
    for part in text.split(","):
        words = shlex.split(part)
        if not words:
            raise InputError(f"--run {text!r} has an empty stage: separate commands with single commas")
        if words[0] not in STAGES:
            raise InputError(f"--run: {words[0]!r} is not a command batch runs (use {', '.join(STAGES)})")
        bad = [w for w in words[1:] if w in ("-w", "--workspace") or w.startswith("--workspace=")]
        if bad:
            raise InputError(f"--run: {words[0]} gets each clip's workspace from batch; drop {bad[0]}")
        stages.append(Stage(words[0], tuple(words[1:])))
    if stages[0].command != "preprocess" and "preprocess" in [s.command for s in stages]:
        raise InputError("--run: preprocess must come first (the other commands read its workspace)")
    return stages


def workspace_for(clip: Path, workspaces: Path | None) -> Path:
    """Like preprocess: `<clip>.monodyn` beside the clip, or `<workspaces>/<clip name>.monodyn`."""
    name = (clip.stem if clip.is_file() else clip.name) + ".monodyn"
    return (workspaces / name) if workspaces is not None else clip.with_name(name)


def stage_argv(stage: Stage, clip: Path, workspace: Path) -> list[str]:
    """The command line of one stage for one clip."""
    if stage.command == "preprocess":
        return ["preprocess", str(clip), "--workspace", str(workspace), *stage.args]
    if stage.command == "report":
        return ["report", str(workspace), *stage.args]
    return [stage.command, "--workspace", str(workspace), *stage.args]


def run_stage(argv: list[str], env: dict[str, str] | None = None) -> StageResult:
    """One `python -m monodyn_cli ...` process; its last error line (or last output line) is kept."""
    start = time.perf_counter()
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "monodyn_cli", *argv], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    line = errors[-1] if errors else lines[-1] if lines else ""
    if proc.returncode != 0 and not errors:
        line = f"exit code {proc.returncode}" + (f": {line}" if line else "")
    return StageResult(argv[0], proc.returncode == 0, time.perf_counter() - start, line)


def run_chain(clip: Path, workspace: Path, stages: list[Stage],
              runner: Callable[[Stage, list[str]], StageResult] | None = None,
              on_stage: Callable[[str], None] = lambda s: None) -> ClipResult:
    """Run the stages in order for one clip; the first failure ends the chain."""
    runner = runner or (lambda stage, argv: run_stage(argv))
    result = ClipResult(str(clip), str(workspace))
    for stage in stages:
        on_stage(stage.command)
        done = runner(stage, stage_argv(stage, clip, workspace))
        result.stages.append(done)
        if not done.ok:
            break
    return result


# ---- Ray ------------------------------------------------------------------------------------------------

def pack(path: Path) -> bytes:
    """A file or folder as tar bytes (its name at the top)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(path, arcname=path.name)
    return buf.getvalue()


def unpack(data: bytes, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")


def run_on_ray(clips: list[tuple[Path, Path]], stages: list[Stage], address: str | None, copy_back: bool,
               cpus: int | None, on_done: Callable[[int, ClipResult], None]) -> list[ClipResult]:
    """One Ray task per clip (the chain), each stage a task pinned to the clip's node with its own resources.
    `clips`: (clip, workspace) pairs; with `copy_back` the clip travels to the worker and the workspace back."""
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray: `pip install 'ray[default]'`") from None
    if not ray.is_initialized():  # workers import monodyn_cli from where this driver does
        package_root = str(Path(__file__).resolve().parents[1])
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": package_root}})
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0

    def resources(command: str) -> dict:
        cpu, gpu = STAGE_RESOURCES[command]
        return {"num_cpus": cpus or cpu, "num_gpus": gpu if has_gpus else 0}

    @ray.remote(num_cpus=0)
    def stage_task(argv: list[str]) -> StageResult:
        return run_stage(argv)

    @ray.remote(num_cpus=0)
    def clip_task(clip: str, workspace: str, clip_data: bytes | None) -> tuple[ClipResult, bytes | None]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)

        def runner(stage: Stage, argv: list[str]) -> StageResult:
            return ray.get(stage_task.options(scheduling_strategy=here, **resources(stage.command)).remote(argv))

        if clip_data is None:
            return run_chain(Path(clip), Path(workspace), stages, runner), None
        with tempfile.TemporaryDirectory(prefix="monodyn-batch-") as tmp:
            unpack(clip_data, Path(tmp) / "clip")
            local_ws = Path(tmp) / Path(workspace).name
            result = run_chain(Path(tmp) / "clip" / Path(clip).name, local_ws, stages, runner)
            result.clip, result.workspace = clip, workspace
            for done in result.stages:  # name the workspace where the driver will have it
                done.line = done.line.replace(str(local_ws), workspace)
            return result, pack(local_ws) if local_ws.exists() else None

    pending = {clip_task.remote(str(c), str(w), pack(c) if copy_back else None): i for i, (c, w) in enumerate(clips)}
    results: list[ClipResult | None] = [None] * len(clips)
    while pending:
        [ready], _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready)
        try:
            result, archive = ray.get(ready)
        except Exception as e:  # the worker died (node lost, out of memory): this clip fails, the others go on
            clip, ws = clips[i]
            result, archive = ClipResult(str(clip), str(ws), [StageResult("ray", False, 0.0,
                                                                          f"error: ray task failed: {_first(e)}")]), None
        if archive is not None:
            unpack(archive, Path(result.workspace).parent)
        results[i] = result
        on_done(i, result)
    return results


def _first(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[-1][:300] if text else type(e).__name__
