"""The occupancy prior from sparse SfM depth: interpolation, surface shells, moving-object segments."""

from __future__ import annotations

import numpy as np
import torch

from models.cameras import Cameras, intrinsics_from_fov
from models.dpdy.occupancy_prior import densify_sparse_depth, prior_cells
from models.fields import AABBMap, ContractedMap

R = 20  # cells per axis over the box [-2, 2]^3: 0.2 world units per cell


def _cell(x, y, z) -> int:
    i, j, k = ((np.array([x, y, z]) + 2.0) / 4.0 * R).astype(int)
    return (i * R + j) * R + k


def _camera() -> Cameras:  # at the origin looking along +z (OpenCV axes: w2c = identity)
    return Cameras(intrinsics_from_fov(32, 32, 60)[None], torch.eye(4)[None], 32, 32)


def test_sparse_plane_depth_is_interpolated_exactly_inside_the_hull():
    rows, cols = np.mgrid[0:24, 0:32]
    plane = 2.0 + 0.05 * rows - 0.02 * cols
    sparse = np.zeros_like(plane, np.float32)
    sparse[::5, ::7] = plane[::5, ::7]
    dense = densify_sparse_depth(sparse)
    inside = (rows <= 20) & (cols <= 28)  # the points' hull
    np.testing.assert_allclose(dense[inside], plane[inside], atol=1e-4)
    assert np.all(dense > 0)  # outside the hull: the nearest known depth, never a hole
    assert densify_sparse_depth(np.zeros((8, 8), np.float32)) is None


def test_prior_marks_the_surface_shell_and_moving_segments_only():
    depth = np.zeros((1, 32, 32), np.float32)
    depth[0, 2::6, 2::6] = 1.5  # sparse SfM points on the plane z = 1.5
    smap = AABBMap([[-2.0, -2.0, -2.0], [2.0, 2.0, 2.0]])
    prior = prior_cells(R, smap, _camera(), depth, None, near=0.1, margin=0.02, stride=1)
    static = prior.allowed
    assert not bool(prior.moving.any())
    assert static[_cell(0.0, 0.0, 1.5)] and static[_cell(0.3, -0.3, 1.5)]
    assert not static[_cell(0.0, 0.0, 0.5)] and not static[_cell(0.0, 0.0, 1.0)]  # free space in front
    assert not static[_cell(0.0, 0.0, 1.9)]  # behind the surface (beyond the one-cell dilation)

    moving = torch.zeros(1, 32, 32, dtype=torch.bool)
    moving[0, 12:20, 12:20] = True  # an object in the middle of the image, somewhere in front of the plane
    prior = prior_cells(R, smap, _camera(), depth, moving, near=0.1, margin=0.02, stride=1)
    both = prior.allowed
    assert both[_cell(0.0, 0.0, 0.5)] and both[_cell(0.0, 0.0, 1.0)]  # on the centre pixels' segment
    assert prior.moving[_cell(0.0, 0.0, 0.5)] and not prior.moving[_cell(0.0, 0.8, 1.5)]  # the dynamic field's cells
    assert not both[_cell(0.6, 0.0, 0.5)]  # beside it: the object was never seen there
    assert bool((both | ~static).all())  # moving masks only add cells


def test_contracted_scenes_keep_the_far_shell():
    depth = np.zeros((1, 32, 32), np.float32)
    depth[0, 2::6, 2::6] = 0.8  # inside the linear region of the contraction: box depth 0.4
    cells = prior_cells(16, ContractedMap([0.0, 0.0, 0.0], 1.0), _camera(), depth, None, near=0.1).allowed
    r = 16
    idx = torch.arange(r ** 3)
    ijk = torch.stack([idx // (r * r), (idx // r) % r, idx % r], dim=-1).float()
    box_norm = ((ijk + 0.5) * (2.0 / r) - 1.0).abs().amax(-1)
    assert bool(cells[box_norm > 0.9].all())
    assert 0 < float(cells[box_norm < 0.5].float().mean()) < 0.2  # inside: the surface shell only
