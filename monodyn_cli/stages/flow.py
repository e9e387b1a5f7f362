"""Flow stage: forward and backward optical flow between neighbouring frames, with consistency masks.

Outputs (float16 on disk: flow in pixels keeps ~0.03 px precision at 256 px displacements):
flow_fw.npy (T-1,H,W,2) t -> t+1, flow_bw.npy (T-1,H,W,2) t+1 -> t, valid_fw.npy / valid_bw.npy (T-1,H,W) bool
(forward-backward check), preview.png (colour-coded flow of a few pairs).
"""

from __future__ import annotations

import json

import cv2
import numpy as np

from monodyn_cli.pipeline import StageSpec
from monodyn_cli.stages.configs import FlowConfig
from monodyn_cli.stages.outputs import DECODE, FLOW
from monodyn_cli.workspace import StageContext

NAME, VERSION = "flow", 1


def run(ctx: StageContext, cfg: FlowConfig) -> list[str]:
    from models.flow_ops import compute_video_flow, flow_to_rgb

    frames = np.load(ctx.inputs["decode"].file(DECODE.frames), mmap_mode="r")
    model = None
    if cfg.backend == "raft":
        from models.raft import load_raft

        model = load_raft(cfg.raft_checkpoint, device=cfg.device)
    total = 2 * (len(frames) - 1)
    with ctx.progress.task(f"flow ({cfg.backend})", total) as advance:
        done = [0]

        def progress(n: int, _total: int) -> None:
            advance(n - done[0])
            done[0] = n
        flow = compute_video_flow(np.asarray(frames), cfg.backend, model, progress, iters=cfg.iters,
                                  dis_preset=cfg.dis_preset)
    for name in ("fw", "bw"):
        np.save(ctx.out / getattr(FLOW, f"flow_{name}"), flow[name].astype(np.float16))
        np.save(ctx.out / getattr(FLOW, f"valid_{name}"), flow[f"valid_{name}"])
    picks = np.linspace(0, len(frames) - 2, min(4, len(frames) - 1)).round().astype(int)
    rows = [np.concatenate([frames[i], flow_to_rgb(flow["fw"][i])], axis=1) for i in picks]
    cv2.imwrite(str(ctx.out / FLOW.preview), np.concatenate(rows, axis=0)[..., ::-1])
    valid = float(flow["valid_fw"].mean())
    mag = float(np.median(np.linalg.norm(flow["fw"], axis=-1)))
    (ctx.out / FLOW.summary).write_text(json.dumps({"consistent_fraction": valid, "median_magnitude_px": mag}))
    ctx.extra["summary"] = f"{cfg.backend}: median |flow| {mag:.2f}px, {100 * valid:.0f}% consistent"
    return [FLOW.flow_fw, FLOW.flow_bw, FLOW.valid_fw, FLOW.valid_bw, FLOW.preview, FLOW.summary]


SPEC = StageSpec(NAME, VERSION, ("decode",), run)
