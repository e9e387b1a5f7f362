"""Camera paths: geometry of orbit / bullet time / spiral / dolly / stabilised, camera_path.json round trip."""

from __future__ import annotations

import json
import math

import pytest
import torch

from models.cameras import Cameras, axes_meeting_point, intrinsics_from_fov, look_at, mean_image_up, project
from models.errors import InputError
from monodyn_cli import paths

W, H = 64, 48
CENTER = torch.tensor([1.0, -2.0, 0.5])


def ring_cameras(n: int = 8, radius: float = 4.0, height: float = 1.5, arc_deg: float = 360.0) -> Cameras:
    """Cameras on a circle around CENTER (z-up world), all looking at it."""
    ang = torch.deg2rad(torch.linspace(0, arc_deg, n + 1)[:n] if arc_deg == 360 else torch.linspace(0, arc_deg, n))
    eyes = CENTER + torch.stack([radius * torch.cos(ang), radius * torch.sin(ang), torch.full_like(ang, height)], -1)
    w2c = look_at(eyes, CENTER.expand_as(eyes))
    K = intrinsics_from_fov(W, H, 60.0).expand(n, 3, 3).clone()
    return Cameras(K, w2c, W, H)


def assert_looks_at_center(cams: Cameras, center: torch.Tensor) -> None:
    xy, z = project(center.expand(len(cams), 3), cams.K, cams.w2c)
    assert (z > 0).all()
    torch.testing.assert_close(xy, cams.K[:, :2, 2], atol=1e-3, rtol=0)


def test_up_and_center_estimates():
    cams = ring_cameras()
    torch.testing.assert_close(mean_image_up(cams), torch.tensor([0.0, 0.0, 1.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(axes_meeting_point(cams), CENTER, atol=1e-4, rtol=0)


def test_center_of_parallel_cameras_needs_fallback():
    eyes = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0]])
    w2c = look_at(eyes, eyes + torch.tensor([0.0, 1.0, 0.0]))
    cams = Cameras(intrinsics_from_fov(W, H, 60).expand(3, 3, 3).clone(), w2c, W, H)
    with pytest.raises(InputError, match="parallel"):
        axes_meeting_point(cams)
    torch.testing.assert_close(axes_meeting_point(cams, fallback_distance=5.0), torch.tensor([1.0, 5.0, 0.0]),
                               atol=1e-5, rtol=0)


def test_spherical_round_trip():
    up, ref = torch.tensor([0.0, 0.0, 1.0]), CENTER + torch.tensor([3.0, 0.0, 0.0])
    eyes = CENTER + torch.tensor([[0.0, 2.0, 2.0], [-1.0, -1.0, -0.5]])
    az, el, r = paths.to_spherical(eyes, CENTER, up, ref)
    torch.testing.assert_close(az[0], torch.tensor(90.0))  # +y is 90 degrees counter-clockwise from +x about z
    torch.testing.assert_close(el[0], torch.tensor(45.0))
    torch.testing.assert_close(paths.from_spherical(CENTER, up, ref, az, el, r), eyes, atol=1e-5, rtol=0)


def test_orbit_360_returns_to_start_and_keeps_distance():
    cams = ring_cameras()
    ref = 2
    cams_path, times = paths.orbit(cams, CENTER, degrees=360, n_frames=25, ref=ref)
    assert len(cams_path) == 25 and (cams_path.width, cams_path.height) == (W, H)
    torch.testing.assert_close(cams_path.w2c[0], cams_path.w2c[-1], atol=1e-4, rtol=0)
    torch.testing.assert_close(cams_path.w2c[0], cams.w2c[ref], atol=1e-4, rtol=0)  # starts at the input camera
    dist = (cams_path.centers - CENTER).norm(dim=-1)
    torch.testing.assert_close(dist, torch.full((25,), float((cams.centers[ref] - CENTER).norm())), atol=1e-4, rtol=0)
    assert_looks_at_center(cams_path, CENTER)
    torch.testing.assert_close(times, torch.linspace(0, 1, 25))
    # constant elevation: height above the centre is that of the reference camera
    torch.testing.assert_close(cams_path.centers[:, 2] - CENTER[2], torch.full((25,), 1.5), atol=1e-4, rtol=0)


