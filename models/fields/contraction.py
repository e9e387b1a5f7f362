"""World -> field-box mappings: every field sees positions in [-1, 1]^3.

- `AABBMap(aabb)`: bounded scenes (object-centric, synthetic): an affine map of an axis-aligned box onto
  [-1, 1]^3. The renderer only samples inside the box (ray-box intersection).
- `ContractedMap(center, radius, order)`: unbounded scenes (real videos with far backgrounds): points are
  first normalised by (x - center) / radius, then contracted mip-NeRF-360 style (`contract`): the unit
  ball/cube stays as is, everything else is squeezed into radius 2; the result is halved into [-1, 1]^3.
  The renderer then samples [near, far] with steps that grow with distance (see
  `models.rendering.volume.sample_along_rays`).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor


def contract(x: Float[Tensor, "*B 3"], order: float = math.inf) -> Float[Tensor, "*B 3"]:
    """mip-NeRF 360 contraction: x if ||x|| <= 1, else (2 - 1/||x||) x / ||x||, with the L2 norm
    (order=2) or the L-inf norm (order=inf, maps onto a cube, which suits axis-aligned grids)."""
    n = torch.linalg.vector_norm(x, ord=order, dim=-1, keepdim=True)
    scale = torch.where(n <= 1.0, torch.ones_like(n), (2.0 - 1.0 / n.clamp_min(1.0)) / n.clamp_min(1.0))
    return x * scale


def aabb_normalize(x: Float[Tensor, "*B 3"], aabb: Float[Tensor, "2 3"]) -> Float[Tensor, "*B 3"]:
    """Affine map of the box aabb = [min, max] onto [-1, 1]^3."""
    return (x - aabb[0]) / (aabb[1] - aabb[0]) * 2.0 - 1.0


class AABBMap:
    """Bounded scene: world box aabb (2, 3) = [min corner, max corner] -> [-1, 1]^3."""

    bounded = True

    def __init__(self, aabb: Float[Tensor, "2 3"] | list):
        self.aabb = torch.as_tensor(aabb, dtype=torch.float32)
        if self.aabb.shape != (2, 3) or not bool((self.aabb[1] > self.aabb[0]).all()):
            raise ValueError(f"AABBMap: aabb must be [[xmin,ymin,zmin],[xmax,ymax,zmax]] with max > min, got {aabb}")

    def __call__(self, x: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B 3"]:
        return aabb_normalize(x, self.aabb.to(x))

    def to_dict(self) -> dict:
        return {"kind": "aabb", "aabb": self.aabb.tolist()}


class ContractedMap:
    """Unbounded scene: ((x - center) / radius) contracted into the radius-2 ball/cube, then halved."""

    bounded = False

    def __init__(self, center: Float[Tensor, "3"] | list = (0.0, 0.0, 0.0), radius: float = 1.0,
                 order: float = math.inf):
        self.center = torch.as_tensor(center, dtype=torch.float32)
        self.radius = float(radius)
        self.order = order

    def __call__(self, x: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B 3"]:
        return contract((x - self.center.to(x)) / self.radius, self.order) * 0.5

    def to_dict(self) -> dict:
        return {"kind": "contracted", "center": self.center.tolist(), "radius": self.radius,
                "order": "inf" if math.isinf(self.order) else self.order}


def space_map_from_dict(d: dict) -> AABBMap | ContractedMap:
    """Inverse of `.to_dict()` (for checkpoints' config.json)."""
    if d["kind"] == "aabb":
        return AABBMap(d["aabb"])
    order = math.inf if d["order"] == "inf" else float(d["order"])
    return ContractedMap(d["center"], d["radius"], order)
