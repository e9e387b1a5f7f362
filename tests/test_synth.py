"""Synthetic scene generator: determinism, exact flow / visibility / instances against the geometry, camera
rigs, scale variants, the on-disk layout, the CLI, and mp4 writing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from models.cameras import pixel_grid, project, unproject
from models.errors import InputError
from monodyn_cli.synth import SynthConfig, build_scene, generate_scene, load_gt, synthesize, write_scene
from monodyn_cli.synth.scene import signed_distance

SMALL = dict(frames=8, width=64, height=48)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scene():
    """Room scene with 3 objects, a held-out camera at azimuth 0 (must equal the input) and a scale
    variant equal to the base scene (must be valid and identical)."""
    return generate_scene(SynthConfig(seed=3, objects=3, heldout_azimuths=(0.0, 90.0), fixed_cameras=1,
                                      scale_variants=((1.0, 1.0, 1.0), (0.8, 0.8, 0.8)), **SMALL))


@pytest.fixture(scope="module")
def sky_scene():
    return generate_scene(SynthConfig(seed=1, objects=2, room=False, heldout_azimuths=(180.0,), fixed_cameras=0,
                                      **SMALL))


def _moved_points(view, poses, src, dst):
    """Unproject frame src's depth and move each point with its object's pose from src to dst."""
    H, W = view.depth.shape[1:]
    xy = pixel_grid(W, H)
    depth = torch.tensor(np.asarray(view.depth[src]))
    finite = torch.isfinite(depth)
    X = unproject(xy, torch.where(finite, depth, 1.0), view.cameras.K[src], view.cameras.w2c[src])
    inst = torch.tensor(np.asarray(view.instances[src])).long()
    Xh = torch.cat([X, torch.ones_like(X[..., :1])], -1).double()
    M = torch.tensor(poses).double()
    for k in range(M.shape[0]):
        m = inst == k + 1
        Xh[m] = Xh[m] @ (M[k, dst] @ torch.linalg.inv(M[k, src])).T
    return xy, Xh[..., :3].float(), finite, inst


def _depth_range(depth: np.ndarray, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of the depth map over the 2x2 pixel centres around positions xy (N,2)."""
    d = torch.tensor(np.asarray(depth))
    H, W = d.shape
    j = (xy[:, 0] - 0.5).floor().long().clamp(0, W - 2)
    i = (xy[:, 1] - 0.5).floor().long().clamp(0, H - 2)
    quad = torch.stack([d[i, j], d[i, j + 1], d[i + 1, j], d[i + 1, j + 1]], -1)
    return quad.amin(-1), quad.amax(-1)


@pytest.mark.parametrize("which", ["scene", "sky_scene"])
def test_flow_is_depth_moved_by_object_motion_and_reprojected(which, request):
    s = request.getfixturevalue(which)
    poses = s.object_poses()
    for camera in s.camera_names:
        view = s.view(camera)
        T = view.depth.shape[0]
        n_valid = n_total = 0
        for i in range(T - 1):
            for src, dst, flow, valid in ((i, i + 1, view.flow_fw[i], view.valid_fw[i]),
                                          (i + 1, i, view.flow_bw[i], view.valid_bw[i])):
                xy, X, finite, _ = _moved_points(view, poses, src, dst)
                xy2, z = project(X, view.cameras.K[dst], view.cameras.w2c[dst])
                ok = torch.tensor(valid) & finite
                err = (xy2 - xy - torch.tensor(flow))[ok].abs().max().item()
                assert err < 1e-3, f"{camera} frame {src}->{dst}: flow off by {err} px"
                # visible points lie on the other frame's depth map: within the depths of the 4 pixels
                # around where they land
                lo, hi = _depth_range(view.depth[dst], xy2[ok])
                agree = ((z[ok] >= 0.99 * lo) & (z[ok] <= 1.01 * hi)).float().mean().item()
                assert agree > 0.995, f"{camera} {src}->{dst}: only {agree:.3f} of visible points match depth"
                n_valid += int(ok.sum())
                n_total += ok.numel()
        assert 0.5 < n_valid / n_total < 1.0  # mostly visible, some occlusion / out of view