def test_orbit_quarter_turn_direction():
    cams = ring_cameras()
    path = paths.orbit(cams, CENTER, degrees=90, n_frames=3, ref=0)
    torch.testing.assert_close(path.cameras.centers[-1], CENTER + torch.tensor([0.0, 4.0, 1.5]), atol=1e-4, rtol=0)
    torch.testing.assert_close(path.cameras.centers[1],
                               CENTER + torch.tensor([4 / math.sqrt(2), 4 / math.sqrt(2), 1.5]), atol=1e-4, rtol=0)


def test_bullet_time_freezes_time_and_starts_at_that_frame():
    cams = ring_cameras(n=5, arc_deg=60)
    path = paths.bullet_time(cams, CENTER, degrees=30, n_frames=7, time=0.5)
    assert torch.equal(path.times, torch.full((7,), 0.5))
    torch.testing.assert_close(path.cameras.centers[0], cams.centers[2], atol=1e-4, rtol=0)
    assert_looks_at_center(path.cameras, CENTER)
    with pytest.raises(InputError):
        paths.bullet_time(cams, CENTER, time=1.5)


def test_spiral_bounds_and_look_at():
    cams = ring_cameras()
    path = paths.spiral(cams, CENTER, n_frames=41, radius_amplitude=0.2, elevation_amplitude=10, cycles=1)
    r0 = float((cams.centers[0] - CENTER).norm())
    dist = (path.cameras.centers - CENTER).norm(dim=-1)
    assert float(dist.max()) == pytest.approx(1.2 * r0, rel=1e-3)
    assert float(dist.min()) == pytest.approx(0.8 * r0, rel=1e-3)
    torch.testing.assert_close(path.cameras.w2c[0], cams.w2c[0], atol=1e-4, rtol=0)
    assert_looks_at_center(path.cameras, CENTER)
    _, el, _ = paths.to_spherical(path.cameras.centers, CENTER, torch.tensor([0.0, 0, 1]), cams.centers[0])
    el0 = math.degrees(math.atan2(1.5, 4.0))
    assert float(el.max()) == pytest.approx(el0 + 10, abs=0.05) and float(el.min()) == pytest.approx(el0 - 10, abs=0.05)


def test_dolly_moves_along_view_axis_and_dolly_zoom_keeps_size():
    cams = ring_cameras()
    d0 = float((cams.centers[0] - CENTER).norm())
    path = paths.dolly(cams, CENTER, n_frames=5, amount=0.5)
    R = path.cameras.w2c[:, :3, :3]
    torch.testing.assert_close(R, cams.w2c[0, :3, :3].expand_as(R))  # orientation kept
    torch.testing.assert_close((path.cameras.centers[-1] - CENTER).norm(), torch.tensor(d0 / 2), atol=1e-4, rtol=0)
    assert_looks_at_center(path.cameras, CENTER)  # the centre is on the axis of this reference camera

    zoom = paths.dolly(cams, CENTER, n_frames=5, amount=0.5, zoom=True).cameras
    side = torch.linalg.inv(cams.w2c[0])[:3, 0] * 0.3  # a segment at the centre, parallel to the image plane
    a, _ = project((CENTER - side).expand(5, 3), zoom.K, zoom.w2c)
    b, _ = project((CENTER + side).expand(5, 3), zoom.K, zoom.w2c)
    size = (b - a).norm(dim=-1)
    torch.testing.assert_close(size, size[:1].expand(5), atol=1e-3, rtol=0)
    plain_size = (project(CENTER + side, path.cameras.K[-1], path.cameras.w2c[-1])[0]
                  - project(CENTER - side, path.cameras.K[-1], path.cameras.w2c[-1])[0]).norm()
    assert float(plain_size) == pytest.approx(2 * float(size[0]), rel=1e-3)  # without zoom it doubles
    with pytest.raises(InputError, match="centre"):
        paths.dolly(cams, CENTER, amount=1.0)


def test_stabilized_is_the_input_camera():
    cams = ring_cameras(n=6, arc_deg=50)
    path = paths.stabilized(cams, 3)
    assert len(path.cameras) == 6
    assert torch.equal(path.cameras.w2c, cams.w2c[3].expand(6, 4, 4))
    assert torch.equal(path.cameras.K, cams.K[3].expand(6, 3, 3))
    torch.testing.assert_close(path.times, torch.linspace(0, 1, 6))
    with pytest.raises(InputError):
        paths.stabilized(cams, 6)


