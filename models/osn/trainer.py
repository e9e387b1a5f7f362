"""OSN training on the Gaussian core: stage 1 bootstraps every object alone, stage 2 alternates scaled composite
rendering (objects) with soft Z-buffer pseudo-labels (scale network).

Every step takes one input frame, rendered whole (as DpDy's fit).

Stage 1 (a share `bootstrap_fraction` of the steps): every object is rendered ALONE at unit scale: the
background on background pixels (colour, opacity -> 1, depth), object k on its mask (colour, opacity -> 1, depth in
its own units where known) and transparent on background pixels (opacity -> 0).

Stage 2, in rounds of `round_steps`:
  - scale network: every object is rendered alone once at unit scale in every frame (the Z-buffer cache: depth
    and opacity on a grid of pixels; mask-boundary pixels, which mix objects, are left out); then each step draws
    H scale combinations (half uniform in the search box, half near the currently valid ones), labels them 0/1
    by soft Z-buffer segmentation against the masks, and takes a BCE step;
  - objects: each step draws one valid combination from the scale network (validity > 0.5) and renders the
    scaled composite (all objects concatenated into one rasterisation); losses: photometric (L1 + D-SSIM), depth
    (rendered depth vs s_k * the depth of the pixel's object), segmentation cross-entropy (per-object shares vs
    masks), opacity -> 1.
The scale network is trained once more after the last round (`final_scale_steps`), so it matches the final
geometry. Densification and pruning (gsplat's default strategy) run per object.

`OSNTask` is the `models.fitting.FitTask` of OSN. Determinism: every step draws from generators seeded by
(seed, step), so a resumed fit continues exactly. Checkpoint: `config.json` + `model.safetensors`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from models.devices import resolve_device
from models.gaussians.init import InitOptions, gaussian_set, static_gaussians
from models.gaussians.losses import photometric_loss
from models.gaussians.model import GaussianSet
from models.gaussians.motion_init import DepthSource, grid_pixels, object_depth
from models.gaussians.strategy import DensifyStrategy, StrategyOptions
from models.osn.config import OSNConfig
from models.osn.model import OSNModel
from models.osn.objects import ObjectSet, background_labels, build_object_set, log_scale_range
from models.osn.scale_net import ScaleNetwork, ScaleSpace, random_unit
from models.osn.zbuffer import ZBufferCache
from models.scene import Scene

# ---- initial Gaussians ---------------------------------------------------------------------------------------------

def object_unit_depth(scene: Scene, objects: ObjectSet, depth: DepthSource, o: int, t: int,
                      xy: np.ndarray) -> np.ndarray:
    """z-depth of object o's pixels `xy` in frame t, in its own units: track-posed objects their triangulated
    tracks' depth there (without a dense depth prediction), else the depth they were posed at (the depth stage's)
    over its unit; SfM-posed ones their sparse SfM depth where known, else their median (1)."""
    k = objects.ids[o]
    inst = np.asarray(scene.instances[t])
    shape = objects.shape.get(o)
    if objects.source[o] == "tracks" and shape is not None and len(shape) >= 8 and (not depth.dense or
                                                                                     depth.plane is not None):
        # no depth prediction: its tracks triangulated over its poses give the shape (median of the 4 nearest)
        from scipy.spatial import cKDTree

        P = torch.linalg.inv(objects.frame_from_camera[o, t].double()).numpy()  # camera-from-object
        cam = shape @ P[:3, :3].T + P[:3, 3]
        K = objects.K[t].double().numpy()
        front = cam[:, 2] > 1e-6
        uv = cam[front, :2] / cam[front, 2:] * np.diag(K)[:2] + K[:2, 2]
        if front.sum() >= 8:
            _, near = cKDTree(uv).query(xy, k=4)
            return np.median(cam[front, 2][near], axis=1).astype(np.float32)
    if objects.source[o] == "tracks":
        z = object_depth(depth, inst, t, k, xy)
        return np.ones(len(xy), np.float32) if z is None else (z / objects.unit[o]).astype(np.float32)
    out = np.ones(len(xy), np.float32)
    if k in scene.object_depth:
        d = np.asarray(scene.object_depth[k][t])[xy[:, 1].astype(int), xy[:, 0].astype(int)] / objects.unit[o]
        out = np.where(d > 0, d, 1.0).astype(np.float32)
    return out


def initial_sets(scene: Scene, objects: ObjectSet, depth: DepthSource, cfg: OSNConfig) -> list[GaussianSet]:
    """The background's Gaussians (DpDy's static initialiser, with the dropped objects part of the background) and
    every object's Gaussians in its own frame: its pixels at a few keyframes lifted with its depth and mapped
    through that frame's camera-to-object pose."""
    rng = np.random.default_rng(cfg.seed)
    labels = background_labels(objects, scene.instances)
    bg_scene = dataclasses.replace(scene, instances=labels.astype(np.uint8))
    opts = InitOptions(static_points=cfg.background_points, keyframes=cfg.keyframes, opacity=cfg.init_opacity,
                       seed=cfg.seed)
    sets = [static_gaussians(bg_scene, depth, opts, rng)]
    T = scene.num_frames
    areas = [(labels == o).reshape(T, -1).sum(1) for o in range(len(objects.ids))]
    total = sum(int(a.max()) for a in areas[1:]) or 1
    K = objects.K.numpy()
    for o in range(1, len(objects.ids)):
        seen = np.nonzero(areas[o] > 0)[0]
        keys = np.unique(np.r_[np.linspace(seen[0], seen[-1], cfg.keyframes).round(), areas[o].argmax()]).astype(int)
        budget = max(16, cfg.object_points * int(areas[o].max()) // total) // len(keys)
        means, colors, sizes = [], [], []
        for t in keys:
            mask = labels[t] == o
            xy = grid_pixels(mask, budget, rng)
            if len(xy) == 0:
                continue
            d = object_unit_depth(scene, objects, depth, o, int(t), xy)
            rays = np.stack([(xy[:, 0] - K[t, 0, 2]) / K[t, 0, 0], (xy[:, 1] - K[t, 1, 2]) / K[t, 1, 1],
                             np.ones(len(xy))], -1)
            P = objects.frame_from_camera[o, t].double().numpy()
            means.append((rays * d[:, None]) @ P[:3, :3].T + P[:3, 3])
            colors.append(np.asarray(scene.frames[t], np.float32)[xy[:, 1].astype(int), xy[:, 0].astype(int)] / 255)
            sizes.append(0.5 * np.sqrt(mask.sum() / len(xy)) * d / K[t, 0, 0])
        sets.append(gaussian_set(np.concatenate(means), np.concatenate(colors), np.concatenate(sizes),
                                 cfg.init_opacity, rng))
    return sets


# ---- per-frame targets -------------------------------------------------------------------------------------------

@dataclasses.dataclass
class FrameData:
    """Per frame: images (T,H,W,3) in [0,1]; labels (T,H,W) object index (0 = background, dropped objects
    included); interior (T,H,W): the 8-neighbours share the label (mask boundaries mix objects); depth (T,H,W):
    z-depth of the pixel's own object in that object's units (0 = unknown); w2c, K, times."""

    images: Float[Tensor, "T H W 3"]
    labels: Int[Tensor, "T H W"]
    interior: Tensor
    depth: Float[Tensor, "T H W"]
    w2c: Float[Tensor, "T 4 4"]
    K: Float[Tensor, "T 3 3"]
    times: Float[Tensor, " T"]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.labels.shape)


