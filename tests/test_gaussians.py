"""The dynamic Gaussian scene model: quaternion algebra, motion-basis blending, tracks, rigid fits, initialisation
from a synthetic scene, densification bookkeeping, losses with analytic answers."""

from __future__ import annotations

import math

import numpy as np
import torch

from models.gaussians.losses import affine_invariant_loss, metric_disparity_loss, ssim, track_loss
from models.gaussians.model import (
    DynamicGaussians,
    GaussianSet,
    MotionBases,
    quat_multiply,
    rot6d_to_rotmat,
    rotmat_to_6d,
    rotmat_to_quat,
)
from models.gaussians.strategy import DensifyStrategy, StrategyOptions
from models.gaussians.tracks import chain_tracks, kmeans
from models.splatting.project import quat_to_rotmat


def _random_quats(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)


def test_quaternion_round_trip_and_product_match_matrices():
    q1, q2 = _random_quats(64, 1), _random_quats(64, 2)
    R1, R2 = quat_to_rotmat(q1), quat_to_rotmat(q2)
    assert torch.allclose(R1 @ R1.transpose(-1, -2), torch.eye(3).expand(64, 3, 3), atol=1e-5)
    back = rotmat_to_quat(R1)
    assert torch.allclose(quat_to_rotmat(back), R1, atol=1e-5)
    assert torch.allclose(quat_to_rotmat(quat_multiply(q1, q2)), R1 @ R2, atol=1e-5)
    # 180-degree rotations (trace -1) are where naive conversions fail
    flips = torch.diag_embed(torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1]]))
    assert torch.allclose(quat_to_rotmat(rotmat_to_quat(flips)), flips, atol=1e-6)


def _one_basis_model(n_frames: int = 3) -> DynamicGaussians:
    """One static Gaussian and two dynamic ones on one basis that turns 90 degrees about z and moves +x over time."""
    angle = torch.linspace(0, math.pi / 2, n_frames)
    rot = torch.stack([torch.cos(angle / 2), torch.zeros_like(angle), torch.zeros_like(angle), torch.sin(angle / 2)], -1)
    trans = torch.stack([torch.linspace(0, 2, n_frames), torch.zeros(n_frames), torch.zeros(n_frames)], -1)
    dyn = GaussianSet.empty(2)
    with torch.no_grad():
        dyn.means.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    return DynamicGaussians(GaussianSet.empty(1), dyn, MotionBases(rot[None], trans[None]), torch.zeros(2, 1),
                            torch.ones(2, dtype=torch.int32))


def test_motion_basis_moves_dynamic_gaussians_rigidly():
    model = _one_basis_model()
    means, quats = model.dynamic_pose(1.0)  # 90 degrees about z, then +2 in x
    assert torch.allclose(means, torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), atol=1e-5)
    assert torch.allclose(quat_to_rotmat(quats[0]), model.bases.rotmats()[0, -1], atol=1e-6)
    mid, _ = model.dynamic_pose(0.5)  # frame 1 exactly: 45 degrees, +1
    c = math.cos(math.pi / 4)
    assert torch.allclose(mid[0], torch.tensor([1 + c, c, 0.0]), atol=1e-5)
    g = model.gaussians_at(0.25)
    assert g["means"].shape == (3, 3) and g["is_dynamic"].tolist() == [0.0, 1.0, 1.0]


def test_blend_weights_mix_translations():
    rot = torch.zeros(2, 2, 4)
    rot[..., 0] = 1
    trans = torch.zeros(2, 2, 3)
    trans[0, 1, 0], trans[1, 1, 1] = 1.0, 1.0
    model = DynamicGaussians(GaussianSet.empty(0), GaussianSet.empty(1), MotionBases(rot, trans),
                             torch.tensor([[0.0, math.log(3.0)]]), torch.ones(1, dtype=torch.int32))
    means, _ = model.dynamic_pose(1.0)
    assert torch.allclose(means, torch.tensor([[0.25, 0.75, 0.0]]), atol=1e-6)


def test_chain_tracks_follows_constant_flow_and_stops_at_the_border():
    T, H, W = 5, 8, 10
    fw = np.zeros((T - 1, H, W, 2), np.float32)
    fw[..., 0] = 2.0
    bw = -fw
    pos, ok = chain_tracks(fw, bw, None, None, 1, np.array([[3.5, 4.5]], np.float32))
    assert np.allclose(pos[ok][:, 0], [1.5, 3.5, 5.5, 7.5, 9.5][:ok.sum()])
    assert ok[:, 0].tolist() == [True, True, True, True, True]
    pos, ok = chain_tracks(fw, bw, None, None, 0, np.array([[7.5, 1.5]], np.float32))
    assert ok[:, 0].tolist() == [True, True, False, False, False]  # 7.5 -> 9.5 -> 11.5 leaves the image


