"""OSN training: stage 1 bootstraps every object alone, stage 2 alternates scaled composite rendering (objects)
with soft Z-buffer pseudo-labels (scale network).

Stage 1 (a share `bootstrap_fraction` of the steps): each step renders every object ALONE at unit scale on its
own rays: the background on background pixels (colour, opacity -> 1, depth), object k on its mask pixels
(colour, opacity -> 1, depth in its own SfM units) and on background pixels that its box covers (opacity -> 0).

Stage 2, in rounds of `round_steps`:
  - scale network: every object is rendered alone once at unit scale on a grid of pixels of all frames (the
    Z-buffer cache; mask-boundary pixels, which mix objects, are left out); then each step draws H scale
    combinations (half uniform in the search box, half near the currently valid ones), labels them 0/1 by
    soft Z-buffer segmentation against the masks, and takes a BCE step;
  - objects: each step draws `composite_groups` valid combinations from the scale network (validity > 0.5),
    splits the batch of rays among them and renders the scaled composite of all objects; losses: colour, depth
    (rendered depth vs s_k * the SfM depth of the pixel's object), segmentation cross-entropy (per-object weights
    vs masks).
The scale network is trained once more after the last round (`final_scale_steps`, longer: it sharpens the valid
boundary), so it matches the final geometry.

`OSNTask` is the `models.fitting.FitTask` of OSN: `models.fitting.run_fit` owns the device, budgets, resume
state and metrics; the task maps both stages onto `train_step(step, progress)` and the final scale-network pass
onto `finish`. With a minutes budget, stage 1 ends at the schedule position `bootstrap_fraction` at the latest.

Determinism: every step draws from a generator seeded by (seed, step), so a resumed fit continues exactly.
Checkpoint: `config.json` + `model.safetensors`, written once at the end.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from models.fitting import resolve_device
from models.osn.composite import render_composite
from models.osn.config import OSNConfig
from models.osn.model import OSNModel
from models.osn.objects import ObjectSet, build_object_set, log_scale_range
from models.osn.scale_net import ScaleNetwork, ScaleSpace, random_unit
from models.osn.zbuffer import ZBufferCache
from models.rendering.volume import ray_aabb
from models.scene import Scene


@dataclass
class PixelData:
    """Every pixel of every frame, flattened (P = T*H*W). rgb (P,3) in [0,1]; label (P,) object index (0 =
    background); frame (P,); dirs (P,3) unit ray directions in CAMERA coordinates; depth (P,) z-depth of the
    pixel's own object in that object's units (0 = unknown); interior (P,): the 4-neighbours share the pixel's label
    (mask boundaries, where pixels mix objects, are left out of validity labels); negatives[o]: indices of background pixels whose
    rays cross object o's box (o >= 1); by_label[o]: indices of pixels labelled o."""

    rgb: Float[Tensor, "P 3"]
    label: Int[Tensor, " P"]
    frame: Int[Tensor, " P"]
    dirs: Float[Tensor, "P 3"]
    depth: Float[Tensor, " P"]
    interior: Bool[Tensor, " P"]
    by_label: list[Tensor]
    negatives: list[Tensor]
    shape: tuple[int, int, int]


