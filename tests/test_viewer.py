"""`monodyn view`: camera conversions against plain references, a saved view and keyframed path that round-trip
through `load_camera_path` and render, the server's Gaussians changing with time and OSN scale, and (slow, when a
Chromium is installed) a real headless browser whose screenshot is not blank and changes with the time slider."""

from __future__ import annotations

import math
import os
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import preprocessed_synth
from typer.testing import CliRunner

from models.splatting.project import covariance_3d
from monodyn_cli import paths
from monodyn_cli.app import app
from monodyn_cli.fits import current_checkpoint
from monodyn_cli.scene_loader import load_scene
from monodyn_cli.viewer import (
    Viewer,
    ViewPose,
    interpolate_keyframes,
    matrix_to_wxyz,
    path_from_poses,
    to_splats,
    wxyz_to_matrix,
)
from monodyn_cli.workspace import Workspace

runner = CliRunner()


def _rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = math.radians(degrees)
    return np.eye(3) + math.sin(a) * K + (1 - math.cos(a)) * K @ K  # Rodrigues


def test_quaternions_round_trip_and_match_rodrigues():
    rng = np.random.default_rng(0)
    for axis, deg in [((0, 0, 1), 90), ((1, 0, 0), 179.9), ((0, 1, 0), -120), *[(rng.normal(size=3), rng.uniform(-180, 180))
                                                                              for _ in range(20)]]:
        R = _rotation(axis, deg)
        q = matrix_to_wxyz(R)
        np.testing.assert_allclose(wxyz_to_matrix(q), R, atol=1e-9)
        np.testing.assert_allclose(np.linalg.norm(q), 1, atol=1e-12)
    np.testing.assert_allclose(matrix_to_wxyz(_rotation((0, 0, 1), 90)), [math.sqrt(0.5), 0, 0, math.sqrt(0.5)],
                               atol=1e-12)


def test_splats_covariance_is_r_s2_rt():
    q = torch.tensor([[math.cos(math.pi / 8), 0, 0, math.sin(math.pi / 8)]])  # 45 degrees about z
    s = torch.tensor([[2.0, 1.0, 0.5]])
    sp = to_splats(torch.zeros(1, 3), q, s, torch.tensor([0.5]), torch.tensor([[0.2, 0.4, 1.5]]))
    R = _rotation((0, 0, 1), 45)
    np.testing.assert_allclose(sp.covariances[0], R @ np.diag([4.0, 1.0, 0.25]) @ R.T, atol=1e-5)
    assert sp.opacities.shape == (1, 1) and sp.rgbs.max() == 1.0  # colours clamped for the browser
    np.testing.assert_allclose(sp.covariances[0], covariance_3d(q, s)[0].numpy(), atol=1e-6)


def test_a_view_round_trips_through_camera_path_json(tmp_path):
    R = _rotation((1, 2, 3), 70)
    pose = ViewPose(matrix_to_wxyz(R), np.array([0.5, -1.0, 2.0]), math.radians(50), 0.25)
    path = path_from_poses([pose], 160, 90)
    paths.save_camera_path(tmp_path / "view.json", path, fps=12)
    back = paths.load_camera_path(tmp_path / "view.json")
    assert (back.cameras.width, back.cameras.height) == (160, 90)
    c2w = torch.linalg.inv(back.cameras.w2c[0].double()).numpy()
    np.testing.assert_allclose(c2w[:3, :3], R, atol=1e-5)
    np.testing.assert_allclose(c2w[:3, 3], pose.position, atol=1e-5)
    f = 45 / math.tan(math.radians(25))
    np.testing.assert_allclose(back.cameras.K[0].numpy(), [[f, 0, 80], [0, f, 45], [0, 0, 1]], rtol=1e-5)
    np.testing.assert_allclose(back.times.numpy(), [0.25], atol=1e-7)