def test_kmeans_separates_two_blobs():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (30, 2)), rng.normal(5, 0.1, (30, 2))])
    labels = kmeans(x, 2)
    assert len(set(labels[:30])) == 1 and len(set(labels[30:])) == 1 and labels[0] != labels[-1]


def test_ssim_and_depth_losses_analytic():
    img = torch.rand(24, 24, 3, generator=torch.Generator().manual_seed(0))
    assert abs(float(ssim(img, img)) - 1.0) < 1e-5
    assert float(ssim(img, 1 - img)) < 0.0
    z = torch.tensor([1.0, 2.0, 4.0])
    assert float(metric_disparity_loss(z, z, 1.0)) == 0.0
    assert abs(float(metric_disparity_loss(z, 2 * z, 2.0)) - (1.0 + 0.5 + 0.25) / 3) < 1e-6
    disparity = torch.tensor([0.1, 0.5, 0.2, 0.9])
    assert float(affine_invariant_loss(3 * disparity + 1, disparity)) < 1e-5


def test_track_loss_zero_on_the_true_projection():
    K = torch.tensor([[100.0, 0, 16], [0, 100.0, 16], [0, 0, 1]])
    w2c = torch.eye(4)
    w2c[0, 3] = 0.1  # the other camera is shifted
    H = W = 4
    pts = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(1)) + torch.tensor([0, 0, 2.0])
    cam = pts + w2c[:3, 3]
    xy = cam[..., :2] / cam[..., 2:] * 100 + 16
    alpha = torch.full((H, W), 0.8)
    valid = torch.ones(H, W, dtype=torch.bool)
    assert float(track_loss(pts * alpha[..., None], alpha, xy, valid, K, w2c, 1.0)) < 1e-4
    assert abs(float(track_loss(pts * alpha[..., None], alpha, xy + 1.5, valid, K, w2c, 1.0)) - 3.0) < 1e-4


def test_densify_duplicates_splits_prunes_and_keeps_adam_moments():
    n = 6
    g = GaussianSet(torch.zeros(n, 3), torch.log(torch.tensor([0.001, 0.001, 0.5, 0.5, 0.001, 0.001]))[:, None]
                    .repeat(1, 3), _random_quats(n), torch.tensor([2.0, 2.0, 2.0, 2.0, -10.0, 2.0]), torch.zeros(n, 3))
    owner = torch.nn.Module()
    owner.register_buffer("ids", torch.arange(n))
    opt = torch.optim.Adam([{"params": [getattr(g, k)]} for k in ("means", "log_scales", "quats", "opacity_logits",
                                                                  "color_logits")])
    (g.means.sum() + g.color_logits.sum() + g.opacity_logits.sum() + g.log_scales.sum() + g.quats.sum()).backward()
    opt.step()
    moment_5 = opt.state[g.means]["exp_avg"][5].clone()
    split_scale = g.log_scales[2].detach().clone()
    s = DensifyStrategy(g, owner, ("ids",), 1.0, StrategyOptions(prune_scale3d=10.0))
    grad = torch.zeros(n, 2)
    grad[[0, 2], 0] = 1.0  # Gaussian 0 (small) duplicates, Gaussian 2 (large) splits
    s.observe(grad, torch.ones(n, dtype=torch.int32), 2, 2)
    counts = s.refine(opt, torch.Generator().manual_seed(0))
    assert counts["duplicated"] == 1 and counts["split"] == 1 and counts["pruned"] == 1
    assert len(g) == 6 - 1 + 1 + 2 - 1
    assert owner.ids.tolist() == [0, 1, 3, 5, 0, 2, 2]
    assert torch.allclose(g.log_scales[-1], split_scale - torch.log(torch.tensor(1.6)))
    assert opt.param_groups[0]["params"][0] is g.means
    assert torch.equal(opt.state[g.means]["exp_avg"][3], moment_5)  # row 5 is now row 3
    assert torch.equal(opt.state[g.means]["exp_avg"][4:], torch.zeros(3, 3))


