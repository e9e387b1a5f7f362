"""The object scale network: which combinations of object scales (s_1..s_K; the background's is fixed to 1)
give a 3D scene consistent with the video.

Scales are searched in log space within a box [log_lo_k, log_hi_k] per object, normalised to z in [-1, 1]^K
(`ScaleSpace`); the network maps z to a validity logit (> 0: valid). It is trained by BCE on 0/1 labels from
soft Z-buffer rendering (`models.osn.zbuffer`). Valid configurations are drawn by evaluating it on many
candidates (a scrambled Sobol sequence: even coverage, deterministic for a seed) and keeping those with
validity > 0.5, in candidate order (`valid_configurations`).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn


def frequency_encoding(x: Float[Tensor, "B D"], n_freqs: int) -> Float[Tensor, "B E"]:
    """[x, sin(2^k x), cos(2^k x)] for k < n_freqs: E = D * (2 * n_freqs + 1)."""
    if n_freqs <= 0:
        return x
    freqs = 2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)
    xf = (x[..., None, :] * freqs[:, None]).flatten(-2)
    return torch.cat([x, torch.sin(xf), torch.cos(xf)], dim=-1)


class MLP(nn.Module):
    """Linear-ReLU stack in_dim -> hidden (x n_hidden_layers) -> out_dim, no output activation."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, n_hidden_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(n_hidden_layers):
            layers += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
            d = hidden
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(d, out_dim)

    def forward(self, x: Float[Tensor, "N I"]) -> Float[Tensor, "N O"]:
        return self.out(self.body(x))


class ScaleSpace:
    """Per-object log-scale box. lo / hi: (K,) natural logs of the smallest / largest scale searched."""

    def __init__(self, log_lo: list[float] | Tensor, log_hi: list[float] | Tensor):
        self.log_lo = torch.as_tensor(log_lo, dtype=torch.float32).reshape(-1)
        self.log_hi = torch.as_tensor(log_hi, dtype=torch.float32).reshape(-1)
        if not bool((self.log_hi > self.log_lo).all()):
            raise ValueError(f"ScaleSpace: every upper bound must exceed the lower one, got {log_lo} / {log_hi}")

    @property
    def n_objects(self) -> int:
        return int(self.log_lo.numel())

    def to_unit(self, scales: Float[Tensor, "B K"]) -> Float[Tensor, "B K"]:
        lo, hi = self.log_lo.to(scales), self.log_hi.to(scales)
        return (torch.log(scales) - lo) / (hi - lo) * 2.0 - 1.0

    def from_unit(self, z: Float[Tensor, "B K"]) -> Float[Tensor, "B K"]:
        lo, hi = self.log_lo.to(z), self.log_hi.to(z)
        return torch.exp(lo + (z + 1.0) * 0.5 * (hi - lo))

    def to_dict(self) -> dict:
        return {"log_lo": self.log_lo.tolist(), "log_hi": self.log_hi.tolist()}

    @staticmethod
    def from_dict(d: dict) -> "ScaleSpace":
        return ScaleSpace(d["log_lo"], d["log_hi"])


class ScaleNetwork(nn.Module):
    """MLP(frequency-encoded z) -> validity logit. z: normalised log-scales of objects 1..K in [-1, 1]."""

    def __init__(self, n_objects: int, hidden: int = 64, n_freqs: int = 4):
        super().__init__()
        self.n_objects, self.n_freqs = n_objects, n_freqs
        # frequencies 2^k * pi/2: the lowest period spans the whole box, the highest resolves ~1/16 of it
        self.mlp = MLP(n_objects * (2 * n_freqs + 1), hidden, 1, n_hidden_layers=3)

    def forward(self, z: Float[Tensor, "B K"]) -> Float[Tensor, " B"]:
        return self.mlp(frequency_encoding(z * (math.pi / 2), self.n_freqs))[:, 0]

    @torch.no_grad()
    def validity(self, z: Float[Tensor, "B K"]) -> Float[Tensor, " B"]:
        """Validity scores in [0, 1]."""
        return torch.sigmoid(self(z))


def candidates(n: int, n_objects: int, seed: int = 0) -> Float[Tensor, "n K"]:
    """n points of a scrambled Sobol sequence in [-1, 1]^K (deterministic for a seed)."""
    engine = torch.quasirandom.SobolEngine(n_objects, scramble=True, seed=seed)
    return engine.draw(n).float() * 2.0 - 1.0


def random_unit(n: int, n_objects: int, generator: torch.Generator | None = None) -> Float[Tensor, "n K"]:
    """n uniform random points in [-1, 1]^K."""
    return torch.rand(n, n_objects, generator=generator) * 2.0 - 1.0


@torch.no_grad()
def valid_configurations(net: ScaleNetwork, space: ScaleSpace, n_candidates: int = 4096, seed: int = 0,
                         threshold: float = 0.5) -> tuple[Float[Tensor, "M K"], Float[Tensor, " M"]]:
    """Scale combinations (objects 1..K, in scale units) with validity > threshold, in candidate order, and
    their scores. M may be 0."""
    z = candidates(n_candidates, space.n_objects, seed).to(next(net.parameters()).device)
    score = net.validity(z)
    keep = score > threshold
    return space.from_unit(z[keep]).cpu(), score[keep].cpu()


@torch.no_grad()
def central_configuration(scales: Float[Tensor, "M K"], space: ScaleSpace) -> int:
    """Index of the valid combination nearest (in normalised log scale) to the mean of all valid ones: a
    representative, deterministic default."""
    z = space.to_unit(scales)
    return int(torch.linalg.vector_norm(z - z.mean(0), dim=-1).argmin())
