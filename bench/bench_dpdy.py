"""Benchmark of `monodyn fit --method dpdy` (no diffusion prior) on the CPU.

    .venv/bin/python bench/bench_dpdy.py                       # both parts
    .venv/bin/python bench/bench_dpdy.py --only synth --synth-minutes 3 --threads 1
    .venv/bin/python bench/bench_dpdy.py --only lego --lego-minutes 10 --cfg "--batch-rays 2048"

(a) synth: a 48-frame 256x192 `monodyn synth` scene (seed 0, 2 objects; generated once into --synth-dir).
    The Scene is built straight from the ground truth of the input camera (frames, cameras, instance masks,
    exact optical flow, and depth unless --no-depth), bypassing SfM; centre / radius are computed from the
    ground-truth surface points the way the sfm stage computes them from its points. Fit with a time budget,
    then render the held-out camera at azimuth +30 degrees at all 48 times: PSNR and masked PSNR (DyCheck
    co-visibility mask), training-view PSNR, fit seconds, render frames/s at 256x192.
(b) lego: D-NeRF lego at 100x100 (../shared/data/gt/dnerf_lego_tiny.npz, train = first 50, test = last 20),
    test PSNR against fitting minutes (evaluations are not counted as fitting time).
--cfg passes DpDy options (as on the command line) to both parts; the load average is printed because the
machine may be shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see monodyn_cli/__init__.py

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tables import table  # noqa: E402  (bench/ is the script's folder)

from models.cameras import pixel_grid, unproject  # noqa: E402
from models.dpdy import DpDyConfig, DpDyMethod  # noqa: E402
from models.dpdy.trainer import Trainer  # noqa: E402
from models.scene import Scene  # noqa: E402
from monodyn_cli.dataclass_options import parse_options  # noqa: E402
from monodyn_cli.evaluation import covisible_mask, load_multiview_npz  # noqa: E402
from monodyn_cli.metrics import psnr  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LEGO = SHARED / "data" / "gt" / "dnerf_lego_tiny.npz"


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def config(args, minutes: float, steps: int) -> DpDyConfig:
    """--cfg options, with the part's time budget and step cap."""
    return dataclasses.replace(parse_options(DpDyConfig, shlex.split(args.cfg)), minutes=minutes, steps=steps)