def test_initialisation_from_a_synthetic_scene():
    from models.gaussians.init import InitOptions, initialise
    from tests.test_dpdy import scene_from, synth

    scene = scene_from(synth())
    model = initialise(scene, InitOptions(static_points=2000, dynamic_points=400, tracks_per_object=64))
    assert len(model.static) > 1000 and len(model.dynamic) >= 0.9 * (np.asarray(scene.instances) > 0).sum((1, 2)).max()
    assert set(model.instance_ids.tolist()) <= set(int(k) for k in np.unique(np.asarray(scene.instances)) if k > 0)
    # static Gaussians lifted from depth land near the scene, in front of the cameras
    z = (scene.cameras.w2c[0, :3, :3] @ model.static.means.T + scene.cameras.w2c[0, :3, 3:]).T[:, 2]
    assert float((z > 0).float().mean()) > 0.9


def test_temporal_opacity_is_a_gaussian_in_time():
    model = _one_basis_model()
    with torch.no_grad():
        model.time_centers.copy_(torch.tensor([0.5, 0.2]))
        model.log_time_scales.copy_(torch.log(torch.tensor([0.1, 0.4])))
    assert torch.allclose(model.temporal_opacity(0.5), torch.tensor([1.0, math.exp(-0.5 * 0.75 ** 2)]), atol=1e-6)
    assert torch.allclose(model.temporal_opacity(0.6)[0], torch.tensor(math.exp(-0.5)), atol=1e-6)
    g = model.gaussians_at(0.6)  # the static Gaussian keeps its opacity
    assert torch.allclose(g["opacities"][0], model.static.opacities[0])
    assert torch.allclose(g["opacities"][1], model.dynamic.opacities[0] * math.exp(-0.5), atol=1e-6)


def test_6d_rotations_round_trip_and_blend_past_180_degrees():
    R = quat_to_rotmat(torch.nn.functional.normalize(torch.randn(64, 4, generator=torch.Generator().manual_seed(0)), dim=-1))
    assert torch.allclose(rot6d_to_rotmat(rotmat_to_6d(R)), R, atol=1e-6)
    # two bases at 170 and 190 degrees about z, blended half and half: 180 degrees (blended wxyz quaternions with
    # w >= 0 give ~0 degrees here, the sign flip the 6D representation removes)
    turn = lambda deg: torch.tensor([[math.cos(math.radians(deg)), -math.sin(math.radians(deg)), 0.0],
                                     [math.sin(math.radians(deg)), math.cos(math.radians(deg)), 0.0], [0.0, 0.0, 1.0]])
    rot = torch.stack([turn(170.0), turn(190.0)])[:, None].expand(2, 2, 3, 3)
    model = DynamicGaussians(GaussianSet.empty(0), GaussianSet.empty(1), MotionBases(rot, torch.zeros(2, 2, 3)),
                             torch.zeros(1, 2), torch.ones(1, dtype=torch.int32))
    with torch.no_grad():
        model.dynamic.means.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
    means, _ = model.dynamic_pose(0.0)
    assert torch.allclose(means, torch.tensor([[-1.0, 0.0, 0.0]]), atol=1e-5)


def test_densify_respects_a_cap_given_by_the_caller_and_resets_opacities():
    n = 4
    g = GaussianSet(torch.zeros(n, 3), torch.full((n, 3), math.log(0.001)), _random_quats(n),
                    torch.tensor([3.0, 3.0, 3.0, -1.0]), torch.zeros(n, 3))
    owner = torch.nn.Module()
    opt = torch.optim.Adam([{"params": [getattr(g, k)]} for k in ("means", "log_scales", "quats", "opacity_logits",
                                                                  "color_logits")])
    (g.opacity_logits.sum() + g.means.sum()).backward()
    opt.step()
    s = DensifyStrategy(g, owner, (), 1.0, StrategyOptions(reset_every=0.25, refine_start=0.0, refine_stop=0.6))
    grad = torch.tensor([[3.0, 0], [2.0, 0], [1.0, 0], [0.0, 0]])
    s.observe(grad, torch.ones(n, dtype=torch.int32), 2, 2)
    counts = s.refine(opt, torch.Generator().manual_seed(0), cap=5)  # room for one: the steepest duplicates
    assert counts["duplicated"] == 1 and len(g) == 5 and torch.equal(g.opacity_logits[-1], g.opacity_logits[0])
    # the reset happens when the schedule crosses 0.25 and 0.5, not in between nor after the window
    assert [s.reset_due(a, b) for a, b in ((0.2, 0.26), (0.26, 0.3), (0.49, 0.51), (0.74, 0.76))] == \
        [True, False, True, False]
    s.reset_opacities(opt)
    assert torch.allclose(g.opacities, torch.full((5,), 0.01))
    assert not opt.state[g.opacity_logits]["exp_avg"].any()
