"""K-planes: a factorised 4D (x, y, z, t) radiance field (Fridovich-Keil et al., CVPR 2023).

Six planes per scale, over the axis pairs (x,y) (x,z) (y,z) (x,t) (y,t) (z,t); the feature of a point is
the Hadamard (element-wise) product of its six bilinear plane lookups, concatenated over spatial scales:
    f(x, t) = concat_s  prod_{p in 6 planes} P_{s,p}(x, t)            (S * F channels)
    h = MLP_density(f);  sigma = exp(h[0] + density_shift);  geo = h[1:]
    rgb = sigmoid(MLP_color(geo, SH(d)))
Space planes start uniform in [0.1, 0.5], time planes at 1: at init the field is static (a product of
space planes), and the time planes only move away from 1 where the data needs motion.
Time is NORMALISED in [0, 1] (first frame 0, last frame 1).

Regularisers (K-planes paper weights for D-NeRF: tv 1e-4 .. 1e-3, time smoothness 1e-3 .. 1e-2, time
L1 1e-4): `tv_loss()` (spatial planes), `time_smoothness_loss()` (1D Laplacian along t on the time planes),
`time_l1_loss()` (|1 - time plane|: prefers static explanations).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from models.fields.base import DensityOutput, RadianceField
from models.fields.grids import PlaneSet, plane_tv, second_difference
from models.fields.mlp import TinyMLP, sh_encoding, trunc_exp

# axis pairs (-> width, -> height); axis 3 is time, so time runs along plane rows
PLANE_AXES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
_PLANE_SEL = torch.tensor([a for ax in PLANE_AXES for a in ax])
SPACE_PLANES = (0, 1, 2)
TIME_PLANES = (3, 4, 5)


class KPlanes(RadianceField):
    """Dynamic field. resolution: base spatial texels per axis; scales: multipliers of it (multiscale);
    time_resolution: texels along t (about half the number of frames works well); features: channels
    per scale."""

    is_dynamic = True

    def __init__(self, resolution: int = 32, scales: tuple[int, ...] = (1, 2), time_resolution: int = 24,
                 features: int = 16, hidden: int = 64, geo_features: int = 15, sh_degree: int = 2,
                 density_shift: float = -4.0):
        super().__init__()
        self.resolution, self.scales, self.time_resolution = resolution, tuple(scales), time_resolution
        self.density_shift, self.sh_degree, self.geo_features = density_shift, sh_degree, geo_features
        self.levels = nn.ModuleList()
        for s in self.scales:
            level = PlaneSet(self._shapes(resolution * s), features, init="uniform", low=0.1, high=0.5)
            with torch.no_grad():
                for p in TIME_PLANES:
                    level.plane(p).fill_(1.0)
            self.levels.append(level)
        self.density_mlp = TinyMLP(features * len(self.scales), hidden, 1 + geo_features, n_hidden_layers=1)
        self.color_mlp = TinyMLP(geo_features + (sh_degree + 1) ** 2, hidden, 3, n_hidden_layers=2)

    def _shapes(self, r: int) -> list[tuple[int, int]]:
        size = (r, r, r, self.time_resolution)
        return [(size[b], size[a]) for a, b in PLANE_AXES]  # (height, width)

    def features(self, x: Float[Tensor, "M 3"], t: Float[Tensor, "M"]) -> Float[Tensor, "M SF"]:
        xt = torch.cat([x.t(), (t * 2.0 - 1.0)[None].to(x)], dim=0)  # (4, M); time [0,1] -> [-1,1]
        coords = xt.index_select(0, _PLANE_SEL.to(x.device)).view(6, 2, -1).transpose(1, 2)  # (6, M, 2)
        feats = []
        for level in self.levels:
            f = level.lookup(coords)  # (6, M, F)
            # explicit products: Tensor.prod's backward divides and checks for zeros, 2-3x slower
            feats.append(f[0] * f[1] * f[2] * f[3] * f[4] * f[5])
        return torch.cat(feats, dim=-1)

    def query_density(self, x: Float[Tensor, "M 3"], t: Float[Tensor, "M"] | None) -> DensityOutput:
        if t is None:
            raise ValueError("KPlanes is a dynamic field: pass normalised times t in [0, 1]")
        feats = self.features(x, t)
        h = self.density_mlp(feats)
        sigma = trunc_exp(h[:, 0] + self.density_shift)
        # feat: the raw K-planes features, for heads that read them too (DpDy's scene flow)
        return DensityOutput(sigma=sigma, state={"geo": h[:, 1:], "feat": feats})

    def query_color(self, x: Float[Tensor, "M 3"], d: Float[Tensor, "M 3"], t: Float[Tensor, "M"] | None,
                    state: dict[str, Tensor]) -> Float[Tensor, "M 3"]:
        h = torch.cat([state["geo"], sh_encoding(d, self.sh_degree)], dim=-1)
        return torch.sigmoid(self.color_mlp(h))

    # -- training hooks ---------------------------------------------------------------------------
    @torch.no_grad()
    def upsample(self, resolution: int) -> None:
        """New base spatial resolution (time resolution kept). Rebuild the optimizer afterwards."""
        for s, level in zip(self.scales, self.levels):
            level.resize(self._shapes(resolution * s))
        self.resolution = resolution

    def grid_parameters(self) -> list[nn.Parameter]:
        return [level.table for level in self.levels]

    def network_parameters(self) -> list[nn.Parameter]:
        return list(self.density_mlp.parameters()) + list(self.color_mlp.parameters())

    def param_groups(self, lr_grid: float = 0.02, lr_net: float = 1e-3) -> list[dict]:
        return [{"params": self.grid_parameters(), "lr": lr_grid, "name": "grid"},
                {"params": self.network_parameters(), "lr": lr_net, "name": "net"}]

    def tv_loss(self) -> Float[Tensor, ""]:
        """Total variation of the spatial planes (time planes are regularised along t separately)."""
        loss = self.levels[0].table.new_zeros(())
        for level in self.levels:
            for p in SPACE_PLANES:
                loss = loss + plane_tv(level.plane(p))
        return loss

    def time_smoothness_loss(self) -> Float[Tensor, ""]:
        """1D Laplacian along time (plane rows) of the time planes: smooth motion."""
        loss = self.levels[0].table.new_zeros(())
        for level in self.levels:
            for p in TIME_PLANES:
                loss = loss + second_difference(level.plane(p), dim=0)
        return loss

    def time_l1_loss(self) -> Float[Tensor, ""]:
        """Mean |1 - time plane|: the field prefers to stay static."""
        loss = self.levels[0].table.new_zeros(())
        for level in self.levels:
            for p in TIME_PLANES:
                loss = loss + (1.0 - level.plane(p)).abs().mean()
        return loss
