"""`monodyn batch`: the chain parser, two tiny synthetic clips run here (one bad clip beside them fails alone, its
error line kept), and the same on a local Ray instance with the workspaces copied back."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from models.errors import InputError
from monodyn_cli.app import app
from monodyn_cli.batch import Stage, parse_chain, stage_argv

runner = CliRunner()
CHAIN = ("preprocess --max-side 64 --sfm-threads 1 --no-refine-masks, fit --method dpdy --steps 3 --static-points 300 "
         "--dynamic-points 100 --keyframes 2 --device cpu, render --orbit 10 --frames 2 --allow-empty")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    from monodyn_cli.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("batch")
    synthesize(SynthConfig(seed=2, frames=6, width=64, height=48, heldout_azimuths=(), fixed_cameras=0), root / "s")
    for name in ("one", "two"):
        shutil.copy(root / "s" / "input.mp4", root / f"{name}.mp4")
    (root / "bad.mp4").write_text("not a video\n")
    return [root / "bad.mp4", root / "one.mp4", root / "two.mp4"]


def test_the_chain_is_parsed_and_checked():
    assert parse_chain("preprocess --max-side 160, fit --method dpdy --minutes 5, render --orbit 30") == [
        Stage("preprocess", ("--max-side", "160")), Stage("fit", ("--method", "dpdy", "--minutes", "5")),
        Stage("render", ("--orbit", "30"))]
    assert stage_argv(Stage("fit", ("--steps", "3")), Path("c.mp4"), Path("c.monodyn")) == [
        "fit", "--workspace", "c.monodyn", "--steps", "3"]
    assert stage_argv(Stage("preprocess"), Path("c.mp4"), Path("w"))[:4] == ["preprocess", "c.mp4", "--workspace", "w"]
    for bad, message in (("preprocess,, fit", "empty stage"), ("train gcd", "not a command batch runs"),
                         ("fit -w x", "drop -w"), ("fit, preprocess", "preprocess must come first")):
        with pytest.raises(InputError, match=message):
            parse_chain(bad)


def test_batch_here_goes_on_after_a_failed_clip_and_keeps_its_error_line(clips, tmp_path):
    res = runner.invoke(app, ["batch", *map(str, clips[:2]), "--workspaces", str(tmp_path), "--run", CHAIN])
    assert res.exit_code == 1, res.output
    assert len(list((tmp_path / "one.monodyn" / "renders").glob("*.mp4"))) == 1, res.output
    out = " ".join(res.output.split())
    assert "failed at preprocess" in out and "not a video" in out and "1 of 2 clip(s) failed" in out
    assert out.count("done") == 1 and "preprocess:" in out and "render:" in out
    refused = runner.invoke(app, ["batch", str(clips[1]), str(clips[1]), "--run", "preprocess"])
    assert refused.exit_code == 1 and "share the workspace" in refused.output


@pytest.mark.slow
def test_batch_on_a_local_ray_instance_copies_the_workspaces_back(clips, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
    try:
        res = runner.invoke(app, ["batch", *map(str, clips[1:]), "--ray", "--copy-back", "--workspaces",
                                  str(tmp_path), "--run", CHAIN])
    finally:
        ray.shutdown()
    assert res.exit_code == 0, res.output
    for name in ("one", "two"):  # copied back from the workers' temporary folders, and named where they now are
        assert len(list((tmp_path / f"{name}.monodyn" / "renders").glob("*.mp4"))) == 1, res.output
    assert " ".join(res.output.split()).count("done") == 2 and "monodyn-batch-" not in res.output
