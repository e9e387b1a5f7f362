"""Scaled composite rendering: all objects' samples along a ray, merged by depth, composited once.

Each object o has its own field in its own frame (`ObjectField`). A batch of N world rays is first mapped into
every object's frame under that object's scale (`models.osn.objects.frame_rays`: origins, unit directions and
`t_scale`, the world distance per frame distance, = s_o). Then, all vectorised:
  1. each object samples its own box (empty-space skipping by its occupancy grid) and evaluates its density;
  2. every sample gets its WORLD distance t_frame * t_scale; the samples of all objects are merged per ray and
     sorted by that distance; compositing runs once over the merged list (each sample's optical thickness
     sigma * delta is measured in its own object's box, so a scale never changes an object's opacity);
  3. colours are evaluated, per object, only for samples with a non-negligible weight.
Outputs per ray: rgb, z-depth (expected over the merged weights), alpha, the per-object share of the weights
(`object_weights`, for the segmentation loss), and each object rendered ALONE (`object_alpha`,
`object_depth`: opacity and z-depth at the given scale) for the soft Z-buffer and the bootstrap stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from models.fields import DensityOutput, RadianceField, select_state, space_map_from_dict
from models.fields.contraction import AABBMap
from models.rendering import OccupancyGrid, RenderConfig
from models.rendering.volume import accumulate, composite_packed, sample_along_rays


class ObjectField(nn.Module):
    """One object's field, its box map (a dict, see `space_map_from_dict`), occupancy grid and sampling."""

    def __init__(self, field: RadianceField, space: dict, n_samples: int, occupancy_res: int = 32,
                 near: float = 0.0):
        super().__init__()
        self.field = field
        self.space = space
        self.space_map = space_map_from_dict(space)
        self.occupancy = OccupancyGrid(occupancy_res)
        self.n_samples = n_samples
        self.near = near
        self.use_occupancy = False  # switched on after the warm-up

    @property
    def box_step(self) -> float:
        return RenderConfig(n_samples=self.n_samples).box_step(self.space_map)

    def sample(self, origins: Float[Tensor, "N 3"], dirs: Float[Tensor, "N 3"], stratified: bool = False,
               generator: torch.Generator | None = None):
        far = 1e4 if not isinstance(self.space_map, AABBMap) else 1e10
        return sample_along_rays(origins, dirs, self.space_map, self.n_samples, self.near, far,
                                 self.occupancy if self.use_occupancy else None, None, stratified, generator)

    @torch.no_grad()
    def seed_occupancy(self, points: Float[Tensor, "M 3"], dilate: int = 1, density: float = 1e3) -> None:
        """Mark the cells holding observed surface points (frame coordinates, e.g. from depth maps), grown by
        `dilate` cells, as occupied and everything else as empty, then switch skipping on. Seeded cells decay
        like any other under `update_occupancy`, so the field's own density takes over as it trains."""
        grid = self.occupancy
        r = grid.resolution
        idx, inside = grid.cell_index(self.space_map(points))
        vol = torch.zeros(r ** 3, device=points.device)
        vol[idx[inside]] = 1.0
        if dilate > 0:
            k = 2 * dilate + 1
            vol = torch.nn.functional.max_pool3d(vol.view(1, 1, r, r, r), k, stride=1, padding=dilate).reshape(-1)
        grid.density.copy_(vol.to(grid.density) * density)
        grid.occupied.copy_(vol > 0)
        grid.n_updates = 4  # past the full re-evaluations: later updates refresh a random fraction + occupied cells
        self.use_occupancy = True

    @torch.no_grad()
    def update_occupancy(self, generator: torch.Generator | None = None) -> None:
        self.occupancy.update(self.field, step_size=self.box_step, generator=generator)
        self.use_occupancy = True


@dataclass
class CompositeOutput:
    """Per ray: rgb (N,3) over `background`; depth (N,) merged z-depth given a hit; alpha (N,); object_weights
    (N,O) sum of compositing weights per object (sums to alpha); object_alpha / object_depth (N,O): each object
    alone (opacity, z-depth at its scale; 0 where it has no opacity)."""

    rgb: Float[Tensor, "N 3"]
    depth: Float[Tensor, " N"]
    alpha: Float[Tensor, " N"]
    object_weights: Float[Tensor, "N O"]
    object_alpha: Float[Tensor, "N O"]
    object_depth: Float[Tensor, "N O"]
    stats: dict


