"""A full disk (ENOSPC) during a stage write or a checkpoint: one line that says what to do, and the next run
repairs the workspace."""

from __future__ import annotations

import errno

import numpy as np
import torch
from typer.testing import CliRunner

from monodyn_cli.app import app
from monodyn_cli.synth import SynthConfig, synthesize
from monodyn_cli.workspace import Workspace

runner = CliRunner()


def enospc_once(real):
    calls = []

    def fake(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    return fake


def test_disk_full_during_a_stage_and_a_checkpoint_then_repaired(tmp_path, monkeypatch):
    synthesize(SynthConfig(seed=4, frames=6, width=64, height=48, heldout_azimuths=(), fixed_cameras=0), tmp_path / "s")
    clip, ws = tmp_path / "s" / "input.mp4", tmp_path / "ws"
    args = ["preprocess", str(clip), "-w", str(ws), "-q", "--until", "flow"]
    with monkeypatch.context() as m:
        m.setattr(np, "save", enospc_once(np.save))
        res = runner.invoke(app, args)
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert "no space left" in res.output and "run the command again" in res.output
    assert Workspace(ws).current("decode") is None
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert Workspace(ws).current("flow") is not None

    runner.invoke(app, ["preprocess", str(clip), "-w", str(ws), "-q", "--sfm-threads", "1"])
    fit = ["fit", "-w", str(ws), "-q", "--steps", "20", "--checkpoint-every", "10", "--static-points", "800",
           "--dynamic-points", "100", "--keyframes", "2", "--device", "cpu"]
    with monkeypatch.context() as m:
        m.setattr(torch, "save", enospc_once(torch.save))
        res = runner.invoke(app, fit)
    assert res.exit_code == 1 and "no space left" in res.output, res.output
    assert not list(ws.glob("fit/dpdy/*/.*tmp*"))  # the half-written checkpoint is gone
    res = runner.invoke(app, fit)
    assert res.exit_code == 0, res.output
    assert list(ws.glob("fit/dpdy/*/manifest.json"))
