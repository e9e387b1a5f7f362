"""Occupancy grid for empty-space skipping (instant-NGP style, pure torch).

A boolean grid of res^3 cells over the field box [-1, 1]^3 says where density may be non-negligible; the
sampler drops samples in empty cells. It is kept up to date during training from the field itself:

    grid = OccupancyGrid(resolution=64)
    if step % 16 == 0:
        grid.update(field, step_size=RenderConfig(n_samples).box_step(space_map))

`update` evaluates the density at a random point in (a random subset of) cells, keeps per cell an
exponentially decaying maximum (so a thin surface seen now and then stays marked), and
marks a cell occupied when that value gives a sample opacity above `alpha_threshold` at the renderer's
step size (capped by the mean density, so a young, near-uniform field is not pruned away entirely, but
never below 1% of that value).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn


class OccupancyGrid(nn.Module):
    def __init__(self, resolution: int = 64):
        super().__init__()
        self.resolution = resolution
        n = resolution ** 3
        self.register_buffer("density", torch.full((n,), float("inf")))  # inf = never evaluated: occupied
        self.register_buffer("occupied", torch.ones(n, dtype=torch.bool))
        self.n_updates = 0
        # derived grids (dilated copy, bounds) are cached per version of `occupied`
        self._version, self._dilated_key, self._bounds_key = 0, None, None

    def cell_index(self, x: Float[Tensor, "M 3"]) -> tuple[Tensor, Bool[Tensor, " M"]]:
        """Flat cell index (i_x * r + i_y) * r + i_z of box points, and whether each lies inside the box."""
        r = self.resolution
        g = ((x + 1.0) * (0.5 * r)).floor().long()
        inside = ((g >= 0) & (g < r)).all(-1)
        g = g.clamp(0, r - 1)
        return (g[:, 0] * r + g[:, 1]) * r + g[:, 2], inside

    def query(self, x: Float[Tensor, "M 3"]) -> Bool[Tensor, " M"]:
        """True where the point is inside the box and its cell is occupied."""
        idx, inside = self.cell_index(x)
        return self.occupied[idx] & inside

    def query_dilated(self, x: Float[Tensor, "M 3"], radius: int) -> Bool[Tensor, " M"]:
        """Like `query` on the grid dilated by `radius` cells (a cube max filter): True wherever an occupied
        cell is within `radius` cells. Points outside the box are clamped onto it (clamping to a convex box
        never increases distances to points inside, so the test stays conservative)."""
        if radius <= 0:
            return self.query(x)
        key = (radius, self._version, self.occupied.data_ptr())
        if self._dilated_key != key:
            r = self.resolution
            g = self.occupied.view(1, 1, r, r, r).float()
            k = 2 * radius + 1
            for kernel in ((k, 1, 1), (1, k, 1), (1, 1, k)):  # a cube max filter is separable: 3 cheap passes
                pad = tuple(radius if n > 1 else 0 for n in kernel)
                g = torch.nn.functional.max_pool3d(g, kernel, stride=1, padding=pad)
            self._dilated = g.bool().view(-1)
            self._dilated_key = key
        idx, _ = self.cell_index(x)
        return self._dilated[idx]

    def occupied_bounds(self) -> Float[Tensor, "2 3"]:
        """Box-space bounding box [min, max] of the occupied cells (a degenerate box at 0 if none)."""
        if self._bounds_key != (self._version, self.occupied.data_ptr()):
            r = self.resolution
            occ = self.occupied.view(r, r, r)
            lo, hi = [], []
            for axis in range(3):
                other = tuple(a for a in range(3) if a != axis)
                used = occ.any(dim=other[1]).any(dim=other[0]).nonzero()[:, 0]
                lo.append(float(used.min()) if len(used) else r / 2)
                hi.append(float(used.max()) + 1 if len(used) else r / 2)
            b = torch.tensor([lo, hi], device=self.occupied.device) * (2.0 / r) - 1.0
            self._bounds, self._bounds_key = b, (self._version, self.occupied.data_ptr())
        return self._bounds

    def cell_centers(self, idx: Tensor) -> Float[Tensor, "M 3"]:
        r = self.resolution
        ijk = torch.stack([idx // (r * r), (idx // r) % r, idx % r], dim=-1).float()
        return (ijk + 0.5) * (2.0 / r) - 1.0

    @torch.no_grad()
    def update(self, field, step_size: float, fraction: float = 0.25, decay: float = 0.95,
               alpha_threshold: float = 0.01, warmup_updates: int = 16, chunk: int = 65536,
               generator: torch.Generator | None = None) -> None:
        """Re-evaluate the density in all cells (the first `warmup_updates` updates) or in a random
        `fraction` of them plus all occupied ones, at a uniformly jittered point per cell; step_size is the
        renderer's interval length in box units (`RenderConfig.box_step`). Call it every ~16 training
        steps from step 0 (nerfacc's schedule)."""
        dev = self.density.device
        n = self.density.numel()
        if self.n_updates < warmup_updates or fraction >= 1.0:
            idx = torch.arange(n, device=dev)
        else:
            rand = torch.randperm(n, device=dev, generator=generator)[: int(n * fraction)]
            idx = torch.unique(torch.cat([rand, self.occupied.nonzero()[:, 0]]))
        x = self.cell_centers(idx) + (torch.rand(len(idx), 3, device=dev, generator=generator) - 0.5) * (
            2.0 / self.resolution)
        sigma = torch.cat([field.density(x[i:i + chunk]).float() for i in range(0, len(idx), chunk)])
        old = self.density[idx]
        old = torch.where(torch.isinf(old), torch.zeros_like(old), old)
        self.density[idx] = torch.maximum(old * decay, sigma)
        self.n_updates += 1
        finite = self.density[torch.isfinite(self.density)]
        threshold = -math.log(1.0 - alpha_threshold) / step_size
        if finite.numel():  # cap by the mean (young fields), floor at 1% (fields that emptied)
            threshold = max(min(threshold, float(finite.mean())), 0.01 * threshold)
        self.occupied = self.density > threshold
        self._version += 1

    def invalidate(self) -> None:
        """Call after editing `occupied` in place (cached dilated grid and bounds are rebuilt)."""
        self._version += 1

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._version += 1
