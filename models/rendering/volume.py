"""Ray sampling and volume compositing on PACKED samples (variable sample counts per ray).

Distances: `t` is the distance along a ray in WORLD units (directions are unit vectors). Densities are
per unit length of the field box [-1, 1]^3, so each sample's optical thickness is sigma * delta_box, with
delta_box the length of the sample's interval measured in the box (`PackedSamples.delta`).

Packed layout: M samples of N rays, sorted by ray; `ray_indices[i]` is the ray of sample i. Rays may have
zero samples (missed the box, or all their cells were empty).

Compositing (the standard quadrature): alpha_i = 1 - exp(-sigma_i delta_i), T_i = prod_{j<i} (1 - alpha_j)
= exp(-sum_{j<i} sigma_j delta_j), w_i = T_i alpha_i.
- `composite_reference`: padded (N, K) tensors, `torch.cumprod` (plain, for tests).
- `composite_packed`: the fast path; one float64 `torch.cumsum` of sigma*delta over all M samples minus each
  ray's running total at its first sample (float64 because that running total reaches millions, where
  float32 would lose the per-ray differences).
`RenderConfig.box_step` is the nominal interval length in box units that `OccupancyGrid.update` needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from models.fields.contraction import AABBMap, ContractedMap


@dataclass
class RenderConfig:
    n_samples: int = 128
    """Candidate samples across the box diagonal (AABBMap) or across [near, far] (ContractedMap), as
    `sample_along_rays` takes them."""

    def box_step(self, space_map: AABBMap | ContractedMap) -> float:
        """Nominal interval length in box units (for OccupancyGrid.update's opacity threshold)."""
        if isinstance(space_map, AABBMap):
            return 2.0 * math.sqrt(3.0) / self.n_samples
        return 1.0 / self.n_samples


def ray_aabb(origins: Float[Tensor, "N 3"], dirs: Float[Tensor, "N 3"], aabb: Float[Tensor, "2 3"]
             ) -> tuple[Float[Tensor, " N"], Float[Tensor, " N"], Bool[Tensor, " N"]]:
    """Slab test: entry and exit distances of rays through the box aabb = [min, max], and whether the
    ray hits it in front of its origin. t_near is clamped to >= 0 (origins inside the box start at 0)."""
    aabb = aabb.to(origins)
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)  # zero component: slab at inf
    inv = 1.0 / safe
    t0 = (aabb[0] - origins) * inv
    t1 = (aabb[1] - origins) * inv
    t_near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(-1)
    return t_near, t_far, t_far > t_near


@dataclass
class PackedSamples:
    """M samples along N rays, sorted by ray. t_*: world distances; delta: interval length in box units;
    x: sample positions in the field box; weights: filled by the renderer (M,) after compositing."""

    ray_indices: Int[Tensor, " M"]
    t_starts: Float[Tensor, " M"]
    t_ends: Float[Tensor, " M"]
    t_pos: Float[Tensor, " M"]
    delta: Float[Tensor, " M"]
    x: Float[Tensor, "M 3"]
    n_rays: int
    weights: Float[Tensor, " M"] | None = None

    def __len__(self) -> int:
        return self.ray_indices.shape[0]

    def select(self, index: Tensor) -> "PackedSamples":
        """The samples at `index` (sorted long indices or a bool mask: keeps the ray order)."""
        return PackedSamples(self.ray_indices[index], self.t_starts[index], self.t_ends[index], self.t_pos[index],
                             self.delta[index], self.x[index], self.n_rays,
                             None if self.weights is None else self.weights[index])


def _lin_disp(t: Tensor, r: float) -> Tensor:
    """Sampling coordinate s(t): linear up to r, then in disparity (s -> 2 as t -> inf)."""
    return torch.where(t < r, t / r, 2.0 - r / t.clamp_min(r))


def _lin_disp_inv(s: Tensor, r: float) -> Tensor:
    return torch.where(s < 1.0, s * r, r / (2.0 - s).clamp_min(1e-6))


def _contracted_intervals(origins: Float[Tensor, "N 3"], space_map: ContractedMap, n_samples: int, near: float,
                          far: float) -> tuple[Float[Tensor, "N K"], Float[Tensor, "N K"]]:
    """Interval edges of unbounded scenes: n_samples intervals uniform in s = t / r for t < r and
    s = 2 - r / t beyond (r = map radius; "linear then disparity", mip-NeRF 360), over [near, far]."""
    r = space_map.radius
    s_near, s_far = _lin_disp(torch.tensor(near), r), _lin_disp(torch.tensor(far), r)
    s = torch.linspace(float(s_near), float(s_far), n_samples + 1, device=origins.device, dtype=origins.dtype)
    edges = _lin_disp_inv(s, r)
    n = origins.shape[0]
    return edges[:-1].expand(n, -1), edges[1:].expand(n, -1)


