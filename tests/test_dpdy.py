"""DpDy on the dynamic Gaussian core: options, initial motion against ground truth, short fits on a tiny synthetic
scene (exact flow and masks, SfM-like sparse depth), the guidance hook, a static camera (determinism and resume:
tests/test_method_conformance.py)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch

from models.dpdy.config import DpDyConfig
from models.dpdy.guidance import orbit_cameras
from models.dpdy.method import DpDyMethod
from models.errors import InputError
from models.gaussians.init import InitOptions, initialise
from models.registry import get_method
from models.scene import Scene
from monodyn_cli.options import parse_options
from monodyn_cli.synth import SynthConfig, generate_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@lru_cache(maxsize=None)
def synth(camera: str = "moving", frames: int = 6):
    return generate_scene(SynthConfig(seed=2, frames=frames, width=64, height=48, objects=1, camera=camera,
                                      heldout_azimuths=(), fixed_cameras=0))


def scene_from(sc, sparse_every: int = 16, dense: bool = False) -> Scene:
    """The synthetic input view as preprocessing would give it: frames, cameras, masks, flow, and either dense
    depth or SfM-like sparse depth (one background pixel in `sparse_every`)."""
    v = sc.view("input")
    depth = np.asarray(v.depth, np.float32).copy()
    if not dense:
        keep = np.zeros_like(depth, bool)
        keep.reshape(-1)[::sparse_every] = True
        depth[~keep | (np.asarray(v.instances) > 0)] = 0
    cams = v.cameras
    center = np.asarray(sc.meta["scene_centre"], np.float32)
    return Scene(frames=np.asarray(v.rgb), timestamps=np.arange(len(v.rgb)) / 12.0, cameras=cams,
                 instances=np.asarray(v.instances), flow_fw=np.asarray(v.flow_fw), flow_bw=np.asarray(v.flow_bw),
                 valid_fw=np.asarray(v.valid_fw), valid_bw=np.asarray(v.valid_bw), depth=depth,
                 center=center, radius=float(np.median(v.depth[np.isfinite(v.depth)])))


def tiny_config(**kw) -> DpDyConfig:
    base = dict(steps=60, static_points=1500, dynamic_points=300, keyframes=3, checkpoint_every=0, device="cpu",
                refine_every=20)
    base.update(kw)
    return DpDyConfig(**base)


class Recorder:
    def __init__(self, stop_at: int | None = None):
        self.calls, self.stop_at = [], stop_at

    def __call__(self, step, total, **metrics):
        self.calls.append((step, metrics))
        if self.stop_at is not None and step >= self.stop_at:
            raise KeyboardInterrupt  # what a killed fit looks like from the outside


def test_config_options_parse_and_validate():
    cfg = parse_options(DpDyConfig, ["--steps", "10", "--static-points", "100", "--depth-loss", "affine"])
    assert cfg.steps == 10 and cfg.static_points == 100 and cfg.depth_loss == "affine"
    for bad in (dict(steps=0), dict(init_opacity=1.0), dict(lr_means=float("nan")), dict(track_weight=-1.0)):
        with pytest.raises(InputError, match="--"):
            DpDyConfig(**bad).validate()


def test_orbit_cameras_keep_the_pivot_in_view():
    cams = synth().view("input").cameras[:2]
    dist = torch.tensor([2.0, 3.0])
    pivot = cams.centers + dist[:, None] * cams.w2c[:, 2, :3]
    assert torch.allclose(orbit_cameras(cams, dist, torch.zeros(2)).w2c, cams.w2c, atol=1e-5)
    turned = orbit_cameras(cams, dist, torch.tensor([30.0, -45.0]))
    p_cam = (turned.w2c[:, :3, :3] @ pivot[..., None])[..., 0] + turned.w2c[:, :3, 3]
    assert torch.allclose(p_cam[:, :2], torch.zeros(2, 2), atol=1e-4)  # still on the optical axis
    assert torch.allclose(p_cam[:, 2], dist, atol=1e-4)


def test_initial_motion_follows_the_object_with_exact_depth_and_flow():
    sc = synth()
    scene = scene_from(sc, dense=True)
    model = initialise(scene, InitOptions(static_points=500, dynamic_points=400, bases_per_object=1))
    poses = np.asarray(sc.object_poses())[0]  # (T,4,4) object local -> world
    areas = (scene.instances == 1).sum((1, 2))
    c = int(areas.argmax())
    for t in range(scene.num_frames):
        means, _ = model.dynamic_pose(float(scene.times[t]))
        truth = (poses[t] @ np.linalg.inv(poses[c]) @ np.c_[model.dynamic.means.detach().numpy(),
                                                              np.ones(len(means))].T).T[:, :3]
        err = np.linalg.norm(means.detach().numpy() - truth, axis=1)
        assert np.median(err) < 0.03 * scene.radius, (t, np.median(err))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("dpdy")
    rec = Recorder()
    DpDyMethod().fit(scene_from(synth()), tiny_config(steps=150), out, rec)
    return out, rec


def test_fit_lowers_the_loss_and_renders_the_training_views(fitted):
    out, rec = fitted
    scene = scene_from(synth())
    losses = [m["loss"] for _, m in rec.calls]
    assert losses[-1] < 0.5 * losses[0]
    res = get_method("dpdy").load(out, scene, None, "cpu").render(scene.cameras[[0, 5]], scene.times[[0, 5]])
    assert res.rgb.shape == (2, 48, 64, 3) and res.depth.shape == (2, 48, 64) and res.alpha.shape == (2, 48, 64)
    target = torch.as_tensor(scene.frames[[0, 5]]).float() / 255
    psnr = -10 * torch.log10(((res.rgb - target) ** 2).mean())
    assert psnr > 24.0, float(psnr)
    # the moving object is explained by the dynamic Gaussians, the room by the static ones
    moving = torch.as_tensor(scene.instances[[0, 5]] > 0)
    share = res.extras["dynamic"]
    assert float(share[moving].mean()) > 0.7 and float(share[~moving].mean()) < 0.1


def test_guidance_hook_sees_the_task_each_step_and_steers_the_fit(tmp_path):
    from models.dpdy.guidance import novel_cameras

    scene = scene_from(synth())
    seen = []

    def towards_white(task, step, progress):  # renders its own novel view, as models/priors/hook.py does
        seen.append(step)
        d = task.data
        cams = novel_cameras(scene.cameras[:1], torch.as_tensor(task.arch["center"]), torch.tensor([15.0]), 32, 0.1)
        return {"white": 5.0 * (1 - task.model.render_cameras(cams, d.times[:1]).rgb).abs().mean()} if step % 2 else {}

    cfg = tiny_config(steps=30, prior="none")
    DpDyMethod().fit(scene, cfg, tmp_path / "g", Recorder(), guidance=towards_white)
    DpDyMethod().fit(scene, cfg, tmp_path / "plain", Recorder())
    assert seen == list(range(30))
    cams = orbit_cameras(scene.cameras[:1], torch.tensor([2.0]), torch.tensor([15.0]))
    bright = [float(get_method("dpdy").load(tmp_path / k, scene, None, "cpu").render(cams, scene.times[:1]).rgb.mean())
              for k in ("g", "plain")]
    assert bright[0] > bright[1] + 0.02


def test_static_camera_scene_without_depth_fits(tmp_path):
    # what preprocessing gives for a static camera: SfM falls back to fixed cameras with no points, no depth
    scene = scene_from(synth("static"))
    scene.depth, scene.static_camera = np.zeros_like(scene.depth), True
    DpDyMethod().fit(scene, tiny_config(steps=80), tmp_path / "s", Recorder())
    res = get_method("dpdy").load(tmp_path / "s", scene, None, "cpu").render(scene.cameras[[2]], scene.times[[2]])
    target = torch.as_tensor(scene.frames[[2]]).float() / 255
    assert float(-10 * torch.log10(((res.rgb - target) ** 2).mean())) > 22.0


def test_corrupt_or_foreign_checkpoints_give_one_line_errors(fitted, tmp_path):
    out, _ = fitted
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((out / "config.json").read_text())
    (bad / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[:100])
    with pytest.raises(InputError, match="refit"):
        DpDyMethod().load(bad, "cpu")
    (bad / "config.json").write_text('{"method": "dpdy", "version": 1}')
    with pytest.raises(InputError, match="format 1"):
        DpDyMethod().load(bad, "cpu")
