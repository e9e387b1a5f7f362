"""Benchmark of the Gaussian rasterizer (models.splatting): forward and forward+backward time.

    .venv/bin/python bench/bench_splat.py                   # CPU, 2 threads, the full table
    .venv/bin/python bench/bench_splat.py --sizes 256x192 --counts 100000 --parts
    .venv/bin/python bench/bench_splat.py --device cuda     # our CUDA kernels (and gsplat if installed)

Scene: N Gaussians spread uniformly through the camera's view frustum at depths 1-5 (scene extent ~5),
anisotropic scales 0.3-1% of the extent, random rotations, opacities 0.5-1, RGB colours: a well covered,
opaque-ish image like a fitted scene's. The loss for the backward is a weighted sum of colours and alpha;
gradients flow to means, quats, scales, opacities and colours. Warm-up runs (and compilation) are excluded;
each entry is the median of --repeats runs. --parts adds the split of one forward+backward into
projection, binning, raster forward and raster backward (+ scatter) from separate timed calls.

Measured (shared 2-core EPYC, 2 threads, load ~2 from other jobs): 256x192 with 100k Gaussians, forward
41 ms, forward+backward 75 ms (135 ms of CPU time over both threads); 1 thread 138 ms, of which raster
backward 71 (incl. the serial per-Gaussian sum), raster forward 35, projection backward 11 / forward 6,
binning 11 (counting sort 9, depth radix sort 2). The raster cost is set by early termination (~46
contributing Gaussians per pixel here), so 30k Gaussians cost nearly as much as 100k. When the neighbours
keep both cores busy, the CPU-time columns equal the wall time and the second thread buys nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see monodyn_cli/__init__.py

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tables import table  # noqa: E402  (bench/ is the script's folder)

from models.splatting import rasterization  # noqa: E402


def frustum_scene(n: int, width: int, height: int, device, seed: int = 0, fov_x_deg: float = 60.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    f = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    z = 1.0 + 4.0 * torch.rand(n, generator=g)
    u = torch.rand(n, generator=g) * width
    v = torch.rand(n, generator=g) * height
    means = torch.stack([(u - width / 2) / f * z, (v - height / 2) / f * z, z], -1)
    extent = 5.0
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    scene = {"means": means, "quats": torch.randn(n, 4, generator=g),
             "scales": extent * (0.003 + 0.007 * torch.rand(n, 3, generator=g)),
             "opacities": 0.5 + 0.5 * torch.rand(n, generator=g), "colors": torch.rand(n, 3, generator=g),
             "viewmats": torch.eye(4)[None], "Ks": K[None]}
    return {k: v.to(device) for k, v in scene.items()}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int, warmup: int = 2, cpu_time: bool = False):
    """Median wall ms (and, with cpu_time, median process CPU ms: all threads, unaffected by waiting)."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(repeats):
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    if cpu_time:
        return 1000 * statistics.median(times), 1000 * statistics.median(cpu)
    return 1000 * statistics.median(times)


def bench_one(n: int, width: int, height: int, device, backend: str, repeats: int) -> dict:
    scene = frustum_scene(n, width, height, device)
    params = {k: scene[k].clone().requires_grad_() for k in ["means", "quats", "scales", "opacities", "colors"]}
    cam = {"viewmats": scene["viewmats"], "Ks": scene["Ks"], "width": width, "height": height, "backend": backend}
    w = torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(1)).to(device)

    def forward():
        with torch.no_grad():
            return rasterization(**{k: scene[k] for k in params}, **cam)

    def forward_backward():
        img, alpha, meta = rasterization(**params, **cam)
        meta["means2d"].retain_grad()  # as a densifying fit does
        ((img * w).sum() + alpha.sum()).backward()

    img, alpha, meta = forward()
    fwd, fwd_cpu = timed(forward, device, repeats, cpu_time=True)
    fb, fb_cpu = timed(forward_backward, device, repeats, cpu_time=True)
    return {"fwd": fwd, "fwdbwd": fb, "fwd_cpu": fwd_cpu, "fwdbwd_cpu": fb_cpu, "coverage": float(alpha.mean()),
            "visible": int((meta["radii"] > 0).sum())}


def torch_proj_fb(params, s, width, height):
    from models.splatting.project import project_gaussians

    q = project_gaussians(params["means"], params["quats"], params["scales"], params["opacities"], s["viewmats"],
                          s["Ks"], width, height)
    (q.means2d.sum() + q.conics.sum() + q.opacities.sum()).backward()


