"""OSN as a user meets it: `monodyn synth` -> `preprocess --per-object-sfm` -> `fit --method osn` -> `render
--scale-samples / --scale-sample / --scales` -> `osn scales`.

Per-object SfM (COLMAP on each object's masked pixels) does not succeed on test-sized clips: the synthetic objects
cover 1-10% of a frame, tens of SIFT features each (measured: it fails below ~100 px across, and at 384x288 to
512x384 it registers only the largest object, sometimes with depth-reversed poses). So:
- the real chain (motion segmentation + COLMAP) is run once and must end in the clear one-line error that names
  the objects, why SfM failed for each, and what to try;
- fit -> render -> scales run through the CLI on a workspace whose decode / flow stages come from
  `monodyn preprocess` and whose segment / sfm / depth results hold the generator's ground truth (instance masks,
  cameras, camera-to-object poses as `models.osn.synthetic.scene_from_ground_truth` derives them, depth).
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

from models.osn.synthetic import scene_from_ground_truth
from monodyn_cli import pipeline
from monodyn_cli.app import app
from monodyn_cli.console import RichProgress
from monodyn_cli.fits import current_checkpoint
from monodyn_cli.synth import load_gt
from monodyn_cli.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
W, H, T = 64, 48, 8
FIT = ["--steps", "40", "--batch-rays", "256", "--bootstrap-fraction", "0.5", "--round-steps", "10",
       "--scale-steps", "10", "--final-scale-steps", "100", "--scale-candidates", "64", "--background-resolution",
       "32", "--object-resolution", "16", "--n-samples-object", "24", "--n-samples-background", "48",
       "--zbuffer-pixels", "4000", "--occupancy-warmup", "8", "--checkpoint-every", "0", "--device", "cpu"]


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


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# ---- the real chain: per-object SfM fails on small objects, and says so ---------------------------------------------

def test_preprocess_per_object_sfm_then_fit_osn_names_the_failed_objects(tmp_path):
    cli("synth", tmp_path / "scene", "--seed", "2", "--frames", "12", "--width", "160", "--height", "120",
        "--heldout-azimuths", "30", "--fixed-cameras", "0", "-q")
    ws = tmp_path / "ws"
    cli("preprocess", tmp_path / "scene" / "input.mp4", "-w", ws, "--per-object-sfm", "--sfm-threads", "1", "-q")
    sfm = Workspace(ws).current("sfm")
    report = json.loads(sfm.file("objects.json").read_text())["objects"]
    failed = [k for k, e in report.items() if not e["ok"]]
    assert failed, report  # objects of 2-6% of a 160x120 frame: too few features (seed 2: all of them)
    assert all("COLMAP registered" in report[k]["reason"] and "--max-side" in report[k]["hint"] for k in failed)

    line = one_error_line(monodyn("fit", "--method", "osn", "-w", ws, "--steps", "5", "-q"))
    assert f"per-object SfM failed for {len(failed)} of {len(report)} segmented objects" in line
    for k in failed:  # which object, why, ...
        assert re.search(rf"object {k} \(masked in \d+ of 12 frames, [\d.]+% of the pixels\): COLMAP registered", line)
    assert "features per frame" in line and "--max-side" in line and "--per-object-sfm" in line  # ... what to try
    assert not (ws / "fit" / "current.json").exists()


def test_fit_osn_without_segmented_objects_says_so(tmp_path):
    cli("synth", tmp_path / "scene", "--seed", "0", "--frames", "6", "--width", "64", "--height", "48",
        "--objects", "0", "--camera", "static", "--heldout-azimuths", "30", "--fixed-cameras", "0", "-q")
    ws = tmp_path / "ws"
    cli("preprocess", tmp_path / "scene" / "input.mp4", "-w", ws, "--per-object-sfm", "--static-camera", "-q")
    line = one_error_line(monodyn("fit", "--method", "osn", "-w", ws, "--steps", "5", "-q"))
    assert "segmentation found no object in the 6 frames" in line and "--point" in line


# ---- fit -> render -> scales through the CLI, on ground-truth object poses ------------------------------------------

def ground_truth_stages(scene_dir: Path) -> list[pipeline.StageRequest]:
    """segment / sfm / depth stage results holding the generator's ground truth, in the stage output formats
    (sfm: cameras.json, sfm.json, objects.json, objects/<id>/cameras.json = camera-from-object poses)."""
    gt = load_gt(scene_dir)
    v = gt.view("input")
    rgb, inst, depth = np.asarray(v.rgb), np.asarray(v.instances), np.asarray(v.depth, np.float32)
    scene, g = scene_from_ground_truth(rgb, inst, depth, v.cameras, gt.object_poses())

    def segment(ctx, _cfg):
        np.save(ctx.out / "instances.npy", inst)
        return ["instances.npy"]

    def sfm(ctx, _cfg):
        (ctx.out / "cameras.json").write_text(json.dumps(v.cameras.to_dict()))
        (ctx.out / "sfm.json").write_text(json.dumps(
            {"mode": "colmap", "bounds": {"center": scene.center.tolist(), "radius": scene.radius}}))
        report = {}
        for k, cams in scene.object_cameras.items():
            (ctx.out / "objects" / str(k)).mkdir(parents=True)
            (ctx.out / "objects" / str(k) / "cameras.json").write_text(json.dumps(cams.to_dict()))
            report[str(k)] = {"ok": True, "source": "synthetic ground truth", "g": g[k - 1]}
        (ctx.out / "objects.json").write_text(json.dumps({"objects": report}))
        return ["cameras.json", "sfm.json", "objects.json"]

    def depth_stage(ctx, _cfg):
        np.save(ctx.out / "depth.npy", depth)
        return ["depth.npy"]

    spec = lambda name, depends, run: pipeline.StageSpec(name, 1, depends, run)  # noqa: E731
    return [pipeline.StageRequest(spec("segment", ("decode",), segment), {"ground_truth": str(scene_dir)}),
            pipeline.StageRequest(spec("sfm", ("decode", "segment"), sfm), {"ground_truth": str(scene_dir)}),
            pipeline.StageRequest(spec("depth", ("sfm",), depth_stage), {"ground_truth": str(scene_dir)})]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("osn_cli")
    torch.set_num_threads(1)
    cli("synth", root / "scene", "--seed", "14", "--frames", T, "--width", W, "--height", H, "--heldout-azimuths",
        "30", "--fixed-cameras", "0", "-q")
    ws = root / "ws"
    cli("preprocess", root / "scene" / "input.mp4", "-w", ws, "--until", "flow", "-q")
    pipeline.run_chain(Workspace(ws), ground_truth_stages(root / "scene"), RichProgress(True))
    cli("fit", "--method", "osn", "-w", ws, "-q", *FIT)
    method, ckpt = current_checkpoint(Workspace(ws), "osn")
    return root, ws, ckpt


def png(folder: Path, i: int = 0) -> np.ndarray:
    img = cv2.imread(str(folder / f"{i:05d}.png"))
    assert img is not None, folder
    return img[..., ::-1].astype(np.int16)


def test_fit_then_render_scale_samples_and_scales(fitted):
    root, ws, ckpt = fitted
    doc = json.loads((ckpt / "config.json").read_text())
    assert doc["method"] == "osn" and doc["objects"]["ids"] == [0, 1, 2] and doc["state"]["finished"]
    mtime = (ckpt / "model.safetensors").stat().st_mtime_ns
    cli("fit", "--method", "osn", "-w", ws, "-q", *FIT)  # the same fit again: cached, nothing rewritten
    assert current_checkpoint(Workspace(ws), "osn")[1] == ckpt and (ckpt / "model.safetensors").stat().st_mtime_ns == mtime

    path = ["--stabilize", "0", "--time", "0", "--frames", "2", "--png", "-q", "-w", ws]
    cli("render", *path, "--scale-samples", "2", "-o", root / "two.mp4")
    cli("render", *path, "--scale-sample", "1", "-o", root / "one.mp4")
    two, one = png(root / "two"), png(root / "one")
    assert two.shape == (H, 2 * W, 3) and one.shape == (H, W, 3)
    assert (root / "two.mp4").stat().st_size > 0 and len(list((root / "two").glob("*.png"))) == 2
    np.testing.assert_array_equal(two[:, W:], one)  # tile k of --scale-samples is --scale-sample k
    assert np.abs(two[:, :W] - two[:, W:]).mean() > 0  # two different valid combinations

    # `osn scales`: the table, the plot, and the default combination it prints renders like the default
    out = cli("osn", "scales", ws, "-o", root / "scales.png")
    n_valid = int(re.search(r"\((\d+) of 4096 candidate combinations valid\)", out).group(1))
    assert 0 < n_valid < 4096
    for obj in ("1", "2"):
        row = re.search(rf"│\s+{obj} │\s+([\d.]+) \.\. ([\d.]+) │\s+([\d.]+) \.\. ([\d.]+) │", out)
        search_lo, search_hi, valid_lo, valid_hi = map(float, row.groups())
        assert search_lo <= valid_lo <= valid_hi <= search_hi
    plot = cv2.imread(str(root / "scales.png"))
    assert plot is not None and plot.shape[1] > plot.shape[0]
    default = re.search(r"--scales ([\d.]+,[\d.]+)", out.replace("\n", "")).group(1)
    cli("render", *path, "--scales", default, "-o", root / "given.mp4")
    cli("render", *path, "-o", root / "default.mp4")
    assert np.abs(png(root / "given") - png(root / "default")).mean() < 1.0  # printed to 3 significant digits

    # both objects 2x farther and larger: the same input view (OSN's scale ambiguity), another novel view
    far = ",".join(f"{2 * float(s):.3g}" for s in default.split(","))
    cli("render", *path, "--scales", far, "-o", root / "far.mp4")
    orbit = ["--orbit", "40", "--frames", "2", "--png", "-q", "-w", ws]
    cli("render", *orbit, "--scales", default, "-o", root / "orbit_default.mp4")
    cli("render", *orbit, "--scales", far, "-o", root / "orbit_far.mp4")
    input_change = np.abs(png(root / "far") - png(root / "given")).mean()
    novel_change = np.abs(png(root / "orbit_far", 1) - png(root / "orbit_default", 1)).mean()
    assert novel_change > 0.3 and novel_change > 8 * input_change, (input_change, novel_change)


def test_render_scale_options_fail_clearly(fitted):
    root, ws, _ = fitted
    path = ["render", "--stabilize", "0", "--frames", "1", "-q", "-w", ws, "-o", root / "bad.mp4"]
    for extra, message in ((["--scales", "1.0"], "one scale per object (2"),
                           (["--scales", "1,-2"], "must be positive"),
                           (["--scale-sample", "99999"], "valid scale combinations among 4096 candidates"),
                           (["--scale-samples", "2", "--scales", "1,1"], "only one of")):
        result = runner.invoke(app, [str(a) for a in path + extra])
        assert result.exit_code == 1 and message in result.output, (extra, result.output)
