"""Camera paths: geometry of orbit / bullet time / spiral / dolly / stabilised, camera_path.json round trip."""

from __future__ import annotations

import json
import math

import pytest
import torch

from models.cameras import (
    Cameras,
    axes_meeting_point,
    intrinsics_from_fov,
    look_at,
    mean_image_up,
    project,
    scene_look_at,
    unproject,
)
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


def pan_cameras(n: int = 5, spread_deg: float = 5.0) -> Cameras:
    """An aerial-style pan: cameras on the x axis looking along +z, each turned outward by spread_deg per unit of
    x, so their optical axes diverge a little (they meet behind the cameras)."""
    x = torch.linspace(-1.0, 1.0, n)
    yaw = torch.deg2rad(spread_deg * x)
    eyes = torch.stack([x, torch.zeros(n), torch.zeros(n)], -1)
    fwd = torch.stack([torch.sin(yaw), torch.zeros(n), torch.cos(yaw)], -1)
    w2c = look_at(eyes, eyes + fwd, torch.tensor([0.0, -1.0, 0.0]).expand(n, 3))
    return Cameras(intrinsics_from_fov(W, H, 60.0).expand(n, 3, 3).clone(), w2c, W, H)


def plane_points(z: float = 5.0) -> torch.Tensor:
    """A grid of points on the plane z = const, wider than the pan's views."""
    gx, gy = torch.meshgrid(torch.linspace(-5, 5, 41), torch.linspace(-3, 3, 25), indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1), torch.full((gx.numel(),), z)], -1)


def test_look_at_of_a_diverging_pan_is_in_front_at_the_content_depth():
    cams = pan_cameras()
    meet = axes_meeting_point(cams)
    assert (project(meet.expand(5, 3), cams.K, cams.w2c)[1] < 0).all()  # the old answer: behind every camera
    center = scene_look_at(cams, content=plane_points(5.0))
    # the median content depth (about 5: 5 cos(yaw) straight ahead, yaw <= 5 degrees) on the mean axis
    torch.testing.assert_close(center, torch.tensor([0.0, 0.0, 5.0]), atol=0.05, rtol=0)
    assert (project(center.expand(5, 3), cams.K, cams.w2c)[1] > 4.8).all()


def test_look_at_of_a_turning_camera_uses_the_scene_centre_depth():
    """A camera turning on the spot: its axes meet at the camera itself. Without content, the scene centre's
    depth (3 cos 10 degrees in two of the three cameras: the median) along the mean viewing direction."""
    yaw = torch.deg2rad(torch.tensor([-10.0, 0.0, 10.0]))
    fwd = torch.stack([torch.sin(yaw), torch.zeros(3), torch.cos(yaw)], -1)
    w2c = look_at(torch.zeros(3, 3), fwd, torch.tensor([0.0, -1.0, 0.0]).expand(3, 3))
    cams = Cameras(intrinsics_from_fov(W, H, 60.0).expand(3, 3, 3).clone(), w2c, W, H)
    torch.testing.assert_close(axes_meeting_point(cams), torch.zeros(3), atol=1e-5, rtol=0)
    center = scene_look_at(cams, center=torch.tensor([0.0, 0.0, 3.0]))
    torch.testing.assert_close(center, torch.tensor([0.0, 0.0, 3 * math.cos(math.radians(10))]), atol=1e-4, rtol=0)


def test_look_at_of_a_converging_capture_is_where_the_axes_meet():
    ball = CENTER + 0.5 * torch.nn.functional.normalize(torch.randn(200, 3, generator=torch.Generator().manual_seed(0)),
                                                        dim=-1)
    torch.testing.assert_close(scene_look_at(ring_cameras(), content=ball), CENTER, atol=1e-4, rtol=0)
    torch.testing.assert_close(scene_look_at(ring_cameras(n=6, arc_deg=30), content=ball), CENTER, atol=1e-4, rtol=0)


def test_coverage_counts_image_cells_with_content_in_front():
    cam = Cameras(intrinsics_from_fov(W, H, 90.0)[None], torch.eye(4)[None], W, H)
    cx, cy = torch.meshgrid((torch.arange(4) + 0.5) * W / 4, (torch.arange(4) + 0.5) * H / 4, indexing="ij")
    xy = torch.stack([cx.reshape(-1), cy.reshape(-1)], -1)  # one point per cell centre
    pts = unproject(xy, torch.full((16,), 2.0), cam.K[0], cam.w2c[0])
    assert float(paths.coverage(cam, pts)) == 1.0
    assert float(paths.coverage(cam, pts[xy[:, 0] < W / 2])) == 0.5
    assert float(paths.coverage(cam, -pts)) == 0.0  # mirrored through the eye: behind it
    assert float(paths.coverage(cam, pts[:1], grid=1)) == 1.0


