"""Evaluation protocols: similarity alignment of ground-truth cameras, co-visibility, splits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.cameras import Cameras, intrinsics_from_fov, look_at, project
from models.scene import Scene
from models.sfm.align import Sim3
from monodyn_cli.evaluation import FLOOR_METRICS, holdout_split, score, sim3_from_cameras, synth_views, transform_cameras


def _arc_cameras(n=8) -> Cameras:
    az = torch.linspace(0, 0.8, n)
    eyes = torch.stack([4 * torch.cos(az), 4 * torch.sin(az), 1.5 + 0.2 * az], dim=-1)
    w2c = look_at(eyes, torch.zeros(n, 3))
    return Cameras(intrinsics_from_fov(64, 48, 60).expand(n, 3, 3).clone(), w2c, 64, 48)


def _rotation(axis, angle) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def test_transformed_cameras_see_transformed_points_at_the_same_pixels():
    gt = _arc_cameras()
    s, R, t = 0.37, _rotation([1, 2, 3], 0.9), np.array([0.5, -2.0, 1.0])
    est = transform_cameras(gt, Sim3(s, R, t))
    X = torch.randn(20, 3)
    X_est = torch.as_tensor(s * (X.double().numpy() @ R.T) + t, dtype=torch.float32)
    for i in range(len(gt)):
        xy_gt, z_gt = project(X, gt.K[i], gt.w2c[i])
        xy_est, z_est = project(X_est, est.K[i], est.w2c[i])
        torch.testing.assert_close(xy_est, xy_gt, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(z_est, s * z_gt, atol=1e-4, rtol=1e-4)
    # the rotation block stays a rotation
    Rb = est.w2c[:, :3, :3]
    torch.testing.assert_close(Rb @ Rb.transpose(1, 2), torch.eye(3).expand(len(gt), 3, 3), atol=1e-5, rtol=0)


def test_similarity_is_recovered_from_camera_centres():
    gt = _arc_cameras()
    s, R, t = 2.5, _rotation([0, 1, 1], -0.4), np.array([1.0, 2.0, 3.0])
    est = transform_cameras(gt, Sim3(s, R, t))
    sim = sim3_from_cameras(est, gt)
    assert abs(sim.scale - s) < 1e-4 and np.allclose(sim.R, R, atol=1e-5) and np.allclose(sim.t, t, atol=1e-4)


def test_dolly_alignment_recovers_the_rotation_about_the_track():
    # centres on a line leave the rotation about it free: orientations must pin it down
    n = 6
    eyes = torch.stack([torch.linspace(-1, 1, n), torch.full((n,), -4.0), torch.full((n,), 1.0)], dim=-1)
    w2c = look_at(eyes, eyes + torch.tensor([0.0, 4.0, -1.0]))
    gt = Cameras(intrinsics_from_fov(64, 48, 60).expand(n, 3, 3).clone(), w2c, 64, 48)
    s, R, t = 0.5, _rotation([1, 0, 0], 1.0), np.array([0.3, 0.0, -2.0])  # rotation about the track's axis
    est = transform_cameras(gt, Sim3(s, R, t))
    sim = sim3_from_cameras(est, gt)
    assert abs(sim.scale - s) < 1e-4 and np.allclose(sim.R, R, atol=1e-4) and np.allclose(sim.t, t, atol=1e-4)


def test_static_camera_alignment_uses_orientation():
    gt = _arc_cameras(1)
    gt = Cameras(gt.K.expand(5, 3, 3).clone(), gt.w2c.expand(5, 4, 4).clone(), 64, 48)
    R, t = _rotation([0, 0, 1], 0.3), np.array([0.0, 1.0, 0.0])
    est = transform_cameras(gt, Sim3(1.0, R, t))
    torch.testing.assert_close(transform_cameras(gt, sim3_from_cameras(est, gt)).w2c, est.w2c, atol=1e-5, rtol=0)


def test_holdout_split_keeps_times_of_the_full_clip():
    cams = _arc_cameras(7)
    scene = Scene(frames=np.zeros((7, 48, 64, 3), np.uint8), timestamps=np.arange(7) / 10.0, cameras=cams)
    train, test = holdout_split(scene)
    assert train.num_frames == 4 and len(test.cameras) == 3
    torch.testing.assert_close(train.times, torch.tensor([0, 2, 4, 6]) / 6.0)
    torch.testing.assert_close(test.times, torch.tensor([1, 3, 5]) / 6.0)
    # scoring every 2nd test image keeps images, cameras and times together
    every = test.every(2)
    torch.testing.assert_close(every.times, torch.tensor([1, 5]) / 6.0)
    torch.testing.assert_close(every.cameras.w2c, test.cameras.w2c[[0, 2]])
    assert every.images.shape[0] == 2 and test.every(1) is test


def test_eval_command_scores_a_multiview_npz(tmp_path):
    """`monodyn eval --protocol multiview` end to end: fit, render the test split, CSV + summary + strip."""
    import json

    from typer.testing import CliRunner

    from models.cameras import opencv_w2c_to_opengl_c2w
    from monodyn_cli.app import app

    n, w, h = 10, 32, 24
    cams = _arc_cameras(n)
    cams = Cameras(intrinsics_from_fov(w, h, 60).expand(n, 3, 3).clone(), cams.w2c, w, h)
    images = np.zeros((n, h, w, 3), np.float32)
    images[..., 1] = 0.5  # a green screen: the object-centred black background must turn green
    npz = tmp_path / "mv.npz"
    np.savez(npz, images=images, poses=opencv_w2c_to_opengl_c2w(cams.w2c).numpy(), times=np.linspace(0, 1, n),
             focal=float(cams.K[0, 0, 0]), train=np.arange(0, n, 2), test=np.arange(1, n, 2))
    result = CliRunner().invoke(app, ["eval", "--protocol", "multiview", "--gt", str(npz), "-w", str(tmp_path / "ws"),
                                      "--every", "2", "--quiet", "--steps", "100", "--static-points", "2000", "--background", "learned",
                                      "--dynamic-points", "200", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    out = next((tmp_path / "ws" / "eval").iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["every"] == 2 and summary["views"]["test"]["frames"] == 3  # test images 1, 5, 9
    assert summary["views"]["test"]["psnr"] > 20.0  # it learns the uniform colour (black would be 10.8 dB)
    assert (out / "per_frame.csv").read_text().count("\n") == 4 and (out / "test.png").exists()


def test_synth_views_use_the_reconstructions_intrinsics_and_stabilized_ground_truth(tmp_path):
    """A workspace whose focal differs from the generator's (a static camera's assumed focal) is scored with its own
    focal; the stabilized camera is the input camera of its frame at every time."""
    from monodyn_cli.evaluation import synth_views
    from monodyn_cli.synth import SynthConfig, load_gt, synthesize

    out = synthesize(SynthConfig(seed=4, frames=4, width=32, height=24, objects=1, heldout_azimuths=(30.0,),
                                 fixed_cameras=0, stabilized_frames=(1,)), tmp_path / "s")
    inp = load_gt(out).view("input")
    K = inp.cameras.K.clone()
    K[:, :2, :2] *= 0.9
    scene = Scene(frames=np.asarray(inp.rgb), timestamps=np.arange(4) / 12.0,
                  cameras=Cameras(K, inp.cameras.w2c.clone(), 32, 24))
    views = {v.name: v for v in synth_views(out, scene)}
    assert set(views) == {"heldout_az30", "stabilized1"}
    assert all(torch.allclose(v.cameras.K, K) for v in views.values())
    stab = views["stabilized1"].cameras.w2c
    assert torch.allclose(stab, inp.cameras.w2c[1].expand_as(stab), atol=1e-4)


def test_synth_views_score_the_rig_camera_and_moving_object_pixels(tmp_path):
    """The NVIDIA protocol: rig camera 0 while time plays is scored like any held-out camera, with the co-visible
    pixels of the moving figures marked for dpsnr; the floor keys cover every metric the bench reports."""
    from monodyn_cli.synth import SynthConfig, load_gt, synthesize

    out = synthesize(SynthConfig(seed=2, frames=4, width=48, height=36, objects=1, movers="articulated",
                                 camera="rig", rig_cameras=3, heldout_azimuths=(), fixed_cameras=0), tmp_path / "s")
    inp = load_gt(out).view("input")
    scene = Scene(frames=np.asarray(inp.rgb), timestamps=np.arange(4) / 12.0, cameras=inp.cameras)
    (view,) = synth_views(out, scene)
    assert view.name == "rig0"
    assert torch.allclose(view.cameras.w2c, inp.cameras.w2c[0].expand_as(view.cameras.w2c), atol=1e-4)
    assert view.dynamic.sum() > 0 and (view.dynamic <= view.mask).all()
    rows = score(view.images, view)
    assert rows[0]["psnr"] == math.inf and rows[0]["sharpness"] == pytest.approx(1.0)
    shifted = score(torch.roll(view.images, 2, dims=2), view)
    assert all(math.isfinite(r["dpsnr"]) and math.isfinite(r["msharpness"]) for r in shifted)
    assert set(FLOOR_METRICS) <= set(rows[0])


def test_views_from_an_input_camera_take_its_estimate_not_the_aligned_ground_truth(tmp_path):
    """A stabilised view is rendered through the workspace's own estimate of that input camera (as `render` does):
    an estimate off the best-fitting similarity (and its focal) is kept exactly; a held-out camera stays aligned."""
    from monodyn_cli.synth import SynthConfig, load_gt, synthesize

    out = synthesize(SynthConfig(seed=4, frames=4, width=32, height=24, objects=1, heldout_azimuths=(30.0,),
                                 fixed_cameras=0, stabilized_frames=(1,)), tmp_path / "s")
    inp = load_gt(out).view("input")
    w2c, K = inp.cameras.w2c.clone(), inp.cameras.K.clone()
    w2c[1, :3, 3] += torch.tensor([0.05, -0.03, 0.02])  # frame 1's estimate is off the similarity of the others
    K[1, :2, :2] *= 1.3  # and so is its focal
    scene = Scene(frames=np.asarray(inp.rgb), timestamps=np.arange(4) / 12.0, cameras=Cameras(K, w2c, 32, 24))
    views = {v.name: v for v in synth_views(out, scene)}
    stab = views["stabilized1"].cameras
    assert torch.equal(stab.w2c, w2c[1].expand_as(stab.w2c)) and torch.equal(stab.K, K[1].expand_as(stab.K))
    held = views["heldout_az30"].cameras
    assert not any(torch.allclose(held.w2c[i], w2c[j], atol=1e-3) for i in range(len(held)) for j in range(4))