def frame_data(scene: Scene, objects: ObjectSet, depth: DepthSource, device: torch.device) -> FrameData:
    T, H, W = scene.num_frames, scene.height, scene.width
    labels = torch.as_tensor(background_labels(objects, scene.instances))
    target = torch.zeros(T, H, W)
    if scene.depth is not None:
        d = torch.as_tensor(np.array(scene.depth, np.float32))
        bg = (labels == 0) & torch.isfinite(d) & (d > 0)
        target[bg] = d[bg]
    for o in range(1, len(objects.ids)):
        k = objects.ids[o]
        if objects.source[o] == "sfm" and k in scene.object_depth:
            d = torch.as_tensor(np.array(scene.object_depth[k], np.float32)) / objects.unit[o]
        elif objects.source[o] == "tracks" and depth.dense and depth.plane is None:
            d = torch.as_tensor(np.stack([depth(t) for t in range(T)]).astype(np.float32)) / objects.unit[o]
        else:
            continue
        sel = (labels == o) & torch.isfinite(d) & (d > 0)
        target[sel] = d[sel]
    pad = F.pad(labels[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
    interior = torch.ones(T, H, W, dtype=torch.bool)
    for dy in range(3):  # the 8-neighbours carry the same label
        for dx in range(3):
            interior &= pad[:, dy:dy + H, dx:dx + W] == labels
    images = torch.as_tensor(np.array(scene.frames)).float() / 255.0
    return FrameData(images.to(device), labels.to(device), interior.to(device), target.to(device),
                     objects.w2c.to(device), objects.K.to(device), objects.times.to(device))


# ---- the fit task ---------------------------------------------------------------------------------------------------

class OSNTask:
    """OSN's `models.fitting.FitTask`: stage 1 then stage 2 rounds, one input frame per `train_step`."""

    def __init__(self, scene: Scene, cfg: OSNConfig):
        self.cfg = cfg
        cfg.validate()
        self.device = resolve_device(cfg.device)
        depth = DepthSource(scene)
        objects = build_object_set(scene, depth, cfg.min_posed, cfg.seed)
        lo, hi = log_scale_range(objects, cfg.scale_min, cfg.scale_max)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            sets = initial_sets(scene, objects, depth, cfg)
        self.model = OSNModel(objects, sets, ScaleSpace(lo, hi), cfg.scale_hidden, cfg.seed,
                              cfg.scale_frequencies).to(self.device)
        self.data = frame_data(scene, objects, depth, self.device)
        opts = StrategyOptions(grow_grad2d=cfg.grow_grad2d, refine_every=cfg.refine_every, refine_stop=cfg.refine_stop,
                               max_gaussians=cfg.max_gaussians)
        self.strategies = [DensifyStrategy(g, self.model, (), r, opts) for g, r in zip(self.model.sets, objects.radius)]
        self.opt = self._make_optimizer()
        self.opt_scale = torch.optim.Adam(self.model.scale_net.parameters(), lr=cfg.lr_scale_net)
        self.step = 0  # seeds the step's generators
        self.stage2_start: int | None = None  # the step stage 2 began at (rounds count from it)
        self.scale_metrics: dict[str, float] = {}  # of the last scale-network pass, shown with stage 2 steps
        self.cache: ZBufferCache | None = None  # rebuilt before every scale-network pass: no resume state
        self._scale_updates = 0

    # -- optimiser and schedule ------------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.cfg
        groups = []
        for o, (g, r) in enumerate(zip(self.model.sets, self.model.objects.radius)):
            for name, lr in (("means", c.lr_means * r), ("log_scales", c.lr_scales), ("quats", c.lr_quats),
                             ("opacity_logits", c.lr_opacity), ("color_logits", c.lr_colors)):
                groups.append({"params": [getattr(g, name)], "lr": lr, "base_lr": lr, "name": f"{o}.{name}"})
        return torch.optim.Adam(groups, eps=1e-15)

    def _set_lr(self, progress: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * (0.01 ** progress if g["name"].endswith("means") else 1.0)

    @property
    def stage1_steps(self) -> int:
        return int(round(self.cfg.steps * self.cfg.bootstrap_fraction))

    def generator(self, salt: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator seeded by (seed, step, salt)."""
        g = torch.Generator(device=device)
        g.manual_seed((self.cfg.seed * 1_000_003 + self.step * 7919 + salt) % (2 ** 63))
        return g

    def _frame(self) -> int:
        return int(torch.randint(self.data.shape[0], (1,), generator=self.generator(salt=1)))

    # -- stage 1 ---------------------------------------------------------------------------------------------
    def bootstrap_step(self, progress: float) -> dict[str, float]:
        cfg, d, m = self.cfg, self.data, self.model
        t = self._frame()
        T, H, W = d.shape
        ones = [1.0] * len(m.sets)
        loss = torch.zeros((), device=self.device)
        metas, sq, count = [], 0.0, 0
        for o in range(len(m.sets)):
            own = d.labels[t] == o
            if not bool(own.any()):
                metas.append(None)
                continue
            out = m.render(d.w2c[t], d.K[t], W, H, float(d.times[t]), ones, objects=[o])
            diff = out.rgb - d.images[t]
            err = diff.abs().sum(-1)
            l_rgb = err[own].mean() / 3
            region = own if o == 0 else own | (d.labels[t] == 0)
            l_mask = ((out.alpha - own.float())[region] ** 2).mean()
            l_depth = _depth_loss(out.depth, d.depth[t], own & (out.alpha.detach() > 0.5))
            loss = loss + l_rgb + cfg.mask_weight * l_mask + cfg.depth_weight * l_depth
            with torch.no_grad():
                sq += float((diff ** 2).sum(-1)[own].sum())
                count += int(own.sum())
            self._retain(out.meta)
            metas.append(out.meta)
        self._backward(loss, progress)
        for o, meta in enumerate(metas):
            if meta is not None:
                self._observe(o, meta["means2d"], meta["radii"], slice(None))
        return {"loss": float(loss.detach()), "psnr": _psnr(sq / max(count, 1) / 3)}

    # -- stage 2 ---------------------------------------------------------------------------------------------
    def sample_valid(self, n_groups: int, g: torch.Generator) -> Float[Tensor, "G K"]:
        """n_groups valid combinations (objects 1..K) from the scale network; the best-scored ones if fewer
        are valid."""
        net, space = self.model.scale_net, self.model.space
        if self.model.n_objects == 0:
            return torch.zeros(n_groups, 0, device=self.device)
        z = random_unit(1024, self.model.n_objects, g).to(self.device)
        score = net.validity(z)
        valid = (score > 0.5).nonzero()[:, 0]
        if valid.numel() == 0:
            valid = score.argsort(descending=True)[:n_groups]
        pick = valid[torch.randint(valid.numel(), (n_groups,), generator=g).to(valid.device)]
        return space.from_unit(z[pick])

    def composite_step(self, progress: float) -> dict[str, float]:
        cfg, d, m = self.cfg, self.data, self.model
        t = self._frame()
        T, H, W = d.shape
        full = m.full_scales(self.sample_valid(1, self.generator(salt=2)))[0]
        out = m.render(d.w2c[t], d.K[t], W, H, float(d.times[t]), full.tolist())
        label = d.labels[t]
        l_rgb = photometric_loss(out.rgb, d.images[t], cfg.ssim_weight)
        target = d.depth[t] * full.to(self.device)[label]
        l_depth = _depth_loss(out.depth, target, out.alpha.detach() > 0.5)
        O = len(m.sets)
        w = out.object_weights
        logp = torch.log(w + 1e-4) - torch.log(w.sum(-1, keepdim=True) + O * 1e-4)
        l_seg = F.nll_loss(logp.reshape(-1, O), label.reshape(-1))
        l_mask = ((out.alpha - 1.0) ** 2).mean()
        loss = l_rgb + cfg.depth_weight * l_depth + cfg.seg_weight * l_seg + cfg.mask_weight * l_mask
        self._retain(out.meta)
        self._backward(loss, progress)
        start = 0
        for o, n in enumerate(out.meta["counts"]):
            self._observe(o, out.meta["means2d"], out.meta["radii"], slice(start, start + n))
            start += n
        with torch.no_grad():
            mse = float(((out.rgb - d.images[t]) ** 2).mean())
        return {"loss": float(loss.detach()), "psnr": _psnr(mse), "seg": float(l_seg.detach())}

    # -- scale network ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def refresh_cache(self) -> ZBufferCache:
        """Render every object alone at unit scale in every frame; keep a regular grid of pixels (the soft
        Z-buffer input)."""
        d, m = self.data, self.model
        T, H, W = d.shape
        stride = max(1, math.ceil(math.sqrt(T * H * W / max(self.cfg.zbuffer_pixels, 1))))
        ys, xs = torch.meshgrid(torch.arange(stride // 2, H, stride), torch.arange(stride // 2, W, stride),
                                indexing="ij")
        ys, xs = ys.reshape(-1).to(self.device), xs.reshape(-1).to(self.device)
        ones = [1.0] * len(m.sets)
        alpha, depth, labels = [], [], []
        for t in range(T):
            a_cols, d_cols = [], []
            for o in range(len(m.sets)):
                out = m.render(d.w2c[t], d.K[t], W, H, float(d.times[t]), ones, objects=[o])
                a_cols.append(out.alpha[ys, xs])
                d_cols.append(out.depth[ys, xs])
            alpha.append(torch.stack(a_cols, -1))
            depth.append(torch.stack(d_cols, -1))
            lab = d.labels[t, ys, xs]
            labels.append(torch.where(d.interior[t, ys, xs], lab, torch.full_like(lab, -1)))
        self.cache = ZBufferCache.build(torch.cat(depth), torch.cat(alpha), torch.cat(labels))
        return self.cache

    def scale_step(self) -> dict[str, float]:
        g = self.generator(salt=100_000 + self._scale_updates)
        self._scale_updates += 1
        return scale_network_step(self.model.scale_net, self.model.space, self.cache, self.opt_scale,
                                  self.cfg.scale_candidates, g, self.cfg.zbuffer_temperature, self.cfg.label_tolerance)

    def train_scale_net(self, steps: int) -> dict[str, float]:
        if self.model.n_objects == 0:  # nothing to scale: the one scene is the background
            return {}
        self.refresh_cache()
        info: dict[str, float] = {}
        for _ in range(steps):
            info = self.scale_step()
        return info

    # -- shared ----------------------------------------------------------------------------------------------
    def _retain(self, meta: dict) -> None:
        if meta["means2d"].requires_grad:
            meta["means2d"].retain_grad()

    def _backward(self, loss: Tensor, progress: float) -> None:
        self._set_lr(progress)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def _observe(self, o: int, means2d: Tensor, radii: Tensor, rows: slice) -> None:
        if means2d.grad is None:
            return
        T, H, W = self.data.shape
        self.strategies[o].observe(means2d.grad[0][rows], radii[0][rows], W, H)

    def _densify(self, step: int, progress: float, metrics: dict) -> None:
        if not self.strategies[0].due(step, progress):
            return
        for o, s in enumerate(self.strategies):
            s.g = self.model.sets[o]
            metrics[f"n_{o}"] = s.refine(self.opt, self.generator(salt=5000 + o))["after"]

    # -- the FitTask protocol ---------------------------------------------------------------------------------
    def train_step(self, step: int, progress: float) -> dict[str, float]:
        """Stage 1 until `bootstrap_fraction` of the steps (or of the schedule, under a minutes budget); then
        stage 2, where every `round_steps` steps the scale network trains first (3x in the first round)."""
        cfg = self.cfg
        self.step = step
        if self.stage2_start is None and (step >= self.stage1_steps or progress >= cfg.bootstrap_fraction):
            self.stage2_start = step
        if self.stage2_start is None:
            metrics = self.bootstrap_step(progress)
        else:
            if (step - self.stage2_start) % max(cfg.round_steps, 1) == 0:
                first = step == self.stage2_start
                self.scale_metrics = self.train_scale_net(cfg.scale_steps * (3 if first else 1))
            metrics = {**self.scale_metrics, **self.composite_step(progress)}
        self._densify(step, progress, metrics)
        return metrics

    def finish(self, step: int) -> dict[str, float]:
        """The scale network trains once more on the final geometry (the valid set renders draw from)."""
        self.step = step
        self.scale_metrics = self.train_scale_net(self.cfg.final_scale_steps)
        return self.scale_metrics

    def state_dict(self) -> dict:
        return {"sizes": [len(g) for g in self.model.sets], "model": self.model.state_dict(),
                "opt": self.opt.state_dict(), "opt_scale": self.opt_scale.state_dict(),
                "strategies": [s.state_dict() for s in self.strategies], "stage2_start": self.stage2_start,
                "scale_updates": self._scale_updates, "scale_metrics": self.scale_metrics}

    def load_state_dict(self, state: dict) -> None:
        for o, n in enumerate(state["sizes"]):
            self.model.sets[o] = GaussianSet.empty(n).to(self.device)
        self.model.load_state_dict(state["model"])
        for o, s in enumerate(self.strategies):
            s.g = self.model.sets[o]
            s.load_state_dict(state["strategies"][o])
        self.opt = self._make_optimizer()
        self.opt.load_state_dict(state["opt"])
        self.opt_scale.load_state_dict(state["opt_scale"])
        self.stage2_start, self._scale_updates = state["stage2_start"], int(state["scale_updates"])
        self.scale_metrics = dict(state["scale_metrics"])

    def save(self, out: Path, step: int, seconds: float) -> None:
        state = {"step": step, "elapsed": round(seconds, 3), "finished": True, "scale_updates": self._scale_updates}
        self.model.save(out, dataclasses.asdict(self.cfg), {"state": state})


def scale_network_step(net: ScaleNetwork, space: ScaleSpace, cache: ZBufferCache, opt: torch.optim.Optimizer,
                       n_combinations: int, generator: torch.Generator, temperature: float = 0.01,
                       tolerance: float = 0.02) -> dict[str, float]:
    """One BCE step of the scale network on `n_combinations` fresh combinations labelled by the soft Z-buffer:
    half uniform in the search box, half jittered copies of valid ones (the boundary is where labels are
    informative): those the network or the labels call valid among the uniform half, else the uniform ones with
    the smallest error (a small valid set is found even before the network knows it)."""
    device = next(net.parameters()).device
    H, K = n_combinations, space.n_objects
    full = lambda z: torch.cat([torch.ones_like(z[:, :1]), space.from_unit(z)], dim=1)  # noqa: E731
    z = random_unit(H - H // 2, K, generator).to(device)
    labels, err = cache.validity_labels(full(z), temperature, tolerance)
    with torch.no_grad():
        seeds = z[labels | (net.validity(z) > 0.5)]
    if seeds.shape[0] == 0:
        seeds = z[err.amax(-1).argsort()[:max(1, z.shape[0] // 8)]]
    near = seeds[torch.randint(seeds.shape[0], (H // 2,), generator=generator).to(device)]
    near = (near + 0.15 * torch.randn(near.shape, generator=generator).to(device)).clamp(-1, 1)
    near_labels, _ = cache.validity_labels(full(near), temperature, tolerance)
    z, labels = torch.cat([z, near]), torch.cat([labels, near_labels])
    loss = F.binary_cross_entropy_with_logits(net(z), labels.float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"bce": float(loss.detach()), "valid_frac": float(labels.float().mean())}


def _depth_loss(pred: Float[Tensor, "H W"], target: Float[Tensor, "H W"], sel: Tensor) -> Tensor:
    """Mean relative depth error over the selected pixels with a known target (0 when none)."""
    known = sel & (target > 0)
    if not bool(known.any()):
        return pred.sum() * 0.0
    return ((pred[known] - target[known]).abs() / target[known]).mean()


def _psnr(mse: float) -> float:
    return -10.0 * math.log10(max(mse, 1e-10))