def sample_along_rays(origins: Float[Tensor, "N 3"], dirs: Float[Tensor, "N 3"],
                      space_map: AABBMap | ContractedMap, n_samples: int, near: float, far: float,
                      occupancy=None, times: Float[Tensor, " N"] | None = None, stratified: bool = False,
                      generator: torch.Generator | None = None) -> PackedSamples:
    """Candidate intervals -> sample positions (midpoints, or uniform within the interval when
    `stratified`; `generator` must live on the rays' device) -> keep those in occupied cells of
    `occupancy` (an `OccupancyGrid`, or None to keep all) -> packed samples with box-space positions and
    interval lengths.

    AABBMap: a constant world step = box diagonal / n_samples, on a lattice anchored at each ray's box
    entry, up to its exit (clipped to [near, far]). ContractedMap: n_samples intervals uniform in
    s = t / r for t < r and s = 2 - r / t beyond (r = map radius; mip-NeRF 360's "linear then
    disparity"), over [near, far]; interval lengths in the box are measured through the contraction.

    AABB scenes with an occupancy grid are marched coarse-to-fine so that empty space costs little:
    rays are first clipped to the bounding box of the occupied cells, then tested in coarse intervals of
    `_COARSE` steps against a dilated grid (conservative: a coarse interval whose midpoint's dilated cell
    is empty holds no occupied fine sample), and only surviving coarse intervals are split into fine
    samples and tested against the grid itself. The result equals the dense test exactly.
    """
    if isinstance(space_map, AABBMap):
        return _sample_aabb(origins, dirs, space_map, n_samples, near, far, occupancy, stratified, generator)
    starts, ends = _contracted_intervals(origins, space_map, n_samples, near, far)
    ray_idx, k_idx = torch.ones_like(starts, dtype=torch.bool).nonzero(as_tuple=True)
    t0, t1 = starts[ray_idx, k_idx], ends[ray_idx, k_idx]
    t_pos = _positions(t0, t1, stratified, generator)
    o, d = origins[ray_idx], dirs[ray_idx]
    x = space_map(o + t_pos[:, None] * d)
    if occupancy is not None:
        keep = occupancy.query(x).nonzero()[:, 0]
        ray_idx, t0, t1, t_pos, x, o, d = (v[keep] for v in (ray_idx, t0, t1, t_pos, x, o, d))
    delta = torch.linalg.vector_norm(space_map(o + t1[:, None] * d) - space_map(o + t0[:, None] * d), dim=-1)
    return PackedSamples(ray_indices=ray_idx, t_starts=t0, t_ends=t1, t_pos=t_pos, delta=delta, x=x,
                         n_rays=origins.shape[0])


_COARSE = 4  # fine steps per coarse interval in the coarse-to-fine occupancy march


def _positions(t0: Tensor, t1: Tensor, stratified: bool, generator) -> Tensor:
    if stratified:
        return t0 + torch.rand(t0.shape, device=t0.device, dtype=t0.dtype, generator=generator) * (t1 - t0)
    return 0.5 * (t0 + t1)