def bench_parts(n: int, width: int, height: int, repeats: int) -> dict:
    """Split of one CPU forward+backward: each part timed on its own (inputs prepared outside the timer)."""
    from models.splatting.binning import bin_gaussians_cpu, tile_rects
    from models.splatting.cpu import rasterize_cpu
    from models.splatting.cpu_project import project_gaussians_cpu as project_gaussians

    s = frustum_scene(n, width, height, torch.device("cpu"))
    params = {k: s[k].clone().requires_grad_() for k in ["means", "quats", "scales", "opacities", "colors"]}
    w = torch.rand(1, height, width, 3)
    out = {}

    def proj():
        return project_gaussians(params["means"], params["quats"], params["scales"], params["opacities"],
                                 s["viewmats"], s["Ks"], width, height)

    p = proj()
    out["projection fwd"] = timed(proj, torch.device("cpu"), repeats)

    def proj_fb():
        q = proj()
        (q.means2d.sum() + q.conics.sum() + q.opacities.sum()).backward()

    out["projection fwd+bwd"] = timed(proj_fb, torch.device("cpu"), repeats)
    out["projection fwd+bwd, torch autograd"] = timed(lambda: torch_proj_fb(params, s, width, height),
                                                      torch.device("cpu"), repeats)

    def binning():
        rects = tile_rects(p.means2d, p.radii, width, height, 16)
        return bin_gaussians_cpu(rects, p.depths, p.radii, width, height, 16)

    out["binning (rects, sort, bins)"] = timed(binning, torch.device("cpu"), repeats)
    offsets, ids = binning()
    out["intersections"] = int(ids.numel())
    m2, con, op = (t.detach().requires_grad_() for t in (p.means2d, p.conics, p.opacities))
    col = params["colors"].detach()[None].requires_grad_()

    def raster_fwd():
        with torch.no_grad():
            return rasterize_cpu(m2, con, col, op, offsets, ids, width, height, 16)

    out["raster fwd"] = timed(raster_fwd, torch.device("cpu"), repeats)

    def raster_fb():
        img, alpha = rasterize_cpu(m2, con, col, op, offsets, ids, width, height, 16)
        ((img * w).sum() + alpha.sum()).backward()

    out["raster fwd+bwd (incl. scatter)"] = timed(raster_fb, torch.device("cpu"), repeats)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--backends", default=None, help="comma list; default: cpu on cpu, cuda(+gsplat) on cuda")
    ap.add_argument("--sizes", default="256x192,480x270")
    ap.add_argument("--counts", default="30000,100000,300000")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", action="store_true", help="also the split of a CPU forward+backward")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.backends:
        backends = args.backends.split(",")
    elif device.type == "cuda":
        from models.splatting.rasterize import gsplat_available

        backends = ["cuda"] + (["gsplat"] if gsplat_available() else [])
    else:
        backends = ["cpu"]
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    counts = [int(c) for c in args.counts.split(",")]

    rows = []
    for backend in backends:
        for width, height in sizes:
            for n in counts:
                r = bench_one(n, width, height, device, backend, args.repeats)
                row = [backend, f"{width}x{height}", n, r["visible"], r["coverage"], r["fwd"], r["fwdbwd"]]
                if device.type == "cuda":
                    row.append(1000.0 / r["fwd"])
                else:
                    row += [r["fwd_cpu"], r["fwdbwd_cpu"]]
                rows.append(row)
                print(" ".join(str(v) for v in row), file=sys.stderr)
    header = ["backend", "image", "Gaussians", "visible", "mean alpha", "forward ms", "fwd+bwd ms"]
    if device.type == "cuda":
        header.append("forward frames/s")
    else:  # CPU time summed over threads: on a shared machine the wall time also measures the neighbours
        header += ["forward CPU ms", "fwd+bwd CPU ms"]
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {args.threads} threads"
    table(f"Gaussian rasterization ({name}, median of {args.repeats})", header, rows)

    if args.parts and device.type == "cpu":
        for width, height in sizes:
            for n in counts:
                parts = bench_parts(n, width, height, args.repeats)
                table(f"Split of one CPU forward+backward, {width}x{height}, {n} Gaussians", ["part", "ms"],
                      [[k, v] for k, v in parts.items()])


if __name__ == "__main__":
    main()
