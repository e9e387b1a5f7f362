"""Which occupancy cells can hold anything, from the scene's sparse SfM depth and its moving-object masks.

A young field in a contracted (unbounded) scene is fog: nothing tells the occupancy grid which cells are empty
until the field has learned it, so every ray pays for ~all of its candidate samples and a step fits few rays.
SfM already says where the static surfaces are. The prior marks:

- surface cells: every pixel's depth (the sparse SfM depths interpolated over the image, linear inside the
  points' hull, nearest outside) unprojected with a relative margin, dilated by one cell;
- moving-object cells: the whole viewing segment (near plane .. the background depth behind the object, with
  the margin) of every pixel a moving-object mask covers: the object is somewhere on it at some time;
- the far shell of the contraction (box norm > `far_shell`): distant background the SfM points miss (sky).

Cells outside the prior are never sampled (`OccupancyGrid.occupied &= prior`), the way cells no training camera
sees are not, and the dynamic field is evaluated only in the moving-object cells (when the clip has masks).
Over-marking costs samples only; a surface the prior misses cannot be learned, hence the interpolation (no holes
between points) and the margins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from models.cameras import Cameras, pixel_grid, unproject
from models.fields import AABBMap, ContractedMap
from models.rendering import OccupancyGrid


@dataclass
class OccupancyPrior:
    """Flat (resolution^3,) bool grids, indexed as OccupancyGrid: `static` = surface shells + far shell,
    `moving` = the viewing segments of moving-object pixels (all False without masks)."""

    static: Bool[Tensor, "R"]
    moving: Bool[Tensor, "R"]

    @property
    def allowed(self) -> Bool[Tensor, "R"]:
        return self.static | self.moving


def densify_sparse_depth(depth: Float[np.ndarray, "H W"]) -> Float[np.ndarray, "H W"] | None:
    """Sparse z-depth (0 = unknown) -> every pixel: linear interpolation over the known pixels' Delaunay
    triangulation, nearest known pixel outside their convex hull. None when fewer than 4 pixels are known."""
    from scipy.interpolate import griddata

    rows, cols = np.nonzero(depth > 0)
    if len(rows) < 4:
        return None
    pts, vals = np.stack([rows, cols], 1).astype(np.float64), depth[rows, cols].astype(np.float64)
    grid = tuple(np.mgrid[0:depth.shape[0], 0:depth.shape[1]])
    nearest = griddata(pts, vals, grid, method="nearest")
    try:
        linear = griddata(pts, vals, grid, method="linear")
    except Exception:  # degenerate point sets (all on a line): Qhull refuses, nearest is all we have
        return nearest.astype(np.float32)
    return np.where(np.isfinite(linear), linear, nearest).astype(np.float32)


@torch.no_grad()
def prior_cells(resolution: int, space_map: AABBMap | ContractedMap, cameras: Cameras,
                depth: Float[np.ndarray, "T H W"], moving: Bool[Tensor, "T H W"] | None, near: float,
                margin: float = 0.05, stride: int = 2, steps: int = 48, far_shell: float = 0.9) -> OccupancyPrior:
    """The cells of a resolution^3 grid over the field box [-1, 1]^3 that the scene's depth and moving masks
    allow (module docstring), each set dilated by one cell.

    depth: sparse z-depth in world units (0 = unknown); moving: True on moving-object pixels (or None);
    margin: relative depth margin; stride: pixel stride; steps: points per moving-pixel segment."""
    T, H, W = depth.shape
    grid = OccupancyGrid(resolution)  # for its cell indexing only

    def mark(cells: Tensor, box: Float[Tensor, "M 3"]) -> None:
        idx, inside = grid.cell_index(box)
        cells[idx[inside]] = True

    cells = torch.zeros(resolution ** 3, dtype=torch.bool)
    moving_cells = torch.zeros(resolution ** 3, dtype=torch.bool)
    xy_all = pixel_grid(W, H)[::stride, ::stride].reshape(-1, 2)
    offsets = torch.linspace(1.0 - margin, 1.0 + margin, 5)
    for t in range(T):
        dense = densify_sparse_depth(np.asarray(depth[t]))
        if dense is None:
            continue
        d = torch.from_numpy(dense[::stride, ::stride].reshape(-1).copy())
        K, w2c = cameras.K[t].cpu().float(), cameras.w2c[t].cpu().float()
        for o in offsets:  # the surface shell
            mark(cells, space_map(unproject(xy_all, d * o, K, w2c)))
        if moving is None:
            continue
        sel = moving[t, ::stride, ::stride].reshape(-1).cpu().nonzero()[:, 0]
        if len(sel) == 0:
            continue
        # the whole segment in front of the background: points uniform in disparity from near to the far end
        far = d[sel] * (1.0 + margin)
        u = torch.linspace(0.0, 1.0, steps)[:, None]
        z = 1.0 / ((1.0 - u) / near + u / far.clamp_min(near)[None])  # (steps, P)
        xy = xy_all[sel][None].expand(steps, -1, -1).reshape(-1, 2)
        mark(moving_cells, space_map(unproject(xy, z.reshape(-1), K, w2c)))
    dilate = lambda c: torch.nn.functional.max_pool3d(c.view(1, 1, resolution, resolution, resolution).float(), 3,
                                                     stride=1, padding=1).bool().view(-1)
    cells, moving_cells = dilate(cells), dilate(moving_cells)
    if isinstance(space_map, ContractedMap):
        centres = grid.cell_centers(torch.arange(resolution ** 3))
        cells |= torch.linalg.vector_norm(centres, ord=space_map.order, dim=-1) > far_shell
    return OccupancyPrior(cells, moving_cells)
