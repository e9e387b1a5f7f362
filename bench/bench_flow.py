"""Optical-flow backends on a synthetic scene with exact ground truth: accuracy, occlusion masks, speed.

    .venv/bin/python bench/bench_flow.py                      # 48 frames 256x192, rendered in-process
    .venv/bin/python bench/bench_flow.py --frames 16 --backends dis-medium,raft-small
    .venv/bin/python bench/bench_flow.py --raft-checkpoint ../shared/weights/raft-small.pth

Columns: EPE (end-point error, px) of the forward flow t -> t+1 over the pixels whose ground-truth motion is
visible in frame t+1, split into background and moving-object pixels (ground-truth instance ids); the
recall / precision of our forward-backward mask at flagging the pixels ground truth calls occluded or out of
frame; wall-clock and CPU (all threads) milliseconds per flow field (one direction of one pair; both
directions are computed), consistency check included: on a shared machine the CPU time is the steadier of
the two; peak resident memory of the process so far.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see monodyn_cli/__init__.py

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.flow_ops import compute_video_flow  # noqa: E402
from models.raft import load_raft  # noqa: E402

DEFAULT_BACKENDS = "dis-ultrafast,dis-fast,dis-medium,raft-small"
SHARED_RAFT = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "raft-small.pth"


def synth_clip(args) -> dict[str, np.ndarray]:
    """Render only the input camera of a synthetic scene: frames + exact flow, visibility and instance ids."""
    from monodyn_cli.synth import SynthConfig, build_scene, render_view

    cfg = SynthConfig(seed=args.seed, frames=args.frames, width=args.width, height=args.height, objects=args.objects)
    return _arrays(render_view(build_scene(cfg), "input"))


def scene_dir_clip(path: Path) -> dict[str, np.ndarray]:
    """The input camera of a scene written by `monodyn synth` (its exact rgb.npy, not the encoded input.mp4)."""
    from monodyn_cli.synth import load_gt

    return _arrays(load_gt(path).view("input"))


def _arrays(view) -> dict[str, np.ndarray]:
    return {k: np.asarray(getattr(view, k)) for k in ("rgb", "instances", "flow_fw", "valid_fw")}


def evaluate(est: dict[str, np.ndarray], clip: dict[str, np.ndarray]) -> dict[str, float]:
    err = np.linalg.norm(est["fw"] - clip["flow_fw"], axis=-1)
    visible = clip["valid_fw"]
    moving = clip["instances"][:-1] > 0
    occluded = ~visible
    flagged = ~est["valid_fw"]
    return {
        "epe_bg": float(err[visible & ~moving].mean()),
        "epe_obj": float(err[visible & moving].mean()) if (visible & moving).any() else float("nan"),
        "epe_all": float(err[visible].mean()),
        "occ_recall": float(flagged[occluded].mean()) if occluded.any() else float("nan"),
        "occ_precision": float(occluded[flagged].mean()) if flagged.any() else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", type=Path, help="a scene folder from `monodyn synth` (default: render one here)")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--height", type=int, default=192)
    ap.add_argument("--objects", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backends", default=DEFAULT_BACKENDS, help=f"comma-separated (default {DEFAULT_BACKENDS})")
    ap.add_argument("--raft-checkpoint", type=Path, default=SHARED_RAFT if SHARED_RAFT.is_file() else None)
    ap.add_argument("--iters", type=int, default=12, help="RAFT iterations")
    ap.add_argument("--batch", type=int, default=4, help="RAFT pairs per call")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    t0 = time.perf_counter()
    clip = scene_dir_clip(args.scene) if args.scene else synth_clip(args)
    T, H, W = clip["rgb"].shape[:3]
    moving_px = float((clip["instances"][:-1] > 0).mean())
    print(f"scene: {T} frames {W}x{H}, {100 * moving_px:.1f}% object pixels, "
          f"{100 * (1 - clip['valid_fw'].mean()):.1f}% occluded/out of frame, "
          f"median |gt flow| {np.median(np.linalg.norm(clip['flow_fw'], axis=-1)):.2f} px "
          f"(ready in {time.perf_counter() - t0:.1f}s); torch threads {torch.get_num_threads()}")

    rows = []
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if name.startswith("dis-"):
            run = lambda: compute_video_flow(clip["rgb"], "dis", dis_preset=name[4:])  # noqa: E731
        elif name.startswith("raft-"):
            model = load_raft(args.raft_checkpoint, small=name == "raft-small", device=args.device)
            run = lambda: compute_video_flow(  # noqa: E731
                clip["rgb"], "raft", model, iters=args.iters, batch=args.batch)
        else:
            raise SystemExit(f"unknown backend {name!r}")
        start, cpu_start = time.perf_counter(), time.process_time()
        est = run()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        metrics = evaluate(est, clip)
        metrics["ms_per_field"] = 1000 * seconds / (2 * (T - 1))
        metrics["cpu_ms_per_field"] = 1000 * cpu_seconds / (2 * (T - 1))
        metrics["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append((name, metrics))

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"flow t->t+1, {T} frames {W}x{H}, RAFT iters {args.iters}")
    cols = [("backend", None), ("EPE bg", "epe_bg"), ("EPE obj", "epe_obj"), ("EPE all", "epe_all"),
            ("occl. recall", "occ_recall"), ("occl. precision", "occ_precision"), ("ms/field", "ms_per_field"),
            ("CPU ms/field", "cpu_ms_per_field"), ("peak RSS MB", "peak_rss_mb")]
    for title, _ in cols:
        table.add_column(title, justify="left" if title == "backend" else "right")
    for name, m in rows:
        table.add_row(name, *[f"{m[k]:.3f}" if k.startswith(("epe", "occ")) else f"{m[k]:.0f}" for _, k in cols[1:]])
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
