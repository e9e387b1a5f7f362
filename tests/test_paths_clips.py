"""Camera paths on every real clip in ../shared/data/clips and on synthetic scenes, at the geometry level: each
clip preprocessed small (its cameras, SfM points and depth), then every path `monodyn render` offers must keep
the look-at point in front of its cameras and the scene's content in view, without a warning. The rendered
(alpha) check on fitted models is bench/bench_paths.py."""

from __future__ import annotations

import pytest
import torch
from conftest import SHARED, requires_shared
from typer.testing import CliRunner

from models.cameras import project, visible_points
from monodyn_cli import paths
from monodyn_cli.app import app
from monodyn_cli.scene_loader import load_scene
from monodyn_cli.workspace import Workspace

CLIPS = SHARED / "data" / "clips"
CLIP_NAMES = sorted(p.name for p in CLIPS.iterdir()) if CLIPS.is_dir() else []
PATHS = [("orbit", {"orbit_degrees": 40}), ("orbit", {"orbit_degrees": -40}),
         ("bullet-time", {"bullet_time_at": 0.5, "degrees": 40}), ("spiral", {}), ("dolly", {"dolly_amount": 0.3}),
         ("dolly", {"dolly_amount": -0.5}), ("stabilize", {"stabilize": 0})]


def _preprocess(source, ws) -> Workspace:
    # 160 px: the smallest size at which COLMAP registers the duck clip's aerial pan (the case this guards)
    res = CliRunner().invoke(app, ["preprocess", str(source), "-w", str(ws), "-q", "--max-side", "160",
                                   "--max-frames", "12", "--sfm-threads", "1", "--no-refine-masks"])
    assert res.exit_code == 0, res.output
    return Workspace(ws)


@pytest.fixture(scope="module", params=[pytest.param(n, marks=requires_shared("data", "clips", n)) for n in CLIP_NAMES]
                + ["synth-moving", "synth-static"])
def scene(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("paths")
    if request.param.startswith("synth"):
        from monodyn_cli.synth import SynthConfig, synthesize

        camera = request.param.split("-")[1]
        synthesize(SynthConfig(seed=2, frames=12, width=96, height=72, camera=camera, heldout_azimuths=(),
                               fixed_cameras=0), root / "s")
        source = root / "s" / "input.mp4"
    else:
        source = CLIPS / request.param
    return load_scene(_preprocess(source, root / "ws"))[0]


def test_look_at_point_is_ahead_at_the_content_depth(scene):
    center = scene.look_at_point()
    z = project(center.expand(scene.num_frames, 3), scene.cameras.K, scene.cameras.w2c)[1]
    assert (z > 0).all(), f"look-at point behind input cameras: z = {z.tolist()}"
    content = scene.content_points()
    if content is not None:  # within the span of depths the cameras see
        depth, inside = visible_points(content, scene.cameras)
        lo, hi = torch.quantile(depth[inside], torch.tensor([0.05, 0.95]))
        assert bool(((z >= 0.5 * lo) & (z <= 2 * hi)).all()), (z.tolist(), float(lo), float(hi))


def test_every_path_keeps_the_scene_in_view(scene, tmp_path):
    center, content = scene.look_at_point(), scene.content_points()
    orbit, _ = paths.build_path(scene, "orbit", 15, orbit_degrees=40)
    paths.save_camera_path(tmp_path / "camera_path.json", orbit)
    cases = [*PATHS, ("camera-path", {"camera_path": tmp_path / "camera_path.json"})]
    for kind, kw in cases:
        path, label = paths.build_path(scene, kind, 15, **kw)
        cams = path.cameras
        assert (warning := paths.path_warning(scene, path, kind)) is None, f"{label}: {warning}"
        xy, z = project(center.expand(len(cams), 3), cams.K, cams.w2c)
        assert (z > 0).all(), f"{label}: the look-at point is behind the camera"
        if content is None:
            continue
        depth, inside = visible_points(content, cams)
        front, seen = (depth > 0).float().mean(1), inside.float().mean(1)
        assert float(front.min()) > 0.9, f"{label}: content behind the camera ({front.tolist()})"
        if kind != "dolly":  # moving in crops the view by design; coverage (in path_warning) is its check
            assert float(seen.min()) > 0.5, f"{label}: most content outside the image ({seen.tolist()})"


def test_render_warns_when_the_path_leaves_the_scene(tmp_path):
    """`monodyn render` prints path_warning's line in the warning style and still renders (GCD, tiny and
    untrained: the cheapest renderer that needs no fit)."""
    from conftest import preprocessed_synth

    ws = preprocessed_synth(tmp_path, seed=2, frames=4)

    def render(*path: str) -> str:
        res = CliRunner().invoke(app, ["render", "-w", str(ws), "-q", *path, "--frames", "2", "-m", "gcd",
                                       "--steps", "1", "-o", str(tmp_path / "out.mp4")])
        assert res.exit_code == 0, res.output
        return res.output

    assert "warning: the orbit views the scene from up to" in render("--orbit", "180")
    assert "warning" not in render("--orbit", "30")
