"""`render_rays` / `render_image`: volume rendering of any `RadianceField` with empty-space skipping.

    out = render_rays(field, origins, dirs, times, space_map, occupancy=grid, cfg=RenderConfig())
    loss = ((out.rgb - target) ** 2).mean()

Inputs: origins/dirs (N, 3) WORLD rays with unit directions (`models.cameras.rays_from_pixels`), times
(N,) or a float: NORMALISED time in [0, 1] (None for static fields), `space_map` maps world points into
the field box (`AABBMap` / `ContractedMap`). Steps (per batch of rays, all vectorised):
  1. candidate intervals (`volume.sample_along_rays`) -> drop those in empty occupancy cells -> packed;
  2. training (grad enabled): a no-grad density pass drops samples behind opaque surfaces
     (transmittance < cfg.early_stop) and, optionally, nearly transparent ones (alpha <
     cfg.alpha_threshold) -- a forward pass costs ~1/5 of forward+backward, so this pays as soon as a
     fifth of the samples go (nerfacc does the same); then the density of the remaining samples (with
     grad). Inference (no grad): front-to-back marching in rounds, so samples behind surfaces are never
     evaluated at all. Then weights by packed compositing;
  3. colour only for samples with weight > cfg.weight_threshold (most samples behind surfaces or in
     thin haze contribute nothing) -> per-ray sums.
Outputs (`RenderOutput`, per ray): rgb (with background), alpha (accumulated opacity), distance
(expected RAY distance in world units given a hit: sum w t / sum w), depth (expected camera Z-depth =
distance * (d . camera forward); only when `cam_forward` is given, always in render_image), part_weights
(N, P) per-field shares of alpha for composite fields (weights_static / weights_dynamic), and the packed
samples with their weights (for `losses.distortion_loss`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, fields

import torch
from jaxtyping import Float
from torch import Tensor

from models.cameras import Cameras, camera_rays
from models.fields.base import DensityOutput, RadianceField, select_state
from models.fields.contraction import AABBMap, ContractedMap
from models.rendering.occupancy import OccupancyGrid
from models.rendering.volume import PackedSamples, accumulate, composite_packed, ray_starts, sample_along_rays

_BACKGROUNDS = {"black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0)}


@dataclass
class RenderConfig:
    n_samples: int = 128
    """Candidate samples across the box diagonal (AABBMap) or across [near, far] (ContractedMap); aim for
    a step no longer than a pixel's footprint at the scene (128 suits ~100-256 px images)."""
    near: float = 0.0
    """Closest ray distance sampled (world units)."""
    far: float = 1e4
    """Farthest ray distance sampled (world units; AABB scenes stop at the box anyway)."""
    stratified: bool = False
    """Jitter sample positions within their interval (training)."""
    weight_threshold: float = 1e-4
    """Samples with a smaller compositing weight get no colour evaluation."""
    early_stop: float = 1e-4
    """Drop samples whose transmittance is below this (behind opaque surfaces); 0 disables the pruning."""
    alpha_threshold: float = 0.0
    """Drop samples whose own opacity is below this (e.g. 1e-3 at inference; 0 in training so that
    faint regions still receive gradients)."""
    background: str = "black"
    """Background colour: black, white, or random (a random colour per ray, returned in out.background)."""
    bf16: bool = False
    """Run field queries under bfloat16 autocast (compositing stays float32/64). On the CPUs here (no
    AVX512-BF16/AMX) it is ~15 % slower than float32, so it is off by default; try it on GPUs."""
    chunk: int = 65536
    """Rays per chunk in render_image."""

    def box_step(self, space_map: AABBMap | ContractedMap) -> float:
        """Nominal interval length in box units (for OccupancyGrid.update's opacity threshold)."""
        if isinstance(space_map, AABBMap):
            return 2.0 * math.sqrt(3.0) / self.n_samples
        return 1.0 / self.n_samples


@dataclass
class RenderOutput:
    """Per-ray (render_rays: leading dim N) or per-pixel (render_image: (C, H, W)) render results.
    Dict-like: out["rgb"], out.keys(), out.items() list the fields that are not None."""

    rgb: Float[Tensor, "*B 3"]
    alpha: Float[Tensor, "*B"]
    distance: Float[Tensor, "*B"]
    depth: Float[Tensor, "*B"] | None = None
    part_weights: Float[Tensor, "*B P"] | None = None
    part_names: tuple[str, ...] = ()
    background: Float[Tensor, "*B 3"] | None = None
    samples: PackedSamples | None = None
    density: DensityOutput | None = None
    """render_rays only: the field's density output of every sample in `samples` (parts, state), so that
    losses on the samples need not query the field again."""
    stats: dict = field(default_factory=dict)

    def part(self, name: str) -> Float[Tensor, "*B"] | None:
        if self.part_weights is None or name not in self.part_names:
            return None
        return self.part_weights[..., self.part_names.index(name)]

    @property
    def weights_static(self) -> Float[Tensor, "*B"] | None:
        """Share of alpha from the static field (StaticDynamicField), None otherwise."""
        return self.part("static")

    @property
    def weights_dynamic(self) -> Float[Tensor, "*B"] | None:
        return self.part("dynamic")

    def keys(self) -> list[str]:
        names = [f.name for f in fields(self) if isinstance(getattr(self, f.name), Tensor)]
        if self.part_weights is not None:
            names += [f"weights_{n}" for n in self.part_names]
        return names

    def __getitem__(self, key: str):
        if key.startswith("weights_") and key[8:] in self.part_names:
            return self.part(key[8:])
        return getattr(self, key)

    def items(self):
        return [(k, self[k]) for k in self.keys()]