def test_invisible_points_are_occluded_or_out_of_view(scene):
    view, poses = scene.view("input"), scene.object_poses()
    H, W = view.depth.shape[1:]
    occluded = 0
    for i in range(view.depth.shape[0] - 1):
        xy, X, _, _ = _moved_points(view, poses, i, i + 1)
        xy2, z = project(X, view.cameras.K[i + 1], view.cameras.w2c[i + 1])
        inside = (xy2[..., 0] >= 1) & (xy2[..., 0] < W - 1) & (xy2[..., 1] >= 1) & (xy2[..., 1] < H - 1)
        hidden = inside & ~torch.tensor(view.valid_fw[i])
        lo, _ = _depth_range(view.depth[i + 1], xy2[hidden])
        # something nearer covers the point (or it is on the far side of its own object)
        if hidden.any():
            assert (lo < z[hidden] * (1 - 1e-3)).float().mean() > 0.95
        occluded += int(hidden.sum())
    assert occluded > 0  # the scene does contain occlusions (the test above is not vacuous)


def test_instances_and_depth_describe_the_same_surfaces(scene):
    meta = scene.meta
    poses = scene.object_poses()  # (K,T,4,4)
    objects = meta["objects"]
    W_room, H_room = meta["room"]["half_size"], meta["room"]["height"]
    jumps = 0
    for camera in scene.camera_names:
        view = scene.view(camera)
        H, W = view.depth.shape[1:]
        for t in range(view.depth.shape[0]):
            depth = torch.tensor(view.depth[t])
            X = unproject(pixel_grid(W, H), depth, view.cameras.K[t], view.cameras.w2c[t]).double().numpy()
            inst = view.instances[t]
            tol = 1e-4 * view.depth[t] + 1e-5
            on_room = np.minimum.reduce([np.abs(X[..., 2]), np.abs(X[..., 2] - H_room),
                                         np.abs(np.abs(X[..., 0]) - W_room), np.abs(np.abs(X[..., 1]) - W_room)])
            assert (on_room[inst == 0] < tol[inst == 0]).all(), camera
            for k, o in enumerate(objects):
                M = poses[k, t].astype(np.float64)
                local = (X - M[:3, 3]) @ np.linalg.inv(M[:3, :3]).T
                s = np.cbrt(np.linalg.det(M[:3, :3]))
                sd = signed_distance(o["shape"], tuple(o["size"]), local) * s
                assert (np.abs(sd[inst == k + 1]) < tol[inst == k + 1]).all(), (camera, k)
                assert (sd[inst != k + 1] > -tol[inst != k + 1]).all()  # nothing seen inside an object
            # depth jumps between neighbours happen only across instance boundaries
            for a, b in ((np.s_[:, 1:], np.s_[:, :-1]), (np.s_[1:, :], np.s_[:-1, :])):
                jump = np.abs(view.depth[t][a] - view.depth[t][b]) > 0.3 * np.minimum(view.depth[t][a], view.depth[t][b])
                assert (inst[a][jump] != inst[b][jump]).all()
                jumps += int(jump.sum())
    assert jumps > 100  # silhouettes exist (the check above is not vacuous)


def test_same_seed_same_scene_other_seed_other_scene():
    cfg = SynthConfig(seed=5, heldout_azimuths=(90.0,), fixed_cameras=0, **SMALL)
    a, b = generate_scene(cfg), generate_scene(cfg)
    for camera in a.camera_names:
        for name in ("rgb", "depth", "instances", "flow_fw", "valid_bw"):
            np.testing.assert_array_equal(getattr(a.view(camera), name), getattr(b.view(camera), name))
    np.testing.assert_array_equal(a.object_poses(), b.object_poses())
    c = generate_scene(SynthConfig(seed=6, heldout_azimuths=(90.0,), fixed_cameras=0, **SMALL))
    assert np.abs(a.view("input").rgb.astype(int) - c.view("input").rgb).mean() > 10


