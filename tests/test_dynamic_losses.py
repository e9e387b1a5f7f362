"""Long-range tracks, local rigidity and the static hole fill: analytic answers."""

from __future__ import annotations

import math

import numpy as np
import torch

from models.cameras import project
from models.gaussians.coverage import concat_sets, empty_background_share, fill_static_holes
from models.gaussians.init import InitOptions, static_gaussians
from models.gaussians.losses import isometry_loss, long_track_loss, neighbour_pairs
from models.gaussians.model import GaussianSet
from models.gaussians.motion_init import DepthSource
from models.gaussians.tracks import window_tracks
from tests.test_dpdy import scene_from, synth

K = torch.tensor([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])


def test_window_tracks_follow_constant_flow_within_the_window():
    T, H, W = 6, 8, 40
    fw = np.zeros((T - 1, H, W, 2), np.float32)
    fw[..., 0] = 1.0
    tracks = window_tracks(fw, -fw, None, None, None, points=5, window=2, seed=0)
    assert tracks.pos.shape == (T, 5, 5, 2) and tracks.ok.shape == (T, 5, 5)
    for t in range(T):
        for k in range(-2, 3):
            x = tracks.query[t, :, 0] + k
            expect_ok = (0 <= t + k < T) & (x >= 0) & (x < W)  # a track ends where it leaves the clip or the image
            assert (tracks.ok[t, k + 2] == expect_ok).all()
            np.testing.assert_allclose(tracks.pos[t, k + 2][expect_ok], tracks.query[t][expect_ok] + [k, 0], atol=1e-5)
    assert not tracks.ok[0, 0].any() and not tracks.ok[T - 1, 4].any()  # beyond the clip


def test_window_tracks_put_three_quarters_of_the_queries_on_moving_pixels():
    T, H, W = 3, 20, 20
    moving = np.zeros((T, H, W), bool)
    moving[:, :5, :5] = True
    fw = np.zeros((T - 1, H, W, 2), np.float32)
    tracks = window_tracks(fw, fw, None, None, moving, points=40, window=1)
    q = tracks.query[1].astype(int)
    assert moving[1, q[:, 1], q[:, 0]].sum() == 30


def _positions_seen_by(w2c, xy, z):
    """Rendered positions (alpha 1) of an image whose pixels `xy` see points at depth z."""
    from models.cameras import unproject

    return unproject(xy, torch.full((len(xy),), z), K, w2c)


def test_long_track_loss_is_zero_on_exact_tracks_and_huber_beyond():
    h, w = 48, 64
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    xy = torch.stack([xs, ys], -1).reshape(-1, 2)
    eye = torch.eye(4)
    positions = _positions_seen_by(eye, xy, 2.0).reshape(h, w, 3)
    alpha = torch.ones(h, w)
    moved = eye.clone()
    moved[0, 3] = -0.1  # the other camera is 0.1 to the right: points shift 50 * 0.1 / 2 = 2.5 px left
    query = torch.tensor([[10.5, 10.5], [30.5, 20.5]])
    target = query - torch.tensor([2.5, 0.0])
    ok = torch.tensor([True, True])
    assert float(long_track_loss(positions, alpha, query, target, ok, K, moved, near=0.01)) < 1e-8
    off = target + torch.tensor([10.0, 0.0])  # 10 px off with delta 2: 2^2 (sqrt(1 + 25) - 1)
    expect = 4 * (math.sqrt(26) - 1)
    assert math.isclose(float(long_track_loss(positions, alpha, query, off, ok, K, moved, near=0.01, delta=2.0)),
                        expect, rel_tol=1e-4)
    # broken tracks and points behind the near plane are left out
    assert float(long_track_loss(positions, alpha, query, off, torch.tensor([False, False]), K, moved, 0.01)) == 0
    assert float(long_track_loss(positions, alpha, query, off, ok, K, moved, near=5.0)) == 0


def test_isometry_is_free_for_rigid_motion_and_measures_stretch():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(200, 3, generator=g)
    ids = torch.ones(200, dtype=torch.int32)
    pairs, rest = neighbour_pairs(pts, ids, k=4)
    assert len(pairs) == 800 and torch.allclose(rest, (pts[pairs[:, 0]] - pts[pairs[:, 1]]).norm(dim=-1))
    c, s = math.cos(1.0), math.sin(1.0)
    R = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    moved = pts @ R.T + torch.tensor([3.0, -1, 2])
    assert float(isometry_loss(pts, moved, pairs, rest)) < 1e-5
    assert math.isclose(float(isometry_loss(pts, 1.5 * pts, pairs, rest)), 0.5, rel_tol=1e-4)  # stretched by half
    # pairs never join two objects
    ids[100:] = 2
    pairs, _ = neighbour_pairs(pts, ids, k=4)
    assert (ids[pairs[:, 0]] == ids[pairs[:, 1]]).all()


def test_hole_fill_covers_the_background_that_only_later_frames_see():
    scene = scene_from(synth(frames=6), dense=True)
    depth = DepthSource(scene)
    rng = np.random.default_rng(0)
    one_key = static_gaussians(scene, depth, InitOptions(static_points=3000, keyframes=1, fill_holes=False), rng)
    filled = static_gaussians(scene, depth, InitOptions(static_points=3000, keyframes=1, fill_holes=True), rng)
    before, after = empty_background_share(one_key, scene), empty_background_share(filled, scene)
    assert before > 0.02, before  # the camera moves: frame 0 alone misses part of the later frames' background
    assert after < 0.2 * before, (before, after)
    assert len(filled) > len(one_key)


def test_fill_keeps_a_covered_set_unchanged():
    scene = scene_from(synth(frames=4), dense=True)
    full = static_gaussians(scene, DepthSource(scene), InitOptions(static_points=3000, keyframes=4, fill_holes=False),
                            np.random.default_rng(0))
    calls = []
    out = fill_static_holes(full, scene, lambda t, empty: calls.append(t), min_pixels=10 ** 6)
    assert calls == [] and len(out) == len(full)
    both = concat_sets([full, GaussianSet.empty(2)])
    assert len(both) == len(full) + 2 and torch.equal(both.means[:len(full)], full.means)


def test_project_helper_matches_the_shift_used_above():
    xy, z = project(torch.tensor([[0.0, 0.0, 2.0]]), K, torch.eye(4))
    assert torch.allclose(xy, torch.tensor([[32.0, 24.0]])) and float(z) == 2.0
