"""The DpDy fitting loop: scene tensors, the model, the loss terms, schedules, and a resumable state.

One step: draw pixels (`PixelSampler`), cast their rays, render with empty-space skipping, sum the loss terms
(`losses.LossTerm` list), Adam. Schedules run on `progress` in [0, 1] (steps, or the time budget when one is
set): learning rates decay exponentially, the static grid grows at 10% and 25% (the optimizer is rebuilt,
as TensoRF does), the occupancy grid is refreshed every few steps, the flow weight decays.

Determinism: every random draw (initialisation aside, which uses the seed under a forked global RNG) comes
from one `torch.Generator`, saved in the state with the optimizer, the sampler's error map and the
occupancy grid, so a resumed fit continues exactly where an uninterrupted one would be.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from models.cameras import Cameras, rays_from_pixels
from models.dpdy.config import DpDyConfig
from models.dpdy.losses import (FlowTargets, Guidance, LossTerm, StepContext, affine_invariant_depth_loss,
                                exponential_decay, metric_depth_loss, normalize_depth_prior, photometric_loss,
                                scene_flow_pass, total_loss)
from models.dpdy.model import DpDyModel, default_time_resolution, method_output, visible_cells
from models.dpdy.occupancy_prior import prior_cells
from models.dpdy.sampling import PixelSampler, orbit_cameras
from models.errors import InputError
from models.fields import AABBMap, ContractedMap
from models.rendering import distortion_loss, sparsity_loss
from models.scene import Scene

UPSAMPLE_AT = (0.08, 0.2)  # schedule positions at which the static grid grows
SPARSE_DEPTH = 0.3  # a depth prior covering less of the pixels than this is sparse (SfM points)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def build_arch(scene: Scene, cfg: DpDyConfig) -> dict:
    """Module sizes, normalisation (space map, near/far) and background for this scene."""
    center = np.asarray(scene.center, np.float32).reshape(3)
    radius = float(scene.radius) * cfg.bound_scale
    if not math.isfinite(radius) or radius <= 0:
        raise InputError(f"scene radius must be positive, got {scene.radius}; check the sfm stage's bounds")
    declared = scene.meta.get("background")
    space = cfg.space
    if space == "auto":
        space = "aabb" if declared in ("black", "white") else "contracted"
    near = cfg.near * radius
    if space == "aabb":
        smap = AABBMap([(center - radius).tolist(), (center + radius).tolist()])
        far = 1e4 * radius
    else:
        smap = ContractedMap(center.tolist(), radius)
        far = 1e3 * radius
        # samples are linear in distance up to `radius` from the camera, then linear in disparity: cameras far
        # outside the scene sphere would spend the linear part on empty space, so start halfway to the sphere
        gap = float((scene.cameras.centers - torch.as_tensor(center)).norm(dim=-1).min()) - radius
        near = max(near, 0.5 * gap)
    background = cfg.background
    if background == "auto":
        # a contracted space reaches infinity: the field itself holds the far background (sky, walls), and a
        # learned colour behind it would compete with a young field (explain every pixel by its mean colour)
        background = declared if declared in ("black", "white") else "black"
    time_res = cfg.dynamic_time_res or default_time_resolution(scene.num_frames)
    return {
        "static": {"resolution": cfg.static_res_start, "density_rank": cfg.static_density_rank,
                   "app_rank": cfg.static_app_rank, "decoder": cfg.static_decoder},
        "dynamic": {"resolution": cfg.dynamic_res, "scales": [2 ** i for i in range(max(1, cfg.dynamic_scales))],
                    "time_resolution": time_res, "features": cfg.dynamic_features, "hidden": cfg.dynamic_hidden},
        "dynamic_grid": False,
        "occupancy_res": cfg.occupancy_res, "space_map": smap.to_dict(), "near": near, "far": far,
        "n_samples": cfg.n_samples, "background": background, "motion_scale": radius, "radius": radius,
        "center": center.tolist(), "image_size": [scene.width, scene.height], "num_frames": scene.num_frames,
    }


def static_resolutions(cfg: DpDyConfig) -> list[int]:
    """Resolutions reached at UPSAMPLE_AT (log-linear from start to final)."""
    if cfg.static_res_final <= cfg.static_res_start:
        return []
    n = len(UPSAMPLE_AT)
    a, b = math.log(cfg.static_res_start), math.log(cfg.static_res_final)
    return [int(round(math.exp(a + (b - a) * (k + 1) / n))) for k in range(n)]


@dataclass
class Batch:
    """Per ray: frame index, pixel row / column, pixel centre xy, world ray, camera forward axis, normalised
    time, target colour."""

    frame: Int[Tensor, "N"]
    row: Int[Tensor, "N"]
    col: Int[Tensor, "N"]
    xy: Float[Tensor, "N 2"]
    origins: Float[Tensor, "N 3"]
    dirs: Float[Tensor, "N 3"]
    forward: Float[Tensor, "N 3"]
    times: Float[Tensor, "N"]
    rgb: Float[Tensor, "N 3"]


class SceneTensors:
    """The parts of a Scene the loop reads, as tensors on the fitting device."""

    def __init__(self, scene: Scene, cfg: DpDyConfig, device: torch.device):
        T, H, W = scene.num_frames, scene.height, scene.width
        if len(scene.cameras) != T:
            raise InputError(f"the scene has {T} frames but {len(scene.cameras)} cameras")
        self.T, self.H, self.W = T, H, W
        # a private copy of the read-only memmap; uint8 takes 4x less memory than float
        self.images = torch.as_tensor(np.array(scene.frames), device=device)
        cams = scene.cameras.to(device)
        self.K, self.w2c = cams.K.float(), cams.w2c.float()
        self.forward = self.w2c[:, 2, :3]
        self.times = scene.times.to(device).float()
        self.dynamic = self.static_known = self.dynamic_known = None
        if scene.instances is not None:
            inst = torch.as_tensor(np.asarray(scene.instances) > 0, device=device)
            # object borders (and mask errors) are neither surely static nor surely moving
            grown = F.max_pool2d(inst.float()[:, None], 5, stride=1, padding=2)[:, 0] > 0
            core = -F.max_pool2d(-inst.float()[:, None], 3, stride=1, padding=1)[:, 0] > 0
            self.dynamic = grown
            self.static_known, self.dynamic_known = ~grown, core
        self.depth = self.depth_valid = self.depth_pixels = None
        self.depth_metric = False
        if scene.depth is not None and cfg.depth and cfg.depth_weight > 0:
            depth = torch.as_tensor(np.array(scene.depth, dtype=np.float32), device=device)
            known = torch.isfinite(depth) & (depth > 0)
            sparse = float(known.float().mean()) < SPARSE_DEPTH
            self.depth_metric = cfg.depth_loss == "metric" or (cfg.depth_loss == "auto" and sparse)
            if self.depth_metric:
                self.depth, self.depth_valid = torch.where(known, depth, torch.zeros_like(depth)), known
            else:
                self.depth, self.depth_valid = normalize_depth_prior(depth, cfg.depth_space)
            if sparse and cfg.depth_rays > 0:  # flat indices of the pixels with a prior, to draw extra rays from
                self.depth_pixels = self.depth_valid.reshape(-1).nonzero()[:, 0]
            if not bool(self.depth_valid.any()):
                self.depth = self.depth_valid = self.depth_pixels = None
        self.flow_fw = self.flow_bw = None
        if cfg.flow and scene.flow_fw is not None and scene.flow_bw is not None and T > 1:
            as_t = lambda a: torch.as_tensor(np.array(a, dtype=np.float32), device=device)
            self.flow_fw, self.flow_bw = as_t(scene.flow_fw), as_t(scene.flow_bw)
            finite = lambda f: torch.isfinite(f).all(-1)
            self.valid_fw = finite(self.flow_fw) & (torch.as_tensor(np.array(scene.valid_fw), device=device)
                                                    if scene.valid_fw is not None else True)
            self.valid_bw = finite(self.flow_bw) & (torch.as_tensor(np.array(scene.valid_bw), device=device)
                                                    if scene.valid_bw is not None else True)

    def batch(self, frame: Tensor, row: Tensor, col: Tensor, jitter: Tensor | None = None) -> Batch:
        """Rays through pixel centres, or through (col, row) + jitter (N, 2) in [0, 1)."""
        offset = 0.5 if jitter is None else jitter
        xy = torch.stack([col.float(), row.float()], -1) + offset
        o, d = rays_from_pixels(self.K[frame], self.w2c[frame], xy)
        return Batch(frame, row, col, xy, o, d, self.forward[frame], self.times[frame],
                     self.images[frame, row, col].float() / 255.0)

    def depth_rays(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """n (frame, row, column) drawn uniformly among the pixels with a depth prior."""
        pick = torch.randint(0, len(self.depth_pixels), (n,), device=self.depth_pixels.device, generator=generator)
        idx = self.depth_pixels[pick]
        return idx // (self.H * self.W), (idx // self.W) % self.H, idx % self.W

    def flow_targets(self, b: Batch, forward: bool) -> FlowTargets:
        T = self.T
        if forward:
            src = b.frame.clamp_max(T - 2)
            nb = (b.frame + 1).clamp_max(T - 1)
            has = b.frame < T - 1
            flow, valid = self.flow_fw[src, b.row, b.col], self.valid_fw[src, b.row, b.col]
        else:
            src = (b.frame - 1).clamp_min(0)
            nb = src
            has = b.frame > 0
            flow, valid = self.flow_bw[src, b.row, b.col], self.valid_bw[src, b.row, b.col]
        flow = torch.nan_to_num(flow)
        return FlowTargets(self.K[nb], self.w2c[nb], self.times[nb], b.xy + flow, has & valid, forward)


class Trainer:
    def __init__(self, scene: Scene, cfg: DpDyConfig, guidance: Guidance | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.data = SceneTensors(scene, cfg, self.device)
        self.scene_center = torch.as_tensor(np.asarray(scene.center, np.float32), device=self.device)
        arch = build_arch(scene, cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model = DpDyModel(arch).to(self.device)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.sampler = PixelSampler(self.data.T, self.data.H, self.data.W, cfg.sample_cell, self.data.dynamic,
                                    cfg.dynamic_boost, cfg.error_boost, device=self.device)
        self.guidance = guidance
        self.upsample_levels = static_resolutions(cfg)
        self.step = 0
        self.elapsed = 0.0
        self.ups_done = 0
        self.samples_per_ray = float(cfg.n_samples)  # running mean, sets the batch size (n_rays)
        self.last_stats: dict = {}
        self.terms = self._terms()
        self._make_optimizer()
        cams = Cameras(self.data.K, self.data.w2c, self.data.W, self.data.H)
        # cells that can hold anything: seen by a training camera and, with SfM depth, allowed by its prior
        self.allowed = visible_cells(self.model.occupancy, self.model.space_map, cams, self.model.near)
        self.prior = cfg.occupancy_prior and self.data.depth_metric and self.data.depth is not None
        self.dynamic_allowed = None  # where the dynamic field may be evaluated (None: everywhere)
        if self.prior:
            prior = prior_cells(cfg.occupancy_res, self.model.space_map, cams.to("cpu"),
                                self.data.depth.cpu().numpy(), self.data.dynamic, self.model.near)
            self.allowed &= prior.allowed.to(self.device)
            self.model.occupancy.occupied &= self.allowed
            self.model.occupancy.invalidate()
            if bool(prior.moving.any()):  # the dynamic field only where moving objects were seen
                self.dynamic_allowed = prior.moving.to(self.device) & self.allowed
                if self.model.field.dynamic_grid is None:
                    self.model.attach_dynamic_grid()
                self.model.field.dynamic_grid.occupied &= self.dynamic_allowed
                self.model.field.dynamic_grid.invalidate()

    # ---- schedule -------------------------------------------------------------------------------------------
    @property
    def progress(self) -> float:
        p = self.step / max(self.cfg.steps, 1)
        if self.cfg.minutes > 0:
            p = max(p, self.elapsed / (60.0 * self.cfg.minutes))
        return min(p, 1.0)

    def done(self) -> bool:
        return self.step >= self.cfg.steps or self.progress >= 1.0

    @property
    def n_samples(self) -> int:
        """Samples per ray follow the static grid's resolution (TensoRF): a coarse grid needs no fine steps,
        and early steps, when nothing is skipped yet, are the expensive ones."""
        c = self.cfg
        if c.static_res_final <= c.static_res_start:
            return c.n_samples
        res = self.model.arch["static"]["resolution"]
        return max(32, min(c.n_samples, round(c.n_samples * res / c.static_res_final)))

    def n_rays(self) -> int:
        """Rays this step: cfg.batch_samples / (running mean of samples per ray), within 128 .. batch_rays."""
        c = self.cfg
        if c.batch_samples <= 0:
            return c.batch_rays
        return int(min(c.batch_rays, max(128, c.batch_samples // max(self.samples_per_ray, 1.0))))

    def _make_optimizer(self) -> None:
        groups = self.model.param_groups(self.cfg.lr_grid, self.cfg.lr_net)
        self.opt = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)
        for g in self.opt.param_groups:
            g["base_lr"] = g["lr"]

    def _apply_schedule(self) -> None:
        p = self.progress
        while self.ups_done < len(self.upsample_levels) and p >= UPSAMPLE_AT[self.ups_done]:
            self.model.upsample_static(self.upsample_levels[self.ups_done])
            self.ups_done += 1
            self._make_optimizer()
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * self.cfg.lr_decay ** p
        cfg = self.cfg
        # refresh often while the field takes shape (skipping is what makes early steps affordable), then less
        every = min(8, cfg.occupancy_every) if self.step < 4 * cfg.occupancy_warmup + 64 else cfg.occupancy_every
        if self.field_grid_due(every):
            step_size = self.model.render_config(True, self.n_samples).box_step(self.model.space_map)
            self.model.occupancy.update(self.model.field, step_size, times=self.data.times, generator=self.gen)
            self.model.occupancy.occupied &= self.allowed  # never seen, or ruled out by the SfM prior
            self.model.occupancy.invalidate()
            if self.model.field.dynamic_grid is None and p >= cfg.dynamic_grid_at:
                self.model.attach_dynamic_grid()
            # the dynamic grid follows the dynamic field's own density only from dynamic_grid_at on (a young
            # field's density says nothing yet); before that it is the prior's moving cells, if any
            if self.model.field.dynamic_grid is not None and p >= cfg.dynamic_grid_at:
                grid = self.model.field.dynamic_grid
                grid.update(self.model.dynamic, step_size, times=self.data.times, generator=self.gen)
                grid.occupied &= self.model.occupancy.occupied
                if self.dynamic_allowed is not None:
                    grid.occupied &= self.dynamic_allowed
                grid.invalidate()

    def field_grid_due(self, every: int) -> bool:
        w = self.cfg.occupancy_warmup
        return self.step >= w and (self.step - w) % every == 0

    # ---- losses ---------------------------------------------------------------------------------------------
    def _terms(self) -> list[LossTerm]:
        c, d = self.cfg, self.data
        terms = [LossTerm("rgb", 1.0, self._rgb)]
        if d.depth is not None:
            terms.append(LossTerm("depth", c.depth_weight, self._depth))
        if d.flow_fw is not None:
            terms.append(LossTerm("flow", c.flow_weight, lambda ctx: self._flow(ctx).get("flow"),
                                  exponential_decay(c.flow_decay)))
            terms.append(LossTerm("corr", c.scene_flow_weight, lambda ctx: self._flow(ctx).get("corr")))
            terms.append(LossTerm("cycle", c.scene_flow_weight, lambda ctx: self._flow(ctx).get("cycle")))
        terms += [
            LossTerm("distortion", c.distortion_weight,
                     lambda ctx: distortion_loss(ctx.out.samples, scale=self.model.motion_scale).mean()),
            LossTerm("dyn_sparsity", c.dynamic_sparsity_weight, lambda ctx: sparsity_loss(ctx.out.weights_dynamic)),
            LossTerm("static_tv", c.static_tv_weight, lambda ctx: self.model.static.tv_loss()),
            LossTerm("static_l1", c.static_l1_weight, lambda ctx: self.model.static.l1_loss()),
            LossTerm("dyn_tv", c.dynamic_tv_weight, lambda ctx: self.model.dynamic.tv_loss()),
            LossTerm("time_smooth", c.time_smooth_weight, lambda ctx: self.model.dynamic.time_smoothness_loss()),
            LossTerm("time_l1", c.time_l1_weight, lambda ctx: self.model.dynamic.time_l1_loss()),
        ]
        if d.static_known is not None:
            terms.append(LossTerm("static_mask", c.static_mask_weight,
                                  lambda ctx: self._masked_share(ctx, self.data.static_known, "weights_dynamic")))
            terms.append(LossTerm("dynamic_mask", c.dynamic_mask_weight,
                                  lambda ctx: self._masked_share(ctx, self.data.dynamic_known, "weights_static")))
        if self.guidance is not None:
            terms.append(LossTerm("guidance", c.guidance_weight, self._guidance))
        return terms

    def _rgb(self, ctx: StepContext) -> Tensor:
        loss, per_ray = photometric_loss(ctx.out.rgb, ctx.batch.rgb, self.cfg.rgb_loss)
        ctx.cache["per_ray_error"] = per_ray
        return loss

    def _depth(self, ctx: StepContext) -> Tensor | None:
        b = ctx.batch
        valid = self.data.depth_valid[b.frame, b.row, b.col]
        if not self.data.depth_metric:  # a dense prediction also covers rays that hit nothing: skip those
            valid &= ctx.out.alpha.detach() > 0.5
        if not bool(valid.any()):
            return None
        prior = self.data.depth[b.frame, b.row, b.col]
        depth = ctx.out.depth[valid].clamp_min(max(self.model.near, 1e-3 * self.model.motion_scale))
        if self.data.depth_metric:
            return metric_depth_loss(depth, prior[valid], self.model.motion_scale)
        return affine_invariant_depth_loss(depth, prior[valid], b.frame[valid], self.data.T, self.cfg.depth_space)

    def _flow(self, ctx: StepContext) -> dict[str, Tensor]:
        if "flow_pass" not in ctx.cache:
            b = ctx.batch
            forward = ctx.step % 2 == 0  # alternate directions: half the cost per step
            targets = self.data.flow_targets(b, forward)
            ctx.cache["flow_pass"] = scene_flow_pass(self.model, ctx.out, b.origins, b.dirs, b.times, targets,
                                                     max(self.data.H, self.data.W),
                                                     with_consistency=self.cfg.scene_flow_weight > 0)
        return ctx.cache["flow_pass"]

    @staticmethod
    def _masked_share(ctx: StepContext, mask: Tensor, share: str) -> Tensor | None:
        """Mean opacity share of one field (out.weights_static / weights_dynamic) on the rays of mask pixels."""
        b = ctx.batch
        known = mask[b.frame, b.row, b.col]
        if not bool(known.any()):
            return None
        return ctx.out[share][known].mean()

    def _guidance(self, ctx: StepContext) -> Tensor | None:
        c = self.cfg
        if ctx.step % max(c.guidance_every, 1) != 0:
            return None
        n = max(1, c.guidance_views)
        frames = torch.randint(0, self.data.T, (n,), device=self.device, generator=self.gen)
        cams = self.novel_cameras(frames, (torch.rand(n, device=self.device, generator=self.gen) * 2 - 1)
                                  * c.guidance_max_degrees)
        times = self.data.times[frames]
        out = self.model.render_image(cams, times, grad=True)
        return self.guidance(method_output(out), cams, times)

    def novel_cameras(self, frames: Int[Tensor, "N"], degrees: Float[Tensor, "N"]) -> Cameras:
        """Input cameras of `frames` orbited about their view of the scene centre, at guidance resolution."""
        d = self.data
        cams = Cameras(d.K[frames], d.w2c[frames], d.W, d.H)
        centers = cams.centers
        pivot = ((self.scene_center - centers) * d.forward[frames]).sum(-1)
        pivot = pivot.clamp_min(0.1 * self.model.motion_scale)
        return orbit_cameras(cams, pivot, degrees).scaled(self.cfg.guidance_size / max(d.W, d.H))

    # ---- one step -------------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        start = time.perf_counter()
        self._apply_schedule()
        warm = self.prior or self.step >= self.cfg.occupancy_warmup
        frame, row, col = self.sampler.sample(self.n_rays(), self.gen)
        if self.data.depth_pixels is not None:
            frame, row, col = (torch.cat(p) for p in zip((frame, row, col), self.data.depth_rays(self.cfg.depth_rays,
                                                                                                 self.gen)))
        jitter = torch.rand(len(frame), 2, device=self.device, generator=self.gen) if self.cfg.jitter else None
        b = self.data.batch(frame, row, col, jitter)
        out = self.model.render_rays(b.origins, b.dirs, b.times, b.forward, train=True, use_occupancy=warm,
                                     n_samples=self.n_samples, generator=self.gen)
        self.last_stats = out.stats
        per_ray = out.stats["samples"] / max(len(frame), 1)
        self.samples_per_ray = 0.5 * self.samples_per_ray + 0.5 * per_ray
        ctx = StepContext(self.model, b, out, self.step, self.progress, self)
        loss, logs = total_loss(self.terms, ctx)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sampler.update(frame, row, col, ctx.cache["per_ray_error"], self.step)
        self.step += 1
        self.elapsed += time.perf_counter() - start
        mse = float(ctx.cache["per_ray_error"].mean())
        return {"loss": float(loss.detach()), "psnr": -10.0 * math.log10(max(mse, 1e-10)), **logs}

    # ---- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "elapsed": self.elapsed, "ups_done": self.ups_done, "arch": self.model.arch,
                "samples_per_ray": self.samples_per_ray,
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "generator": self.gen.get_state(), "sampler": self.sampler.state_dict(),
                "occupancy_updates": self.model.occupancy.n_updates,
                "dynamic_grid_updates": getattr(self.model.field.dynamic_grid, "n_updates", 0)}

    def load_state_dict(self, state: dict) -> None:
        arch = state["arch"]
        if arch["static"]["resolution"] != self.model.arch["static"]["resolution"]:
            self.model.upsample_static(arch["static"]["resolution"])
        if arch.get("dynamic_grid") and self.model.field.dynamic_grid is None:
            self.model.attach_dynamic_grid()
        self.model.load_state_dict(state["model"])
        self.model.occupancy.n_updates = int(state["occupancy_updates"])
        if self.model.field.dynamic_grid is not None:
            self.model.field.dynamic_grid.n_updates = int(state["dynamic_grid_updates"])
        self.step, self.elapsed, self.ups_done = int(state["step"]), float(state["elapsed"]), int(state["ups_done"])
        self.samples_per_ray = float(state["samples_per_ray"])
        self._make_optimizer()
        self.opt.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"].cpu())
        self.sampler.load_state_dict(state["sampler"])
