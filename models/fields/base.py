"""The interface every radiance field offers to a volume renderer (`models.osn.composite`, on the sampling
and compositing of `models.rendering`).

A field lives in a normalised box: positions `x` are in [-1, 1]^3 (the renderer maps world points there
with an `AABBMap` or a `ContractedMap` from `models.fields.contraction`), directions `d` are unit ray
directions in WORLD coordinates, times `t` are None (the fields here are static; the argument stays in the
signatures). Density is per unit length of that box (the renderer measures sample lengths in box units
too, so the same density means the same opacity whatever the world scale).

Evaluation is split in two so that the renderer can skip colour where it does not matter:
    dens = field.query_density(x, None)         # every sample that survived empty-space skipping
    ... compositing weights from dens.sigma ...
    rgb = field.query_color(x[k], d[k], None, select_state(dens.state, k))   # weight > eps
`state` carries per-sample intermediate tensors (first dim = samples) from the density pass to the colour
pass, so nothing is looked up twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jaxtyping import Float
from torch import Tensor, nn


@dataclass
class DensityOutput:
    """sigma: (M,) density >= 0 per box unit. parts: (M, P) per-component densities summing to sigma for a
    field made of several components (None for the fields here). state: per-sample tensors for
    `query_color`."""

    sigma: Float[Tensor, " M"]
    parts: Float[Tensor, "M P"] | None = None
    state: dict[str, Tensor] = field(default_factory=dict)


def select_state(state: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
    """Rows `index` (bool mask or long indices) of every per-sample tensor in `state`."""
    return {k: v[index] for k, v in state.items()}


class RadianceField(nn.Module):
    """Base class: subclasses implement `query_density` and `query_color`."""

    def query_density(self, x: Float[Tensor, "M 3"], t: Float[Tensor, " M"] | None) -> DensityOutput:
        raise NotImplementedError

    def query_color(self, x: Float[Tensor, "M 3"], d: Float[Tensor, "M 3"], t: Float[Tensor, " M"] | None,
                    state: dict[str, Tensor]) -> Float[Tensor, "M 3"]:
        raise NotImplementedError

    def density(self, x: Float[Tensor, "M 3"], t: Float[Tensor, " M"] | None = None) -> Float[Tensor, " M"]:
        """Density only (occupancy-grid updates)."""
        return self.query_density(x, t).sigma

    def forward(self, x: Float[Tensor, "M 3"], d: Float[Tensor, "M 3"], t: Float[Tensor, " M"] | None = None
                ) -> tuple[Float[Tensor, " M"], Float[Tensor, "M 3"]]:
        """Density and colour of every sample (no skipping): for tests and small queries."""
        dens = self.query_density(x, t)
        return dens.sigma, self.query_color(x, d, t, dens.state)