def pixel_data(scene: Scene, objects: ObjectSet) -> PixelData:
    T, H, W = scene.num_frames, scene.height, scene.width
    rgb = scene.images().reshape(-1, 3)
    inst = torch.from_numpy(np.asarray(scene.instances).astype(np.int64)).reshape(-1)
    lut = torch.full((256,), -1, dtype=torch.long)
    lut[torch.tensor(objects.ids)] = torch.arange(len(objects.ids))
    label = lut[inst]
    frame = torch.arange(T).repeat_interleave(H * W)
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    K = objects.K
    x = (xs.reshape(1, -1) - K[:, 0, 2, None]) / K[:, 0, 0, None]
    y = (ys.reshape(1, -1) - K[:, 1, 2, None]) / K[:, 1, 1, None]
    dirs = F.normalize(torch.stack([x, y, torch.ones_like(x)], -1), dim=-1).reshape(-1, 3)
    depth = torch.zeros(T * H * W)
    if scene.depth is not None:
        d = torch.from_numpy(np.array(scene.depth, np.float32)).reshape(-1)  # a copy: workspaces map it read-only
        bg = (label == 0) & torch.isfinite(d)
        depth[bg] = d[bg]
    for o, k in enumerate(objects.ids[1:], start=1):
        if k in scene.object_depth:
            d = torch.from_numpy(np.array(scene.object_depth[k], np.float32)).reshape(-1) / objects.unit[o]
            sel = (label == o) & torch.isfinite(d)
            depth[sel] = d[sel]
    depth = torch.where(torch.isfinite(depth) & (depth > 0), depth, torch.zeros_like(depth))
    lab_img = label.reshape(T, H, W)
    pad = torch.nn.functional.pad(lab_img[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
    interior = torch.ones(T, H, W, dtype=torch.bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):  # the 4-neighbours carry the same label
        interior &= pad[:, dy:dy + H, dx:dx + W] == lab_img
    by_label = [(label == o).nonzero()[:, 0] for o in range(len(objects.ids))]
    negatives = [torch.zeros(0, dtype=torch.long)]
    bg_idx = by_label[0]
    for o in range(1, len(objects.ids)):
        P = objects.frame_from_camera[o][frame[bg_idx]]
        orig = P[:, :3, 3]
        d = (P[:, :3, :3] @ dirs[bg_idx, :, None])[..., 0]
        _, _, hit = ray_aabb(orig, d, torch.tensor(objects.spaces[o]["aabb"]))
        negatives.append(bg_idx[hit])
    return PixelData(rgb, label, frame, dirs, depth, interior.reshape(-1), by_label, negatives, (T, H, W))


class OSNTask:
    """OSN's `models.fitting.FitTask`: stage 1 then stage 2 rounds, one object-field step per `train_step`."""

    def __init__(self, scene: Scene, cfg: OSNConfig):
        self.cfg = cfg
        cfg.validate()
        self.device = resolve_device(cfg.device)
        objects = build_object_set(scene, cfg.object_margin, cfg.background_space)
        lo, hi = log_scale_range(objects, cfg.scale_min, cfg.scale_max)
        self.model = OSNModel.create(objects, cfg, ScaleSpace(lo, hi)).to(self.device)
        self.data = _to_device(pixel_data(scene, objects), self.device)
        self.frames_P = self.model.objects.frame_from_camera.to(self.device)  # (O, T, 4, 4)
        self.seed_occupancy()
        self.opt = torch.optim.Adam(self._field_groups(), betas=(0.9, 0.99))
        self.opt_scale = torch.optim.Adam(self.model.scale_net.parameters(), lr=cfg.lr_net)
        self.step = 0  # seeds the step's generators
        self.stage2_start: int | None = None  # the step stage 2 began at (rounds count from it)
        self.scale_metrics: dict[str, float] = {}  # of the last scale-network pass, shown with stage 2 steps
        self.cache: ZBufferCache | None = None  # rebuilt before every scale-network pass: no resume state
        self._scale_updates = 0

    def _field_groups(self) -> list[dict]:
        groups = []
        for f in self.model.fields:
            groups += f.field.param_groups(self.cfg.lr_grid, self.cfg.lr_net)
        return groups

    # -- schedule --------------------------------------------------------------------------------------------
    @property
    def stage1_steps(self) -> int:
        return int(round(self.cfg.steps * self.cfg.bootstrap_fraction))

    def _set_lr(self, progress: float) -> None:
        decay = 0.1 ** progress
        for g in self.opt.param_groups:
            g["lr"] = (self.cfg.lr_grid if g["name"] == "grid" else self.cfg.lr_net) * decay

    def generator(self, salt: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator seeded by (seed, step, salt): on the CPU for index draws, on the device for jitter."""
        g = torch.Generator(device=device)
        g.manual_seed((self.cfg.seed * 1_000_003 + self.step * 7919 + salt) % (2 ** 63))
        return g

    # -- rays ------------------------------------------------------------------------------------------------
    def object_rays(self, idx: Tensor, scales: Float[Tensor, "N O"]) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Rays of pixels idx in every object's frame under per-ray scales (background column = 1)."""
        d = self.data
        rays = []
        for o in range(len(self.model.fields)):
            P = self.frames_P[o][d.frame[idx]]
            # camera at the origin: x' = x_cam / s, p = R x' + t -> origin t, direction R d, world per frame = s
            rays.append((P[:, :3, 3], (P[:, :3, :3] @ d.dirs[idx, :, None])[..., 0], scales[:, o]))
        return rays

    @torch.no_grad()
    def seed_occupancy(self, min_coverage: float = 0.5) -> None:
        """Objects whose pixels mostly have a depth start with empty-space skipping seeded from the observed
        surfaces (fast from the first step, and no haze where nothing was seen)."""
        d = self.data
        for o, f in enumerate(self.model.fields):
            idx = d.by_label[o]
            idx = idx[d.depth[idx] > 0]
            if idx.numel() < max(min_coverage * d.by_label[o].numel(), 1):
                continue
            P = self.frames_P[o][d.frame[idx]]
            x_cam = d.dirs[idx] * (d.depth[idx] / d.dirs[idx, 2])[:, None]  # unit scale: camera units = object units
            pts = (P[:, :3, :3] @ x_cam[..., None])[..., 0] + P[:, :3, 3]
            f.seed_occupancy(pts)

    def _pick(self, pool: Tensor, n: int, g: torch.Generator) -> Tensor:
        if pool.numel() == 0 or n <= 0:
            return pool[:0]
        return pool[torch.randint(pool.numel(), (n,), generator=g).to(pool.device)]

    # -- stage 1 ---------------------------------------------------------------------------------------------
    def bootstrap_step(self, progress: float) -> dict[str, float]:
        cfg, d, g = self.cfg, self.data, self.generator()
        O = len(self.model.fields)
        n_bg = cfg.batch_rays // 2
        n_obj = max((cfg.batch_rays - n_bg) // max(O - 1, 1), 2)
        loss = torch.zeros((), device=self.device)
        mse_sum, count = 0.0, 0
        for o in range(O):
            if o == 0:
                pos, neg = self._pick(d.by_label[0], n_bg, g), d.by_label[0][:0]
            else:
                pos = self._pick(d.by_label[o], n_obj - n_obj // 2, g)
                neg = self._pick(d.negatives[o], n_obj // 2, g)
            idx = torch.cat([pos, neg])
            if idx.numel() == 0:
                continue
            ones = torch.ones(idx.numel(), 1, device=self.device)
            ray = self.object_rays(idx, ones.expand(-1, O))[o]
            out = render_composite([self.model.fields[o]], [ray], d.dirs[idx, 2], None, stratified=True,
                                   generator=self.generator(salt=10 + o, device=self.device))
            is_pos = torch.arange(idx.numel(), device=self.device) < pos.numel()
            mse = ((out.rgb - d.rgb[idx]) ** 2).sum(-1)
            l_rgb = mse[is_pos].mean()
            l_mask = ((out.alpha - is_pos.float()) ** 2).mean()
            l_depth = _depth_loss(out.depth[is_pos], d.depth[pos])
            loss = loss + l_rgb + cfg.mask_weight * l_mask + cfg.depth_weight * l_depth
            mse_sum += float(mse[is_pos].detach().sum())
            count += int(pos.numel())
        loss = loss + cfg.tv_weight * self._tv()
        self._backward(loss, progress)
        return {"loss": float(loss.detach()), "psnr": _psnr(mse_sum / max(count, 1) / 3)}

    # -- stage 2 ---------------------------------------------------------------------------------------------
    def sample_valid(self, n_groups: int, g: torch.Generator) -> Float[Tensor, "G K"]:
        """n_groups valid combinations (objects 1..K) from the scale network; the best-scored ones if fewer
        are valid."""
        net, space = self.model.scale_net, self.model.space
        z = random_unit(1024, self.model.n_objects, g).to(self.device)
        score = net.validity(z)
        valid = (score > 0.5).nonzero()[:, 0]
        if valid.numel() == 0:
            valid = score.argsort(descending=True)[:n_groups]
        pick = valid[torch.randint(valid.numel(), (n_groups,), generator=g).to(valid.device)]
        return space.from_unit(z[pick])

    def composite_step(self, progress: float) -> dict[str, float]:
        cfg, d, g = self.cfg, self.data, self.generator()
        O = len(self.model.fields)
        n = cfg.batch_rays
        uniform = torch.randint(d.label.numel(), (n // 2,), generator=g).to(self.device)
        per_obj = (n - n // 2) // max(O - 1, 1)
        idx = torch.cat([uniform] + [self._pick(d.by_label[o], per_obj, g) for o in range(1, O)])
        groups = self.sample_valid(cfg.composite_groups, g)
        full = self.model.full_scales(groups)  # (G, O)
        scales = full[torch.arange(idx.numel(), device=self.device) % full.shape[0]]
        out = self._render(idx, scales, self.generator(salt=10, device=self.device))
        label = d.label[idx]
        mse = ((out.rgb - d.rgb[idx]) ** 2).sum(-1)
        l_rgb = mse.mean()
        known = label >= 0
        target = d.depth[idx] * scales.gather(1, label.clamp_min(0)[:, None])[:, 0]
        l_depth = _depth_loss(out.depth[known], target[known])
        logp = torch.log(out.object_weights + 1e-4) - torch.log(out.object_weights.sum(-1, keepdim=True) + O * 1e-4)
        l_seg = F.nll_loss(logp[known], label[known])
        loss = l_rgb + cfg.depth_weight * l_depth + cfg.seg_weight * l_seg + cfg.tv_weight * self._tv()
        self._backward(loss, progress)
        return {"loss": float(loss.detach()), "psnr": _psnr(float(mse.detach().mean()) / 3), "seg": float(l_seg.detach())}

    def _render(self, idx: Tensor, scales: Tensor, g: torch.Generator):
        return render_composite(list(self.model.fields), self.object_rays(idx, scales), self.data.dirs[idx, 2],
                                self.model.background_rgb, stratified=True, generator=g)

    # -- scale network ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def refresh_cache(self) -> ZBufferCache:
        """Render every object alone at unit scale on a grid of pixels of all frames (the soft Z-buffer input)."""
        d = self.data
        T, H, W = d.shape
        stride = max(1, math.ceil(math.sqrt(T * H * W / max(self.cfg.zbuffer_pixels, 1))))
        ys, xs = torch.meshgrid(torch.arange(stride // 2, H, stride), torch.arange(stride // 2, W, stride),
                                indexing="ij")
        flat = (ys * W + xs).reshape(-1)
        idx = (torch.arange(T)[:, None] * (H * W) + flat[None]).reshape(-1).to(self.device)
        O = len(self.model.fields)
        alpha, depth = [], []
        for i in range(0, idx.numel(), 16384):
            part = idx[i:i + 16384]
            rays = self.object_rays(part, torch.ones(part.numel(), O, device=self.device))
            a_cols, d_cols = [], []
            for o in range(O):
                out = render_composite([self.model.fields[o]], [rays[o]], d.dirs[part, 2])
                a_cols.append(out.alpha)
                d_cols.append(out.depth)
            alpha.append(torch.stack(a_cols, -1))
            depth.append(torch.stack(d_cols, -1))
        labels = torch.where(d.interior[idx], d.label[idx], torch.full_like(d.label[idx], -1))
        self.cache = ZBufferCache.build(torch.cat(depth), torch.cat(alpha), labels)
        return self.cache

    def scale_step(self) -> dict[str, float]:
        g = self.generator(salt=100_000 + self._scale_updates)
        self._scale_updates += 1
        return scale_network_step(self.model.scale_net, self.model.space, self.cache, self.opt_scale,
                                  self.cfg.scale_candidates, g, self.cfg.zbuffer_temperature, self.cfg.label_tolerance)

    def train_scale_net(self, steps: int) -> dict[str, float]:
        self.refresh_cache()
        info: dict[str, float] = {}
        for _ in range(steps):
            info = self.scale_step()
        return info

    # -- shared ----------------------------------------------------------------------------------------------
    def _tv(self) -> Tensor:
        return sum(f.field.tv_loss(1.0, 0.0) for f in self.model.fields)

    def _backward(self, loss: Tensor, progress: float) -> None:
        self._set_lr(progress)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def _maybe_update_occupancy(self) -> None:
        cfg = self.cfg
        if self.step >= cfg.occupancy_warmup and self.step % max(cfg.occupancy_every, 1) == 0:
            for o, f in enumerate(self.model.fields):
                f.update_occupancy(self.generator(salt=1000 + o, device=self.device))

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
        self.step = step + 1  # the occupancy update after step k draws as it did at step k + 1
        self._maybe_update_occupancy()
        return metrics

    def finish(self, step: int) -> dict[str, float]:
        """The scale network trains once more on the final geometry (the valid set renders draw from)."""
        self.step = step
        self.scale_metrics = self.train_scale_net(self.cfg.final_scale_steps)
        return self.scale_metrics

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "opt_scale": self.opt_scale.state_dict(),
                "occupancy": [(f.use_occupancy, f.occupancy.n_updates) for f in self.model.fields],
                "stage2_start": self.stage2_start, "scale_updates": self._scale_updates,
                "scale_metrics": self.scale_metrics}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        for f, (use, n) in zip(self.model.fields, state["occupancy"]):
            f.use_occupancy, f.occupancy.n_updates = bool(use), int(n)
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
    half uniform in the search box, half jittered copies of currently valid ones (the boundary is where labels
    are informative)."""
    device = next(net.parameters()).device
    H, K = n_combinations, space.n_objects
    z = random_unit(H, K, generator).to(device)
    with torch.no_grad():
        valid_now = z[net.validity(z) > 0.5]
    if valid_now.shape[0] > 0:
        near = valid_now[torch.randint(valid_now.shape[0], (H // 2,), generator=generator).to(device)]
        near = (near + 0.15 * torch.randn(near.shape, generator=generator).to(device)).clamp(-1, 1)
        z = torch.cat([z[: H - H // 2], near])
    scales = space.from_unit(z)
    full = torch.cat([torch.ones_like(scales[:, :1]), scales], dim=1)
    labels, _ = cache.validity_labels(full, temperature, tolerance)
    loss = F.binary_cross_entropy_with_logits(net(z), labels.float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"bce": float(loss.detach()), "valid_frac": float(labels.float().mean())}


def _to_device(data: PixelData, device) -> PixelData:
    return PixelData(data.rgb.to(device), data.label.to(device), data.frame.to(device), data.dirs.to(device),
                     data.depth.to(device), data.interior.to(device), [x.to(device) for x in data.by_label],
                     [x.to(device) for x in data.negatives], data.shape)


def _depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean relative depth error over the rays with a known target (0 when none)."""
    known = target > 0
    if not bool(known.any()):
        return pred.sum() * 0.0
    return ((pred[known] - target[known]).abs() / target[known]).mean()


def _psnr(mse: float) -> float:
    return -10.0 * math.log10(max(mse, 1e-10))
