"""Tiny MLPs and input encodings used as decoders on top of explicit grids.

The grids carry the capacity; these networks stay small (one or two hidden layers of 32-128 units) so
that they cost little on a CPU.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn


def frequency_encoding(x: Float[Tensor, "*B D"], n_freqs: int, include_input: bool = True
                       ) -> Float[Tensor, "*B E"]:
    """NeRF positional encoding: [x, sin(2^k x), cos(2^k x)] for k < n_freqs.

    E = D * (2 * n_freqs + include_input). No pi factor: inputs in [-1, 1] (directions, normalised
    coordinates, grid features) then see periods from 2*pi down to 2*pi / 2^(n_freqs-1).
    """
    parts = [x] if include_input else []
    if n_freqs > 0:
        freqs = 2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)
        xf = (x[..., None, :] * freqs[:, None]).flatten(-2)  # (*B, n_freqs * D)
        parts += [torch.sin(xf), torch.cos(xf)]
    return torch.cat(parts, dim=-1)


def frequency_encoding_dim(in_dim: int, n_freqs: int, include_input: bool = True) -> int:
    return in_dim * (2 * n_freqs + int(include_input))


# Real spherical harmonics constants (degree 0..3), the usual graphics convention.
_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
       0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
       -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def sh_encoding(dirs: Float[Tensor, "*B 3"], degree: int) -> Float[Tensor, "*B C"]:
    """Real spherical-harmonic basis of unit directions, C = (degree + 1)^2, degree in 0..3."""
    if not 0 <= degree <= 3:
        raise ValueError(f"sh_encoding: degree must be 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, _C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [_C2[0] * xy, _C2[1] * yz, _C2[2] * (2 * zz - xx - yy), _C2[3] * xz, _C2[4] * (xx - yy)]
    if degree >= 3:
        out += [_C3[0] * y * (3 * xx - yy), _C3[1] * xy * z, _C3[2] * y * (4 * zz - xx - yy),
                _C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _C3[4] * x * (4 * zz - xx - yy),
                _C3[5] * z * (xx - yy), _C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, dim=-1)


class TinyMLP(nn.Module):
    """Linear-ReLU stack: in_dim -> hidden (x n_hidden_layers) -> out_dim, no output activation.

    `last_bias` initialises the output bias (e.g. a negative density offset so empty space starts empty).
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, n_hidden_layers: int = 1,
                 last_bias: float | Tensor = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(n_hidden_layers):
            layers += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
            d = hidden
        self.out = nn.Linear(d, out_dim)
        self.body = nn.Sequential(*layers)
        with torch.no_grad():
            self.out.bias.copy_(torch.as_tensor(last_bias, dtype=torch.float32).expand(out_dim))

    def forward(self, x: Float[Tensor, "N I"]) -> Float[Tensor, "N O"]:
        return self.out(self.body(x))


class _TruncExp(torch.autograd.Function):
    """exp(x) with the gradient computed from exp(clamp(x, max=15)): the instant-NGP density activation,
    which keeps large densities from producing inf gradients."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Float[Tensor, "*B"]) -> Float[Tensor, "*B"]:
    """Density activation: exp forward, gradient clamped for x > 15."""
    return _TruncExp.apply(x)
