"""StaticDynamicField: DpDy's scene = a static field (3D, e.g. TensoRF-VM) + a dynamic field (4D, e.g.
K-planes), blended per sample.

Blending: the SUM OF DENSITIES (as in NeRF-W, NSFF's blending-free variant, D^2NeRF):
    sigma = sigma_s + sigma_d
    rgb   = (sigma_s rgb_s + sigma_d rgb_d) / sigma
Why this and not a learned blend weight w (sigma = (1-w) sigma_s + w sigma_d): it is what two co-located
media do physically (the sample's opacity is that of both, its colour their density-weighted mix), it
needs no extra head, and it makes the per-field shares exact: a sample's weight splits as
w_i sigma_s/sigma and w_i sigma_d/sigma, so the renderer's static and dynamic masks add up to the
accumulated alpha. A learned w can hide density of one field behind w ~ 0, which makes the masks
ambiguous. To make the dynamic part explain only what moves, penalise its share (e.g.
`models.rendering.losses.sparsity_loss(out.weights_dynamic)`) and/or `dynamic.time_l1_loss()`.

`parts` in the density output is (M, 2): [:, 0] static, [:, 1] dynamic (part_names = ("static", "dynamic")).

Speed: the dynamic field (K-planes: 12 plane lookups and an MLP per sample) costs several times the
static one. `dynamic_grid` (an `models.rendering.OccupancyGrid` kept up to date on the DYNAMIC field,
`grid.update(field.dynamic, ...)`, i.e. a max over time of its density) makes the dynamic field be
evaluated only in its occupied cells (sigma_d = 0 elsewhere). Attach it once the static/dynamic split
has settled (e.g. after half of training) and keep it for rendering: cells it prunes get no dynamic
gradient any more. It is a submodule, so it is saved in the state dict: to load such a checkpoint, build
the field with `dynamic_grid=OccupancyGrid(res)` (and every grid at its final, upsampled resolution).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from models.fields.base import DensityOutput, RadianceField, select_state

# a field whose share of a sample's density is below this gets no colour evaluation there
_MIN_SHARE = 1e-3


class StaticDynamicField(RadianceField):
    part_names = ("static", "dynamic")
    is_dynamic = True

    def __init__(self, static: RadianceField, dynamic: RadianceField, dynamic_grid: nn.Module | None = None):
        super().__init__()
        self.static = static
        self.dynamic = dynamic
        self.dynamic_grid = dynamic_grid

    def query_density(self, x: Float[Tensor, "M 3"], t: Float[Tensor, "M"] | None) -> DensityOutput:
        s = self.static.query_density(x, None)
        if self.dynamic_grid is None:
            d = self.dynamic.query_density(x, t)
            sigma_d, d_state = d.sigma, d.state
        else:  # dynamic field only inside its occupied cells, zero elsewhere
            idx = self.dynamic_grid.query(x).nonzero()[:, 0]
            d = self.dynamic.query_density(x[idx], None if t is None else t[idx])
            sigma_d = s.sigma.new_zeros(x.shape[0]).index_add(0, idx, d.sigma.to(s.sigma.dtype))
            d_state = {k: v.new_zeros((x.shape[0],) + v.shape[1:]).index_add(0, idx, v) for k, v in d.state.items()}
        parts = torch.stack([s.sigma, sigma_d], dim=-1)
        state = {"parts": parts}
        state.update({"s." + k: v for k, v in s.state.items()})
        state.update({"d." + k: v for k, v in d_state.items()})
        return DensityOutput(sigma=s.sigma + sigma_d, parts=parts, state=state)

    def query_color(self, x: Float[Tensor, "M 3"], d: Float[Tensor, "M 3"], t: Float[Tensor, "M"] | None,
                    state: dict[str, Tensor]) -> Float[Tensor, "M 3"]:
        parts = state["parts"]
        share = parts / parts.sum(-1, keepdim=True).clamp_min(1e-10)
        rgb = x.new_zeros(x.shape[0], 3)
        for i, (fld, prefix) in enumerate(((self.static, "s."), (self.dynamic, "d."))):
            sub = {k[2:]: v for k, v in state.items() if k.startswith(prefix)}
            keep = share[:, i] > _MIN_SHARE
            if bool(keep.all()):
                rgb = rgb + share[:, i:i + 1] * fld.query_color(x, d, t, sub)
            elif bool(keep.any()):
                idx = keep.nonzero()[:, 0]
                c = fld.query_color(x[idx], d[idx], None if t is None else t[idx], select_state(sub, idx))
                rgb = rgb.index_add(0, idx, share[idx, i:i + 1] * c)
        return rgb

    def param_groups(self, lr_grid: float = 0.02, lr_net: float = 1e-3) -> list[dict]:
        groups = []
        for name, fld in (("static", self.static), ("dynamic", self.dynamic)):
            for g in fld.param_groups(lr_grid, lr_net):
                groups.append({**g, "name": f"{name}.{g['name']}"})
        return groups
