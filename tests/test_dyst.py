"""DyST: shapes, the latent control swap on the 5x5 grid, checkpoints, determinism, training lowers the loss,
contrastiveness against an analytic case, the renderer's latent controls, option errors, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from models.cameras import Cameras, intrinsics_from_fov, look_at
from models.dyst.config import DySTConfig
from models.dyst.data import (
    TrainingSet,
    grid_of,
    input_frames,
    nearest_cameras,
    sample_swap,
    squash,
    synth_batch,
    train_frames,
    wrap_degrees,
)
from models.dyst.evaluate import (
    contrastiveness,
    decoder_contrastiveness,
    decoder_gram,
    evaluate_real,
    evaluate_synth,
)
from models.dyst.geometry import relative_move
from models.dyst.model import pixel_queries
from models.dyst.options import DySTRenderOptions, set_scene_loader
from models.dyst.train import DySTTask, TrainConfig, batch_loss, build_model, save_checkpoint
from models.errors import InputError
from models.scene import Scene

TINY = DySTConfig(width=16, height=12, channels=(8,), dim=16, heads=2, mlp=32, encoder_layers=1,
                  estimator_layers=1, decoder_layers=1, latent=4, octaves=3, head_hidden=16)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def toy_set(scenes: int = 3, seed: int = 0, clips: int = 1) -> TrainingSet:
    """Smooth random 5x5 grids: a colour per camera plus a moving blob per pose (learnable, cheap)."""
    rng = np.random.default_rng(seed)
    h, w = TINY.height, TINY.width
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    rgb = np.zeros((scenes, 5, 5, h, w, 3), np.float32)
    for s in range(scenes):
        base = rng.uniform(0.2, 0.8, 3)
        for p in range(5):
            cx, cy = rng.uniform(0.2, 0.8, 2)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.02)[..., None]
            for c in range(5):
                tint = 0.15 * np.array([math.cos(c), math.sin(c), math.cos(2 * c)])
                rgb[s, p, c] = np.clip(base + tint + 0.5 * blob * (1 - base), 0, 1)
    real = [np.ascontiguousarray((rgb[0, :, 0].repeat(3, 0) * 255).astype(np.uint8)) for _ in range(clips)]
    az = rng.uniform(0, 360, (scenes, 5)).astype(np.float32)
    el = rng.uniform(10, 40, (scenes, 5)).astype(np.float32)
    return TrainingSet(w, h, (rgb * 255).astype(np.uint8), az, el, real, [f"clip{i}" for i in range(clips)])


def tiny_scene(frames: int = 6) -> Scene:
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 255, size=(frames, 24, 32, 3), dtype=np.uint8)
    t = torch.linspace(-0.3, 0.3, frames)
    eyes = torch.stack([4 * torch.cos(t), 4 * torch.sin(t), torch.full_like(t, 1.0)], -1)
    w2c = look_at(eyes, torch.zeros(frames, 3))
    cams = Cameras(intrinsics_from_fov(32, 24, 50.0).expand(frames, 3, 3).clone(), w2c, 32, 24)
    return Scene(frames=imgs, timestamps=np.arange(frames) / 10.0, cameras=cams)


# ---- model -------------------------------------------------------------------------------------------------

def test_shapes_and_orbit_identity():
    torch.manual_seed(0)
    model = build_model(TINY, 0)
    B = 2
    views = torch.rand(B, 3, 12, 16, 3)
    z = model.encode(views)
    assert z.shape == (B, 3 * 3 * 4, 16)  # 3 views x (12/4 x 16/4) tokens
    cam, dyn = model.estimate(z, torch.rand(B, 12, 16, 3))
    assert cam.shape == dyn.shape == (B, 4)
    rgb = model.decode(z, torch.rand(B, 7, 2) * 2 - 1, cam, dyn)
    assert rgb.shape == (B, 7, 3) and bool(((rgb >= 0) & (rgb <= 1)).all())
    assert model.render_image(z, cam, dyn, 5, 9, max_queries=8).shape == (B, 5, 9, 3)
    assert torch.equal(model.orbit(cam, torch.zeros(B), torch.zeros(B)), cam)
    assert not torch.allclose(model.orbit(cam, torch.full((B,), 40.0), torch.zeros(B)), cam)
    q = pixel_queries(2, 4)
    assert q.shape == (8, 2) and float(q.abs().max()) < 1


def test_config_errors():
    with pytest.raises(InputError, match="multiple of the CNN stride"):
        DySTConfig(width=30, height=24).validate()
    with pytest.raises(InputError, match="divisible"):
        DySTConfig(dim=30, heads=4).validate()
    with pytest.raises(InputError, match="unknown sizes"):
        DySTConfig.from_json({"width": 32, "depth": 3})


# ---- the swap ----------------------------------------------------------------------------------------------

def test_swap_pairing_on_5x5_grid():
    rng = np.random.default_rng(0)
    assert grid_of(7) == (1, 2)  # DySO: camera = i mod 5, pose = i div 5
    for _ in range(300):
        s = sample_swap(rng)
        assert len(set(s.inputs)) == 3 and s.target not in s.inputs
        (p, c), (pc, cc), (pd, cd), (pr, cr) = (grid_of(i) for i in (s.target, s.camera_source, s.dynamics_source,
                                                                     s.reference))
        assert cc == c and pc != p  # camera latent: same camera, other dynamics
        assert pd == p and cd != c  # dynamics latent: same dynamics, other camera
        assert (pr, cr) == (pd, cd)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(50):  # without the swap: the same draws, both latents from the target itself
        a, b = sample_swap(rng_a), sample_swap(rng_b, swap=False)
        assert b.camera_source == b.dynamics_source == b.target == a.target and b.reference == a.reference
    near = nearest_cameras(np.array([0.0, 10.0, 180.0, 200.0, 90.0]), np.zeros(5))
    assert near.tolist() == [1, 0, 3, 2, 1]
    assert nearest_cameras(np.array([0.0, 0.0, 45.0]), np.array([0.0, 60.0, 0.0])).tolist() == [2, 0, 0]
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(50):  # the closest camera as dynamics source: same pose, otherwise the same draws
        a, b = sample_swap(rng_a), sample_swap(rng_b, nearest=near)
        p, c = grid_of(b.target)
        assert b.dynamics_source == b.reference == p * 5 + near[c]
        assert (a.inputs, a.target, a.camera_source) == (b.inputs, b.target, b.camera_source)
    with pytest.raises(InputError):
        sample_swap(rng, 1, 5)


def test_synth_batch_pairs_and_moves():
    ts = toy_set()
    b = synth_batch(np.random.default_rng(0), ts, 4, 10, swap=True)
    assert b.inputs.shape == (4, 3, 12, 16, 3) and b.xy.shape == (4, 10, 2) and b.rgb.shape == (4, 10, 3)
    assert torch.equal(b.reference, b.dynamics_source) and not b.same_sources
    assert bool((b.d_azimuth.abs() <= 180).all())
    assert wrap_degrees(350.0) == -10.0 and wrap_degrees(-190.0) == 170.0


def test_dynamic_rays_fall_on_changed_pixels():
    ts = toy_set()
    rng = np.random.default_rng(0)
    b = synth_batch(rng, ts, 4, 40, swap=True, dynamic_fraction=0.5)
    # the camera source is the same camera at another pose: the first half of the rays differ there
    h, w = ts.height, ts.width
    cols = ((b.xy[..., 0] + 1) / 2 * w - 0.5).round().long()
    rows = ((b.xy[..., 1] + 1) / 2 * h - 0.5).round().long()
    other = b.camera_source[torch.arange(4)[:, None], rows, cols]
    changed = (b.rgb - other).abs().amax(-1) > 0.08
    assert bool(changed[:, :20].all()) and float(changed[:, 20:].float().mean()) < 1.0
    with pytest.raises(InputError, match="dynamic-fraction"):
        TrainConfig(dynamic_fraction=1.5).validate()


def test_real_frames_split():
    tr = train_frames(12)
    assert list(np.setdiff1d(np.arange(12), tr)) == [2, 6, 10]
    assert list(input_frames(np.arange(9))) == [0, 4, 8]


# ---- contrastiveness ---------------------------------------------------------------------------------------

def test_contrastiveness_analytic():
    """Latents a * onehot(camera) + b * onehot(pose) in separate dimensions: same camera, other pose is b*sqrt2
    apart; of the 20 views with another camera, 4 share the pose (a*sqrt2) and 16 do not (sqrt2*sqrt(a^2+b^2))."""
    a, b = 1.0, 0.25
    cam = torch.arange(25) % 5
    pose = torch.arange(25) // 5
    lat = torch.cat([a * torch.nn.functional.one_hot(cam, 5), b * torch.nn.functional.one_hot(pose, 5)], 1).float()
    expect = b * math.sqrt(2) / ((4 * a * math.sqrt(2) + 16 * math.sqrt(2) * math.hypot(a, b)) / 20)
    assert contrastiveness(lat, cam) == pytest.approx(expect, rel=1e-6)
    assert contrastiveness(a * torch.nn.functional.one_hot(cam, 5).float(), cam) == 0.0
    with pytest.raises(ValueError):
        contrastiveness(lat[:1], cam[:1])


# ---- checkpoints, determinism, training ----------------------------------------------------------------------

def test_save_load_round_trip_and_version(tmp_path):
    from models.dyst.method import load_model

    model = build_model(TINY, 3)
    save_checkpoint(tmp_path / "m", model, {"step": 5})
    loaded, meta = load_model(tmp_path / "m")
    assert meta["step"] == 5 and meta["config"]["dim"] == 16
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["version"] = 0
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="retrain with"):
        load_model(tmp_path / "m")
    with pytest.raises(InputError, match="not a dyst checkpoint"):
        load_model(tmp_path / "nothing")


def _task(seed: int, ts: TrainingSet, **kw) -> DySTTask:
    return DySTTask(ts, TINY, TrainConfig(seed=seed, batch=4, rays=32, warmup=5, real_every=3, **kw))


def test_same_seed_same_weights():
    ts = toy_set()
    runs = []
    for seed in (0, 0, 1):
        task = _task(seed, ts)
        for step in range(4):  # includes a real batch (step 2)
            task.train_step(step, step / 4)
        runs.append(task.model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_training_lowers_the_loss():
    ts = toy_set(scenes=2)
    task = _task(0, ts, lr=3e-3)
    fixed = synth_batch(np.random.default_rng(99), ts, 8, 64, swap=True)
    task.model.eval()
    with torch.no_grad():
        before = batch_loss(task.model, fixed, 0.0)[1]["mse"]
    for step in range(80):
        task.train_step(step, step / 80)
    task.model.eval()
    with torch.no_grad():
        after = batch_loss(task.model, fixed, 0.0)[1]["mse"]
    assert after < 0.6 * before
    rep = evaluate_synth(task.model, ts, max_scenes=1)
    assert 0 < rep.r_cam and 0 < rep.r_dyn and rep.psnr_self > 5
    assert len(evaluate_real(task.model, ts.real)) == 1


def test_resume_matches_uninterrupted_run(tmp_path):
    from models.fitting import Budget, run_fit

    ts = toy_set()
    a = run_fit(_task(0, ts), tmp_path / "a", Budget(6), lambda *a, **k: None)
    task = _task(0, ts)
    with pytest.raises(KeyboardInterrupt):
        def stop(step, *args, **kw):
            if step == 4:
                raise KeyboardInterrupt
        run_fit(task, tmp_path / "b", Budget(6), stop, checkpoint_every=2, log_every=2)
    b = run_fit(_task(0, ts), tmp_path / "b", Budget(6), lambda *a, **k: None, resume=True)
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ---- geometry, renderer, options -----------------------------------------------------------------------------

def test_relative_move():
    up, centre = torch.tensor([0.0, 0.0, 1.0]), torch.zeros(3)
    ref = torch.tensor([[4.0, 0.0, 0.0]])
    tgt = torch.tensor([[4 * math.cos(math.radians(30)), 4 * math.sin(math.radians(30)), 4 * math.tan(math.radians(10))]])
    daz, delv = relative_move(tgt, ref, centre, up)
    assert float(daz) == pytest.approx(30.0, abs=1e-4) and float(delv) == pytest.approx(10.0 / 1.0, abs=0.2)
    daz, _ = relative_move(torch.tensor([[0.0, -4.0, 0.0]]), torch.tensor([[-4.0, 0.1, 0.0]]), centre, up)
    assert float(daz) == pytest.approx(90.0 + math.degrees(math.atan2(0.1, 4)), abs=1e-3)  # wraps across 180


def test_renderer_controls(tmp_path):
    from models.dyst.method import DySTMethod

    save_checkpoint(tmp_path / "m", build_model(TINY, 0))
    scene = tiny_scene()
    method = DySTMethod()
    assert method.Config is None
    r = method.load(tmp_path / "m", scene, DySTRenderOptions(dyst_decode_scale=1.0), "cpu")
    out = r.render(scene.cameras[:3], scene.times[:3])
    assert out.rgb.shape == (3, 24, 32, 3) and out.depth.shape == (3, 24, 32) and bool((out.alpha == 1).all())
    cam, dyn = r.latents(scene.cameras, scene.times)  # replay: the frames' own latents, no head
    assert torch.allclose(cam, r.clip.camera, atol=1e-6) and torch.allclose(dyn, r.clip.dynamics, atol=1e-6)
    moved = Cameras(scene.cameras.K, look_at(scene.cameras.centers[:, [1, 0, 2]] * torch.tensor([1.0, -1, 1]),
                                                 torch.zeros(len(scene.cameras), 3)), 32, 24)
    cam_o, _ = r.latents(moved, scene.times)
    assert not torch.allclose(cam_o, cam)

    frozen = method.load(tmp_path / "m", scene, DySTRenderOptions(freeze_camera=2, freeze_dynamics=4), "cpu")
    cam_f, dyn_f = frozen.latents(scene.cameras, scene.times)
    assert torch.allclose(cam_f, r.clip.camera[2].expand_as(cam_f)) and torch.allclose(dyn_f, r.clip.dynamics[4].expand_as(dyn_f))

    other = tiny_scene(frames=4)
    other.frames = np.ascontiguousarray(other.frames[:, ::-1])
    set_scene_loader(lambda path: other)
    (tmp_path / "other.monodyn").mkdir()
    transfer = method.load(tmp_path / "m", scene, DySTRenderOptions(camera_from=f"{tmp_path / 'other.monodyn'}:1"),
                           "cpu")
    cam_t, dyn_t = transfer.latents(scene.cameras, scene.times)
    assert torch.allclose(cam_t, transfer.camera_seq[0].expand_as(cam_t)) and torch.allclose(dyn_t, dyn, atol=1e-6)
    with pytest.raises(InputError, match="outside the clip"):
        method.load(tmp_path / "m", scene, DySTRenderOptions(freeze_camera=99), "cpu")


@pytest.mark.parametrize("kw, match", [
    ({"freeze_camera": -1}, ">= 0"),
    ({"camera_from": "/nonexistent/x.monodyn"}, "no such workspace"),
    ({"camera_from": "/", "freeze_camera": 1}, "choose one"),
    ({"dynamics_from": "/:2", "freeze_dynamics": 0}, "choose one"),
    ({"dyst_decode_scale": 0.0}, "decode-scale"),
    ({"dyst_checkpoint": "/nonexistent"}, "no such folder"),
])
def test_bad_options(kw, match):
    with pytest.raises(InputError, match=match):
        DySTRenderOptions(**kw).validate()


def test_squash_shapes():
    x = squash(np.full((3, 30, 50, 3), 255, np.uint8), 12, 16)
    assert x.shape == (3, 12, 16, 3) and torch.allclose(x, torch.ones_like(x))


def test_pca_and_sweep():
    from models.dyst.analysis import pca, sweep

    t = torch.linspace(-1, 1, 20)
    lat = torch.stack([3 * t, 0.1 * torch.sin(9 * t), torch.zeros(20), torch.zeros(20)], 1)
    p = pca(lat, 2)
    assert p.explained[0] > 0.99 and torch.allclose(p.components[0].abs(), torch.tensor([1.0, 0, 0, 0]), atol=0.02)
    model = build_model(TINY, 0)
    z = model.encode(torch.rand(1, 3, 12, 16, 3))
    imgs = sweep(model, z, torch.zeros(4), torch.zeros(4), "camera", p, 0, 5, 6, 8)
    assert imgs.shape == (5, 6, 8, 3)


# ---- CLI -----------------------------------------------------------------------------------------------------

def test_cli_train_and_eval(tmp_path):
    from typer.testing import CliRunner

    from monodyn_cli.app import app

    runner = CliRunner()
    args = ["train", "dyst", "--out", str(tmp_path / "m"), "--data-dir", str(tmp_path / "data"), "--scenes", "2",
            "--steps", "3", "--width", "16", "--height", "8", "--dim", "16", "--batch", "2", "--rays", "8",
            "--no-real", "--quiet"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["step"] == 3 and meta["train"]["swap"] is True
    assert len(list((tmp_path / "data").glob("train-*/manifest.json"))) == 1
    res = runner.invoke(app, ["dyst", "eval", "--dyst-checkpoint", str(tmp_path / "m"), "--scenes", "1", "--no-real",
                              "--data-dir", str(tmp_path / "data"), "--quiet", "-o", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert "R_cam" in res.output and json.loads((tmp_path / "e.json").read_text())[0]["scenes"] == 1
    res = runner.invoke(app, ["train", "dyst", "--out", str(tmp_path / "x"), "--batch", "0", "--no-real"])
    assert res.exit_code == 1 and "--batch" in res.output


def test_decoder_contrastiveness_ignores_unused_directions():
    # 4 poses x 3 cameras; latent dims 0-1 carry the pose, dims 2-3 (large) the camera
    pose = torch.arange(4).repeat_interleave(3)
    cam = torch.arange(3).repeat(4)
    lat = torch.stack([pose.float(), pose.float() ** 2 / 3, 10 * cam.float(), -7 * cam.float()], 1)
    reads_pose = lambda d: torch.stack([2 * d[:, 0], d[:, 1] - d[:, 0]], 1)  # noqa: E731 (linear: J exact)
    G = decoder_gram(reads_pose, lat)
    assert torch.allclose(G, torch.tensor([[5.0, -1, 0, 0], [-1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
                                          dtype=torch.float64), atol=1e-6)
    assert contrastiveness(lat, pose) > 0.5  # raw distances are dominated by the camera dims
    assert decoder_contrastiveness(reads_pose, lat, pose) == pytest.approx(0.0, abs=1e-6)
    reads_all = lambda d: 3 * d  # noqa: E731 (an isotropic decoder changes nothing)
    assert decoder_contrastiveness(reads_all, lat, pose) == pytest.approx(contrastiveness(lat, pose), rel=1e-5)
