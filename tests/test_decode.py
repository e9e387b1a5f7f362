"""Decode stage: every input kind, timestamps, rotation, bit depth, and each kind of bad input."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from conftest import pattern_frames, set_mp4_rotation, write_video

from models.errors import InputError
from monodyn_cli.stages.decode import DecodeConfig, decode, resolve_source


def _decode(path, **kw):
    cfg = DecodeConfig(max_side=0, **kw)
    return decode(resolve_source(path), cfg)


def test_video_frames_match_encoded_frames(tmp_path):
    frames = pattern_frames(6)
    path = write_video(tmp_path / "a.mp4", frames, fps=10)
    out, times, meta = _decode(path)
    assert out.shape == frames.shape and out.dtype == np.uint8
    # crf 0 with yuv420p chroma subsampling: close, not exact
    assert np.abs(out.astype(int) - frames.astype(int)).mean() < 6
    np.testing.assert_allclose(times, np.arange(6) / 10, atol=1e-6)
    assert meta["fps"] == pytest.approx(10)


def test_decord_gives_the_same_frames(tmp_path):
    pytest.importorskip("decord")
    path = write_video(tmp_path / "a.mp4", pattern_frames(5), fps=10)
    a, ta, _ = _decode(path)
    b, tb, _ = _decode(path, backend="decord")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(ta, tb, atol=1e-3)


def test_variable_frame_rate_uses_timestamps(tmp_path):
    pts = [0, 100, 150, 400, 450, 500, 900, 1000]  # ms, irregular
    path = write_video(tmp_path / "vfr.mp4", pattern_frames(len(pts)), pts_ms=pts)
    _, times, _ = _decode(path)
    np.testing.assert_allclose(times, np.array(pts) / 1000, atol=1e-3)
    # 5 fps ticks at 0, .2, .4, .6, .8, 1.0 -> first frame at or after each tick
    _, times5, _ = _decode(path, fps=5)
    np.testing.assert_allclose(times5, [0.0, 0.4, 0.9, 1.0], atol=1e-3)


def test_fps_start_end_and_max_frames(tmp_path):
    path = write_video(tmp_path / "a.mp4", pattern_frames(20), fps=10)
    _, times, _ = _decode(path, fps=5)
    np.testing.assert_allclose(times, np.arange(0, 2.0, 0.2), atol=1e-6)
    _, times, _ = _decode(path, start=0.5, end=1.0)
    np.testing.assert_allclose(times, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0], atol=1e-6)
    out, _, _ = _decode(path, max_frames=3)
    assert len(out) == 3


def test_rotation_metadata_is_applied(tmp_path):
    frames = pattern_frames(3, h=32, w=64)
    frames[:, :, :8] = 0  # a black stripe on the left of the stored picture
    path = write_video(tmp_path / "portrait.mp4", frames)
    set_mp4_rotation(path, (0, 1, -1, 0))  # phone portrait: display rotated 90 degrees clockwise
    out, _, meta = _decode(path)
    assert out.shape[1:3] == (64, 32)
    # rotated clockwise, the stored left edge becomes the top
    assert out[0, :6].mean() < 20 and out[0, 10:].mean() > 40


def test_odd_size_and_max_side(tmp_path):
    frames = pattern_frames(3, h=50, w=70)[:, :49, :69]
    folder = tmp_path / "odd"
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i}.png"), f[..., ::-1])
    out, _, meta = _decode(folder)
    assert out.shape == (3, 49, 69, 3)
    np.testing.assert_array_equal(out, frames)  # PNG is lossless, and RGB order is kept
    out, _, _ = decode(resolve_source(folder), DecodeConfig(max_side=35))
    assert out.shape[1:3] == (25, 35)


def test_ten_bit_video(tmp_path):
    frames = pattern_frames(4)
    path = write_video(tmp_path / "10bit.mp4", frames, pix_fmt="yuv420p10le")
    out, _, _ = _decode(path)
    # 10-bit 4:2:0 round trip through swscale's colour conversion: close to the source, not exact; a wrong
    # bit-depth interpretation would be off by ~100 levels
    assert out.dtype == np.uint8 and np.abs(out.astype(int) - frames.astype(int)).mean() < 12


def test_image_folder_sorted_naturally_and_16_bit(tmp_path):
    frames = pattern_frames(11)
    for i, f in enumerate(frames):  # 0..10: lexical order would put 10 before 2
        cv2.imwrite(str(tmp_path / f"frame{i}.png"), f[..., ::-1].astype(np.uint16) * 257)
    out, _, _ = _decode(tmp_path)
    np.testing.assert_array_equal(out, frames)


def test_glob_and_davis_style_folder(tmp_path):
    images = tmp_path / "clip" / "images"
    images.mkdir(parents=True)
    for i, f in enumerate(pattern_frames(3)):
        cv2.imwrite(str(images / f"{i:05d}.png"), f)
    assert len(_decode(tmp_path / "clip")[0]) == 3
    assert len(_decode(str(images / "*.png"))[0]) == 3


@pytest.mark.parametrize("case", ["missing", "empty", "text", "one_frame", "zero_frames_window", "mixed_sizes",
                                  "empty_folder", "unreadable_folder", "corrupt_image"])
def test_bad_input_is_a_one_line_input_error(tmp_path, case, monkeypatch):
    if case == "missing":
        target = tmp_path / "nope.mp4"
    elif case == "empty":
        target = tmp_path / "empty.mp4"
        target.write_bytes(b"")
    elif case == "text":
        target = tmp_path / "notes.mp4"
        target.write_text("not a video\n" * 10)
    elif case == "one_frame":
        target = write_video(tmp_path / "one.mp4", pattern_frames(1))
    elif case == "zero_frames_window":
        target = write_video(tmp_path / "a.mp4", pattern_frames(5), fps=10)
    elif case == "mixed_sizes":
        target = tmp_path / "mixed"
        target.mkdir()
        cv2.imwrite(str(target / "0.png"), pattern_frames(1)[0])
        cv2.imwrite(str(target / "1.png"), pattern_frames(1, h=40)[0])
    elif case == "empty_folder":
        target = tmp_path / "nothing"
        target.mkdir()
    elif case == "unreadable_folder":
        target = tmp_path / "locked"
        target.mkdir()
        target.chmod(0)
        if os.geteuid() == 0:  # root reads any folder: make listing fail the way it does for a user
            real_iterdir = type(target).iterdir

            def denied(self):
                if self == target:
                    raise PermissionError(13, "Permission denied")
                return real_iterdir(self)
            monkeypatch.setattr(type(target), "iterdir", denied)
    elif case == "corrupt_image":
        target = tmp_path / "bad"
        target.mkdir()
        cv2.imwrite(str(target / "0.png"), pattern_frames(1)[0])
        (target / "1.png").write_bytes(b"\x89PNG garbage")
    kw = {"start": 5.0} if case == "zero_frames_window" else {}
    with pytest.raises(InputError) as err:
        _decode(target, **kw)
    assert "\n" not in str(err.value)


def test_frames_too_small_for_the_pipeline_are_refused_at_decode(tmp_path):
    """8x8 frames used to pass decode and fail in the flow stage with OpenCV's own text; 16x16 go through."""
    small = write_video(tmp_path / "small.mp4", pattern_frames(3, h=8, w=8), fps=10)
    with pytest.raises(InputError, match=r"frames are 8x8, smaller than the 16 px .*larger video") as err:
        _decode(small)
    assert "\n" not in str(err.value)
    wide = write_video(tmp_path / "wide.mp4", pattern_frames(3, h=32, w=96), fps=10)
    with pytest.raises(InputError, match=r"frames are 24x8, .*after --max-side 24 \(the input is 96x32\): raise --max-side"):
        decode(resolve_source(wide), DecodeConfig(max_side=24))
    assert _decode(write_video(tmp_path / "ok.mp4", pattern_frames(3, h=16, w=16), fps=10))[0].shape == (3, 16, 16, 3)
