"""Cost of one DpDy fit step, and where it goes (issue 21: <= 120 ms at 256x192 so a 5-minute fit runs >= 2500 steps).

    .venv/bin/python bench/bench_step.py                       # the bundled sample (48 frames, 256x192), 1 and 2 threads
    .venv/bin/python bench/bench_step.py --workspace WS --steps 600 --threads 2

Preprocesses the bundled sample into build/bench-step (cached), builds the fit task, runs `--steps` steps, and prints
ms/step over the first and the last 40 steps (densification grows the sets in between), with the Gaussian counts,
and the share of the time in the rasterizer (forward + backward) from the torch profiler. Take timings on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.tables import table  # noqa: E402
from models.dpdy.config import DpDyConfig  # noqa: E402
from models.dpdy.task import DpDyTask  # noqa: E402
from monodyn_cli.scene_loader import load_scene  # noqa: E402
from monodyn_cli.workspace import Workspace  # noqa: E402


def timed(task: DpDyTask, start: int, n: int, total: int) -> float:
    t0 = time.perf_counter()
    for s in range(start, start + n):
        task.train_step(s, s / total)
    return (time.perf_counter() - t0) / n * 1000


def raster_share(task: DpDyTask, start: int, total: int) -> float:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for s in range(start, start + 10):
            task.train_step(s, s / total)
    events = prof.key_averages()
    everything = sum(e.self_cpu_time_total for e in events)
    raster = sum(e.self_cpu_time_total for e in events if "Rasterize" in e.key)
    return raster / max(everything, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=600, help="steps run (the schedule assumes --schedule steps)")
    ap.add_argument("--schedule", type=int, default=3000, help="the fit's total steps (densification window)")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    ws = args.workspace or ROOT / "build" / "bench-step"
    if args.workspace is None and not (ws / "state.json").exists():
        subprocess.run([sys.executable, "-m", "monodyn_cli", "preprocess", str(ROOT / "samples/synth_scene/input.mp4"),
                        "-w", str(ws), "-q"], check=True)
    scene, _ = load_scene(Workspace(ws))
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        task = DpDyTask(scene, DpDyConfig(steps=args.schedule), torch.device("cpu"))
        timed(task, 0, 5, args.schedule)  # warm-up (kernel compilation is cached after the first run)
        first = timed(task, 5, 40, args.schedule)
        n_first = len(task.model.static) + len(task.model.dynamic)
        for s in range(45, args.steps - 40):
            task.train_step(s, s / args.schedule)
        last = timed(task, args.steps - 40, 40, args.schedule)
        share = raster_share(task, args.steps, args.schedule)
        rows.append([threads, f"{scene.width}x{scene.height}", n_first, len(task.model.static) + len(task.model.dynamic),
                     first, last, f"{100 * share:.0f}%"])
    table("DpDy step cost", ["threads", "size", "Gaussians at start", f"after {args.steps} steps", "ms/step first 40",
                             "ms/step last 40", "rasterizer share"], rows)


if __name__ == "__main__":
    main()