def test_render_stabilize_honours_frames():
    import numpy as np

    from models.scene import Scene
    from monodyn_cli.paths import build_path

    cams = ring_cameras(n=6, arc_deg=50)
    scene = Scene(frames=np.zeros((6, H, W, 3), np.uint8), timestamps=np.arange(6) / 10.0, cameras=cams)
    path, label = build_path(scene, "stabilize", 11, stabilize=2)
    assert label == "stabilized2" and len(path.cameras) == 11
    torch.testing.assert_close(path.times, torch.linspace(0, 1, 11))
    assert torch.equal(path.cameras.w2c, cams.w2c[2].expand(11, 4, 4))


def test_camera_path_json_round_trip(tmp_path):
    cams = ring_cameras()
    path = paths.orbit(cams, CENTER, degrees=120, n_frames=9, times=torch.linspace(0.2, 0.4, 9))
    f = tmp_path / "camera_path.json"
    paths.save_camera_path(f, path, fps=30)
    loaded = paths.load_camera_path(f)
    torch.testing.assert_close(loaded.cameras.w2c, path.cameras.w2c, atol=1e-5, rtol=0)
    torch.testing.assert_close(loaded.cameras.K, path.cameras.K, atol=1e-3, rtol=0)
    torch.testing.assert_close(loaded.times, path.times)
    data = json.loads(f.read_text())
    assert data["render_width"] == W and data["render_height"] == H and len(data["camera_path"]) == 9
    assert data["camera_path"][0]["fov"] == pytest.approx(2 * math.degrees(math.atan(H / 2 / cams.K[0, 1, 1])))


def test_opengl_convention_in_file(tmp_path):
    """An OpenCV camera at (1,2,3) looking along world +z with image-down = world +y is, in OpenGL axes, a
    camera-to-world with columns x=(1,0,0), y=(0,-1,0), z=(0,0,-1)."""
    w2c = torch.eye(4)
    w2c[:3, 3] = -torch.tensor([1.0, 2.0, 3.0])
    cams = Cameras(intrinsics_from_fov(W, H, 60)[None], w2c[None], W, H)
    f = tmp_path / "p.json"
    paths.save_camera_path(f, paths.CameraPath(cams, torch.zeros(1)))
    c2w = torch.tensor(json.loads(f.read_text())["camera_path"][0]["camera_to_world"]).reshape(4, 4)
    expected = torch.tensor([[1.0, 0, 0, 1], [0, -1, 0, 2], [0, 0, -1, 3], [0, 0, 0, 1]])
    torch.testing.assert_close(c2w, expected)


def test_load_nerfstudio_style_file(tmp_path):
    entry = {"camera_to_world": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 5, 0, 0, 0, 1], "fov": 90, "aspect": 2.0}
    data = {"camera_type": "perspective", "render_height": 100, "render_width": 200, "camera_path": [entry] * 3,
            "fps": 24, "seconds": 0.125}
    f = tmp_path / "camera_path.json"
    f.write_text(json.dumps(data))
    cams, times = paths.load_camera_path(f)
    torch.testing.assert_close(cams.K[0], torch.tensor([[50.0, 0, 100], [0, 50, 50], [0, 0, 1]]))
    torch.testing.assert_close(times, torch.tensor([0.0, 0.5, 1.0]))
    # OpenGL camera at z=5 looking down -z: a point at the origin is 5 in front of it, at the image centre
    xy, z = project(torch.zeros(3), cams.K[0], cams.w2c[0])
    torch.testing.assert_close(z, torch.tensor(5.0))
    torch.testing.assert_close(xy, torch.tensor([100.0, 50.0]))


@pytest.mark.parametrize("content, message", [("{", "not a JSON"), ('{"camera_path": []}', "no 'camera_path'"),
                                              ('{"render_height": 10, "camera_path": [{"fov": 40}]}', "malformed")])
def test_bad_camera_path_files(tmp_path, content, message):
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(InputError, match=message):
        paths.load_camera_path(f)
