"""The CLI as a user meets it: help texts, exit codes, one-line errors, status and doctor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import pattern_frames, write_video
from typer.testing import CliRunner

from monodyn_cli.app import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def monodyn(*args, cwd=None) -> subprocess.CompletedProcess:
    """Run the real command in a subprocess (what a user's shell does)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "monodyn_cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_help_lists_commands_with_descriptions():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("preprocess", "status", "doctor"):
        assert command in result.output


def test_every_option_has_help_text():
    import typer.main

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, f"monodyn {name} {param.opts} has no help text"


@pytest.mark.parametrize("make_bad", ["missing", "text"])
def test_bad_input_one_line_exit_1_no_traceback(tmp_path, make_bad):
    target = tmp_path / ("nope.mp4" if make_bad == "missing" else "notes.txt")
    if make_bad == "text":
        target.write_text("hello")
    proc = monodyn("preprocess", target, "--workspace", tmp_path / "ws", cwd=tmp_path)
    assert proc.returncode == 1
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in proc.stderr
    debug = monodyn("preprocess", target, "--workspace", tmp_path / "ws", "--debug", cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_preprocess_then_status(tmp_path):
    video = write_video(tmp_path / "clip.mp4", pattern_frames(5))
    proc = monodyn("preprocess", video, "--quiet")
    assert proc.returncode == 0, proc.stderr
    ws = tmp_path / "clip.monodyn"
    assert (ws / "state.json").exists() and list((ws / "logs").glob("*-preprocess.log"))
    again = monodyn("preprocess", video, "--quiet")
    assert "cached" in again.stdout
    status = runner.invoke(app, ["status", str(ws)])
    assert status.exit_code == 0 and "decode" in status.output and "valid" in status.output
    bad = runner.invoke(app, ["status", str(tmp_path)])
    assert bad.exit_code == 1


def test_unknown_force_stage_is_a_clear_error(tmp_path):
    video = write_video(tmp_path / "clip.mp4", pattern_frames(3))
    result = runner.invoke(app, ["preprocess", str(video), "-q", "--force", "nonsense"])
    assert result.exit_code == 1 and "unknown stage" in result.output


def test_doctor_reports_torch_and_codecs():
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0
    assert "torch" in result.output and "libx264" in result.output


def test_threads_option_sets_torch_threads():
    # the doctor command prints torch's thread count; the global option and its env var set it
    result = monodyn("--threads", "1", "doctor")
    assert result.returncode == 0, result.stderr
    assert "1 CPU threads" in result.stdout
    assert monodyn("--threads", "-1", "doctor").returncode != 0


def test_device_errors_are_one_clear_line_before_anything_runs(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine, also on a GPU runner
    video = write_video(tmp_path / "clip.mp4", pattern_frames(3))
    result = runner.invoke(app, ["preprocess", str(video), "-q", "--device", "cuda"])
    assert result.exit_code == 1
    assert "--device cuda: no CUDA device is available here; use --device cpu" in result.output
    assert not (tmp_path / "clip.monodyn").exists()  # checked before the workspace is touched
    result = runner.invoke(app, ["synth", str(tmp_path / "scene"), "--device", "tpu"])
    assert result.exit_code == 1 and "unknown device; use auto, cpu, cuda or cuda:N" in result.output
    assert not (tmp_path / "scene").exists()
