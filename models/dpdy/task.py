"""DpDy's fit task for the driver (models/fitting.py): one input frame per step, rendered whole.

Loss terms: photometric (L1 + D-SSIM), depth (metric against SfM points, affine-invariant against dense
predictions), 2D tracks (each pixel's rendered 3D position at the neighbouring frame, projected with that
frame's camera, must land where the optical flow carries it: this constrains motion and, through the camera's
own motion, the depth of the static scene), masks (the dynamic Gaussians' share of a pixel against the
moving-object masks), smoothness of the motion bases, and an optional guidance hook (DpDy's diffusion priors,
models/priors/hook.py) that renders novel views itself and returns its loss terms.

Determinism: every random draw comes from one torch.Generator saved with the parameters, the optimizer and the
densification statistics, so a resumed fit continues exactly where an uninterrupted one would be.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from safetensors.torch import save_file
from torch import Tensor

from models.cameras import pixel_grid
from models.dpdy.config import DpDyConfig
from models.dpdy.guidance import Guidance
from models.files import atomic_write
from models.gaussians.init import InitOptions, initialise
from models.gaussians.losses import (
    affine_invariant_loss,
    isometry_loss,
    long_track_loss,
    metric_disparity_loss,
    motion_smoothness,
    neighbour_pairs,
    photometric_loss,
    track_loss,
)
from models.gaussians.model import DynamicGaussians
from models.gaussians.motion_init import DENSE_DEPTH
from models.gaussians.strategy import DensifyStrategy, StrategyOptions
from models.gaussians.tracks import window_tracks
from models.scene import Scene

VERSION = 4  # 1: the grid-field DpDy; 2: Gaussians without temporal opacity; 3: quaternion motion bases
CONFIG, WEIGHTS = "config.json", "model.safetensors"
NEAR = 0.01  # near plane in units of the scene radius: a track point closer than this to a camera is not projected


class SceneTensors:
    """The scene's per-frame data as tensors on the fit device."""

    def __init__(self, scene: Scene, device: torch.device, track_window: int = 8, track_points: int = 512,
                 seed: int = 0):
        self.T, self.H, self.W = scene.num_frames, scene.height, scene.width
        self.frames = torch.as_tensor(np.array(scene.frames), device=device)  # uint8 (a copy: memmaps are read-only)
        self.times = scene.times.to(device)
        self.K = scene.cameras.K.float().to(device)
        self.w2c = scene.cameras.w2c.float().to(device)
        inst = None if scene.instances is None else np.asarray(scene.instances)
        self.moving = None if inst is None else torch.as_tensor(inst > 0, device=device)
        self.depth = None if scene.depth is None else torch.as_tensor(np.asarray(scene.depth, np.float32), device=device)
        self.depth_dense = self.depth is not None and float((self.depth > 0).float().mean()) >= DENSE_DEPTH
        self.flow_fw = self.flow_bw = None
        if scene.flow_fw is not None and scene.flow_bw is not None:
            self.flow_fw = torch.as_tensor(np.asarray(scene.flow_fw, np.float32), device=device)
            self.flow_bw = torch.as_tensor(np.asarray(scene.flow_bw, np.float32), device=device)
            ones = lambda f: torch.ones(f.shape[:-1], dtype=torch.bool, device=device)
            self.valid_fw = ones(self.flow_fw) if scene.valid_fw is None else torch.as_tensor(np.array(scene.valid_fw), device=device)
            self.valid_bw = ones(self.flow_bw) if scene.valid_bw is None else torch.as_tensor(np.array(scene.valid_bw), device=device)
        self.tracks = None  # long-range: query (T,P,2), pos (T,2W+1,P,2), ok (T,2W+1,P)
        if self.flow_fw is not None and self.T > 2:
            tr = window_tracks(scene.flow_fw, scene.flow_bw, scene.valid_fw, scene.valid_bw,
                               None if inst is None else inst > 0, track_points, min(track_window, self.T - 1), seed)
            self.tracks = {"query": torch.as_tensor(tr.query, device=device), "window": tr.window,
                           "pos": torch.as_tensor(tr.pos, device=device), "ok": torch.as_tensor(tr.ok, device=device)}
        self.pixels = pixel_grid(self.W, self.H, device=device)

    def image(self, t: int) -> Float[Tensor, "H W 3"]:
        return self.frames[t].float() / 255.0


