"""SfM: similarity alignment, pose interpolation, homography rotations, transforms.json, and the sfm stage
(COLMAP on tiny synthetic clips: moving camera, static camera, forced static, rotating camera, per-object)."""

from __future__ import annotations

import json
import math

import cv2  # noqa: F401  (before pycolmap)
import numpy as np
import pycolmap
import pytest
import torch
from scipy.spatial.transform import Rotation

from models.cameras import Cameras, intrinsics_from_fov, look_at, project
from models.sfm import align, validate
from monodyn_cli import paths, pipeline
from monodyn_cli.stages import decode as decode_stage
from monodyn_cli.stages import sfm as sfm_stage
from monodyn_cli.workspace import Progress, Workspace


def random_rotation(rng) -> np.ndarray:
    return Rotation.from_rotvec(rng.normal(size=3)).as_matrix()


def w2c_from(R: np.ndarray, center: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = R
    m[:3, 3] = -R @ center
    return m


# ---- alignment -------------------------------------------------------------------------------------------------

def test_umeyama_recovers_known_similarity_exactly():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(20, 3))
    R, s, t = random_rotation(rng), 2.7, np.array([1.0, -3.0, 0.5])
    sim = align.umeyama(src, s * src @ R.T + t)
    assert sim.scale == pytest.approx(s, rel=1e-10)
    np.testing.assert_allclose(sim.R, R, atol=1e-10)
    np.testing.assert_allclose(sim.t, t, atol=1e-10)
    np.testing.assert_allclose(sim.inverse().apply(sim.apply(src)), src, atol=1e-10)
    rigid = align.umeyama(src, src @ R.T + t, with_scale=False)
    assert rigid.scale == 1.0
    np.testing.assert_allclose(rigid.R, R, atol=1e-10)


def test_trajectory_error_after_similarity_and_with_collinear_centres():
    rng = np.random.default_rng(1)
    T = 10
    # centres on a straight line: only the camera orientations fix the rotation about that line
    centers = np.stack([np.linspace(-1, 1, T), np.zeros(T), np.zeros(T)], -1)
    gt = np.stack([w2c_from(random_rotation(rng), c) for c in centers])
    sim = align.Sim3(0.3, random_rotation(rng), np.array([5.0, 1.0, -2.0]))
    est = align.transform_w2c(gt, sim)  # the same cameras in another world
    np.testing.assert_allclose(align.camera_centers(est), sim.apply(centers), atol=1e-10)
    err = align.trajectory_error(est, gt)
    assert err.ate < 1e-9 and err.rot_max_deg < 1e-5 and err.scale == pytest.approx(1 / 0.3)
    # a known perturbation is measured: one camera rotated by 3 degrees, another moved by 0.1
    bad = gt.copy()
    bad[3, :3, :3] = Rotation.from_euler("z", 3, degrees=True).as_matrix() @ bad[3, :3, :3]
    bad[3, :3, 3] = -bad[3, :3, :3] @ centers[3]
    err = align.trajectory_error(align.transform_w2c(bad, sim), gt)
    assert err.rot_max_deg == pytest.approx(3.0, abs=0.3)
    # static cameras (all centres equal): rotation-only alignment
    static = np.stack([w2c_from(random_rotation(rng), np.zeros(3)) for _ in range(4)])
    moved = align.transform_w2c(static, align.Sim3(1.0, random_rotation(rng), np.array([1.0, 2.0, 3.0])))
    err = align.trajectory_error(moved, static)
    assert err.ate < 1e-9 and err.rot_max_deg < 1e-5


def test_upright_normalization_puts_camera_zero_at_origin_looking_along_y():
    rng = np.random.default_rng(2)
    eyes = torch.tensor([[0.0, -3.0, 1.0], [1.0, -3.0, 1.2], [2.0, -2.5, 1.1]])
    gt = look_at(eyes, torch.tensor([0.0, 0.0, 0.5]).expand(3, 3)).double().numpy()
    tilted = align.transform_w2c(gt, align.Sim3(0.5, random_rotation(rng), np.array([3.0, 0.0, 1.0])))
    depths = np.array([2.0, 4.0, 3.0])
    sim = align.upright_normalization(tilted, depths)
    out = align.transform_w2c(tilted, sim)
    np.testing.assert_allclose(align.camera_centers(out)[0], 0, atol=1e-6)
    np.testing.assert_allclose(np.median(depths * sim.scale), 1.0)
    up = -out[:, 1, :3].mean(0)
    np.testing.assert_allclose(up / np.linalg.norm(up), [0, 0, 1], atol=1e-6)
    fwd0 = out[0, 2, :3]
    assert fwd0[1] > 0.9 and abs(fwd0[0]) < 1e-6  # looks along +y (tilted down a little)


