"""OSN as a user meets it, with no ground truth injected: `monodyn synth` -> `preprocess` -> `fit --method osn`
(object poses from flow tracks) -> `render --scale-samples / --scale-sample / --scales` -> `osn scales`.

Per-object SfM (COLMAP on each object's masked pixels) is an optional stage of its own: it rarely succeeds on
test-sized clips (it needs ~100 SIFT features per object and frame), and OSN does not need it. Turning it on runs
only that stage: the sfm and depth results and a fitted DpDy keep their keys.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from monodyn_cli.app import app
from monodyn_cli.fits import current_checkpoint
from monodyn_cli.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
W, H, T = 96, 72, 8
FIT = ["--steps", "60", "--bootstrap-fraction", "0.5", "--round-steps", "15", "--scale-steps", "10",
       "--final-scale-steps", "150", "--scale-candidates", "64", "--background-points", "2000", "--object-points",
       "600", "--keyframes", "3", "--zbuffer-pixels", "20000", "--refine-every", "15", "--checkpoint-every", "0",
       "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cli(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"monodyn {' '.join(map(str, args))}\n{result.output}"
    return result.output


def monodyn(*args, cwd=None) -> subprocess.CompletedProcess:
    """The real command in a subprocess (what a user's shell sees: stderr, exit code)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "monodyn_cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_fit_osn_without_segmented_objects_fits_the_background(tmp_path):
    cli("synth", tmp_path / "scene", "--seed", "0", "--frames", "6", "--width", "64", "--height", "48",
        "--objects", "0", "--camera", "static", "--heldout-azimuths", "30", "--fixed-cameras", "0", "-q")
    ws = tmp_path / "ws"
    cli("preprocess", tmp_path / "scene" / "input.mp4", "-w", ws, "--static-camera", "-q")
    proc = monodyn("fit", "--method", "osn", "-w", ws, "--steps", "5", "--final-scale-steps", "1", "--device", "cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "no object has a scale" in notes[0]
    cli("render", "-w", ws, "--method", "osn", "--stabilize", "0", "--frames", "1", "--scale-samples", "4", "-q",
        "-o", tmp_path / "bg.mp4")


# ---- the real chain: preprocess -> fit -> render -> scales ---------------------------------------------------------

@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("osn_cli")
    torch.set_num_threads(1)
    cli("synth", root / "scene", "--seed", "14", "--frames", T, "--width", W, "--height", H, "--heldout-azimuths",
        "30", "--fixed-cameras", "0", "-q")
    ws = root / "ws"
    cli("preprocess", root / "scene" / "input.mp4", "-w", ws, "--sfm-threads", "1", "-q")
    out = cli("fit", "--method", "osn", "-w", ws, "-q", *FIT)
    method, ckpt = current_checkpoint(Workspace(ws), "osn")
    return root, ws, ckpt, out


def png(folder: Path, i: int = 0) -> np.ndarray:
    img = cv2.imread(str(folder / f"{i:05d}.png"))
    assert img is not None, folder
    return img[..., ::-1].astype(np.int16)


def test_fit_then_render_scale_samples_and_scales(fitted):
    root, ws, ckpt, fit_output = fitted
    doc = json.loads((ckpt / "config.json").read_text())
    assert doc["method"] == "osn" and doc["state"]["finished"] and len(doc["objects"]["ids"]) >= 2
    assert set(doc["objects"]["source"][1:]) == {"tracks"}  # no per-object SfM ran: poses from flow tracks
    # an object left in the background is named, with its reason, in one line
    assert ("note: OSN could not pose" in fit_output) == bool(doc["objects"]["dropped"])
    mtime = (ckpt / "model.safetensors").stat().st_mtime_ns
    cli("fit", "--method", "osn", "-w", ws, "-q", *FIT)  # the same fit again: cached, nothing rewritten
    assert current_checkpoint(Workspace(ws), "osn")[1] == ckpt and (ckpt / "model.safetensors").stat().st_mtime_ns == mtime
    K = len(doc["objects"]["ids"]) - 1

    path = ["--stabilize", "0", "--time", "0", "--frames", "2", "--png", "-q", "-w", ws]
    cli("render", *path, "--scale-samples", "2", "-o", root / "two.mp4")
    cli("render", *path, "--scale-sample", "1", "-o", root / "one.mp4")
    two, one = png(root / "two"), png(root / "one")
    assert two.shape == (H, 2 * W, 3) and one.shape == (H, W, 3)
    assert (root / "two.mp4").stat().st_size > 0 and len(list((root / "two").glob("*.png"))) == 2
    np.testing.assert_array_equal(two[:, W:], one)  # tile k of --scale-samples is --scale-sample k

    # `osn scales`: the table, the plot, and the default combination it prints renders like the default
    out = cli("osn", "scales", ws, "-o", root / "scales.png")
    n_valid = int(re.search(r"\((\d+) of 4096 candidate combinations valid\)", out).group(1))
    assert 0 < n_valid < 4096
    for obj in doc["objects"]["ids"][1:]:
        row = re.search(rf"│\s+{obj} │\s+([\d.]+) \.\. ([\d.]+) │\s+([\d.]+) \.\. ([\d.]+) │", out)
        search_lo, search_hi, valid_lo, valid_hi = map(float, row.groups())
        assert search_lo <= valid_lo <= valid_hi <= search_hi
    plot = cv2.imread(str(root / "scales.png"))
    assert plot is not None and plot.shape[1] > plot.shape[0]
    default = re.search(r"--scales ([\d.,]+)", out.replace("\n", "")).group(1).rstrip(",")
    assert len(default.split(",")) == K
    cli("render", *path, "--scales", default, "-o", root / "given.mp4")
    cli("render", *path, "-o", root / "default.mp4")
    assert np.abs(png(root / "given") - png(root / "default")).mean() < 1.0  # printed to 3 significant digits

    # every object 2x farther and larger: the same input view (OSN's scale ambiguity), another novel view
    far = ",".join(f"{2 * float(s):.3g}" for s in default.split(","))
    cli("render", *path, "--scales", far, "-o", root / "far.mp4")
    orbit = ["--orbit", "40", "--frames", "2", "--png", "-q", "-w", ws]
    cli("render", *orbit, "--scales", default, "-o", root / "orbit_default.mp4")
    cli("render", *orbit, "--scales", far, "-o", root / "orbit_far.mp4")
    input_change = np.abs(png(root / "far") - png(root / "given")).mean()
    novel_change = np.abs(png(root / "orbit_far", 1) - png(root / "orbit_default", 1)).mean()
    assert novel_change > 0.3 and novel_change > 4 * input_change, (input_change, novel_change)


def test_render_scale_options_fail_clearly(fitted):
    root, ws, ckpt, _ = fitted
    K = len(json.loads((ckpt / "config.json").read_text())["objects"]["ids"]) - 1
    path = ["render", "--stabilize", "0", "--frames", "1", "-q", "-w", ws, "-o", root / "bad.mp4"]
    for extra, message in ((["--scales", ",".join(["1.0"] * (K + 1))], f"one scale per object ({K}"),
                           (["--scales", ",".join(["1"] * (K - 1) + ["-2"])], "must be positive"),
                           (["--scale-sample", "99999"], "valid scale combinations among 4096 candidates"),
                           (["--scale-samples", "2", "--scales", "1,1"], "only one of")):
        result = runner.invoke(app, [str(a) for a in path + extra])
        assert result.exit_code == 1 and message in result.output, (extra, result.output)


def test_per_object_sfm_is_a_stage_of_its_own(fitted):
    """Turning per-object SfM on runs only that stage: sfm, depth and the DpDy fit keep their keys; its report
    names every segmented object (COLMAP may pose none of these small ones)."""
    root, ws, _, _ = fitted
    w = Workspace(ws)
    before = {s: (w.current(s).key, w.current(s).file("manifest.json").stat().st_mtime_ns)
              for s in ("decode", "flow", "segment", "sfm", "depth")}
    from monodyn_cli.scene_loader import load_scene

    keys_before = load_scene(w)[1]
    cli("preprocess", root / "scene" / "input.mp4", "-w", ws, "--sfm-threads", "1", "--per-object-sfm", "-q")
    after = {s: (w.current(s).key, w.current(s).file("manifest.json").stat().st_mtime_ns) for s in before}
    assert after == before
    objects = w.current("object_sfm")
    report = json.loads(objects.file("objects.json").read_text())["objects"]
    ids = set(int(v) for v in np.unique(np.load(w.current("segment").file("instances.npy"))) if v > 0)
    assert {int(k) for k in report} == ids
    assert all(e["ok"] or ("reason" in e and "hint" in e) for e in report.values())
    assert load_scene(w)[1] == keys_before  # DpDy (and every method that does not read it) sees the same inputs
    scene, keys = load_scene(w, object_sfm=True)
    assert keys["object_sfm"] == objects.key and set(scene.object_sfm) == ids


def test_eval_scores_the_dpdy_fit_a_user_gets_at_osn_scales(fitted):
    """With an OSN fit in the workspace, `fit --method dpdy` places the objects at OSN's scales; `eval` must fit
    the same way, or it scores a model the user never has."""
    root, ws, _, _ = fitted
    fit_out = cli("fit", "--method", "dpdy", "-w", ws, "-q", "--steps", "2", "--static-points", "500",
                  "--dynamic-points", "100", "--keyframes", "2", "--device", "cpu")
    placed = re.search(r"scales \(median depth\): (\S+)", fit_out).group(1)
    cli("eval", "--protocol", "holdout", "-w", ws, "-q", "--every", "8", "--steps", "2", "--static-points", "500",
        "--dynamic-points", "100", "--keyframes", "2", "--device", "cpu")
    configs = [json.loads(p.read_text())["config"] for p in (ws / "fit" / "dpdy").glob("*/config.json")]
    assert len(configs) == 2 and all(c["object_scales"] == placed for c in configs)