def _background(spec, n: int, like: Tensor, generator=None) -> Float[Tensor, "N 3"]:
    if isinstance(spec, Tensor):
        return spec.to(like).expand(n, 3)
    if spec == "random":
        return torch.rand(n, 3, device=like.device, dtype=like.dtype, generator=generator)
    if spec not in _BACKGROUNDS:
        raise ValueError(f"background must be black, white, random or a (3,) tensor, got {spec!r}")
    return like.new_tensor(_BACKGROUNDS[spec]).expand(n, 3)


def _prune(sigma: Tensor, delta: Tensor, ray_indices: Tensor, n: int, cfg: RenderConfig,
           start_trans: Tensor | None = None) -> Tensor:
    """Bool mask of samples that matter: transmittance above cfg.early_stop and, when set, own opacity
    above cfg.alpha_threshold. start_trans: (N,) transmittance each ray already had before these samples."""
    _, trans = composite_packed(sigma, delta, ray_indices, n)
    if start_trans is not None:
        trans = trans * start_trans[ray_indices]
    keep = trans > cfg.early_stop
    if cfg.alpha_threshold > 0:
        keep &= -torch.expm1(-sigma * delta) > cfg.alpha_threshold
    return keep


def _march_front_to_back(field: RadianceField, samples: PackedSamples, times: Tensor | None, cfg: RenderConfig,
                         amp) -> tuple[Tensor, DensityOutput]:
    """Density of the samples in rounds of growing depth rank (the first 4 samples of every ray, then the
    next 8, 16, ... up to 64 per round), dropping rays once their transmittance falls below
    cfg.early_stop: samples behind opaque surfaces are never evaluated. Returns the indices of the
    samples kept (sorted) and their density output."""
    n, ri = samples.n_rays, samples.ray_indices
    m = len(samples)
    rank = torch.arange(m, device=ri.device) - ray_starts(ri, n)[ri]
    max_rank = int(rank.max()) + 1 if m else 0
    trans = torch.ones(n, device=ri.device)
    kept, outs = [], []
    lo, size = 0, 4
    prune = cfg.early_stop > 0 or cfg.alpha_threshold > 0
    while lo < max_rank:
        sel = (rank >= lo) & (rank < lo + size)
        if cfg.early_stop > 0:
            sel &= trans[ri] > cfg.early_stop
        idx = sel.nonzero()[:, 0]
        lo, size = lo + size, min(size * 2, 64)
        if len(idx) == 0:
            if cfg.early_stop > 0 and not bool((trans > cfg.early_stop).any()):
                break
            continue
        r, delta = ri[idx], samples.delta[idx]
        with amp:
            dens = field.query_density(samples.x[idx], None if times is None else times[r])
        sigma = dens.sigma.float()
        if prune:
            k = _prune(sigma, delta, r, n, cfg, trans).nonzero()[:, 0]
            dens = DensityOutput(dens.sigma[k], None if dens.parts is None else dens.parts[k],
                                 select_state(dens.state, k))
            idx = idx[k]
        trans = trans * torch.exp(-accumulate(sigma * delta, r, n))
        kept.append(idx)
        outs.append(dens)
    if not kept:
        with amp:
            empty = field.query_density(samples.x[:0], None if times is None else times[:0])
        return torch.zeros(0, dtype=torch.long, device=ri.device), empty
    if len(kept) == 1:
        return kept[0], outs[0]
    order_idx = torch.cat(kept)
    order = torch.argsort(order_idx)
    cat = lambda xs: torch.cat(xs)[order]
    dens = DensityOutput(cat([o.sigma for o in outs]),
                         None if outs[0].parts is None else cat([o.parts for o in outs]),
                         {k: cat([o.state[k] for o in outs]) for k in outs[0].state})
    return order_idx[order], dens