def _sample_aabb(origins, dirs, space_map: AABBMap, n_samples, near, far, occupancy, stratified, generator
                 ) -> PackedSamples:
    aabb = space_map.aabb.to(origins)
    n = origins.shape[0]
    # box coordinates: x_box(t) = o_box + t * d_box for the world distance t
    scale = 2.0 / (aabb[1] - aabb[0])
    o_box, d_box = space_map(origins), dirs * scale
    step = float(torch.linalg.vector_norm(aabb[1] - aabb[0])) / n_samples
    unit = torch.tensor([[-1.0] * 3, [1.0] * 3], device=origins.device, dtype=origins.dtype)
    t_near, t_far, hit = ray_aabb(o_box, d_box, unit)
    t_near, t_far = t_near.clamp_min(near), t_far.clamp_max(far)
    hit = hit & (t_far > t_near)
    # the lattice t_near + k * step is anchored at the box entry whatever the skipping, so skipped and
    # dense sampling produce identical samples; k runs over [k_lo, k_hi)
    k_lo = torch.zeros_like(t_near)
    k_hi = torch.where(hit, torch.ceil((t_far - t_near) / step), k_lo)
    if occupancy is None:
        rays, k = _lattice(k_lo, k_hi)
    else:
        # only the stretch of each ray inside the bounding box of the occupied cells
        b_near, b_far, b_hit = ray_aabb(o_box, d_box, occupancy.occupied_bounds().to(origins))
        k_lo = torch.floor(((b_near - t_near) / step).clamp_min(0.0))
        k_hi = torch.where(b_hit, torch.minimum(k_hi, torch.ceil((b_far - t_near) / step)), k_lo)
        # coarse intervals against the grid dilated by the half-length of a coarse interval (in cells)
        coarse = step * _COARSE
        half_box = 0.5 * coarse * float(scale.abs().max()) * math.sqrt(3.0)
        radius = int(math.ceil(half_box * occupancy.resolution / 2.0))
        rays_c, k_c = _lattice(torch.floor(k_lo / _COARSE), torch.ceil(k_hi / _COARSE))
        ray = torch.cat([o_box, d_box, t_near[:, None]], dim=1)[rays_c]  # one gather of per-ray data
        mid = ray[:, 6:7] + (k_c[:, None] + 0.5) * coarse
        keep = occupancy.query_dilated(torch.addcmul(ray[:, 0:3], mid, ray[:, 3:6]), radius).nonzero()[:, 0]
        rays_c, k_c = rays_c[keep], k_c[keep]
        k = (k_c[:, None] * _COARSE + torch.arange(_COARSE, device=k_c.device)).reshape(-1)
        rays = rays_c.repeat_interleave(_COARSE)
        bounds = torch.stack([k_lo, k_hi], dim=1)[rays]
        inside = ((k >= bounds[:, 0]) & (k < bounds[:, 1])).nonzero()[:, 0]
        rays, k = rays[inside], k[inside]
    ray = torch.cat([o_box, d_box, t_near[:, None], t_far[:, None],
                     torch.linalg.vector_norm(d_box, dim=-1, keepdim=True)], dim=1)[rays]
    t0 = ray[:, 6] + k * step
    t1 = torch.minimum(t0 + step, ray[:, 7])
    t_pos = _positions(t0, t1, stratified, generator)
    x = torch.addcmul(ray[:, 0:3], t_pos[:, None], ray[:, 3:6])
    delta = (t1 - t0) * ray[:, 8]
    if occupancy is not None:
        keep = occupancy.query(x).nonzero()[:, 0]
        rays, t0, t1, t_pos, x, delta = rays[keep], t0[keep], t1[keep], t_pos[keep], x[keep], delta[keep]
    return PackedSamples(ray_indices=rays, t_starts=t0, t_ends=t1, t_pos=t_pos, delta=delta, x=x, n_rays=n)


def _lattice(k_lo: Tensor, k_hi: Tensor) -> tuple[Tensor, Tensor]:
    """(ray, k) for every integer k in [k_lo, k_hi) of every ray (float tensors holding integers),
    sorted by ray then k; k returned as float."""
    counts = (k_hi - k_lo).clamp_min(0).long()
    rays = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    first = torch.cumsum(counts, 0) - counts
    k = torch.arange(len(rays), device=counts.device) - first[rays]
    return rays, k.to(k_lo.dtype) + k_lo[rays]


def composite_reference(sigma: Float[Tensor, "N K"], delta: Float[Tensor, "N K"]
                        ) -> tuple[Float[Tensor, "N K"], Float[Tensor, "N K"]]:
    """Weights and transmittance of padded samples (pad with sigma = 0) by cumprod of (1 - alpha)."""
    alpha = 1.0 - torch.exp(-sigma * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], dim=1), dim=1)
    return trans * alpha, trans


def ray_starts(ray_indices: Int[Tensor, " M"], n_rays: int) -> Int[Tensor, " N"]:
    """Index of each ray's first sample in a packed, ray-sorted list (= the next ray's start if empty)."""
    counts = torch.bincount(ray_indices, minlength=n_rays)
    return torch.cumsum(counts, 0) - counts


def segment_exclusive_cumsum(values: Float[Tensor, " M"], ray_indices: Int[Tensor, " M"], n_rays: int
                             ) -> Float[Tensor, " M"]:
    """sum_{j < i, same ray} values[j] for ray-sorted packed values, computed in float64."""
    v = values.double()
    incl = torch.cumsum(v, 0)
    excl = incl - v
    if excl.numel() == 0:
        return excl
    first = ray_starts(ray_indices, n_rays)[ray_indices]
    return excl - excl[first]


def composite_packed(sigma: Float[Tensor, " M"], delta: Float[Tensor, " M"], ray_indices: Int[Tensor, " M"],
                     n_rays: int) -> tuple[Float[Tensor, " M"], Float[Tensor, " M"]]:
    """Weights and transmittance of packed, ray-sorted samples (differentiable in sigma and delta)."""
    tau = sigma * delta
    trans = torch.exp(-segment_exclusive_cumsum(tau, ray_indices, n_rays))
    alpha = -torch.expm1(-tau.double())
    return (trans * alpha).to(sigma.dtype), trans.to(sigma.dtype)


def accumulate(values: Float[Tensor, "M *C"],  # noqa: F821 (ruff reads the jaxtyping shape "M *C" as M * C)
               ray_indices: Int[Tensor, " M"], n_rays: int) -> Float[Tensor, "N *C"]:  # noqa: F821
    """Per-ray sums of packed per-sample values."""
    out = values.new_zeros((n_rays,) + tuple(values.shape[1:]))
    return out.index_add(0, ray_indices, values)
