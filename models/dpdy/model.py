"""The DpDy scene model: static TensoRF-VM + dynamic K-planes blended per sample, a scene-flow head on the
dynamic field, a background colour, an occupancy grid and the world -> box map.

Blending is `models.fields.StaticDynamicField`'s sum of densities (sigma = sigma_s + sigma_d, colour mixed by
density share). The scene-flow head reads the dynamic field's K-planes features at (x, t) and predicts two
3D velocities in world units per unit of NORMALISED time: forward (towards the next frame) and backward
(towards the previous one); the displacement to a neighbour frame at time t' is v * |t' - t| (NSFF predicts
both directions too, since motion between frames is not symmetric in general).

Everything needed to rebuild the modules is in the `arch` dict (it goes into the checkpoint's config.json);
the tensors go into model.safetensors.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

from models.cameras import Cameras, project
from models.fields import (AABBMap, ContractedMap, KPlanes, StaticDynamicField, TensoRFVM, TinyMLP,
                           space_map_from_dict)
from models.registry import RenderOutput as MethodOutput
from models.rendering import OccupancyGrid, RenderConfig, RenderOutput, render_image, render_rays


class DpDyModel(nn.Module):
    def __init__(self, arch: dict):
        super().__init__()
        self.arch = dict(arch)
        s, d = arch["static"], arch["dynamic"]
        static = TensoRFVM(resolution=s["resolution"], density_rank=s["density_rank"], app_rank=s["app_rank"],
                           app_dim=27, decoder=s["decoder"], hidden=64, feat_freqs=0, view_freqs=2)
        dynamic = KPlanes(resolution=d["resolution"], scales=tuple(d["scales"]), time_resolution=d["time_resolution"],
                          features=d["features"], hidden=d["hidden"])
        grid = OccupancyGrid(arch["occupancy_res"]) if arch.get("dynamic_grid") else None
        self.field = StaticDynamicField(static, dynamic, dynamic_grid=grid)
        feat_dim = d["features"] * len(d["scales"])
        # zero last layer: no motion until the flow losses ask for it
        self.flow_head = TinyMLP(feat_dim, 64, 6, n_hidden_layers=1)
        with torch.no_grad():
            self.flow_head.out.weight.zero_()
        self.background_kind = arch["background"]
        if self.background_kind == "learned":
            self.background_logit = nn.Parameter(torch.zeros(3))
        self.occupancy = OccupancyGrid(arch["occupancy_res"])
        self.space_map = space_map_from_dict(arch["space_map"])
        self.near, self.far = float(arch["near"]), float(arch["far"])
        self.motion_scale = float(arch["motion_scale"])

    # ---- pieces ------------------------------------------------------------------------------------------
    @property
    def static(self) -> TensoRFVM:
        return self.field.static

    @property
    def dynamic(self) -> KPlanes:
        return self.field.dynamic

    def background(self) -> str | Tensor:
        if self.background_kind == "learned":
            return torch.sigmoid(self.background_logit)
        return self.background_kind

    def render_config(self, train: bool, n_samples: int | None = None) -> RenderConfig:
        # inference drops nearly transparent samples too; training keeps them so faint regions get gradients
        return RenderConfig(n_samples=n_samples or self.arch["n_samples"], near=self.near, far=self.far,
                            stratified=train, alpha_threshold=0.0 if train else 1e-3, early_stop=1e-3,
                            background="black" if self.background_kind == "learned" else self.background_kind,
                            chunk=16384)

    def dynamic_query(self, x: Float[Tensor, "M 3"], t: Float[Tensor, "M"]
                      ) -> tuple[Float[Tensor, "M"], Float[Tensor, "M G"], Float[Tensor, "M F"]]:
        """Dynamic density, geometry features (colour input) and raw K-planes features at box points x and
        normalised times t."""
        out = self.dynamic.query_density(x, t)
        return out.sigma, out.state["geo"], out.state["feat"]

    def dynamic_color(self, x: Float[Tensor, "M 3"], d: Float[Tensor, "M 3"], geo: Float[Tensor, "M G"]
                      ) -> Float[Tensor, "M 3"]:
        """Dynamic colour from the geometry features of `dynamic_query` and unit world directions d."""
        return self.dynamic.query_color(x, d, None, {"geo": geo})

    def velocities(self, feats: Float[Tensor, "M F"]) -> tuple[Float[Tensor, "M 3"], Float[Tensor, "M 3"]]:
        """Forward and backward scene-flow velocities (world units per unit normalised time)."""
        v = self.flow_head(feats) * self.motion_scale
        return v[:, :3], v[:, 3:]

    def to_box(self, x_world: Float[Tensor, "M 3"]) -> Float[Tensor, "M 3"]:
        return self.space_map(x_world)

    # ---- rendering -----------------------------------------------------------------------------------------
    def render_rays(self, origins: Float[Tensor, "N 3"], dirs: Float[Tensor, "N 3"], times: Float[Tensor, "N"],
                    cam_forward: Float[Tensor, "N 3"] | None = None, train: bool = False, use_occupancy: bool = True,
                    n_samples: int | None = None, generator: torch.Generator | None = None) -> RenderOutput:
        return render_rays(self.field, origins, dirs, times, self.space_map,
                           self.occupancy if use_occupancy else None, self.render_config(train, n_samples),
                           self.background(), cam_forward=cam_forward, generator=generator)

    def render_image(self, cameras: Cameras, times: Float[Tensor, "C"], grad: bool = False,
                     n_samples: int | None = None) -> RenderOutput:
        """Every pixel of the cameras at normalised times (one per camera), sample midpoints. With `grad`
        (renders a training loss looks at) faint samples are kept, as in training, so they get gradients."""
        cfg = self.render_config(False, n_samples)
        if grad:
            cfg = dataclasses.replace(cfg, alpha_threshold=0.0)
        return render_image(self.field, cameras, times, self.space_map, self.occupancy, cfg, self.background(),
                            grad=grad)

    # ---- growth -------------------------------------------------------------------------------------------
    def upsample_static(self, resolution: int) -> None:
        self.static.upsample(resolution)
        self.arch["static"] = {**self.arch["static"], "resolution": resolution}

    def attach_dynamic_grid(self) -> OccupancyGrid:
        """From now on the dynamic field is evaluated only in the occupied cells of its own grid."""
        grid = OccupancyGrid(self.arch["occupancy_res"]).to(self.occupancy.density.device)
        self.field.dynamic_grid = grid
        self.arch["dynamic_grid"] = True
        return grid

    def param_groups(self, lr_grid: float, lr_net: float) -> list[dict]:
        groups = self.field.param_groups(lr_grid, lr_net)
        groups.append({"params": list(self.flow_head.parameters()), "lr": lr_net, "name": "flow"})
        if self.background_kind == "learned":  # three numbers that every transparent ray sees: learn them fast
            groups.append({"params": [self.background_logit], "lr": lr_grid, "name": "background"})
        return groups


def default_time_resolution(num_frames: int) -> int:
    return max(4, math.ceil(num_frames / 4))


def method_output(out: RenderOutput) -> MethodOutput:
    """The renderer's image output as the method interface's RenderOutput; extras "dynamic" / "static": each
    field's share of the pixel's opacity (they add up to alpha)."""
    extras = {}
    if out.part_weights is not None:
        extras = {"dynamic": out.weights_dynamic, "static": out.weights_static}
    return MethodOutput(rgb=out.rgb, depth=out.depth, alpha=out.alpha, extras=extras)


def box_to_world(y: Float[Tensor, "M 3"], space_map: AABBMap | ContractedMap) -> Float[Tensor, "M 3"]:
    """Inverse of the space map: field-box points back to world points (the box boundary of a contracted
    map is infinitely far: points are kept just inside it)."""
    if isinstance(space_map, AABBMap):
        aabb = space_map.aabb.to(y)
        return (y + 1.0) * 0.5 * (aabb[1] - aabb[0]) + aabb[0]
    c = 2.0 * y  # contracted radius-2 ball / cube
    m = torch.linalg.vector_norm(c, ord=space_map.order, dim=-1, keepdim=True).clamp(1e-9, 2.0 - 1e-3)
    n = torch.where(m <= 1.0, m, 1.0 / (2.0 - m))  # contract: m = 2 - 1/n outside the unit ball
    return space_map.center.to(y) + space_map.radius * c * (n / m)


@torch.no_grad()
def visible_cells(grid: OccupancyGrid, space_map: AABBMap | ContractedMap, cameras: Cameras, near: float,
                  chunk: int = 1 << 16) -> Tensor:
    """(res^3,) bool: cells that some camera sees (in front of it, inside its image, with a margin of the
    cell's projected size). Cells no training camera sees hold nothing to learn: Instant-NGP marks them
    empty, so novel views do not render the fog of a never-trained field there."""
    r = grid.resolution
    dev = grid.occupied.device
    n = r ** 3
    out = torch.zeros(n, dtype=torch.bool, device=dev)
    corners = torch.tensor([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], device=dev) / r
    K, w2c = cameras.K.to(dev), cameras.w2c.to(dev)
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(n, start + chunk), device=dev)
        box = grid.cell_centers(idx)
        center = box_to_world(box, space_map)
        corner_pts = box_to_world((box[:, None] + 0.999 * corners).reshape(-1, 3), space_map).view(-1, 8, 3)
        size = (corner_pts - center[:, None]).norm(dim=-1).amax(-1)  # world radius of the cell
        seen = torch.zeros(len(idx), dtype=torch.bool, device=dev)
        for c in range(len(cameras)):
            xy, z = project(center, K[c], w2c[c])
            margin = K[c, 0, 0] * size / z.clamp_min(1e-6)
            inside = (xy[:, 0] > -margin) & (xy[:, 0] < cameras.width + margin) & \
                (xy[:, 1] > -margin) & (xy[:, 1] < cameras.height + margin)
            seen |= (z > near - size) & (inside | (z < size))
        out[idx] = seen
    return out
