"""`monodyn --help` and every command's `--help` start without importing torch, numpy's heavy users, cv2,
scipy or pycolmap (measured: 0.3-0.5 s on the 2-core box, from 3.7-4.3 s before)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "cv2", "scipy", "pycolmap", "av", "matplotlib", "diffusers", "transformers", "numba")
COMMANDS = ["", "preprocess", "fit", "render", "eval", "export", "synth", "status", "doctor", "report", "train",
            "train gcd", "train dyst", "osn", "dyst", "fit --method osn", "render --method osn", "view", "batch",
            "weights", "weights list", "weights fetch", "weights path"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_imports_nothing_heavy(command):
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom monodyn_cli.app import app\n"
            f"r = CliRunner().invoke(app, {command.split() + ['--help']!r})\n"
            "assert r.exit_code == 0, r.output\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", f"monodyn {command} --help imported {res.stdout.strip()}"