def build_arch(scene: Scene, model: DynamicGaussians, cfg: DpDyConfig) -> dict:
    """What the checkpoint needs beyond tensors: set sizes, scene normalisation, background, image size."""
    return {"sizes": model.sizes(), "center": np.asarray(scene.center, np.float32).tolist(),
            "radius": float(scene.radius), "background": cfg.background, "width": scene.width,
            "height": scene.height}


class DpDyTask:
    """The `models.fitting.FitTask` of DpDy."""

    def __init__(self, scene: Scene, cfg: DpDyConfig, device: torch.device, guidance: Guidance | None = None):
        self.cfg, self.device, self.guidance = cfg, device, guidance
        self.data = SceneTensors(scene, device, cfg.track_window, cfg.track_points, cfg.seed)
        self.radius = float(scene.radius)
        if not math.isfinite(self.radius) or self.radius <= 0:
            from models.errors import InputError
            raise InputError(f"scene radius must be positive, got {scene.radius}; check the sfm stage's bounds")
        init = InitOptions(static_points=cfg.static_points, keyframes=cfg.keyframes, dynamic_points=cfg.dynamic_points,
                           bases_per_object=cfg.bases_per_object, opacity=cfg.init_opacity, seed=cfg.seed,
                           object_scales=cfg.placements())
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            self.model = initialise(scene, init).to(device)
        self.arch = build_arch(scene, self.model, cfg)
        with torch.no_grad():
            self.model.background.fill_(1.0 if cfg.background == "white" else 0.0)
            if not cfg.temporal_opacity:
                self.model.log_time_scales.fill_(10.0)  # a Gaussian's opacity factor is 1 at every time
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(cfg.seed)
        opts = StrategyOptions(grow_grad2d=cfg.grow_grad2d, refine_every=cfg.refine_every,
                               refine_stop=cfg.refine_stop, max_gaussians=cfg.max_gaussians,
                               reset_every=cfg.opacity_reset_every)
        self.strategies = {"static": DensifyStrategy(self.model.static, self.model, (), self.radius, opts),
                           "dynamic": DensifyStrategy(self.model.dynamic, self.model, ("motion_logits", "instance_ids", "time_centers",
                                                                         "log_time_scales"),
                                                      self.radius, opts)}
        self.optimizer = self._make_optimizer()
        self._pairs_cache = None
        self._last_progress = 0.0

    # ---- optimizer ------------------------------------------------------------------------------------------
    def _groups(self) -> list[tuple[str, Tensor, float]]:
        c, m = self.cfg, self.model
        out = []
        for set_name, g in (("static", m.static), ("dynamic", m.dynamic)):
            for name, lr in (("means", c.lr_means * self.radius), ("log_scales", c.lr_scales),
                             ("quats", c.lr_quats), ("opacity_logits", c.lr_opacity), ("color_logits", c.lr_colors)):
                out.append((f"{set_name}.{name}", getattr(g, name), lr))
        out += [("bases.translations", m.bases.translations, c.lr_motion * self.radius),
                ("bases.rotations", m.bases.rotations, c.lr_motion * 10),
                ("motion_logits", m.motion_logits, c.lr_motion_weights)]
        if c.temporal_opacity:
            out += [("time_centers", m.time_centers, 2e-3), ("log_time_scales", m.log_time_scales, 1e-2)]
        if c.background == "learned":
            out.append(("background", m.background, 1e-2))
        return out

    def _make_optimizer(self) -> torch.optim.Optimizer:
        groups = [{"params": [p], "lr": lr, "base_lr": lr, "name": name} for name, p, lr in self._groups()]
        return torch.optim.Adam(groups, eps=1e-15)

    def _apply_schedule(self, progress: float) -> None:
        for group in self.optimizer.param_groups:
            decay = 0.01 ** progress if group["name"].endswith("means") or group["name"].startswith("bases") else 1.0
            group["lr"] = group["base_lr"] * decay

    # ---- one step -------------------------------------------------------------------------------------------
    def train_step(self, step: int, progress: float) -> dict[str, float]:
        c, d = self.cfg, self.data
        self._apply_schedule(progress)
        # first: a prior may add Gaussians, which the input view's render must then include
        prior = self.guidance(self, step, progress) if self.guidance is not None else {}
        t = int(torch.randint(0, d.T, (1,), generator=self.gen, device=self.device))
        other = self._other_frame(t)
        pose_t = self.model.dynamic_pose(float(d.times[t]))
        pose_o = extra = None
        if other is not None:
            pose_o = self.model.dynamic_pose(float(d.times[other]))
            extra = torch.cat([self.model.static.means, pose_o[0]])
        out = self.model.render(d.w2c[t], d.K[t], d.W, d.H, float(d.times[t]), extra=extra, pose=pose_t)
        means2d = out["meta"]["means2d"]
        if means2d.requires_grad:
            means2d.retain_grad()
        target = d.image(t)
        losses = {"rgb": photometric_loss(out["rgb"], target, c.ssim_weight)}
        if c.depth and d.depth is not None and c.depth_weight > 0:
            losses["depth"] = c.depth_weight * self._depth_loss(out, t)
        if other is not None and abs(other - t) == 1 and c.track_weight > 0:
            flow, valid = (d.flow_fw[t], d.valid_fw[t]) if other > t else (d.flow_bw[other], d.valid_bw[other])
            w = c.track_weight * (c.track_decay ** progress)
            losses["track"] = w * track_loss(out["extra"], out["alpha"], d.pixels + flow, valid, d.K[other],
                                             d.w2c[other], 1.0)
        if other is not None and d.tracks is not None and c.long_track_weight > 0:
            k = other - t + d.tracks["window"]
            w = c.long_track_weight * (c.track_decay ** progress)
            losses["long_track"] = w * long_track_loss(out["extra"], out["alpha"], d.tracks["query"][t],
                                                       d.tracks["pos"][t, k], d.tracks["ok"][t, k], d.K[other],
                                                       d.w2c[other], NEAR * self.radius)
        if other is not None and c.isometry_weight > 0 and len(self.model.dynamic):
            pairs, rest = self._pairs()
            losses["isometry"] = c.isometry_weight * isometry_loss(pose_t[0], pose_o[0], pairs, rest)
        if d.moving is not None and c.mask_weight > 0:
            losses["mask"] = c.mask_weight * (out["dynamic"] - d.moving[t].float()).abs().mean()
        if c.motion_smooth_weight > 0 and len(self.model.dynamic):
            losses["smooth"] = c.motion_smooth_weight * motion_smoothness(
                self.model.bases.translations, self.model.bases.rotations, self.radius)
        losses.update(prior)
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            mse = float((out["rgb"].detach() - target).square().mean())
        metrics = {"loss": float(loss.detach()), "psnr": -10 * math.log10(max(mse, 1e-10)),
                   **{k: float(v.detach()) for k, v in losses.items()}}
        self._densify(step, progress, out["meta"], metrics)
        return metrics

    def _other_frame(self, t: int) -> int | None:
        """The frame whose positions this step supervises: half the time an adjacent one (dense flow), else one up to
        `track_window` frames away (sparse long-range tracks). None without flow."""
        d = self.data
        if d.flow_fw is None or d.T < 2:
            return None
        window = 1 if d.tracks is None else d.tracks["window"]
        r = torch.rand(2, generator=self.gen, device=self.device)
        reach = 1 if window == 1 or bool(r[0] < 0.5) else 2 + int(r[1] * (window - 1))
        choices = [n for n in (t - reach, t + reach) if 0 <= n < d.T] or [n for n in (t - 1, t + 1) if 0 <= n < d.T]
        return choices[int(torch.randint(0, len(choices), (1,), generator=self.gen, device=self.device))]

    def _pairs(self) -> tuple[Tensor, Tensor]:
        """Neighbouring dynamic Gaussians of one object (k nearest in the canonical frame), made again whenever
        densification changed the set."""
        if self._pairs_cache is None:
            # seeded by the set's size so that a resumed fit draws the same pairs as an uninterrupted one
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + len(self.model.dynamic))
            pairs, rest = neighbour_pairs(self.model.dynamic.means, self.model.instance_ids, generator=gen)
            self._pairs_cache = (pairs.to(self.device), rest.to(self.device))
        return self._pairs_cache

    def _depth_loss(self, out: dict, t: int) -> Tensor:
        d, c = self.data, self.cfg
        prior = d.depth[t]
        sel = (prior > 0) & (out["alpha"].detach() > 0.5)
        mode = c.depth_loss if c.depth_loss != "auto" else ("affine" if d.depth_dense else "metric")
        if mode == "metric":
            if d.moving is not None:
                sel &= ~d.moving[t]  # SfM points are static; a point on a moving object is an outlier
            return metric_disparity_loss(out["depth"][sel], prior[sel], self.radius)
        return affine_invariant_loss(1.0 / out["depth"][sel].clamp(min=1e-6), 1.0 / prior[sel])

    def _densify(self, step: int, progress: float, meta: dict, metrics: dict) -> None:
        means2d = meta["means2d"]
        if means2d.grad is None:
            return
        n_static = len(self.model.static)
        grad, radii = means2d.grad[0], meta["radii"][0]
        self.strategies["static"].observe(grad[:n_static], radii[:n_static], self.data.W, self.data.H)
        self.strategies["dynamic"].observe(grad[n_static:], radii[n_static:], self.data.W, self.data.H)
        if self.strategies["static"].due(step, progress):
            # one global cap: the moving content grows first (it is what the fit gets wrong), the static set
            # takes what is left
            for name in ("dynamic", "static"):
                other = len(self.model.static if name == "dynamic" else self.model.dynamic)
                counts = self.strategies[name].refine(self.optimizer, self.gen, cap=self.cfg.max_gaussians - other)
                metrics[f"n_{name}"] = counts["after"]
            self._pairs_cache = None
        if self.strategies["static"].reset_due(self._last_progress, progress):
            for strategy in self.strategies.values():
                strategy.reset_opacities(self.optimizer)
        self._last_progress = progress

    # ---- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"sizes": self.model.sizes(), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.gen.get_state(),
                "strategies": {k: s.state_dict() for k, s in self.strategies.items()},
                "pairs": self._pairs_cache, "last_progress": self._last_progress}

    def load_state_dict(self, state: dict) -> None:
        model = DynamicGaussians.from_sizes(state["sizes"]).to(self.device)
        model.load_state_dict(state["model"])
        self.model = model
        for name, s in self.strategies.items():
            s.g = getattr(model, name)
            s.owner = model
            s.load_state_dict(state["strategies"][name])
        self.optimizer = self._make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        self._last_progress = state.get("last_progress", 0.0)
        pairs = state.get("pairs")  # made from the set as it was then: rebuilding them now would change the fit
        self._pairs_cache = None if pairs is None else tuple(p.to(self.device) for p in pairs)

    def save(self, out: Path, step: int, seconds: float) -> None:
        save_checkpoint(out, self.model, self.cfg, {**self.arch, "sizes": self.model.sizes()}, step, seconds)


def save_checkpoint(out: Path, model: DynamicGaussians, cfg: DpDyConfig, arch: dict, step: int, seconds: float
                    ) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS, lambda p: save_file(tensors, str(p)))
    meta = {"method": "dpdy", "version": VERSION, "config": dataclasses.asdict(cfg), "arch": arch, "step": step,
            "seconds": round(seconds, 2)}
    atomic_write(out / CONFIG, lambda p: p.write_text(json.dumps(meta, indent=2)))


