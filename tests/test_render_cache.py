"""Render cache: entries round-trip, a damaged entry is re-rendered, the cache is pruned, and `monodyn render
--method gcd` asked twice for the same frames samples them once (and again when an option changes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import preprocessed_synth
from typer.testing import CliRunner

from models.cameras import Cameras, look_at
from models.registry import weights_key
from monodyn_cli import render_cache
from monodyn_cli.app import app


class _Scene:
    def __init__(self, frames, cameras, times):
        self.frames, self.cameras, self.times = frames, cameras, times


def _cameras(n: int, shift: float = 0.0) -> Cameras:
    eyes = torch.stack([torch.tensor([3.0, shift + i * 0.1, 1.0]) for i in range(n)])
    w2c = look_at(eyes, torch.zeros(n, 3), torch.tensor([0.0, 0.0, 1.0]).expand(n, 3))
    K = torch.tensor([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]]).expand(n, 3, 3)
    return Cameras(K, w2c, 64, 48)


def test_entries_round_trip_and_prune(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    depth = np.linspace(0, 2, 60, dtype=np.float32).reshape(3, 4, 5)
    render_cache.save(tmp_path, "a", rgb, depth)
    got_rgb, got_depth = render_cache.load(tmp_path, "a")
    assert np.array_equal(got_rgb, rgb)
    np.testing.assert_allclose(got_depth, depth, atol=2e-3)  # stored as float16
    assert render_cache.load(tmp_path, "missing") is None
    (tmp_path / render_cache.FOLDER / "a.npz").write_bytes(b"not a zip")
    assert render_cache.load(tmp_path, "a") is None  # damaged: rendered again, never an error
    for k in range(render_cache.KEEP + 3):
        render_cache.save(tmp_path, f"k{k}", rgb, depth)
    kept = sorted(p.stem for p in (tmp_path / render_cache.FOLDER).glob("*.npz"))
    assert len(kept) == render_cache.KEEP and "k0" not in kept and f"k{render_cache.KEEP + 2}" in kept
    assert not list((tmp_path / render_cache.FOLDER).glob(".*"))


def test_key_covers_clip_path_and_renderer():
    frames = np.zeros((2, 48, 64, 3), np.uint8)
    scene = _Scene(frames, _cameras(2), torch.tensor([0.0, 1.0]))
    cams, times = _cameras(3, 0.5), torch.tensor([0.0, 0.5, 1.0])
    base = render_cache.frames_key("r", scene, cams, times)
    assert base == render_cache.frames_key("r", scene, cams, times.clone())
    assert base != render_cache.frames_key("r2", scene, cams, times)
    assert base != render_cache.frames_key("r", scene, cams, torch.tensor([0.0, 0.5, 0.9]))
    assert base != render_cache.frames_key("r", scene, _cameras(3, 0.6), times)
    assert base != render_cache.frames_key("r", scene, cams.scaled(2.0), times)
    other = _Scene(frames.copy(), _cameras(2), torch.tensor([0.0, 1.0]))
    other.frames[1, 3, 3, 0] = 1
    assert base != render_cache.frames_key("r", other, cams, times)


def test_weights_key_changes_with_files_and_options(tmp_path):
    from models.gcd.method import GCDRenderOptions

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "w.bin").write_bytes(b"1234")
    a = weights_key("gcd", tmp_path, GCDRenderOptions())
    assert a == weights_key("gcd", tmp_path, GCDRenderOptions())
    assert a != weights_key("gcd", tmp_path, GCDRenderOptions(seed=1))
    (tmp_path / "unet" / "w.bin").write_bytes(b"12345")
    assert a != weights_key("gcd", tmp_path, GCDRenderOptions())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return preprocessed_synth(tmp_path_factory.mktemp("rcache"), seed=6, frames=6)


def test_gcd_render_twice_samples_once(workspace, tmp_path):
    import cv2

    def read_pngs(folder):
        return np.stack([cv2.imread(str(p)) for p in sorted(folder.glob("*.png"))])

    def render(name: str, *extra: str):
        out = tmp_path / f"{name}.mp4"
        res = CliRunner().invoke(app, ["render", "-w", str(workspace), "-q", "--orbit", "30", "-o", str(out),
                                       "--png", "--method", "gcd", "--steps", "2", *extra])
        assert res.exit_code == 0, res.output
        return res.output, read_pngs(out.with_suffix(""))

    first, a = render("a")
    assert "reusing" not in first and "frames/s" in first
    second, b = render("b", "--depth")
    assert "reusing" in second
    assert len(a) == 6 and np.array_equal(a, b)  # the same frames (PNGs: lossless)
    assert (tmp_path / "b-depth.mp4").exists()
    third, _ = render("c", "--seed", "1")
    assert "reusing" not in third
    assert len(list((workspace / render_cache.FOLDER).glob("*.npz"))) == 2