def render_composite(objects: list[ObjectField], rays: list[tuple[Tensor, Tensor, Tensor]],
                     z_factor: Float[Tensor, " N"], background: Float[Tensor, "3"] | None = None,
                     stratified: bool = False, generator: torch.Generator | None = None,
                     weight_threshold: float = 1e-4, early_stop: float = 1e-3) -> CompositeOutput:
    """Render N rays through all objects. rays[o] = (origins, unit dirs, t_scale) in object o's frame (see
    module doc); z_factor: cos of the angle between each world ray and its camera's optical axis (world
    distance -> z-depth). With one object this is plain volume rendering of that object alone."""
    n = z_factor.shape[0]
    zeros = z_factor.new_zeros(n)
    O = len(objects)
    per = []  # (object index, samples, density output, sigma, world distance)
    for o, (obj, (orig, dirs, t_scale)) in enumerate(zip(objects, rays)):
        samples = obj.sample(orig, dirs, stratified, generator)
        if len(samples) == 0:
            continue
        # a no-grad density pass drops samples behind the object's own surface (transmittance through the
        # object alone < early_stop): the merged transmittance there is lower still
        with torch.no_grad():
            pre = obj.field.query_density(samples.x, None)
            _, trans = composite_packed(pre.sigma.float(), samples.delta, samples.ray_indices, n)
        keep = (trans > early_stop).nonzero()[:, 0]
        samples = samples.select(keep)
        if torch.is_grad_enabled():
            dens = obj.field.query_density(samples.x, None)
        else:
            dens = DensityOutput(pre.sigma[keep], None, select_state(pre.state, keep))
        per.append((o, samples, dens, dens.sigma.float(), samples.t_pos * t_scale[samples.ray_indices]))

    alone_alpha, alone_depth = [zeros] * O, [zeros] * O
    for o, samples, _, sigma, tw in per:
        w, _ = composite_packed(sigma, samples.delta, samples.ray_indices, n)
        a = accumulate(w, samples.ray_indices, n)
        alone_alpha[o] = a
        alone_depth[o] = accumulate(w * tw, samples.ray_indices, n) / a.clamp_min(1e-6) * z_factor

    rgb = z_factor.new_zeros(n, 3)
    weights_per_object = [zeros] * O
    depth_sum = zeros
    colored = 0
    if per:
        sigma = torch.cat([p[3] for p in per])
        delta = torch.cat([p[1].delta for p in per])
        ray = torch.cat([p[1].ray_indices for p in per])
        tw = torch.cat([p[4] for p in per])
        # sort by world distance, then (stably) by ray: the packed, ray-sorted layout compositing expects
        order = torch.argsort(tw.detach())
        order = order[torch.argsort(ray[order], stable=True)]
        w_sorted, _ = composite_packed(sigma[order], delta[order], ray[order], n)
        weights = w_sorted[torch.argsort(order)]  # back to the concatenated order
        depth_sum = accumulate(weights * tw, ray, n)
        for (o, samples, dens, _, _), w in zip(per, torch.split(weights, [len(p[1]) for p in per])):
            ri = samples.ray_indices
            weights_per_object[o] = accumulate(w, ri, n)
            keep = (w.detach() > weight_threshold).nonzero()[:, 0]
            colored += int(keep.numel())
            if keep.numel():
                c = objects[o].field.query_color(samples.x[keep], rays[o][1][ri[keep]], None,
                                                 select_state(dens.state, keep)).float()
                rgb = rgb + accumulate(w[keep, None] * c, ri[keep], n)
    object_weights = torch.stack(weights_per_object, -1)
    alpha = object_weights.sum(-1)
    depth = depth_sum / alpha.clamp_min(1e-6) * z_factor
    if background is not None:
        rgb = rgb + (1.0 - alpha).clamp_min(0.0)[:, None] * background.to(rgb)
    stats = {"samples": sum(len(p[1]) for p in per), "colored": colored}
    return CompositeOutput(rgb, depth, alpha, object_weights, torch.stack(alone_alpha, -1),
                           torch.stack(alone_depth, -1), stats)