def save_strip(path: Path, pred: torch.Tensor, gt: torch.Tensor, n: int = 4) -> None:
    """Rows of ground truth | render for n frames, as a PNG to look at."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    idx = np.linspace(0, len(pred) - 1, min(n, len(pred))).round().astype(int)
    rows = [np.concatenate([gt[i].numpy(), pred[i].clamp(0, 1).numpy()], axis=1) for i in idx]
    cv2.imwrite(str(path), (np.concatenate(rows, 0)[..., ::-1] * 255).round().astype(np.uint8))


def render_fps(ckpt: Path, cams, times, reps: int = 3) -> float:
    method = DpDyMethod()
    method.render(ckpt, cams[0], times[:1])  # load + warm-up
    start = time.perf_counter()
    for i in range(reps):
        method.render(ckpt, cams[i % len(cams)], times[i % len(times):i % len(times) + 1])
    return reps / (time.perf_counter() - start)


# ---- (a) synthetic scene ---------------------------------------------------------------------------------------

def synth_scene(folder: Path, use_depth: bool):
    from monodyn_cli.synth import SynthConfig, load_gt, synthesize

    if not (folder / "gt" / "scene.json").exists():
        print(f"generating the synthetic scene into {folder} ...", flush=True)
        synthesize(SynthConfig(seed=0, frames=48, width=256, height=192, objects=2), folder)
    gt = load_gt(folder)
    v = gt.view("input")
    depth = np.asarray(v.depth, np.float32)
    # centre / radius as the sfm stage derives them from its points (5-95th percentile box, 95th pct distance)
    cams = v.cameras
    pts = []
    xy = pixel_grid(cams.width, cams.height).reshape(-1, 2)[::97]
    for t in range(0, len(depth), 4):
        z = torch.as_tensor(depth[t].reshape(-1)[::97])
        pts.append(unproject(xy, z, cams.K[t], cams.w2c[t]))
    pts = torch.cat(pts).numpy()
    lo, hi = np.percentile(pts, 5, axis=0), np.percentile(pts, 95, axis=0)
    center = (lo + hi) / 2
    radius = float(np.percentile(np.linalg.norm(pts - center, axis=1), 95))
    T = depth.shape[0]
    scene = Scene(frames=np.asarray(v.rgb), timestamps=np.arange(T) / float(gt.meta["fps"]), cameras=cams,
                  instances=np.asarray(v.instances), flow_fw=np.asarray(v.flow_fw), flow_bw=np.asarray(v.flow_bw),
                  valid_fw=np.asarray(v.valid_fw), valid_bw=np.asarray(v.valid_bw),
                  depth=depth if use_depth else None, center=center.astype(np.float32), radius=radius,
                  meta={"source": str(folder)})
    return gt, scene


def bench_synth(args) -> None:
    gt, scene = synth_scene(Path(args.synth_dir), not args.no_depth)
    cfg = config(args, minutes=args.synth_minutes, steps=args.synth_steps)
    out = Path(tempfile.mkdtemp(prefix="dpdy-synth-"))
    print(f"synth: centre {np.round(scene.center, 2).tolist()} radius {scene.radius:.2f}; fitting {cfg.minutes} min "
          f"/ {cfg.steps} steps ({load()})", flush=True)
    start = time.perf_counter()
    last = [start]

    def progress(step, total, **m):
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            print(f"  step {step} {last[0] - start:.0f}s loss {m['loss']:.4f} batch PSNR {m['psnr']:.2f}", flush=True)

    ckpt = DpDyMethod().fit(scene, cfg, out, progress)
    fit_s = time.perf_counter() - start
    import json
    steps = json.loads((ckpt / "config.json").read_text())["step"]
    method = DpDyMethod()
    inp = gt.view("input")
    rows = []
    for name in ["input"] + args.synth_cameras:
        v = gt.view(name)
        frames = np.arange(0, 48, args.synth_stride)
        images = torch.as_tensor(np.asarray(v.rgb)[frames], dtype=torch.float32) / 255.0
        pred = torch.cat([method.render(ckpt, v.cameras[int(i)], scene.times[int(i):int(i) + 1]).rgb for i in frames])
        if args.save_png:
            save_strip(Path(args.save_png) / f"synth-{name}.png", pred, images)
        row = [name, round(fit_s), steps, float(psnr(pred.clamp(0, 1), images).mean())]
        if name != "input":
            mask = covisible_mask(np.asarray(v.depth), v.cameras, np.asarray(v.instances), np.asarray(inp.depth),
                                  inp.cameras)[frames]
            m = torch.as_tensor(mask, dtype=torch.float32)
            dyn = torch.as_tensor(np.asarray(v.instances)[frames] > 0, dtype=torch.float32) * m
            row += [float(psnr(pred.clamp(0, 1), images, m).mean()), round(float(m.mean()), 3),
                    float(psnr(pred.clamp(0, 1), images, dyn).mean())]
        else:
            row += ["", "", ""]
        rows.append(row)
    fps = render_fps(ckpt, inp.cameras, scene.times)
    table(f"synth 48x256x192 (GT cameras, flow{'' if args.no_depth else ', depth'}), every {args.synth_stride}th "
          f"frame; render {fps:.2f} frames/s at 256x192; {load()}",
          ["camera", "fit s", "steps", "PSNR", "masked PSNR", "mask frac", "moving-object PSNR"], rows)


# ---- (b) D-NeRF lego --------------------------------------------------------------------------------------------

def bench_lego(args) -> None:
    scene, views = load_multiview_npz(LEGO)
    cfg = config(args, minutes=args.lego_minutes, steps=args.lego_steps)
    trainer = Trainer(scene, cfg)
    marks = [m for m in args.lego_marks if m < cfg.minutes] + [cfg.minutes] if cfg.minutes > 0 else [math.inf]
    rows = []
    print(f"lego: {cfg.minutes} min / {cfg.steps} steps ({load()})", flush=True)
    while not trainer.done():
        trainer.train_step()
        if trainer.elapsed >= 60 * marks[0] or trainer.done():
            marks.pop(0)
            with torch.no_grad():
                out = trainer.model.render_image(views.cameras, views.times)
            test = float(psnr(out.rgb.clamp(0, 1), views.images).mean())
            if args.save_png:
                save_strip(Path(args.save_png) / f"lego-{trainer.step}.png", out.rgb, views.images)
            rows.append([round(trainer.elapsed / 60, 2), trainer.step, test, round(float(out.weights_dynamic.mean()), 3),
                         round(trainer.model.occupancy.occupancy_fraction(), 3)])
            print(f"  {rows[-1][0]} min, step {trainer.step}: test PSNR {test:.2f} ({load()})", flush=True)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    table(f"lego 100x100: test PSNR (20 views, mean per image) vs fitting minutes; {n_params / 1e6:.2f} M parameters; "
          f"{load()}", ["fit min", "steps", "test PSNR", "dynamic share", "occupied"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["synth", "lego"], default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--cfg", default="", help="DpDy options for both parts, e.g. \"--batch-rays 2048\"")
    ap.add_argument("--synth-dir", default=str(Path(tempfile.gettempdir()) / "monodyn-bench-synth48"))
    ap.add_argument("--synth-minutes", type=float, default=3.0)
    ap.add_argument("--synth-steps", type=int, default=100000, help="step cap (the time budget usually ends first)")
    ap.add_argument("--synth-stride", type=int, default=3, help="evaluate every n-th frame")
    ap.add_argument("--synth-cameras", nargs="+", default=["heldout_az30"])
    ap.add_argument("--no-depth", action="store_true", help="synth: no depth maps (flow and masks only)")
    ap.add_argument("--save-png", default=None, help="folder for PNG strips of ground truth | render")
    ap.add_argument("--lego-minutes", type=float, default=10.0)
    ap.add_argument("--lego-steps", type=int, default=100000)
    ap.add_argument("--lego-marks", type=float, nargs="+", default=[1, 2, 4, 6, 8])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {load()}")
    if args.only in (None, "synth"):
        bench_synth(args)
    if args.only in (None, "lego"):
        if not LEGO.exists():
            print(f"skipping lego: {LEGO} not found")
            return
        bench_lego(args)


if __name__ == "__main__":
    main()