def render_rays(field: RadianceField, origins: Float[Tensor, "N 3"], dirs: Float[Tensor, "N 3"],
                times: Float[Tensor, "N"] | float | None, space_map: AABBMap | ContractedMap,
                occupancy: OccupancyGrid | None = None, cfg: RenderConfig | None = None,
                background: str | Tensor | None = None, cam_forward: Float[Tensor, "N 3"] | None = None,
                generator: torch.Generator | None = None) -> RenderOutput:
    """Render N rays (see module docstring). `background` overrides cfg.background (a (3,) tensor may be
    a learned parameter). `cam_forward`: the camera's optical axis per ray (world) to get Z-depth."""
    cfg = cfg or RenderConfig()
    n = origins.shape[0]
    if times is not None and not isinstance(times, Tensor):
        times = torch.full((n,), float(times), device=origins.device)
    samples = sample_along_rays(origins, dirs, space_map, cfg.n_samples, cfg.near, cfg.far, occupancy, times,
                                cfg.stratified, generator)
    amp = torch.autocast("cpu" if origins.device.type == "cpu" else origins.device.type, dtype=torch.bfloat16) \
        if cfg.bf16 else contextlib.nullcontext()
    n_occupied = len(samples)
    dens = None
    if not torch.is_grad_enabled():  # inference: march front to back, evaluating only live rays
        keep, dens = _march_front_to_back(field, samples, times, cfg, amp)
        samples = samples.select(keep)
    elif cfg.early_stop > 0 or cfg.alpha_threshold > 0:  # training: prune with a no-grad pass
        with torch.no_grad(), amp:
            pre = field.query_density(samples.x, None if times is None else times[samples.ray_indices])
        keep = _prune(pre.sigma.float(), samples.delta, samples.ray_indices, n, cfg).nonzero()[:, 0]
        samples = samples.select(keep)
    ri = samples.ray_indices
    t_s = None if times is None else times[ri]
    if dens is None:
        with amp:
            dens = field.query_density(samples.x, t_s)
    sigma = dens.sigma.float()
    w, _ = composite_packed(sigma, samples.delta, ri, n)
    samples.weights = w
    keep = (w.detach() > cfg.weight_threshold).nonzero()[:, 0]
    with amp:
        rgb_k = field.query_color(samples.x[keep], dirs[ri[keep]], None if t_s is None else t_s[keep],
                                  select_state(dens.state, keep)).float()
    rgb = accumulate(w[keep, None] * rgb_k, ri[keep], n)
    alpha = accumulate(w, ri, n)
    distance = accumulate(w * samples.t_pos, ri, n) / alpha.clamp_min(1e-6)
    depth = None if cam_forward is None else distance * (dirs * cam_forward).sum(-1)
    part_weights = None
    if dens.parts is not None:
        share = dens.parts.float() / sigma.clamp_min(1e-10)[:, None]
        part_weights = accumulate(w[:, None] * share, ri, n)
    bg = _background(cfg.background if background is None else background, n, rgb, generator)
    rgb = rgb + (1.0 - alpha)[:, None] * bg
    return RenderOutput(rgb=rgb, alpha=alpha, distance=distance, depth=depth, part_weights=part_weights,
                        part_names=tuple(field.part_names), background=bg, samples=samples, density=dens,
                        stats={"occupied": n_occupied, "samples": len(samples), "colored": int(keep.numel())})


def render_image(field: RadianceField, cameras: Cameras, times: Float[Tensor, "C"] | float | None,
                 space_map: AABBMap | ContractedMap, occupancy: OccupancyGrid | None = None,
                 cfg: RenderConfig | None = None, background: str | Tensor | None = None,
                 grad: bool = False) -> RenderOutput:
    """Render every pixel of C cameras (times: one normalised time per camera, or one for all) in chunks
    of cfg.chunk rays. Returns rgb (C, H, W, 3), alpha / distance / depth (C, H, W) with depth = Z-depth,
    part_weights (C, H, W, P); no packed samples. Without `grad` it runs under torch.no_grad()."""
    cfg = cfg or RenderConfig()
    origins, dirs = camera_rays(cameras)  # (C, H, W, 3)
    c, h, w = origins.shape[:3]
    fwd = cameras.w2c[:, 2, :3][:, None, None].expand(c, h, w, 3)  # optical axis (third row of R)
    t = None
    if times is not None:
        t = torch.as_tensor(times, dtype=torch.float32, device=origins.device).reshape(-1).expand(c)
        t = t[:, None, None].expand(c, h, w).reshape(-1)
    o, d, f = origins.reshape(-1, 3), dirs.reshape(-1, 3), fwd.reshape(-1, 3)
    outs = []
    with torch.set_grad_enabled(grad):
        for i in range(0, o.shape[0], cfg.chunk):
            sl = slice(i, i + cfg.chunk)
            outs.append(render_rays(field, o[sl], d[sl], None if t is None else t[sl], space_map, occupancy, cfg,
                                    background, cam_forward=f[sl]))
    first = outs[0]
    cat = lambda name: torch.cat([getattr(x, name) for x in outs]).reshape(c, h, w, *getattr(first, name).shape[1:])
    return RenderOutput(rgb=cat("rgb"), alpha=cat("alpha"), distance=cat("distance"), depth=cat("depth"),
                        part_weights=None if first.part_weights is None else cat("part_weights"),
                        part_names=first.part_names, background=cat("background"),
                        stats={k: sum(x.stats[k] for x in outs) for k in first.stats})