def test_keyframes_interpolate_position_time_and_rotation():
    a = ViewPose(matrix_to_wxyz(np.eye(3)), np.zeros(3), 0.8, 0.0)
    b = ViewPose(matrix_to_wxyz(_rotation((0, 0, 1), 90)), np.array([2.0, 0, 0]), 1.0, 1.0)
    poses = interpolate_keyframes([a, b], 3)
    np.testing.assert_allclose(poses[0].position, a.position)
    np.testing.assert_allclose(poses[-1].position, b.position)
    np.testing.assert_allclose(poses[1].position, [1, 0, 0])
    np.testing.assert_allclose(wxyz_to_matrix(poses[1].wxyz), _rotation((0, 0, 1), 45), atol=1e-9)
    assert (poses[1].fov, poses[1].time) == pytest.approx((0.9, 0.5))
    with pytest.raises(Exception, match="at least 2 keyframes"):
        interpolate_keyframes([a], 10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("view")
    ws = preprocessed_synth(root, seed=4, frames=8)
    for args in (["--method", "dpdy", "--steps", "20", "--static-points", "1500", "--dynamic-points", "300",
                  "--keyframes", "3"],
                 ["--method", "osn", "--steps", "8", "--final-scale-steps", "4", "--scale-candidates", "32",
                  "--background-points", "500", "--object-points", "200", "--keyframes", "2", "--checkpoint-every",
                  "0"]):
        res = runner.invoke(app, ["fit", "-w", str(ws), "-q", "--device", "cpu", "--seed", "3", *args])
        assert res.exit_code == 0, res.output
    return ws


def _viewer(ws, method) -> Viewer:
    method, ckpt = current_checkpoint(Workspace(ws), method)
    return Viewer(Workspace(ws), method, ckpt, load_scene(Workspace(ws))[0], port=free_port())


def _client(viewer) -> SimpleNamespace:
    c2w = viewer.scene.cameras.c2w[0].double().numpy()
    return SimpleNamespace(camera=SimpleNamespace(wxyz=matrix_to_wxyz(c2w[:3, :3]), position=c2w[:3, 3],
                                                  fov=math.radians(40)))


def test_viewer_moves_the_dynamic_gaussians_and_saves_views_that_render(fitted, tmp_path):
    viewer = _viewer(fitted, "dpdy")
    try:
        first = viewer.gaussians.moving(0.0)
        last = viewer.gaussians.moving(1.0)
        assert len(first) == len(last) > 0 and len(viewer.gaussians.static) > 0
        assert np.abs(first.centers - last.centers).max() > 1e-4  # the dynamic set moves with time
        viewer.frame.value = viewer.T - 1
        assert len(viewer.update_seconds) >= 2  # the slider's callback sent the new Gaussians
        viewer.frame.value = 3
        saved = viewer.save_view(_client(viewer))
        viewer.add_keyframe(_client(viewer))
        viewer.frame.value = 6
        moved = _client(viewer)
        moved.camera.position = moved.camera.position + 0.1
        viewer.add_keyframe(moved)
        viewer.path_frames.value = 5
        path = viewer.save_path()
    finally:
        viewer.stop()
    assert saved.parent == fitted / "renders" and path.parent == fitted / "renders"
    view = paths.load_camera_path(saved)
    assert len(view.cameras) == 1 and float(view.times[0]) == pytest.approx(3 / 7)
    np.testing.assert_allclose(torch.linalg.inv(view.cameras.w2c[0].double()).numpy()[:3, 3],
                               _client(viewer).camera.position, atol=1e-5)
    keyed = paths.load_camera_path(path)
    assert len(keyed.cameras) == 5 and keyed.times[[0, -1]].tolist() == pytest.approx([3 / 7, 6 / 7])
    out = tmp_path / "view.mp4"
    res = runner.invoke(app, ["render", "-w", str(fitted), "-q", "--camera-path", str(path), "-o", str(out),
                              "--allow-empty"])
    assert res.exit_code == 0 and out.stat().st_size > 0, res.output


def test_viewer_places_osn_objects_at_the_slider_scales(fitted):
    viewer = _viewer(fitted, "osn")
    try:
        objects = viewer.gaussians.objects
        assert len(viewer.scale_sliders) == len(objects)
        if not objects:
            pytest.skip("the tiny OSN fit recovered no object")
        o = objects[0]
        near, far = (viewer.gaussians.moving(0.5, [s if k else v for k, s in enumerate([o.default] * len(objects))])
                     for v in (o.low, o.high))
        assert np.abs(near.centers - far.centers).max() > 1e-4  # the object's Gaussians move with its scale
    finally:
        viewer.stop()


def test_view_refuses_what_it_cannot_show(fitted):
    res = runner.invoke(app, ["view", str(fitted), "--method", "gcd"])
    assert res.exit_code == 1 and "Gaussian fits" in res.output and "Traceback" not in res.output


def chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _scene_pixels(png: bytes) -> np.ndarray:
    """The scene part of a 900x600 screenshot: below the browser's notice, left of the GUI panel (whose slider
    also moves)."""
    import cv2

    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).astype(np.float32)[150:, :500]