def test_camera_rigs(scene):
    inp, az0, az90 = scene.view("input"), scene.view("heldout_az0"), scene.view("heldout_az90")
    torch.testing.assert_close(az0.cameras.w2c, inp.cameras.w2c)
    np.testing.assert_array_equal(az0.rgb, inp.rgb)
    centre = torch.tensor(scene.meta["scene_centre"], dtype=torch.float32)
    rz = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # +90 degrees about z
    torch.testing.assert_close(az90.cameras.centers, (inp.cameras.centers - centre) @ rz.T + centre, atol=1e-5, rtol=0)
    # every camera looks at the scene centre: it projects to the principal point
    for camera in scene.camera_names:
        cams = scene.view(camera).cameras
        xy, z = project(centre.expand(len(cams), 3), cams.K, cams.w2c)
        torch.testing.assert_close(xy, cams.K[:, :2, 2], atol=1e-3, rtol=0)
        assert (z > 0).all()
    # the moving input camera sweeps 30-40 degrees of azimuth; the fixed camera does not move
    C = inp.cameras.centers - centre
    sweep = math.degrees(abs(math.atan2(C[-1, 1], C[-1, 0]) - math.atan2(C[0, 1], C[0, 0])))
    assert 30 <= min(sweep, 360 - sweep) <= 40
    assert (scene.view("fixed0").cameras.w2c == scene.view("fixed0").cameras.w2c[0]).all()
    # fov 55 degrees horizontally
    K = inp.cameras.K[0]
    assert math.degrees(2 * math.atan(32 / K[0, 0])) == pytest.approx(55, abs=1e-3)


def test_static_camera_sees_a_still_background():
    s = generate_scene(SynthConfig(seed=2, camera="static", heldout_azimuths=(), fixed_cameras=0, **SMALL))
    v = s.view("input")
    assert (v.cameras.w2c == v.cameras.w2c[0]).all()
    bg = (v.instances[:-1] == 0) & v.valid_fw
    assert bg.mean() > 0.5 and np.abs(v.flow_fw[bg]).max() < 1e-3
    assert np.abs(v.flow_fw[v.instances[:-1] > 0]).max() > 0.5  # the objects do move


def test_scale_variant_keeps_the_input_view_and_changes_the_others(scene):
    same, smaller = scene.meta["variants"]
    assert same["valid"] and same["input_changed_fraction"] == 0
    for camera in scene.camera_names:  # scales of 1: the variant is the base scene
        np.testing.assert_array_equal(scene.view(camera, "v0").rgb, scene.view(camera).rgb)
    base, var = scene.view("input"), scene.view("input", "v1")
    objects = base.instances > 0
    assert (var.instances == base.instances).mean() > 0.999
    assert np.abs(base.rgb.astype(int) - var.rgb).max(-1).__gt__(8).mean() <= 1e-3
    assert smaller["input_changed_fraction"] <= 1e-3
    both = objects & (var.instances == base.instances)
    np.testing.assert_allclose(var.depth[both], 0.8 * base.depth[both], rtol=1e-5)  # nearer by the scale
    np.testing.assert_allclose(var.flow_fw[var.valid_fw & base.valid_fw], base.flow_fw[var.valid_fw & base.valid_fw],
                               atol=1e-3)
    held_b, held_v = scene.view("heldout_az90"), scene.view("heldout_az90", "v1")
    assert (held_b.instances != held_v.instances).mean() > 0.005
    # the variant's poses: the same rotation, scale 0.8, translation scaled about the input camera centre
    P0, P1 = scene.object_poses(), scene.object_poses("v1")
    C = base.cameras.centers.numpy()
    np.testing.assert_allclose(P1[:, :, :3, :3], 0.8 * P0[:, :, :3, :3], atol=1e-6)
    np.testing.assert_allclose(P1[:, :, :3, 3], C + 0.8 * (P0[:, :, :3, 3] - C), atol=1e-5)


def test_invalid_variants_are_flagged():
    spec = build_scene(SynthConfig(seed=0, objects=2, scale_variants=((3.0, 3.0), (1.0, 1.0)), **SMALL))
    big, same = (v.checks for v in spec.variants)
    assert big["penetration_background"] > 0.1 or big["penetration_objects"] > 0.1
    assert same["penetration_background"] == 0 and same["penetration_objects"] == 0


