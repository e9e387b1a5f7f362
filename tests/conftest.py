"""Shared fixtures: small videos written with PyAV, and the path to ../shared when it is present."""

from __future__ import annotations

import os
import struct
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see monodyn_cli/__init__.py

# Shapes are annotated with jaxtyping on public tensor functions; in the tests they are also checked at run time
# (beartype through jaxtyping's import hook) for the modules listed, so an annotation that lies fails a test.
from beartype import BeartypeConf, beartype  # noqa: E402
from jaxtyping import install_import_hook  # noqa: E402

typechecker = beartype(conf=BeartypeConf(is_pep484_tower=True))  # an int is a float, as PEP 484 says
install_import_hook(["models.registry", "models.cameras", "models.filters", "models.flow_ops"],
                    "conftest.typechecker")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def requires_shared(*parts: str):
    """Skip a test when ../shared (or a file in it) is absent."""
    path = SHARED.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not present")


def pattern_frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """(n,h,w,3) uint8 frames: a smooth random texture with a bright square moving 2 px per frame."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
    base = np.kron(base, np.ones((8, 8, 1), np.uint8))[:h, :w]  # 8-px blocks survive 4:2:0 chroma
    frames = np.repeat(base[None], n, axis=0).copy()
    for i in range(n):
        x = (4 + 2 * i) % (w - 12)
        frames[i, 10:22, x:x + 12] = 255
    return frames


def write_video(path: Path, frames: np.ndarray, fps: int = 10, pts_ms: list[int] | None = None,
                pix_fmt: str = "yuv420p", codec: str = "libx264") -> Path:
    """Encode frames (T,H,W,3) uint8 near-losslessly; `pts_ms` gives explicit (variable) timestamps."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        stream.options = {"crf": "0"} if codec == "libx264" else {}
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def set_mp4_rotation(path: Path, matrix: tuple[int, int, int, int]) -> None:
    """Rewrite the display matrix in the mp4 track header (how phones record portrait video)."""
    data = bytearray(path.read_bytes())
    i = data.find(b"tkhd")
    version = data[i + 4]
    offset = i + 8 + (20 if version == 0 else 32) + 16  # skip times/ids, reserved, layer/group/volume
    a, b, c, d = matrix
    data[offset:offset + 36] = struct.pack(">9i", a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))


@pytest.fixture
def one_torch_thread():
    """One torch thread for tests of many small ops (fits): thread start-up costs more than it saves there."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def preprocessed_synth(root: Path, seed: int, frames: int, width: int = 96, height: int = 72) -> Path:
    """A small synthetic clip (`monodyn synth` scene `seed`) preprocessed into `root/ws` through the CLI."""
    from typer.testing import CliRunner

    from monodyn_cli.app import app
    from monodyn_cli.synth import SynthConfig, synthesize

    synthesize(SynthConfig(seed=seed, frames=frames, width=width, height=height, heldout_azimuths=(),
                           fixed_cameras=0), root / "s")
    ws = root / "ws"
    res = CliRunner().invoke(app, ["preprocess", str(root / "s" / "input.mp4"), "-w", str(ws), "-q",
                                   "--sfm-threads", "1", "--no-refine-masks"])
    assert res.exit_code == 0, res.output
    return ws