def _screenshot_when(page, condition, timeout_s: float = 120.0) -> bytes:
    """Screenshots until `condition(scene pixels)` holds: software WebGL on a busy CPU draws a frame in seconds."""
    import time

    start = time.monotonic()
    while True:
        shot = page.screenshot()
        if condition(_scene_pixels(shot)) or time.monotonic() - start > timeout_s:
            return shot
        page.wait_for_timeout(1000)


@pytest.mark.slow
def test_in_a_real_browser_the_page_draws_the_scene_and_changes_with_the_time_slider(fitted, tmp_path):
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("no Chromium installed (apt-get install chromium; see README, 'monodyn view')")
    sync_api = pytest.importorskip("playwright.sync_api")
    viewer = _viewer(fitted, "dpdy")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--use-angle=swiftshader",
                                                                            "--enable-unsafe-swiftshader"])
            page = browser.new_page(viewport={"width": 900, "height": 600})
            page.goto(viewer.url)
            page.wait_for_selector("canvas", timeout=60_000)
            first = _screenshot_when(page, lambda a: a.std() > 10)
            page.wait_for_timeout(2000)  # the splats of frame 0 finish sorting
            first = page.screenshot()
            thumb = page.get_by_role("slider").first  # the time slider: End jumps to the last frame
            thumb.focus()
            page.keyboard.press("End")
            before = _scene_pixels(first)
            last = _screenshot_when(page, lambda a: np.abs(a - before).mean() > 0.1)
            assert int(viewer.frame.value) == viewer.T - 1  # the browser moved the server's slider
            page.keyboard.press("Home")  # and back to frame 0: the same picture again (the change was time's)
            again = _screenshot_when(page, lambda a: np.abs(a - before).mean() < 0.05, timeout_s=60)
            browser.close()
        assert int(viewer.frame.value) == 0
    finally:
        viewer.stop()
    a, b, c = _scene_pixels(first), _scene_pixels(last), _scene_pixels(again)
    assert a.std() > 10 and b.std() > 10, "blank screenshot"
    changed, returned = np.abs(a - b).mean(), np.abs(a - c).mean()
    assert changed > 0.1 and returned < 0.3 * changed, f"time changed the picture by {changed}, returning {returned}"
    if os.environ.get("MONODYN_VIEWER_SHOTS"):  # the screenshots in docs/ come from here: keep them, small
        import cv2

        for shot, name in ((first, "viewer-frame0.png"), (last, "viewer-last-frame.png")):
            img = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)
            cv2.imwrite(str(Path(os.environ["MONODYN_VIEWER_SHOTS"]) / name),
                        cv2.resize(img, (600, 400), interpolation=cv2.INTER_AREA), [cv2.IMWRITE_PNG_COMPRESSION, 9])