def test_objects_never_touch_in_the_base_scene():
    for seed in range(4):
        spec = build_scene(SynthConfig(seed=seed, objects=4, frames=24, width=32, height=24))
        from monodyn_cli.synth.scene import geometry_checks

        c = geometry_checks(spec, spec.poses)
        assert c["penetration_objects"] == 0 and c["penetration_background"] == 0 and not c["camera_inside_object"]


def test_bad_configs_raise_input_errors():
    for bad in (dict(frames=1), dict(camera="orbit"), dict(objects=9), dict(width=4), dict(fps=0),
                dict(scale_variants=((1.0,),)), dict(heldout_azimuths=(30.0, 30.0))):
        with pytest.raises(InputError):
            build_scene(SynthConfig(**{**SMALL, **bad}))


def test_write_and_load_round_trip(tmp_path, scene):
    out = write_scene(scene, tmp_path / "s")
    gt = load_gt(out)
    assert gt.camera_names == scene.camera_names and gt.variant_names == ["v0", "v1"]
    for camera in ("input", "heldout_az90"):
        a, b = scene.view(camera, "v1"), gt.view(camera, "v1")
        for name in ("rgb", "depth", "instances", "flow_fw", "flow_bw", "valid_fw", "valid_bw"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        torch.testing.assert_close(b.cameras.w2c, a.cameras.w2c)
    assert isinstance(gt.view("input").depth, np.memmap)
    np.testing.assert_array_equal(gt.object_poses("v1"), scene.object_poses("v1"))
    with pytest.raises(InputError):
        gt.view("nope")
    with pytest.raises(InputError):
        load_gt(tmp_path)


def _cli():
    from monodyn_cli.commands import synth

    app = typer.Typer()
    synth.register(app)
    app.command("noop", hidden=True)(lambda: None)  # two commands: Typer keeps `synth` as a subcommand
    return app


def test_cli_writes_the_documented_files(tmp_path):
    out = tmp_path / "scene"
    res = CliRunner().invoke(_cli(), ["synth", str(out), "--frames", "6", "--width", "40", "--height", "30",
                                      "--heldout-azimuths", "90", "--fixed-cameras", "1", "--scale-variants", "0.9",
                                      "--quiet"])
    assert res.exit_code == 0, res.output
    assert (out / "input.mp4").stat().st_size > 0
    meta = json.loads((out / "gt" / "scene.json").read_text())
    assert [c["name"] for c in meta["cameras"]] == ["input", "heldout_az90", "fixed0"]
    assert [c["role"] for c in meta["cameras"]] == ["input", "heldout", "fixed"]
    assert meta["frames"] == 6 and meta["variants"][0]["scales"] == [0.9, 0.9]
    for folder in (out / "gt" / "input", out / "gt" / "variants" / "v0" / "fixed0"):
        shapes = {p.stem: np.load(p, mmap_mode="r").shape for p in folder.glob("*.npy")}
        assert shapes == {"rgb": (6, 30, 40, 3), "depth": (6, 30, 40), "instances": (6, 30, 40),
                          "flow_fw": (5, 30, 40, 2), "flow_bw": (5, 30, 40, 2), "valid_fw": (5, 30, 40),
                          "valid_bw": (5, 30, 40)}
        cams = json.loads((folder / "cameras.json").read_text())
        assert np.array(cams["K"]).shape == (6, 3, 3) and np.array(cams["w2c"]).shape == (6, 4, 4)
    assert np.load(out / "gt" / "objects.npy").shape == (2, 6, 4, 4)
    assert not list(tmp_path.glob(".scene*"))  # no temporary folders left behind

    import av

    with av.open(str(out / "input.mp4")) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    rgb = np.load(out / "gt" / "input" / "rgb.npy")
    assert frames.shape == rgb.shape
    assert np.abs(frames.astype(int) - rgb).mean() < 6  # crf 12 + 4:2:0 chroma on a tiny image: close to the ground truth


def test_cli_errors_are_one_line_and_exit_1(tmp_path):
    out = tmp_path / "scene"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    runner = CliRunner()
    for args in ([str(out)], [str(tmp_path / "b"), "--camera", "orbit"], [str(tmp_path / "c"), "--frames", "1"],
                 [str(tmp_path / "d"), "--scale-variants", "1,2,3"], [str(tmp_path / "e"), "--heldout-azimuths", "x"]):
        res = runner.invoke(_cli(), ["synth", *args, "--quiet"])
        assert res.exit_code == 1, (args, res.output)
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert (out / "keep.txt").read_text() == "mine"  # refused, untouched
    tiny = ["--force", "--quiet", "--frames", "3", "--width", "16", "--height", "12", "--heldout-azimuths", "",
            "--fixed-cameras", "0"]
    res = runner.invoke(_cli(), ["synth", str(out), *tiny])  # --force replaces an earlier scene, never other files
    assert res.exit_code == 1 and "did not write" in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"] and (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    for _ in range(2):  # into the empty folder, then over that scene
        res = runner.invoke(_cli(), ["synth", str(out), *tiny])
        assert res.exit_code == 0, res.output
    assert (out / "gt" / "scene.json").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["scene"]


def test_cli_as_a_subprocess(tmp_path):
    res = subprocess.run([sys.executable, "-m", "monodyn_cli", "synth", str(tmp_path / "x"), "--objects", "12"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 1 and "--objects" in res.stderr and "Traceback" not in res.stderr


def test_synthesize_streams_the_same_arrays_as_generate(tmp_path):
    cfg = SynthConfig(seed=4, heldout_azimuths=(45.0,), fixed_cameras=0, scale_variants=((0.9, 1.1),), **SMALL)
    gt = load_gt(synthesize(cfg, tmp_path / "s"))
    mem = generate_scene(cfg)
    for variant in (None, "v0"):
        for camera in mem.camera_names:
            np.testing.assert_array_equal(gt.view(camera, variant).rgb, mem.view(camera, variant).rgb)
            np.testing.assert_array_equal(gt.view(camera, variant).flow_bw, mem.view(camera, variant).flow_bw)
    assert gt.meta["variants"][0]["valid"] == mem.meta["variants"][0]["valid"]


def test_write_mp4_pads_odd_sizes_and_replaces_atomically(tmp_path):
    import av

    from monodyn_cli.video_io import write_mp4

    rng = np.random.default_rng(0)
    frames = np.kron(rng.integers(0, 255, (5, 4, 6, 3)), np.ones((1, 8, 8, 1))).astype(np.uint8)[:, :31, :45]
    path = tmp_path / "v.mp4"
    path.write_bytes(b"old")
    write_mp4(path, frames, fps=10, crf=0)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert float(stream.average_rate) == pytest.approx(10)
        out = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert out.shape == (5, 32, 46, 3)
    assert np.abs(out[:, :31, :45].astype(int) - frames).mean() < 6
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
    with pytest.raises(ValueError):
        write_mp4(path, frames.astype(np.float32), fps=10)


# ---- the NVIDIA rig protocol and articulated figures ---------------------------------------------------------

@pytest.fixture(scope="module")
def figure_scene():
    """A rigid object and an articulated figure (mixed movers), seen by a 4-camera rig."""
    return generate_scene(SynthConfig(seed=1, objects=2, movers="mixed", camera="rig", rig_cameras=4,
                                      heldout_azimuths=(30.0,), fixed_cameras=0, frames=8, width=96, height=72))


def test_rig_frame_t_is_taken_by_rig_camera_t_mod_r(figure_scene):
    inp, rig0 = figure_scene.view("input"), figure_scene.view("rig0")
    w2c = inp.cameras.w2c
    for t in range(len(w2c)):
        torch.testing.assert_close(w2c[t], w2c[t % 4], atol=0, rtol=0)
        torch.testing.assert_close(rig0.cameras.w2c[t], w2c[0], atol=0, rtol=0)
    # the same camera at the same time: the same picture (rig camera 0 at t = 0 and 4 is an input frame)
    np.testing.assert_array_equal(rig0.rgb[[0, 4]], inp.rgb[[0, 4]])
    assert np.abs(rig0.rgb[1].astype(int) - inp.rgb[1]).mean() > 1  # other rig cameras see it from elsewhere
    # a short horizontal arc facing the scene: one height, baseline a modest fraction of the distance
    C = inp.cameras.centers[:4]
    centre = torch.tensor(figure_scene.meta["scene_centre"], dtype=torch.float32)
    assert float((C[:, 2] - C[0, 2]).abs().max()) < 1e-5
    baseline = float((C[3] - C[0]).norm()) / float((C[0] - centre).norm())
    assert 0.1 < baseline < 0.35
    steps = (C[1:] - C[:-1]).norm(dim=-1)
    torch.testing.assert_close(steps, steps.mean().expand(3), atol=1e-4, rtol=0)  # evenly spread
    assert figure_scene.meta["camera_motion"] == "rig" and figure_scene.meta["rig_cameras"] == 4
    roles = {c["name"]: c["role"] for c in figure_scene.meta["cameras"]}
    assert roles["rig0"] == "fixed"  # what `monodyn eval --protocol synth` scores beside the held-out cameras


def test_figure_parts_move_relative_to_each_other():
    spec = build_scene(SynthConfig(seed=2, objects=1, movers="articulated", frames=12, width=32, height=24))
    fig = spec.objects[0]
    assert fig.shape == "figure" and [p.name for p in fig.parts][:2] == ["torso", "head"]
    P = spec.parts()[1].object_to_world().astype(np.float64)  # (parts, T, 4, 4)
    relative = np.linalg.inv(P[0])[None] @ P  # every part in the torso's frame
    np.testing.assert_allclose(relative[0], np.broadcast_to(np.eye(4), relative[0].shape), atol=1e-5)
    np.testing.assert_allclose(relative[1], relative[1][:1].repeat(12, 0), atol=1e-5)  # the head is fixed
    names = [p.name for p in fig.parts]
    swing = {}
    for i, name in enumerate(names[2:], 2):
        R = relative[i, :, :3, :3]
        angle = np.degrees(np.arccos(np.clip((np.trace(R[0].T @ R, axis1=1, axis2=2) - 1) / 2, -1, 1)))
        assert angle.max() > 10, f"{name} barely moves relative to the torso"
        swing[name] = R[:, 0, 2]  # forward component of the limb's axis
    # legs swing against each other, each arm against the leg on its side
    assert np.corrcoef(swing["leg_left"], swing["leg_right"])[0, 1] < -0.9
    assert np.corrcoef(swing["leg_left"], swing["arm_left"])[0, 1] < -0.9
    # the written object pose is the torso's
    np.testing.assert_allclose(spec.poses.object_to_world()[0], P[0], atol=1e-6)


def test_figures_never_touch_anything():
    from monodyn_cli.synth.scene import geometry_checks

    for seed in range(3):
        spec = build_scene(SynthConfig(seed=seed, objects=3, movers="articulated", frames=24, width=32, height=24))
        c = geometry_checks(spec, spec.poses)
        assert c["penetration_objects"] == 0 and c["penetration_background"] == 0 and not c["camera_inside_object"]
        z = spec.parts()[1].t[..., 2]
        assert z.min() > 0  # standing on the ground, not in it


def _figure_parts_at(scene, view, t):
    """World points (H,W,3) of frame t and, per pixel, the part it lies on (-1 for the background): among its
    instance's parts, the one whose surface it is nearest to."""
    H, W = view.depth.shape[1:]
    X = unproject(pixel_grid(W, H), torch.tensor(np.asarray(view.depth[t])), view.cameras.K[t], view.cameras.w2c[t])
    X = X.double().numpy()
    P = scene.part_poses().astype(np.float64)
    part = np.full((H, W), -1)
    first = 0
    sds = []
    for k, o in enumerate(scene.meta["objects"]):
        parts = o.get("parts") or [o]
        mine = view.instances[t] == k + 1
        dist = []
        for i, p in enumerate(parts):
            M = P[first + i, t]
            local = (X - M[:3, 3]) @ np.linalg.inv(M[:3, :3]).T
            sd = signed_distance(p["shape"], tuple(p["size"]), local) * np.cbrt(np.linalg.det(M[:3, :3]))
            sds.append(sd)
            dist.append(np.abs(sd))
        part[mine] = first + np.argmin(np.stack(dist), 0)[mine]
        first += len(parts)
    return X, part, np.stack(sds)


def test_figure_flow_is_its_parts_moved_and_reprojected(figure_scene):
    P = figure_scene.part_poses().astype(np.float64)
    figure = 2  # instance id of the figure (object 1 of a mixed scene)
    n_checked = rigid_off = 0
    for camera in figure_scene.camera_names:
        view = figure_scene.view(camera)
        tol_view = 1e-4 * view.depth
        for i in range(view.depth.shape[0] - 1):
            for src, dst, flow, valid in ((i, i + 1, view.flow_fw[i], view.valid_fw[i]),
                                          (i + 1, i, view.flow_bw[i], view.valid_bw[i])):
                X, part, sds = _figure_parts_at(figure_scene, view, src)
                tol = tol_view[src] + 1e-5
                on = np.take_along_axis(np.abs(sds), np.clip(part, 0, None)[None], 0)[0]
                assert (on[part >= 0] < tol[part >= 0]).all(), "an object pixel lies on none of its parts"
                assert (sds > -tol[None]).all(), "a pixel shows a point inside a part"
                Xh = np.concatenate([X, np.ones_like(X[..., :1])], -1)
                moved = X.copy()
                for p in np.unique(part[part >= 0]):
                    m = part == p
                    moved[m] = (Xh[m] @ (P[p, dst] @ np.linalg.inv(P[p, src])).T)[:, :3]
                H, W = part.shape
                xy2, _ = project(torch.tensor(moved, dtype=torch.float32), view.cameras.K[dst], view.cameras.w2c[dst])
                xy = pixel_grid(W, H)
                ok = torch.tensor(valid & (view.instances[src] == figure))
                err = (xy2 - xy - torch.tensor(flow))[ok].abs().max().item() if ok.any() else 0.0
                assert err < 1e-3, f"{camera} {src}->{dst}: figure flow off by {err} px"
                n_checked += int(ok.sum())
                # moving every figure pixel with the torso alone would not do: the figure is not rigid
                Mt = P[1, dst] @ np.linalg.inv(P[1, src])  # part 1 is the figure's torso
                rigid = torch.tensor((Xh @ Mt.T)[..., :3], dtype=torch.float32)
                xy3, _ = project(rigid, view.cameras.K[dst], view.cameras.w2c[dst])
                rigid_off = max(rigid_off, (xy3 - xy2)[ok].norm(dim=-1).max().item() if ok.any() else 0.0)
    assert n_checked > 200
    assert rigid_off > 1.0


def test_cli_rig_and_figures(tmp_path):
    out = tmp_path / "nv"
    res = CliRunner().invoke(_cli(), ["synth", str(out), "--frames", "5", "--width", "32", "--height", "24",
                                      "--camera", "rig", "--rig-cameras", "3", "--movers", "articulated",
                                      "--heldout-azimuths", "", "--fixed-cameras", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    gt = load_gt(out)
    assert gt.camera_names == ["input", "rig0"] and gt.meta["movers"] == "articulated"
    assert gt.part_poses().shape == (2 * 6, 5, 4, 4) and gt.object_poses().shape == (2, 5, 4, 4)
    np.testing.assert_array_equal(gt.view("rig0").rgb[[0, 3]], gt.view("input").rgb[[0, 3]])
    for bad in (["--camera", "rig", "--rig-cameras", "1"], ["--movers", "jelly"]):
        res = CliRunner().invoke(_cli(), ["synth", str(tmp_path / "bad"), *bad, "--quiet"])
        assert res.exit_code == 1 and res.output.startswith("error:"), res.output


def test_rigid_scenes_have_no_part_files(tmp_path):
    out = synthesize(SynthConfig(seed=0, frames=3, width=16, height=12, heldout_azimuths=(), fixed_cameras=0),
                     tmp_path / "s")
    gt = load_gt(out)
    assert not (out / "gt" / "parts.npy").exists() and "movers" not in gt.meta and "rig_cameras" not in gt.meta
    np.testing.assert_array_equal(gt.part_poses(), gt.object_poses())
