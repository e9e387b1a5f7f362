"""The whole preprocessing chain through the CLI on a small synthetic clip: every stage, cache, --force."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from monodyn_cli.app import app
from monodyn_cli.synth import SynthConfig, synthesize
from monodyn_cli.workspace import Workspace

runner = CliRunner()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "scene"
    synthesize(SynthConfig(seed=1, frames=12, width=160, height=120, heldout_azimuths=(), fixed_cameras=0), out)
    return out / "input.mp4"


def test_full_chain_then_cache_then_force(clip, tmp_path):
    ws_dir = tmp_path / "ws"
    result = runner.invoke(app, ["preprocess", str(clip), "-w", str(ws_dir), "-q"])
    assert result.exit_code == 0, result.output
    ws = Workspace(ws_dir)
    stages = ["decode", "flow", "segment", "sfm", "depth"]
    keys = {s: ws.current(s).key for s in stages}
    sfm = json.loads(ws.current("sfm").file("sfm.json").read_text())
    assert sfm["mode"] == "colmap"
    cams = json.loads(ws.current("sfm").file("cameras.json").read_text())
    assert np.asarray(cams["w2c"]).shape == (12, 4, 4)
    assert np.load(ws.current("segment").file("instances.npy")).shape == (12, 120, 160)
    assert (ws.current("sfm").path / "transforms.json").exists()

    again = runner.invoke(app, ["preprocess", str(clip), "-w", str(ws_dir), "-q"])
    assert again.exit_code == 0 and again.output.count("cached") == 5

    mtimes = {s: ws.current(s).file("manifest.json").stat().st_mtime_ns for s in stages}
    forced = runner.invoke(app, ["preprocess", str(clip), "-w", str(ws_dir), "-q", "--force", "segment"])
    assert forced.exit_code == 0, forced.output
    redone = {s for s in stages if ws.current(s).file("manifest.json").stat().st_mtime_ns != mtimes[s]}
    assert redone == {"segment", "sfm", "depth"}
    assert {s: ws.current(s).key for s in stages} == keys  # same inputs and options: same keys

    status = runner.invoke(app, ["status", str(ws_dir)])
    assert status.exit_code == 0 and status.output.count("valid") >= 5


def test_static_camera_flag_gives_a_fixed_camera(clip, tmp_path):
    result = runner.invoke(app, ["preprocess", str(clip), "-w", str(tmp_path / "ws"), "-q", "--static-camera",
                                 "--until", "sfm", "--no-refine-masks"])
    assert result.exit_code == 0, result.output
    sfm = Workspace(tmp_path / "ws").current("sfm")
    w2c = np.asarray(json.loads(sfm.file("cameras.json").read_text())["w2c"])
    assert np.allclose(w2c, w2c[0]) and Workspace(tmp_path / "ws").current("depth") is None
