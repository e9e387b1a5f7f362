"""TensoRF-VM: a static radiance field as a vector-matrix (VM) decomposition (Chen et al., ECCV 2022).

A 3D feature grid is factorised into three modes m = (plane over two axes) x (line along the third):
    mode 0: plane(x, y) * line(z);  mode 1: plane(x, z) * line(y);  mode 2: plane(y, z) * line(x)
    density  sigma(p) = exp( sum_m sum_r P^d_{m,r}(p) L^d_{m,r}(p) + density_shift )   (truncated exp)
    features f(p)     = B [ P^a_{m,r}(p) L^a_{m,r}(p) ]_{m,r}            (B: 3 R_a -> app_dim, linear)
    colour            = decoder(f, d): a tiny MLP on (f, PE(f), d, PE(d)) or spherical harmonics.

Positions are in [-1, 1]^3 (see `models.fields.base`). Empty space starts near-empty: factors start at
N(0, init_scale^2) so the sum is ~0 and sigma ~ exp(density_shift) ~ 0.02 per box unit.

Training hooks:
    field.upsample(new_resolution)   # coarse-to-fine; replaces Parameters -> rebuild the optimizer
    field.param_groups(lr_grid, lr_net)   # Adam groups (grids usually 0.02, networks 1e-3)
    field.tv_loss()                       # add with a small weight (e.g. 0.1 relative to MSE)
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from models.fields.base import DensityOutput, RadianceField
from models.fields.grids import LineSet, PlaneSet, line_tv, plane_tv
from models.fields.mlp import TinyMLP, frequency_encoding, frequency_encoding_dim, sh_encoding, trunc_exp

# (plane axes as (x -> width, y -> height), line axis) for the three VM modes
_MODES = ((0, 1), (0, 2), (1, 2))
_LINE_AXES = (2, 1, 0)


_PLANE_SEL = torch.tensor([a for ax in _MODES for a in ax])


def vm_coords(x: Float[Tensor, "N 3"]) -> tuple[Float[Tensor, "3 N 2"], Float[Tensor, "3 N"]]:
    """Plane and line coordinates of points for the three VM modes (views into two small copies)."""
    xt = x.t()
    planes = xt.index_select(0, _PLANE_SEL.to(x.device)).view(3, 2, -1).transpose(1, 2)
    lines = xt.flip(0)  # line axes (z, y, x) = _LINE_AXES
    return planes, lines


class TensoRFVM(RadianceField):
    """Static field. resolution: texels per axis of planes and lines (upsample() changes it).
    density_rank / app_rank: components per mode. decoder: "mlp" (app_dim features, view PE) or "sh"
    (app_dim = 3 (sh_degree+1)^2 SH coefficients; fastest)."""

    def __init__(self, resolution: int = 128, density_rank: int = 16, app_rank: int = 48, app_dim: int = 27,
                 decoder: str = "mlp", hidden: int = 64, feat_freqs: int = 2, view_freqs: int = 2,
                 sh_degree: int = 2, density_shift: float = -4.0, init_scale: float = 0.1):
        super().__init__()
        self.resolution = resolution
        self.density_shift = density_shift
        self.decoder_kind = decoder
        r = resolution
        self.density_planes = PlaneSet([(r, r)] * 3, density_rank, scale=init_scale)
        self.density_lines = LineSet([r] * 3, density_rank, scale=init_scale)
        self.app_planes = PlaneSet([(r, r)] * 3, app_rank, scale=init_scale)
        self.app_lines = LineSet([r] * 3, app_rank, scale=init_scale)
        if decoder == "sh":
            self.sh_degree = sh_degree
            app_dim = 3 * (sh_degree + 1) ** 2
        elif decoder != "mlp":
            raise ValueError(f"TensoRFVM: decoder must be 'mlp' or 'sh', got {decoder!r}")
        self.basis = nn.Linear(3 * app_rank, app_dim, bias=False)
        self.feat_freqs, self.view_freqs = feat_freqs, view_freqs
        if decoder == "mlp":
            in_dim = frequency_encoding_dim(app_dim, feat_freqs) + frequency_encoding_dim(3, view_freqs)
            self.mlp = TinyMLP(in_dim, hidden, 3, n_hidden_layers=2)

    # -- evaluation -------------------------------------------------------------------------------
    def query_density(self, x: Float[Tensor, "M 3"], t: Float[Tensor, " M"] | None = None) -> DensityOutput:
        pc, lc = vm_coords(x)
        raw = (self.density_planes.lookup(pc) * self.density_lines.lookup(lc)).sum(dim=(0, 2))
        return DensityOutput(sigma=trunc_exp(raw + self.density_shift))

    def app_features(self, x: Float[Tensor, "M 3"]) -> Float[Tensor, "M A"]:
        pc, lc = vm_coords(x)
        f = self.app_planes.lookup(pc) * self.app_lines.lookup(lc)  # (3, M, R)
        return self.basis(f.permute(1, 0, 2).reshape(x.shape[0], 3 * f.shape[-1]))

    def query_color(self, x: Float[Tensor, "M 3"], d: Float[Tensor, "M 3"], t: Float[Tensor, " M"] | None = None,
                    state: dict[str, Tensor] | None = None) -> Float[Tensor, "M 3"]:
        f = self.app_features(x)
        if self.decoder_kind == "sh":
            sh = sh_encoding(d, self.sh_degree)  # (M, K)
            return torch.sigmoid((f.view(-1, 3, sh.shape[-1]) * sh[:, None]).sum(-1))
        h = torch.cat([frequency_encoding(f, self.feat_freqs), frequency_encoding(d, self.view_freqs)], dim=-1)
        return torch.sigmoid(self.mlp(h))

    # -- training hooks ---------------------------------------------------------------------------
    @torch.no_grad()
    def upsample(self, resolution: int) -> None:
        """Resample all factors to `resolution` texels per axis. Rebuild the optimizer afterwards."""
        r = resolution
        for planes in (self.density_planes, self.app_planes):
            planes.resize([(r, r)] * 3)
        for lines in (self.density_lines, self.app_lines):
            lines.resize([r] * 3)
        self.resolution = r

    def grid_parameters(self) -> list[nn.Parameter]:
        return [m.table for m in (self.density_planes, self.density_lines, self.app_planes, self.app_lines)]

    def network_parameters(self) -> list[nn.Parameter]:
        grid = {id(p) for p in self.grid_parameters()}
        return [p for p in self.parameters() if id(p) not in grid]

    def param_groups(self, lr_grid: float = 0.02, lr_net: float = 1e-3) -> list[dict]:
        return [{"params": self.grid_parameters(), "lr": lr_grid, "name": "grid"},
                {"params": self.network_parameters(), "lr": lr_net, "name": "net"}]

    def tv_loss(self, density_weight: float = 1.0, app_weight: float = 0.1) -> Float[Tensor, ""]:
        """Total variation of the plane factors (and lines), density and appearance weighted separately."""
        loss = self.density_planes.table.new_zeros(())
        for planes, lines, w in ((self.density_planes, self.density_lines, density_weight),
                                 (self.app_planes, self.app_lines, app_weight)):
            if w == 0:
                continue
            for p in range(3):
                loss = loss + w * (plane_tv(planes.plane(p)) + line_tv(lines.line(p)))
        return loss
