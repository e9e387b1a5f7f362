"""Differentiable tile-based 3D Gaussian rasterizer (a subset of gsplat.rasterization's interface).

Backends behind `rasterization(..., backend=)`: "torch" (dense reference, tests only), "cpu" (compiled
numba, hand-written backward), "cuda" (numba-cuda kernels), "gsplat" (delegation when installed); "auto"
picks by the tensors' device.
"""

from .project import Projected, project_gaussians
from .rasterize import rasterization

__all__ = ["rasterization", "project_gaussians", "Projected"]
