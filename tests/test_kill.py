"""kill -9 at any moment: a fit killed by SIGKILL resumes (`--resume`) to the same weights as the uninterrupted
fit, a render or export killed mid-way leaves no file under the output name, the workspace stays readable, `status`
lists the temporaries left behind and the next run removes them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import preprocessed_synth
from typer.testing import CliRunner

from monodyn_cli.app import app

ROOT = Path(__file__).resolve().parents[1]
FIT = ["--steps", "60", "--checkpoint-every", "10", "--static-points", "1500", "--dynamic-points", "300",
       "--keyframes", "3", "--device", "cpu", "--seed", "3"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return preprocessed_synth(tmp_path_factory.mktemp("kill"), seed=4, frames=8)


def monodyn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "MONODYN_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "monodyn_cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    start = time.monotonic()
    while not predicate():
        assert proc.poll() is None, f"finished before the kill: {proc.stdout.read()}"
        assert time.monotonic() - start < timeout
        time.sleep(0.01)


def test_fit_killed_by_sigkill_resumes_to_the_uninterrupted_weights(workspace, tmp_path):
    reference = tmp_path / "reference"
    shutil.copytree(workspace, reference)
    full = monodyn("fit", "-w", str(reference), "-q", *FIT)
    assert full.wait(timeout=600) == 0, full.stdout.read()

    killed = monodyn("fit", "-w", str(workspace), "-q", *FIT)
    state = lambda: any(workspace.glob("fit/dpdy/*/train_state.pt"))  # noqa: E731
    wait_for(state, killed)
    time.sleep(0.3)  # somewhere after a checkpoint, maybe during the next one
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    status = CliRunner().invoke(app, ["status", str(workspace)])
    assert status.exit_code == 0 and "incomplete" in status.output
    resumed = monodyn("fit", "-w", str(workspace), "-q", "--resume", *FIT)
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    a = next(reference.glob("fit/dpdy/*/model.safetensors")).read_bytes()
    b = next(workspace.glob("fit/dpdy/*/model.safetensors")).read_bytes()
    assert a == b
    leftovers = [p.name for p in workspace.glob("fit/dpdy/*/.*")]
    assert leftovers == []


def _killed_then_cleaned(workspace: Path, args: list[str], temporaries, again: list[str]) -> None:
    """Run `args`, kill -9 it once a temporary output exists (polled, not a fixed sleep), check that nothing is
    under the final name, that `status` lists the leftover, and that the next run `again` removes it."""
    proc = monodyn(*args)
    wait_for(lambda: bool(temporaries()), proc, timeout=120.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = temporaries()
    assert left
    status = CliRunner().invoke(app, ["status", str(workspace)])
    assert status.exit_code == 0 and "temporary file(s) of killed runs" in status.output, status.output
    assert all(str(p) in status.output.replace("\n", "") for p in left), status.output
    rerun = monodyn(*again)
    assert rerun.wait(timeout=600) == 0, rerun.stdout.read()
    assert not temporaries() and not any(p.exists() for p in left)
    status = CliRunner().invoke(app, ["status", str(workspace)])
    assert "temporary" not in status.output, status.output


def test_render_killed_by_sigkill_leaves_no_file_under_its_name_and_the_next_run_cleans_up(workspace, tmp_path):
    if not any(workspace.glob("fit/dpdy/*/manifest.json")):
        pytest.skip("needs the fit of the test above")
    out = tmp_path / "orbit.mp4"
    _killed_then_cleaned(workspace, ["render", "-w", str(workspace), "--orbit", "30", "--frames", "400", "-o", str(out)],
                         lambda: list(tmp_path.glob(".orbit.tmp-*")),
                         ["render", "-w", str(workspace), "-q", "--frames", "2", "-o", str(tmp_path / "other.mp4")])
    assert not out.exists()


def test_export_killed_by_sigkill_leaves_no_folder_under_its_name_and_the_next_run_cleans_up(workspace, tmp_path):
    if not any(workspace.glob("fit/dpdy/*/manifest.json")):
        pytest.skip("needs the fit of the first test")
    out = tmp_path / "export"
    _killed_then_cleaned(workspace, ["export", "-w", str(workspace), "-q", "-o", str(out)],
                         lambda: list(tmp_path.glob(".export.tmp-*")),
                         ["export", "-w", str(workspace), "-q", "--static-only"])
    assert not out.exists()


WRITER = """
import sys
import numpy as np
from monodyn_cli.outputs import Outputs
from monodyn_cli.video_io import write_mp4
outputs = Outputs(sys.argv[1])
video = outputs.file(__import__("pathlib").Path(sys.argv[2]))
noise = np.random.default_rng(0).integers(0, 255, (400, 256, 256, 3), dtype=np.uint8)  # slow to encode
write_mp4(video, noise, 24.0)
"""


def test_a_kill_inside_write_mp4_leaves_only_temporaries_the_next_run_finds(tmp_path):
    """write_mp4 into a reserved temporary writes it in place: a second temporary beside an --output outside the
    workspace would be named by no journal and stay forever."""
    ws, out = tmp_path / "ws", tmp_path / "elsewhere" / "orbit.mp4"
    ws.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(ws), str(out)], cwd=ROOT,
                            env={**os.environ, "MONODYN_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    encoding = lambda: out.parent.is_dir() and any(p.stat().st_size > 0 or p.name.count(".tmp-") > 1  # noqa: E731
                                                   for p in out.parent.iterdir())
    wait_for(encoding, proc, timeout=120.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from monodyn_cli.outputs import clean_stale, stale_outputs

    left = sorted(out.parent.iterdir())
    assert left and stale_outputs(ws) == left
    clean_stale(ws)
    assert not out.parent.exists()
