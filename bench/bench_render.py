"""Benchmark of the radiance-field core (models.fields + models.rendering) on the CPU.

    .venv/bin/python bench/bench_render.py                 # cube self-check + D-NeRF lego fit + render fps
    .venv/bin/python bench/bench_render.py --only cube --cube-seconds 60
    .venv/bin/python bench/bench_render.py --only lego --lego-iters 2000 --threads 1

1. cube: a textured cube (analytic field) is rendered with our renderer into 24 views; a TensoRF-VM is
   fitted to 20 of them for --cube-seconds; PSNR on the 4 held-out views.
2. lego: D-NeRF lego at 100x100 (../shared/data/gt/dnerf_lego_tiny.npz: first 50 frames train, last 20
   test) fitted with StaticDynamicField(TensoRF-VM, K-planes); test PSNR against fitting time.
3. fps: rendering a 256x192 frame of the fitted lego field (occupancy-skipped), frames per second.
Prints one table per part; fitting time excludes evaluation and is reported as process CPU time (and wall
time): on a shared machine wall time measures the neighbours. On a busy 2-core machine use --threads 1
(OpenMP threads that wait for a busy core make 2 threads 3x slower than 1).

Measured (1 thread, busy shared 2-core Xeon, defaults): lego test PSNR 24.6 dB after 143 cpu s, 24.8 after
219 s, 24.9 after 291 s (1500 iterations; flat afterwards: 24.9 at 2000-2500); rendering 256x192 about
1.8-2.0 frames/s of CPU time (fp32; bf16 autocast is slower on this CPU). Cube: 24.3 dB after 34 cpu s.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see monodyn_cli/__init__.py

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tables import table  # noqa: E402  (bench/ is the script's folder)

from models.cameras import (Cameras, camera_rays, intrinsics_from_fov, look_at, opengl_c2w_to_opencv_w2c,  # noqa: E402
                            pixel_grid, rays_from_pixels)
from models.fields import AABBMap, KPlanes, RadianceField, StaticDynamicField, TensoRFVM  # noqa: E402
from models.fields.base import DensityOutput  # noqa: E402
from models.rendering import OccupancyGrid, RenderConfig, render_image, render_rays  # noqa: E402
from models.rendering.losses import distortion_loss, sparsity_loss  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LEGO = SHARED / "data" / "gt" / "dnerf_lego_tiny.npz"


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10.0 * torch.log10(((a - b) ** 2).mean().clamp_min(1e-10)))


# ---------------------------------------------------------------------------------------------------
# shared fitting loop
# ---------------------------------------------------------------------------------------------------
class Fitter:
    """Minimal photometric fitting of a field to a set of rays (a reference for the DpDy training loop)."""

    def __init__(self, field: RadianceField, smap: AABBMap, rays: dict, cfg: RenderConfig, batch: int,
                 iters: int, occ_res: int = 64, lr_grid: float = 0.02, lr_net: float = 2e-3,
                 upsample: dict[int, int] | None = None, reg=None, seed: int = 0, dynamic_grid_from: int | None = None,
                 jitter: bool = False):
        self.field, self.smap, self.rays, self.cfg = field, smap, rays, cfg
        self.batch, self.iters, self.lr_grid, self.lr_net = batch, iters, lr_grid, lr_net
        self.upsample = upsample or {}
        self.dynamic_grid_from = dynamic_grid_from
        self.jitter = jitter
        self.reg = reg
        self.grid = OccupancyGrid(occ_res)
        self.times = None if rays.get("t") is None else torch.unique(rays["t"])
        self.gen = torch.Generator().manual_seed(seed)
        self.step = 0
        self.fit_seconds = 0.0  # process CPU time: on this shared machine wall time measures the neighbours
        self.fit_wall = 0.0
        self.last_stats: dict = {}
        self._make_opt()

    def _make_opt(self) -> None:
        self.opt = torch.optim.Adam(self.field.param_groups(self.lr_grid, self.lr_net), betas=(0.9, 0.99), eps=1e-15)
        for g in self.opt.param_groups:
            g["base_lr"] = g["lr"]

    def run(self, n: int) -> float:
        """n more iterations; returns the mean MSE."""
        t0, w0 = time.process_time(), time.perf_counter()
        total = 0.0
        n_rays = self.rays["o"].shape[0]
        for _ in range(n):
            it = self.step
            if it in self.upsample:
                self.field.static.upsample(self.upsample[it]) if hasattr(self.field, "static") \
                    else self.field.upsample(self.upsample[it])
                self._make_opt()
            decay = 0.1 ** (it / self.iters)
            for g in self.opt.param_groups:
                g["lr"] = g["base_lr"] * decay
            if it % (16 if it >= 256 else 4) == 0:
                self.grid.update(self.field, self.cfg.box_step(self.smap), times=self.times,
                                 fraction=0.25, generator=self.gen)
            if self.dynamic_grid_from is not None and it >= self.dynamic_grid_from and it % 16 == 0:
                # from here on the dynamic field is only evaluated where it has density (speed)
                if self.field.dynamic_grid is None:
                    self.field.dynamic_grid = OccupancyGrid(self.grid.resolution)
                self.field.dynamic_grid.update(self.field.dynamic, self.cfg.box_step(self.smap), times=self.times,
                                               fraction=0.25, warmup_updates=1, generator=self.gen)
            idx = torch.randint(0, n_rays, (self.batch,), generator=self.gen)
            t = None if self.rays.get("t") is None else self.rays["t"][idx]
            if self.jitter:  # a random point of the pixel's footprint, not always its centre (anti-aliasing)
                xy = self.rays["xy"][idx] + torch.rand(self.batch, 2, generator=self.gen) - 0.5
                o, d = rays_from_pixels(self.rays["K"][idx], self.rays["w2c"][idx], xy)
            else:
                o, d = self.rays["o"][idx], self.rays["d"][idx]
            out = render_rays(self.field, o, d, t, self.smap, self.grid, self.cfg, generator=self.gen)
            mse = ((out.rgb - self.rays["rgb"][idx]) ** 2).mean()
            loss = mse + (self.reg(self.field, out) if self.reg else 0.0)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += float(mse.detach())
            self.step += 1
            self.last_stats = out.stats
        self.fit_seconds += time.process_time() - t0
        self.fit_wall += time.perf_counter() - w0
        return total / max(n, 1)


def rays_of(cams: Cameras, images: torch.Tensor, times: torch.Tensor | None) -> dict:
    o, d = camera_rays(cams)
    n, h, w = images.shape[:3]
    out = {"o": o.reshape(-1, 3), "d": d.reshape(-1, 3), "rgb": images.reshape(-1, 3),
           # for sub-pixel jitter: each ray's camera and pixel centre
           "K": cams.K[:, None, None].expand(n, h, w, 3, 3).reshape(-1, 3, 3),
           "w2c": cams.w2c[:, None, None].expand(n, h, w, 4, 4).reshape(-1, 4, 4),
           "xy": pixel_grid(w, h)[None].expand(n, h, w, 2).reshape(-1, 2)}
    if times is not None:
        out["t"] = times[:, None, None].expand(images.shape[:3]).reshape(-1)
    return out


# ---------------------------------------------------------------------------------------------------
# 1. textured cube
# ---------------------------------------------------------------------------------------------------
class TexturedCube(RadianceField):
    """Ground truth: density 200 per box unit inside |x|_inf < 0.5, colour a 3-colour checkerboard."""

    def query_density(self, x, t=None):
        return DensityOutput(sigma=(x.abs().amax(-1) < 0.5).float() * 200.0)

    def query_color(self, x, d, t, state):
        c = torch.floor(x * 4.0).long().sum(-1) % 3
        palette = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.7, 0.3], [0.2, 0.3, 0.9]])
        return palette[c]


def cube_cameras(n: int, size: int = 64) -> Cameras:
    k = torch.arange(n, dtype=torch.float32)
    az = k * (2 * math.pi / n)
    el = torch.where(k % 2 == 0, torch.tensor(0.5), torch.tensor(-0.2))
    eye = torch.stack([3.0 * torch.cos(el) * torch.cos(az), 3.0 * torch.cos(el) * torch.sin(az), 3.0 * torch.sin(el)], -1)
    K = intrinsics_from_fov(size, size, 45.0)[None].expand(n, 3, 3)
    return Cameras(K.clone(), look_at(eye, torch.zeros(n, 3)), size, size)


def bench_cube(seconds: float) -> None:
    torch.manual_seed(0)
    smap = AABBMap([[-1.0] * 3, [1.0] * 3])
    cams = cube_cameras(24)
    gt = render_image(TexturedCube(), cams, None, smap, None, RenderConfig(n_samples=512)).rgb
    train = [i for i in range(24) if i % 6 != 3]
    test = [i for i in range(24) if i % 6 == 3]
    rays = rays_of(cams[train], gt[train], None)
    field = TensoRFVM(resolution=32, density_rank=8, app_rank=16, decoder="sh")
    cfg = RenderConfig(n_samples=128, stratified=True)
    fit = Fitter(field, smap, rays, cfg, batch=2048, iters=1500, upsample={150: 64, 400: 128},
                 reg=lambda f, out: 1e-4 * f.tv_loss())
    rows = []
    while fit.fit_seconds < seconds:
        mse = fit.run(100)
        with torch.no_grad():
            pred = render_image(field, cams[test], None, smap, fit.grid, RenderConfig(n_samples=128)).rgb
        rows.append([fit.step, round(fit.fit_seconds, 1), round(fit.fit_wall, 1), -10 * math.log10(mse),
                     psnr(pred, gt[test]), round(fit.grid.occupancy_fraction(), 3)])
    table("cube: TensoRF-VM fit to 20 views (64x64), PSNR on 4 held-out views",
          ["iters", "fit cpu s", "fit wall s", "train PSNR", "test PSNR", "occupied"], rows)


# ---------------------------------------------------------------------------------------------------
# 2. D-NeRF lego
# ---------------------------------------------------------------------------------------------------
def lego_data():
    d = np.load(LEGO)
    images = torch.from_numpy(d["images"]).float()
    w2c = opengl_c2w_to_opencv_w2c(torch.from_numpy(d["poses"]).float())
    f = float(d["focal"])
    h, w = images.shape[1:3]
    K = torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]]).expand(len(images), 3, 3).clone()
    return images, Cameras(K, w2c, w, h), torch.from_numpy(d["times"]).float()


def make_lego_field(args) -> StaticDynamicField:
    static = TensoRFVM(resolution=args.static_res[0], density_rank=8, app_rank=args.app_rank, decoder=args.decoder,
                       app_dim=27, hidden=64, feat_freqs=0, view_freqs=2)
    dynamic = KPlanes(resolution=args.dyn_res, scales=tuple(args.dyn_scales), time_resolution=args.time_res,
                      features=args.dyn_features, hidden=32)
    return StaticDynamicField(static, dynamic)


def lego_reg(args):
    def reg(f: StaticDynamicField, out) -> torch.Tensor:
        loss = (args.tv_static * f.static.tv_loss() + args.tv_dynamic * f.dynamic.tv_loss()
                + args.time_smooth * f.dynamic.time_smoothness_loss() + 1e-4 * f.dynamic.time_l1_loss()
                + args.dyn_sparsity * sparsity_loss(out.weights_dynamic))
        if args.distortion > 0:
            loss = loss + args.distortion * distortion_loss(out.samples).mean()
        return loss
    return reg


def bench_lego(args) -> tuple:
    torch.manual_seed(0)
    images, cams, times = lego_data()
    train, test = list(range(50)), list(range(61, 81))
    rays = rays_of(cams[train], images[train], times[train])
    smap = AABBMap([[-1.5] * 3, [1.5] * 3])
    field = make_lego_field(args)
    cfg = RenderConfig(n_samples=args.n_samples, stratified=True)
    eval_cfg = RenderConfig(n_samples=args.n_samples)
    up_iters = [int(args.lego_iters * f) for f in (0.08, 0.2)][: len(args.static_res) - 1]
    fit = Fitter(field, smap, rays, cfg, batch=args.batch, iters=args.lego_iters, occ_res=64,
                 upsample=dict(zip(up_iters, args.static_res[1:])), reg=lego_reg(args),
                 dynamic_grid_from=int(args.lego_iters * 0.5), jitter=args.jitter)
    rows = []
    chunk = max(args.lego_iters // args.evals, 1)
    while fit.step < args.lego_iters:
        mse = fit.run(min(chunk, args.lego_iters - fit.step))
        with torch.no_grad():
            pred = render_image(field, cams[test], times[test], smap, fit.grid, eval_cfg)
        rows.append([fit.step, round(fit.fit_seconds, 1), round(fit.fit_wall, 1), -10 * math.log10(mse),
                     psnr(pred.rgb, images[test]),
                     round(fit.grid.occupancy_fraction(), 3), round(float(pred.part_weights[..., 1].mean()), 3)])
        print(f"  lego it {fit.step} fit {fit.fit_seconds:.0f} cpu s, test PSNR {rows[-1][4]:.2f}", flush=True)
    if args.save:
        torch.save({"field": field.state_dict(), "grid": fit.grid.state_dict(), "pred": pred.rgb}, args.save)
    n_params = sum(p.numel() for p in field.parameters())
    table(f"lego: static+dynamic fit, {n_params / 1e6:.2f} M parameters, batch {args.batch}, "
          f"n_samples {args.n_samples}", ["iters", "fit cpu s", "fit wall s", "train PSNR", "test PSNR", "occupied",
                                          "dyn share"], rows)
    return field, smap, fit.grid, cams, times


def bench_fps(field, smap, grid, cams, n_samples: int) -> None:
    K = intrinsics_from_fov(256, 192, 40.0)[None]
    eye = cams.centers[60:61]
    cam = Cameras(K, look_at(eye, torch.zeros(1, 3)), 256, 192)
    rows = []
    for bf16 in (False, True):
        cfg = RenderConfig(n_samples=n_samples, bf16=bf16)
        with torch.no_grad():
            render_image(field, cam, 0.5, smap, grid, cfg)  # warm-up
            reps = 3
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(reps):
                out = render_image(field, cam, 0.5, smap, grid, cfg)
            cpu, wall = (time.process_time() - c0) / reps, (time.perf_counter() - w0) / reps
        rows.append(["bf16" if bf16 else "fp32", round(1.0 / cpu, 2), round(1.0 / wall, 2), round(cpu * 1000),
                     out.stats["occupied"], out.stats["samples"], out.stats["colored"]])
    table(f"render 256x192 (lego field, occupancy-skipped, dynamic grid {'on' if field.dynamic_grid is not None else 'off'}"
          f", {torch.get_num_threads()} thread(s))",
          ["precision", "frames/s (cpu time)", "frames/s (wall)", "cpu ms/frame", "occupied", "density evals",
           "colour evals"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["cube", "lego"], default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--cube-seconds", type=float, default=60.0, help="CPU seconds of cube fitting")
    ap.add_argument("--lego-iters", type=int, default=1500)
    ap.add_argument("--evals", type=int, default=3, help="test evaluations during the lego fit")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--n-samples", type=int, default=128)
    ap.add_argument("--static-res", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--dyn-res", type=int, default=48)
    ap.add_argument("--dyn-scales", type=int, nargs="+", default=[1])
    ap.add_argument("--dyn-features", type=int, default=8)
    ap.add_argument("--decoder", choices=["sh", "mlp"], default="mlp")
    ap.add_argument("--app-rank", type=int, default=16)
    ap.add_argument("--jitter", action="store_true", help="train on rays through random points of the pixels")
    ap.add_argument("--tv-static", type=float, default=1e-4)
    ap.add_argument("--distortion", type=float, default=0.0)
    ap.add_argument("--tv-dynamic", type=float, default=1e-4)
    ap.add_argument("--time-smooth", type=float, default=1e-2)
    ap.add_argument("--dyn-sparsity", type=float, default=1e-4)
    ap.add_argument("--time-res", type=int, default=8)
    ap.add_argument("--save", type=Path, default=None, help="save the fitted lego field, grid and test renders")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.only in (None, "cube"):
        bench_cube(args.cube_seconds)
    if args.only in (None, "lego"):
        if not LEGO.exists():
            print(f"skipping lego: {LEGO} not found")
            return
        field, smap, grid, cams, times = bench_lego(args)
        bench_fps(field, smap, grid, cams, args.n_samples)


if __name__ == "__main__":
    main()