# ---- pose interpolation ------------------------------------------------------------------------------------

def test_interpolate_poses_slerp_and_linear_centres():
    R0 = np.eye(3)
    R1 = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    w2c = np.tile(np.eye(4), (6, 1, 1))
    w2c[1] = w2c_from(R0, np.array([0.0, 0.0, 0.0]))
    w2c[4] = w2c_from(R1, np.array([3.0, 0.0, 0.0]))
    known = np.array([False, True, False, False, True, False])
    out = validate.interpolate_poses(w2c, known)
    np.testing.assert_array_equal(out[known], w2c[known])
    c = align.camera_centers(out)
    np.testing.assert_allclose(c[2], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(c[3], [2, 0, 0], atol=1e-12)
    for t, deg in ((2, 30.0), (3, 60.0)):
        np.testing.assert_allclose(out[t, :3, :3], Rotation.from_euler("z", deg, degrees=True).as_matrix(), atol=1e-12)
    # ends hold the nearest known pose
    np.testing.assert_allclose(out[0], w2c[1], atol=1e-12)
    np.testing.assert_allclose(out[5], w2c[4], atol=1e-12)
    # uneven timestamps set the weights
    times = np.array([0.0, 1.0, 1.5, 3.0, 4.0, 5.0])
    out = validate.interpolate_poses(w2c, known, times)
    np.testing.assert_allclose(align.camera_centers(out)[2], [0.5, 0, 0], atol=1e-12)
    np.testing.assert_allclose(out[2, :3, :3], Rotation.from_euler("z", 15, degrees=True).as_matrix(), atol=1e-12)


# ---- rotation-only cameras ----------------------------------------------------------------------------------

def test_rotations_and_focal_from_homographies():
    W, H, f = 320, 240, 300.0
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    R = Rotation.from_euler("yx", np.stack([np.linspace(0, 25, 8), np.linspace(0, -6, 8)], -1), degrees=True)
    Rm = R.as_matrix()
    Hs = K @ Rm @ np.linalg.inv(K)
    Hs = Hs * 1.7  # homographies are defined up to scale
    np.testing.assert_allclose(validate.rotations_from_homographies(Hs, K), Rm, atol=1e-9)
    assert validate.focal_from_homographies(Hs, W, H) == pytest.approx(f, rel=0.02)
    # too little rotation: the focal length is not observable
    small = K @ Rotation.from_euler("y", [[0.0], [0.5]], degrees=True).as_matrix() @ np.linalg.inv(K)
    assert validate.focal_from_homographies(small, W, H) is None


# ---- transforms.json ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shared", [True, False])
def test_transforms_json_round_trip_and_opengl_axes(tmp_path, shared):
    rng = np.random.default_rng(3)
    T, W, H = 5, 64, 48
    eyes = torch.tensor(rng.normal(size=(T, 3)) * 2 + [0, -5, 1], dtype=torch.float32)
    w2c = look_at(eyes, torch.zeros(T, 3))
    K = intrinsics_from_fov(W, H, 50.0).expand(T, 3, 3).clone()
    if not shared:
        K[:, 0, 0] += torch.arange(T)
        K[:, 1, 2] += 0.5
    cams = Cameras(K, w2c, W, H)
    times = list(np.linspace(0, 1, T))
    paths.write_transforms_json(tmp_path / "transforms.json", cams, [f"images/{i:05d}.png" for i in range(T)], times)
    data = json.loads((tmp_path / "transforms.json").read_text())
    assert ("fl_x" in data) == shared and data["w"] == W and data["h"] == H
    c2w = np.array(data["frames"][2]["transform_matrix"])
    np.testing.assert_allclose(c2w[:3, 3], eyes[2].numpy(), atol=1e-5)  # translation = camera centre
    forward = -c2w[:3, 2]  # OpenGL cameras look down their -z axis
    np.testing.assert_allclose(forward, -eyes[2].numpy() / np.linalg.norm(eyes[2].numpy()), atol=1e-5)
    np.testing.assert_allclose(c2w[:3, 1], -w2c[2, 1, :3].numpy(), atol=1e-5)  # OpenGL y = up = -OpenCV y
    back, files, t_back = paths.read_transforms_json(tmp_path / "transforms.json")
    torch.testing.assert_close(back.w2c, cams.w2c, atol=1e-5, rtol=0)
    torch.testing.assert_close(back.K, cams.K, atol=1e-5, rtol=0)
    assert (back.width, back.height) == (W, H) and files[3] == "images/00003.png"
    np.testing.assert_allclose(t_back, times)


def test_read_transforms_json_blender_format(tmp_path):
    c2w = np.eye(4)
    c2w[:3, 3] = [0, 0, 4]  # OpenGL camera on +z looking at the origin
    (tmp_path / "t.json").write_text(json.dumps({"camera_angle_x": math.radians(90), "w": 100, "h": 50,
                                                 "frames": [{"file_path": "a", "transform_matrix": c2w.tolist()}]}))
    cams, _, times = paths.read_transforms_json(tmp_path / "t.json")
    assert cams.K[0, 0, 0].item() == pytest.approx(50.0) and times is None
    xy, z = project(torch.zeros(3), cams.K[0], cams.w2c[0])
    assert z.item() == pytest.approx(4.0) and xy.tolist() == pytest.approx([50.0, 25.0])
    (tmp_path / "bad.json").write_text(json.dumps({"frames": [{"file_path": "a"}]}))
    from models.errors import InputError
    with pytest.raises(InputError, match="transform_matrix"):
        paths.read_transforms_json(tmp_path / "bad.json")


# ---- tiny synthetic clips -------------------------------------------------------------------------------------

def _texture(rng, size=256) -> np.ndarray:
    img = np.zeros((size, size, 3), np.float32)
    for cells in (4, 8, 16, 32):
        img += cv2.resize(rng.random((cells, cells, 3)).astype(np.float32), (size, size),
                          interpolation=cv2.INTER_CUBIC) / 4
    for _ in range(size * size // 400):  # blobs and squares: corners and blobs for SIFT
        c = tuple(float(x) for x in rng.random(3))
        p, r = rng.integers(0, size, 2), int(rng.integers(2, 12))
        if rng.random() < 0.5:
            cv2.circle(img, (int(p[0]), int(p[1])), r, c, -1)
        else:
            cv2.rectangle(img, (int(p[0]), int(p[1])), (int(p[0]) + r, int(p[1]) + r), c, -1)
    return np.clip(img, 0, 1)


def box_room_clip(T: int, W: int, H: int, camera: str, seed: int = 0, cube_half: float = 0.4):
    """A textured room (8 x 8 x 3, z up) with a textured cube turning and sliding in it, seen by a camera that is
    "static" or "rotating" (turning about its centre). Returns rgb (T,H,W,3) uint8, instances (T,H,W) uint8
    (1 = cube), K, w2c (T,4,4), o2w (T,4,4) of the cube."""
    rng = np.random.default_rng(seed)
    lo, hi = np.array([-4.0, -4.0, 0.0]), np.array([4.0, 4.0, 3.0])
    atlas = np.concatenate([_texture(rng, 512) for _ in range(12)], axis=1)  # 6 walls, 6 cube faces
    K = intrinsics_from_fov(W, H, 60.0).double().numpy()
    s = np.linspace(-1, 1, T)
    eye = np.array([0.0, -2.5, 1.4])
    targets = np.stack([2.0 * s, np.full(T, 2.0), 1.0 + 0.3 * s], -1) if camera == "rotating" else \
        np.tile([0.0, 2.0, 1.0], (T, 1))
    w2c = look_at(torch.tensor(eye, dtype=torch.float32).expand(T, 3), torch.tensor(targets, dtype=torch.float32))
    w2c = w2c.double().numpy()
    o2w = np.tile(np.eye(4), (T, 1, 1))
    o2w[:, :3, :3] = Rotation.from_euler("z", 40 * s[:, None], degrees=True).as_matrix()
    o2w[:, :3, 3] = np.stack([0.5 * s, np.full(T, -0.6), np.full(T, 1.2)], -1)
    ys, xs = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    rays = np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones_like(xs)], -1).reshape(-1, 3)
    n = np.arange(len(rays))
    rgb, inst = [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in range(T):
            R = w2c[t, :3, :3]
            o, d = -R.T @ w2c[t, :3, 3], rays @ R  # world rays with unit camera-z, so ray length = depth
            exits = np.maximum((lo - o) / d, (hi - o) / d)
            axis = exits.argmin(1)
            z = exits[n, axis]
            p = o + z[:, None] * d
            face = axis * 2 + (d[n, axis] > 0)
            uv = np.stack([np.where(axis == 0, p[:, 1], p[:, 0]), np.where(axis == 2, p[:, 1], p[:, 2])], -1) + 4
            Ro, po = o2w[t, :3, :3], o2w[t, :3, 3]
            ol, dl = Ro.T @ (o - po), d @ Ro  # ray in the cube's frame
            t1, t2 = (-cube_half - ol) / dl, (cube_half - ol) / dl
            near, far = np.minimum(t1, t2), np.maximum(t1, t2)
            tn = near.max(1)
            hit = (tn < far.min(1)) & (tn > 0) & (tn < z)
            ax = near.argmax(1)
            pl = ol + tn[:, None] * dl
            uvo = np.stack([np.where(ax == 0, pl[:, 1], pl[:, 0]), np.where(ax == 2, pl[:, 1], pl[:, 2])], -1)
            face = np.where(hit, 6 + ax * 2 + (dl[n, ax] < 0), face)
            uv = np.where(hit[:, None], (uvo + cube_half) * 4, uv)
            mx = ((uv[:, 0] * 64) % 512 + 512 * face).astype(np.float32).reshape(H, W)
            my = ((uv[:, 1] * 64) % 512).astype(np.float32).reshape(H, W)
            rgb.append(cv2.remap(atlas, mx, my, cv2.INTER_LINEAR))
            inst.append(hit.reshape(H, W).astype(np.uint8))
    return (np.stack(rgb) * 255).round().astype(np.uint8), np.stack(inst), K, w2c, o2w


def synth_clip(T: int, W: int, H: int, camera: str):
    """The project's synthetic generator (monodyn_cli.synth) without extra cameras."""
    from monodyn_cli.synth.raycast import render_view
    from monodyn_cli.synth.scene import SynthConfig, build_scene

    spec = build_scene(SynthConfig(seed=0, frames=T, width=W, height=H, camera=camera, objects=2,
                                   heldout_azimuths=(), fixed_cameras=0))
    view = render_view(spec, "input")
    return view.rgb, view.instances, view.cameras


class RecordingProgress(Progress):
    def __init__(self):
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def run_sfm(tmp_path, rgb, instances, cfg, native_width=None):
    """decode (from PNG frames) -> segment (the given instances) -> sfm, through the workspace cache."""
    folder = tmp_path / "input"
    folder.mkdir()
    for i, img in enumerate(rgb):
        cv2.imwrite(str(folder / f"{i:03d}.png"), img[..., ::-1])
    source = decode_stage.resolve_source(folder)
    dcfg = decode_stage.DecodeConfig(max_side=0)
    dspec = pipeline.StageSpec("decode", decode_stage.VERSION, (), lambda ctx, c: decode_stage.run(ctx, source, c))

    def segment(ctx, _cfg):
        np.save(ctx.out / "instances.npy", instances)
        return ["instances.npy"]

    sspec = pipeline.StageSpec("segment", 1, ("decode",), segment)
    progress = RecordingProgress()
    ws = Workspace(tmp_path / "ws")
    results = pipeline.run_chain(ws, [pipeline.StageRequest(dspec, dcfg, decode_stage.config_for(source, dcfg)),
                                      pipeline.StageRequest(sspec, {"n": int(instances.sum())}),
                                      pipeline.StageRequest(sfm_stage.SPEC, cfg)], progress)
    res = results["sfm"]
    info = json.loads(res.file("sfm.json").read_text())
    cams = Cameras.from_dict(json.loads(res.file("cameras.json").read_text()))
    return res, info, cams, progress.warnings


# ---- the stage ------------------------------------------------------------------------------------------------

def test_stage_moving_camera_matches_ground_truth(tmp_path):
    T, W, H = 12, 160, 120
    rgb, instances, gt = synth_clip(T, W, H, "moving")
    res, info, cams, warnings = run_sfm(tmp_path, rgb, instances, sfm_stage.SfmConfig())
    assert info["mode"] == "colmap" and info["registered"] == T and warnings == []
    gt_w2c = gt.w2c.double().numpy()
    err = align.trajectory_error(cams.w2c.double().numpy(), gt_w2c)
    scene_radius = np.linalg.norm(align.camera_centers(gt_w2c) - [0, 0, 0.4], axis=1).mean()  # cameras look at it
    assert err.ate < 0.02 * scene_radius, err
    assert err.rot_mean_deg < 2.0 and err.rot_max_deg < 3.0, err
    assert cams.K[0, 0, 0].item() == pytest.approx(gt.K[0, 0, 0].item(), rel=0.05)
    assert cams.K.shape == (T, 3, 3) and cams.w2c.shape == (T, 4, 4)
    # normalised world: camera 0 at the origin, median point depth 1, z up
    np.testing.assert_allclose(cams.centers[0].numpy(), 0, atol=1e-5)
    sparse = np.load(res.file("sparse_depth.npz"))
    assert np.median(sparse["depth"]) == pytest.approx(1.0, rel=1e-3)
    assert cams.w2c[:, 1, 2].mean().item() < -0.9  # image down = world -z
    # sparse depth agrees with the points and the cameras (observed keypoints vs reprojections)
    points = np.load(res.file("points3d.npy"))
    assert len(points) > 50 and np.load(res.file("points_rgb.npy")).shape == points.shape
    f, P = torch.from_numpy(sparse["frame"]).long(), torch.from_numpy(points[sparse["point"]])
    xy, z = project(P, cams.K[f], cams.w2c[f])
    assert np.median(np.linalg.norm(xy.numpy() - sparse["xy"], axis=1)) < 1.0
    np.testing.assert_allclose(z.numpy(), sparse["depth"], rtol=1e-4, atol=1e-4)
    assert np.load(res.file("registered.npy")).all()
    # background only: no point observed on a (dilated) object pixel
    xi, yi = sparse["xy"].astype(int).T
    assert instances[sparse["frame"], yi, xi].mean() < 0.02
    # COLMAP model in COLMAP's format, in our world
    rec = pycolmap.Reconstruction(str(res.path / "colmap" / "sparse" / "0"))
    assert rec.num_reg_images() == T and rec.num_points3D() == len(points)
    image = rec.find_image_with_name("00003.png")
    np.testing.assert_allclose(image.cam_from_world().matrix(), cams.w2c[3, :3].double().numpy(), atol=1e-4)
    # nerfstudio export reads back as the same cameras; its images exist
    back, files, times = paths.read_transforms_json(res.file("transforms.json"))
    torch.testing.assert_close(back.w2c, cams.w2c, atol=1e-5, rtol=0)
    assert all((res.path / f).exists() for f in files) and times[0] == 0.0 and times[-1] == 1.0
    assert "Incremental" in res.file("colmap.log").read_text() or "incremental" in res.file("colmap.log").read_text()
    assert res.manifest["mode"] == "colmap" and "summary" in res.manifest
    assert info["bounds"]["radius"] > 0 and len(info["bounds"]["center"]) == 3


def test_stage_static_camera_falls_back_with_warning(tmp_path):
    T, W, H = 12, 160, 120
    rgb, instances, gt = synth_clip(T, W, H, "static")
    res, info, cams, warnings = run_sfm(tmp_path, rgb, instances, sfm_stage.SfmConfig())
    assert info["mode"] == "static-fallback" and "static" in info["reason"]
    assert len(warnings) == 1 and "--static-camera" in warnings[0] and "--focal" in warnings[0]
    assert torch.equal(cams.w2c, cams.w2c[:1].expand_as(cams.w2c))
    f_guess = 0.5 * W / math.tan(math.radians(30))
    assert cams.K[0, 0, 0].item() == pytest.approx(f_guess, rel=1e-5) and info["focal_source"] == "fov guess"
    assert not np.load(res.file("registered.npy")).any()
    assert len(np.load(res.file("points3d.npy"))) == 0 and res.manifest["mode"] == "static-fallback"
    assert pycolmap.Reconstruction(str(res.path / "colmap" / "sparse" / "0")).num_images() == T
    # the fixed camera is upright in the z-up world, looking along +y
    np.testing.assert_allclose(cams.w2c[0, :3, :3].numpy(), [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-6)


def test_static_camera_option_forces_fixed_camera_and_focal_uses_native_pixels(tmp_path):
    T, W, H = 6, 160, 120
    rgb, instances, *_ = box_room_clip(T, W, H, "rotating")  # moves, but the option wins (and no COLMAP runs)
    cfg = sfm_stage.SfmConfig(static_camera=True, focal=150.0)
    res, info, cams, warnings = run_sfm(tmp_path, rgb, instances, cfg)
    assert info["mode"] == "static-fallback" and "--static-camera" in info["reason"] and warnings == []
    assert cams.K[0, 0, 0].item() == pytest.approx(150.0) and info["focal_source"] == "--focal"
    assert "colmap" not in info and res.file("colmap.log").read_text() == ""


def test_stage_rotating_camera_gives_rotation_only_poses(tmp_path):
    T, W, H = 16, 160, 120
    rgb, instances, K, w2c, _ = box_room_clip(T, W, H, "rotating")
    res, info, cams, warnings = run_sfm(tmp_path, rgb, instances, sfm_stage.SfmConfig())
    assert info["mode"] == "rotation-fallback", info
    assert len(warnings) == 1 and "rotation-only" in warnings[0]
    np.testing.assert_allclose(cams.centers.numpy(), 0, atol=1e-5)
    rel_est = cams.w2c[:, :3, :3].double().numpy() @ cams.w2c[0, :3, :3].double().numpy().T
    rel_gt = w2c[:, :3, :3] @ w2c[0, :3, :3].T
    err = align.rotation_angle_deg(rel_est, rel_gt)
    assert err.mean() < 1.0 and err.max() < 2.0, err  # the camera turns 55 degrees
    assert cams.K[0, 0, 0].item() == pytest.approx(K[0, 0], rel=0.05) and info["focal_source"] == "rotation"


def test_per_object_sfm_recovers_camera_from_object_poses(tmp_path):
    T, W, H = 12, 192, 144
    rgb, instances, K, w2c, o2w = box_room_clip(T, W, H, "static", cube_half=0.55)
    cfg = sfm_stage.SfmConfig(focal=float(K[0, 0]))
    res, info, cams, warnings = run_sfm(tmp_path, rgb, instances, cfg)
    assert info["mode"] == "static-fallback"
    from monodyn_cli.stages import object_sfm
    from monodyn_cli.stages.configs import ObjectSfmConfig

    res = pipeline.run_chain(Workspace(tmp_path / "ws"), [pipeline.StageRequest(object_sfm.SPEC, ObjectSfmConfig(True))],
                             RecordingProgress())["object_sfm"]
    objects = json.loads(res.file("objects.json").read_text())["objects"]
    assert objects["1"]["ok"], objects
    w2o = Cameras.from_dict(json.loads((res.path / "objects" / "1" / "cameras.json").read_text()))
    registered = np.load(res.path / "objects" / "1" / "registered.npy")
    assert registered.sum() >= T - 1
    gt_w2o = w2c @ o2w  # camera-from-object
    err = align.trajectory_error(w2o.w2c.double().numpy()[registered], gt_w2o[registered])
    assert err.rot_mean_deg < 2.0, err
    sparse = np.load(res.path / "objects" / "1" / "sparse_depth.npz")
    assert instances[sparse["frame"], sparse["xy"][:, 1].astype(int), sparse["xy"][:, 0].astype(int)].mean() > 0.9


def test_frames_left_out_of_sfm_get_interpolated_poses(tmp_path):
    T, W, H = 11, 160, 120
    rgb, instances, gt = synth_clip(T, W, H, "moving")
    res, info, cams, warnings = run_sfm(tmp_path, rgb, instances, sfm_stage.SfmConfig(max_frames=6))
    assert info["mode"] == "colmap" and info["sfm_frames"] == [0, 2, 4, 6, 8, 10]
    registered = np.load(res.file("registered.npy"))
    np.testing.assert_array_equal(np.flatnonzero(registered), [0, 2, 4, 6, 8, 10])
    assert info["interpolated_frames"] == [1, 3, 5, 7, 9] and warnings == []
    sparse = np.load(res.file("sparse_depth.npz"))
    assert set(np.unique(sparse["frame"])) <= {0, 2, 4, 6, 8, 10}
    # the camera moves smoothly, so interpolated poses are close to the truth too
    err = align.trajectory_error(cams.w2c.double().numpy(), gt.w2c.double().numpy())
    assert err.rot_max_deg < 3.0, err
