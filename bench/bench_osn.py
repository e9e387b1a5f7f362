"""OSN on synthetic clips with several ground-truth scenes (the paper's Table 2, "multiple GT").

For each seed, `monodyn_cli.synth` makes one input video of two rigid objects plus scale variants: the objects
scaled about the input camera, so the video is (nearly) unchanged while held-out views differ. OSN is fitted on a
`Scene` as preprocessing gives it with exact flow, masks and depth, and by default ESTIMATED object poses (flow
tracks + PnP, `models.gaussians.motion_init`; --poses gt: the per-object poses per-object SfM would give, from
the generator). The ground-truth OSN scale of object k in a variant is sigma_k times its median depth (world units)
in the input video. Then:

1. validity: the scale network's score of every variant's ground-truth scales next to the generator's verdict
   (valid = nothing interpenetrates and the input video is unchanged), and the soft Z-buffer error of those scales
   computed from the generator's exact per-object layers (what OSN's pseudo-labels, valid <= --label-tolerance,
   would say with perfect geometry); and whether the ground-truth scales lie in the predicted valid range
   (per object, the range spanned by the valid combinations);
2. novel views: at a held-out camera, for every ground-truth scene (the base scene and each valid variant), the
   best of M valid OSN samples (scale_samples = M) by PSNR, and its SSIM; also OSN rendered at the exact
   ground-truth scales (oracle) and at its default combination;
3. DpDy fitted on the same scene: one solution compared with every ground-truth scene;
4. time: seconds per step of both fits, and the seconds each takes to reach --target-psnr training PSNR (from
   their metrics.jsonl).

    .venv/bin/python bench/bench_osn.py --seeds 14 --steps 600 --samples 8 --dpdy-steps 600   # ~5 min, 2-core CPU

Prints tables (time and peak memory too); --json PATH writes the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see monodyn_cli/__init__.py

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from models.fitting import Budget, run_fit  # noqa: E402
from models.osn.config import OSNConfig  # noqa: E402
from models.osn.model import OSNModel  # noqa: E402
from models.osn.synthetic import scene_from_ground_truth  # noqa: E402
from models.osn.trainer import OSNTask  # noqa: E402
from models.osn.zbuffer import ZBufferCache  # noqa: E402
from models.registry import METHODS, get_method  # noqa: E402
from monodyn_cli.metrics import psnr, ssim  # noqa: E402
from monodyn_cli.synth import SynthConfig, generate_scene, parse_scale_variants  # noqa: E402
from monodyn_cli.synth.raycast import render_view  # noqa: E402
from monodyn_cli.synth.scene import Poses, heldout_name  # noqa: E402

console = Console()
DEFAULT_VARIANTS = "0.8,0.8;1.0,0.6;0.6,1.0;2.0,2.0;1.2,1.2;0.5,0.5;0.7,0.5;0.9,1.1;0.65,0.75"


def log(line: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {line}")


def build(seed: int, args) -> tuple:
    cfg = SynthConfig(seed=seed, frames=args.frames, width=args.width, height=args.height, objects=2,
                      heldout_azimuths=(args.heldout,), fixed_cameras=0,
                      scale_variants=parse_scale_variants(args.variants, 2))
    sc = generate_scene(cfg)
    v = sc.view("input")
    room = sc.meta["room"]
    aabb = [[-room["half_size"], -room["half_size"], 0.0], [room["half_size"], room["half_size"], room["height"]]]
    scene, g = scene_from_ground_truth(v.rgb, v.instances, v.depth, v.cameras, sc.object_poses(), aabb=aabb)
    scene.flow_fw, scene.flow_bw, scene.valid_fw, scene.valid_bw = v.flow_fw, v.flow_bw, v.valid_fw, v.valid_bw
    if args.poses == "estimated":  # no per-object poses: OSN poses the objects from their flow tracks
        scene.object_cameras, scene.object_depth = {}, {}
    return sc, scene, g


def exact_layer_errors(sc, g: list[float], scales: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft Z-buffer error (max over objects) of each scale combination (B, K) with every object's layer (opacity,
    depth in OSN's unit-scale units) rendered alone by the generator: exact, also where the object is hidden.
    Labels as in training: interior mask pixels only (the 8-neighbours share the label)."""
    spec = sc.spec
    depth, alpha = [], []
    for o in range(len(spec.objects) + 1):
        keep = slice(0, 0) if o == 0 else slice(o - 1, o)
        alone = dataclasses.replace(spec, objects=spec.objects[keep], variants=[],
                                    poses=Poses(spec.poses.scale[:, keep], spec.poses.R[:, keep],
                                                spec.poses.t[:, keep]))
        v = render_view(alone, "input")
        present = v.instances == (0 if o == 0 else 1)
        depth.append(np.where(present, v.depth / (1.0 if o == 0 else g[o - 1]), 0.0))
        alpha.append(present.astype(np.float32))
    stack = lambda xs: torch.as_tensor(np.stack(xs, -1), dtype=torch.float32).reshape(-1, len(xs))  # noqa: E731
    inst = torch.as_tensor(sc.view("input").instances.astype(np.int64))
    T, H, W = inst.shape
    pad = torch.nn.functional.pad(inst[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
    interior = torch.ones(T, H, W, dtype=torch.bool)
    for dy in range(3):
        for dx in range(3):
            interior &= pad[:, dy:dy + H, dx:dx + W] == inst
    labels = torch.where(interior, inst, torch.full_like(inst, -1)).reshape(-1)
    cache = ZBufferCache.build(stack(depth), stack(alpha), labels)
    return cache.errors(torch.cat([torch.ones(len(scales), 1), scales], 1), temperature).amax(-1)


def fit_osn(scene, args, out: Path) -> tuple[OSNModel, float, list[int]]:
    cfg = OSNConfig(steps=args.steps, device="cpu", checkpoint_every=0, background_points=args.background_points,
                    object_points=args.object_points, scale_candidates=128, scale_steps=40, seed=args.fit_seed,
                    label_tolerance=args.label_tolerance)
    start = time.perf_counter()

    def progress(step, total, **m):
        if step % 250 == 0:
            log(f"  OSN step {step}/{total} " + " ".join(f"{k}={v:.3g}" for k, v in m.items()))

    task = OSNTask(scene, cfg)  # the fit `monodyn fit --method osn` runs, through the shared driver
    run_fit(task, out, Budget(cfg.steps, cfg.minutes or None), progress)
    return task.model, time.perf_counter() - start, task.model.objects.ids


def time_to_psnr(folder: Path, target: float) -> tuple[float, float]:
    """Seconds and step at which the logged training PSNR first reaches `target` (nan when never)."""
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if (row.get("psnr") or -1) >= target:
            return float(row["seconds"]), float(row["step"])
    return math.nan, math.nan


def per_step(folder: Path) -> float:
    """Seconds per optimisation step (the logged steps, without the final scale-network pass)."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("step") and r.get("seconds") is not None]
    last = max(rows, key=lambda r: (r["step"], -r["seconds"])) if rows else None
    return last["seconds"] / last["step"] if last else math.nan


def nvs_metrics(pred: torch.Tensor, gt: torch.Tensor) -> tuple[float, float]:
    return float(psnr(pred, gt).mean()), float(ssim(pred, gt).mean())


def run_seed(seed: int, args) -> dict:
    start = time.perf_counter()
    sc, scene, g = build(seed, args)
    log(f"seed {seed}: scene generated in {time.perf_counter() - start:.1f}s")
    osn_dir = Path(args.workdir) / f"osn_seed{seed}_{args.poses}"
    model, fit_s, ids = fit_osn(scene, args, osn_dir)
    log(f"seed {seed}: OSN fitted in {fit_s:.1f}s (objects posed: {ids[1:]}, dropped: {model.objects.dropped})")
    if model.n_objects != 2:
        raise SystemExit(f"seed {seed}: OSN posed {model.n_objects} of 2 objects; pick another seed")
    g_t = torch.tensor(g)
    variants = [{"name": "base", "scales": [1.0, 1.0], "valid": True, "input_changed_fraction": 0.0}] + \
        list(sc.meta["variants"])
    osn_scales = torch.stack([torch.tensor(v["scales"]) * g_t for v in variants])
    validity = model.validity(osn_scales)
    exact = exact_layer_errors(sc, g, osn_scales, OSNConfig.zbuffer_temperature)
    for v, p, e in zip(variants, validity.tolist(), exact.tolist()):
        v["osn_validity"], v["exact_layer_error"] = p, e

    # novel views at the held-out camera, every eval_every-th frame
    cam_name = heldout_name(args.heldout)
    frames = list(range(0, args.frames, args.eval_every))
    idx = torch.tensor(frames)
    cams = sc.view(cam_name).cameras[idx]
    times = scene.times[idx]
    valid, _ = model.valid_scales(0)
    lo, hi = (valid.amin(0), valid.amax(0)) if len(valid) else (torch.full((2,), math.nan),) * 2
    for v, s in zip(variants, osn_scales):
        v["in_valid_range"] = [bool(lo[k] <= s[k] <= hi[k]) for k in range(2)]
    samples = valid[: args.samples]
    start = time.perf_counter()
    renders = [model.render_cameras(cams, times, s)["rgb"].clamp(0, 1) for s in samples]
    render_s = (time.perf_counter() - start) / max(len(samples) * len(frames), 1)
    log(f"seed {seed}: {len(samples)} samples x {len(frames)} held-out frames rendered "
        f"({render_s:.2f}s per frame)")
    default = model.render_cameras(cams, times, model.default_scales())["rgb"].clamp(0, 1)
    gts = [v for v in variants if v["valid"]]
    rows = []
    dpdy = None
    if args.dpdy and "dpdy" in METHODS:
        dpdy = fit_dpdy(scene, args, Path(args.workdir) / f"dpdy_seed{seed}", cams, times)
        if dpdy is not None:
            log(f"seed {seed}: DpDy fitted in {dpdy['seconds']:.1f}s")
    for v in gts:
        gt_rgb = torch.from_numpy(np.asarray(sc.view(cam_name, None if v["name"] == "base" else v["name"]).rgb)
                                  [frames].astype(np.float32) / 255.0)
        per = [nvs_metrics(r, gt_rgb) for r in renders]
        best = max(range(len(per)), key=lambda i: per[i][0]) if per else None
        oracle = model.render_cameras(cams, times, torch.tensor(v["scales"]) * g_t)["rgb"].clamp(0, 1)
        row = {"variant": v["name"], "scales": v["scales"],
               "osn_best_psnr": per[best][0] if per else math.nan, "osn_best_ssim": per[best][1] if per else math.nan,
               "osn_best_sample": best, "osn_default": nvs_metrics(default, gt_rgb),
               "osn_oracle": nvs_metrics(oracle, gt_rgb)}
        if dpdy is not None:
            row["dpdy"] = nvs_metrics(dpdy["rgb"], gt_rgb)
        rows.append(row)
    return {"seed": seed, "g": g, "fit_seconds": fit_s, "render_seconds_per_frame": render_s,
            "n_valid": len(valid), "valid_lo": lo.tolist(), "valid_hi": hi.tolist(), "variants": variants, "nvs": rows,
            "osn_s_per_step": per_step(osn_dir), "osn_time_to_psnr": time_to_psnr(osn_dir, args.target_psnr),
            "dpdy_fit_seconds": None if dpdy is None else dpdy["seconds"],
            "dpdy_s_per_step": None if dpdy is None else per_step(dpdy["dir"]),
            "dpdy_time_to_psnr": None if dpdy is None else time_to_psnr(dpdy["dir"], args.target_psnr)}


def fit_dpdy(scene, args, out: Path, cams, times) -> dict | None:
    method = get_method("dpdy")
    cfg = method.Config(steps=args.dpdy_steps, device="cpu", checkpoint_every=0)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        method.fit(dataclasses.replace(scene, object_cameras={}, object_depth={}), cfg, out, lambda *a, **k: None)
    except Exception as exc:  # report, do not hide: the OSN numbers stand on their own
        console.print(f"[yellow]dpdy failed: {type(exc).__name__}: {exc}[/yellow]")
        return None
    seconds = time.perf_counter() - start
    out_r = method.load(out, scene, None, "cpu").render(cams, times)
    return {"rgb": out_r.rgb.clamp(0, 1), "seconds": seconds, "dir": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="14", help="comma-separated synthetic scene seeds")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=48)
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help="scale variants, 'a,b;c,d;...'")
    ap.add_argument("--heldout", type=float, default=30.0, help="held-out camera: input path rotated by degrees")
    ap.add_argument("--eval-every", type=int, default=4, help="evaluate every n-th frame")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--poses", choices=("estimated", "gt"), default="estimated",
                    help="object poses: from flow tracks (what a real clip gets) or the generator's")
    ap.add_argument("--background-points", type=int, default=8000)
    ap.add_argument("--object-points", type=int, default=3000)
    ap.add_argument("--target-psnr", type=float, default=25.0, help="training PSNR the time-to-PSNR column waits for")
    ap.add_argument("--samples", type=int, default=16, help="M: valid OSN samples per best-of-M")
    ap.add_argument("--fit-seed", type=int, default=0)
    ap.add_argument("--label-tolerance", type=float, default=OSNConfig.label_tolerance,
                    help="OSN pseudo-label tolerance (share of an object's mask pixels another object may cover)")
    ap.add_argument("--dpdy", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--dpdy-steps", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core CPU)")
    ap.add_argument("--workdir", default="/tmp/bench_osn")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = [run_seed(int(s), args) for s in args.seeds.split(",")]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    vt = Table(title="validity of ground-truth scale combinations (scale network score; > 0.5 = valid)")
    for col in ("seed", "variant", "scales", "generator", "input changed", "exact-layer Z-buffer error",
                "OSN validity", "agree", "in valid range"):
        vt.add_column(col, justify="right")
    for r in results:
        for v in r["variants"]:
            visually_valid = v["input_changed_fraction"] <= 1e-4
            verdict = "valid" if v["valid"] else ("invalid" if not visually_valid else "interpenetrates")
            agree = "" if v["valid"] != visually_valid else ("yes" if (v["osn_validity"] > 0.5) == v["valid"] else "NO")
            vt.add_row(str(r["seed"]), v["name"], ",".join(f"{s:g}" for s in v["scales"]), verdict,
                       f"{100 * v['input_changed_fraction']:.3f}%", f"{100 * v['exact_layer_error']:.2f}%",
                       f"{v['osn_validity']:.3f}", agree, "/".join("yes" if x else "no" for x in v["in_valid_range"]))
    console.print(vt)
    inside = [x for r in results for v in r["variants"] if v["valid"] for x in v["in_valid_range"]]
    console.print(f"ground-truth scales of valid scenes inside the predicted valid range: {sum(inside)} of "
                  f"{len(inside)} object scales ({100 * sum(inside) / max(len(inside), 1):.0f}%); poses: {args.poses}")
    console.print(f"(pseudo-labels call a combination valid when its Z-buffer error is <= {100 * args.label_tolerance:g}%)")

    nt = Table(title=f"novel views at the held-out camera (az +{args.heldout:g} deg): PSNR / SSIM against each "
                     f"ground-truth scene")
    for col in ("seed", "GT scene", f"OSN best of {args.samples}", "OSN oracle scales", "OSN default", "DpDy"):
        nt.add_column(col, justify="right")
    fmt = lambda p: "-" if p is None else f"{p[0]:.2f} / {p[1]:.3f}"
    all_rows = [row for r in results for row in r["nvs"]]
    for r in results:
        for row in r["nvs"]:
            nt.add_row(str(r["seed"]), row["variant"], fmt((row["osn_best_psnr"], row["osn_best_ssim"])),
                       fmt(row["osn_oracle"]), fmt(row["osn_default"]), fmt(row.get("dpdy")))

    def ms(vals):
        vals = [v for v in vals if v is not None and not math.isnan(v)]
        return (float(np.mean(vals)), float(np.std(vals))) if vals else (math.nan, math.nan)

    summary = {"osn_best": (ms([x["osn_best_psnr"] for x in all_rows]), ms([x["osn_best_ssim"] for x in all_rows])),
               "osn_oracle": (ms([x["osn_oracle"][0] for x in all_rows]), ms([x["osn_oracle"][1] for x in all_rows])),
               "osn_default": (ms([x["osn_default"][0] for x in all_rows]), ms([x["osn_default"][1] for x in all_rows]))}
    if any("dpdy" in x for x in all_rows):
        summary["dpdy"] = (ms([x["dpdy"][0] for x in all_rows if "dpdy" in x]),
                           ms([x["dpdy"][1] for x in all_rows if "dpdy" in x]))
    f2 = lambda k: f"{summary[k][0][0]:.2f}±{summary[k][0][1]:.2f} / {summary[k][1][0]:.3f}±{summary[k][1][1]:.3f}"
    nt.add_row("all", f"{len(all_rows)} GT", f2("osn_best"), f2("osn_oracle"), f2("osn_default"),
               f2("dpdy") if "dpdy" in summary else "-")
    console.print(nt)
    tt = Table(title=f"time on this machine ({torch.get_num_threads()} torch thread(s)), peak RSS {peak_mb:.0f} MB")
    for col in ("seed", "OSN fit s", "OSN steps", "OSN s/step", f"OSN s to {args.target_psnr:g} dB", "valid of 4096",
                "OSN render s/frame", "DpDy fit s", "DpDy steps", "DpDy s/step", f"DpDy s to {args.target_psnr:g} dB"):
        tt.add_column(col, justify="right")
    f = lambda x, d=2: "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"  # noqa: E731
    for r in results:
        tt.add_row(str(r["seed"]), f"{r['fit_seconds']:.0f}", str(args.steps), f(r["osn_s_per_step"], 3),
                   f(r["osn_time_to_psnr"][0], 0), str(r["n_valid"]), f"{r['render_seconds_per_frame']:.2f}",
                   f(r["dpdy_fit_seconds"], 0), str(args.dpdy_steps), f(r["dpdy_s_per_step"], 3),
                   f(None if r["dpdy_time_to_psnr"] is None else r["dpdy_time_to_psnr"][0], 0))
    console.print(tt)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "summary": summary,
                                               "peak_rss_mb": peak_mb}, indent=1, default=float))


if __name__ == "__main__":
    main()