def test_angle_from_inputs():
    def cams_at(deg):
        a = torch.deg2rad(torch.tensor(deg))
        eyes = CENTER + 4 * torch.stack([a.cos(), a.sin(), torch.zeros_like(a)], -1)
        return Cameras(intrinsics_from_fov(W, H, 60).expand(len(a), 3, 3).clone(), look_at(eyes, CENTER.expand_as(eyes)), W, H)

    away = paths.angle_from_inputs(cams_at([0.0, 45.0, 90.0, -120.0]), cams_at([0.0, 20.0]), CENTER)
    torch.testing.assert_close(away, torch.tensor([0.0, 25.0, 70.0, 120.0]), atol=1e-3, rtol=0)


def arc_scene(n: int = 6, arc_deg: float = 30.0):
    """A Scene filmed by level cameras over a 30-degree arc, its content a cube of points around CENTER."""
    import numpy as np

    from models.scene import Scene

    cams = ring_cameras(n=n, arc_deg=arc_deg, height=0.0)  # level cameras: the paths' up is the world z
    ball = CENTER + 0.8 * torch.rand(2000, 3, generator=torch.Generator().manual_seed(0)).sub(0.5)
    return Scene(frames=np.zeros((n, H, W, 3), np.uint8), timestamps=np.arange(n) / 10.0, cameras=cams,
                 points=ball.numpy(), center=CENTER.numpy())


def test_warning_for_an_orbit_beyond_the_filmed_arc():
    scene = arc_scene()
    for kind, kw in [("orbit", {"orbit_degrees": 40}), ("bullet-time", {"bullet_time_at": 0.5, "degrees": 40}),
                     ("spiral", {}), ("dolly", {"dolly_amount": 0.3}), ("stabilize", {"stabilize": 0})]:
        path, _ = paths.build_path(scene, kind, 13, **kw)
        assert paths.path_warning(scene, path, kind) is None, kind
    # 10 degrees a frame from the first input camera; the inputs span 0..30 degrees, so azimuth 70 is 40 degrees
    # from the nearest input view and 80 is 50: frame 8 is the first too far, and 75 the widest arc that is not
    path, _ = paths.build_path(scene, "orbit", 19, orbit_degrees=180)
    warning = paths.path_warning(scene, path, "orbit")
    assert warning.startswith("the orbit views the scene from up to 150 degrees beyond the nearest input view in "
                              "frames 8-18 of 19") and warning.endswith("try a smaller arc, e.g. --orbit 75")
    path, _ = paths.build_path(scene, "bullet-time", 4, bullet_time_at=0.0, degrees=-180)  # the other way: 60 a frame
    assert paths.path_warning(scene, path, "bullet-time").endswith("try a smaller arc, e.g. --degrees -45")


def test_warning_for_a_camera_path_looking_away(tmp_path):
    scene = arc_scene()
    eyes = scene.cameras.centers
    away = Cameras(scene.cameras.K, look_at(eyes, 2 * eyes - CENTER), W, H)  # each input camera turned around
    paths.save_camera_path(tmp_path / "p.json", paths.CameraPath(away, torch.linspace(0, 1, 6)))
    path, _ = paths.build_path(scene, "camera-path", 6, camera_path=tmp_path / "p.json")
    warning = paths.path_warning(scene, path, "camera-path")
    assert warning.startswith("the camera path looks past the reconstructed scene in frames 0-5 of 6")
    assert "camera_path.json" in warning


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


def test_spiral_circles_the_reference_view_growing():
    """Frame k of 9 with 2 cycles is at phase k*90 degrees and amplitude k/8: (azimuth, elevation, radius) follow
    (30 s sin, el0 + 10 s cos, r0 (1 + 0.2 s sin))."""
    cams = ring_cameras()
    path = paths.spiral(cams, CENTER, n_frames=9, degrees=30, radius_amplitude=0.2, elevation_amplitude=10, cycles=2)
    torch.testing.assert_close(path.cameras.w2c[0], cams.w2c[0], atol=1e-4, rtol=0)  # starts at the input camera
    assert_looks_at_center(path.cameras, CENTER)
    az, el, r = paths.to_spherical(path.cameras.centers, CENTER, torch.tensor([0.0, 0, 1]), cams.centers[0])
    el0, r0 = math.degrees(math.atan2(1.5, 4.0)), math.hypot(1.5, 4.0)
    for k, (a, e, f) in {1: (3.75, 0.0, 1.025), 2: (0.0, -2.5, 1.0), 3: (-11.25, 0.0, 0.925), 8: (0.0, 10.0, 1.0)}.items():
        assert float(az[k]) == pytest.approx(a, abs=1e-3)
        assert float(el[k]) == pytest.approx(el0 + e, abs=1e-3)
        assert float(r[k]) == pytest.approx(f * r0, rel=1e-4)


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
