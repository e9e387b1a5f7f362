"""Motion segmentation on synthetic scenes with exact instance ids: a moving and a static input camera.

    .venv/bin/python bench/bench_segment.py                       # 48 frames 256x192, DIS + exact flow
    .venv/bin/python bench/bench_segment.py --flows dis,raft --objects 3 --seed 1
    .venv/bin/python bench/bench_segment.py --frames 16 --no-refine

Columns: fg IoU = IoU of "any object" over all frames (intersections and unions summed over the video);
obj IoU = per ground-truth object IoU over the video after matching predicted ids to ground-truth ids
(Hungarian on video IoU; an unmatched object scores 0), averaged over objects; pred = number of predicted
ids; id sw. = id switches (frames where the predicted id covering most of a ground-truth object changes),
summed over objects; s = segmentation seconds (flow excluded); flow "exact" is the renderer's flow and
visibility, which isolates segmentation errors from flow errors.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see monodyn_cli/__init__.py

import numpy as np
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.flow_ops import compute_video_flow  # noqa: E402
from models.segmentation.motion import MotionConfig, segment_motion  # noqa: E402

SHARED_RAFT = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "raft-small.pth"


def render(camera: str, args) -> dict[str, np.ndarray]:
    from monodyn_cli.synth.raycast import render_view
    from monodyn_cli.synth.scene import SynthConfig, build_scene

    cfg = SynthConfig(seed=args.seed, frames=args.frames, width=args.width, height=args.height,
                      objects=args.objects, camera=camera)
    v = render_view(build_scene(cfg), "input")
    return {k: np.asarray(getattr(v, k)) for k in ("rgb", "instances", "flow_fw", "flow_bw", "valid_fw", "valid_bw")}


def scores(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Foreground IoU, matched per-object IoU, id switches (see the module docstring)."""
    fg_p, fg_g = pred > 0, gt > 0
    fg_iou = float((fg_p & fg_g).sum() / max((fg_p | fg_g).sum(), 1))
    gt_ids = [int(k) for k in np.unique(gt) if k > 0]
    pred_ids = [int(k) for k in np.unique(pred) if k > 0]
    iou = np.zeros((len(gt_ids), len(pred_ids)))
    for i, g in enumerate(gt_ids):
        gm = gt == g
        for j, p in enumerate(pred_ids):
            pm = pred == p
            iou[i, j] = (gm & pm).sum() / max((gm | pm).sum(), 1)
    per_obj = np.zeros(len(gt_ids))
    if len(pred_ids):
        rows, cols = linear_sum_assignment(-iou)
        per_obj[rows] = iou[rows, cols]
    switches = 0
    for g in gt_ids:
        dominant = []
        for t in range(len(gt)):
            ids = pred[t][gt[t] == g]
            ids = ids[ids > 0]
            if len(ids) and len(ids) >= 0.3 * (gt[t] == g).sum():
                dominant.append(int(np.bincount(ids).argmax()))
        switches += sum(a != b for a, b in zip(dominant, dominant[1:]))
    return {"fg_iou": fg_iou, "obj_iou": float(per_obj.mean()) if gt_ids else float("nan"),
            "pred": len(pred_ids), "gt": len(gt_ids), "switches": switches}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--height", type=int, default=192)
    ap.add_argument("--objects", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flows", default="exact,dis", help="comma-separated: exact, dis, raft (raft-small)")
    ap.add_argument("--no-refine", action="store_true", help="also skip the GrabCut edge refinement")
    args = ap.parse_args()

    rows = []
    for camera in ("moving", "static"):
        t0 = time.perf_counter()
        clip = render(camera, args)
        gt = clip["instances"]
        print(f"{camera} camera: {len(gt)} frames {gt.shape[2]}x{gt.shape[1]}, {100 * (gt > 0).mean():.1f}% object "
              f"pixels, rendered in {time.perf_counter() - t0:.1f}s", flush=True)
        for flow_name in [f.strip() for f in args.flows.split(",") if f.strip()]:
            if flow_name == "exact":
                flow = {"fw": clip["flow_fw"], "bw": clip["flow_bw"], "valid_fw": clip["valid_fw"],
                        "valid_bw": clip["valid_bw"]}
            elif flow_name == "dis":
                flow = compute_video_flow(clip["rgb"], "dis")
            elif flow_name == "raft":
                from models.raft import load_raft

                flow = compute_video_flow(clip["rgb"], "raft", load_raft(SHARED_RAFT if SHARED_RAFT.is_file() else None))
            else:
                raise SystemExit(f"unknown flow {flow_name!r}")
            for refine in ([False] if args.no_refine else [True, False]):
                start = time.perf_counter()
                res = segment_motion(flow["fw"], flow["bw"], flow["valid_fw"], flow["valid_bw"], clip["rgb"],
                                     MotionConfig(refine=refine))
                seconds = time.perf_counter() - start
                models = {k: res.models.count(k) for k in sorted(set(res.models))}
                rows.append((camera, flow_name, "on" if refine else "off", scores(res.ids, gt), seconds, models))

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"motion segmentation, {args.frames} frames {args.width}x{args.height}, "
                        f"{args.objects} objects, seed {args.seed}")
    for col in ("camera", "flow", "refine", "fg IoU", "obj IoU", "pred/gt", "id sw.", "s", "camera models"):
        table.add_column(col, justify="left" if col in ("camera", "flow", "camera models") else "right")
    for camera, flow_name, refine, m, seconds, models in rows:
        table.add_row(camera, flow_name, refine, f"{m['fg_iou']:.3f}", f"{m['obj_iou']:.3f}", f"{m['pred']}/{m['gt']}",
                      str(m["switches"]), f"{seconds:.1f}", " ".join(f"{k}:{v}" for k, v in models.items()))
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
