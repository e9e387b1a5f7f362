"""Video files: writing mp4 (H.264) with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from models.files import atomic_write


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, crf: int = 18) -> Path:
    """Encode (T,H,W,3) uint8 RGB frames as H.264 yuv420p mp4 at `fps` frames per second.

    4:2:0 chroma needs even sizes: odd widths/heights are padded by repeating the last column/row (the
    video is then one pixel larger than `frames`). Lower crf = higher quality (0 is lossless luma, 18
    visually lossless). Written to a temporary file beside `path`, then renamed (models.files.atomic_write),
    so a crash never leaves a truncated video under the final name. Without PyAV (e.g. a GPU host with OpenCV
    only) OpenCV writes the mp4 (MPEG-4 part 2, `crf` ignored), which players other than Chrome/Firefox open.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"write_mp4 needs (T,H,W,3) uint8 frames with T >= 1, got {frames.shape} {frames.dtype}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    try:
        import av  # noqa: F401
    except ImportError:
        return atomic_write(Path(path), lambda tmp: _write_mp4_opencv(tmp, frames, fps))
    return atomic_write(Path(path), lambda tmp: _write_mp4_pyav(tmp, frames, fps, crf))


def _write_mp4_pyav(path: Path, frames: np.ndarray, fps: float, crf: int) -> None:
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(int(crf))}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_mp4_opencv(path: Path, frames: np.ndarray, fps: float) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (frames.shape[2], frames.shape[1]))
    try:
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write {path.name} and PyAV is not installed: `pip install av`")
        for img in frames:
            writer.write(np.ascontiguousarray(img[..., ::-1]))
    finally:
        writer.release()
