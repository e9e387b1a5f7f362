"""Decode stage: a video file, a folder of images or a glob -> frames.npy (T,H,W,3) uint8 + timestamps + meta.

Video goes through PyAV (decord is an optional faster backend that yields the same frames). Rotation metadata
(phone videos) is applied, timestamps come from the stream (variable frame rate is fine), `--fps` picks the
first frame at or after each tick of the requested rate, and 10-bit / 16-bit sources are reduced to 8 bits.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from models.errors import InputError
from monodyn_cli.stages.configs import DecodeConfig
from monodyn_cli.stages.outputs import DECODE
from monodyn_cli.workspace import StageContext

NAME, VERSION = "decode", 1
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
IMAGE_SEQUENCE_FPS = 24.0  # assumed rate of a folder of frames (DAVIS is 24 fps)
MIN_FRAME_SIDE = 16  # smaller frames break the flow stage (OpenCV's DIS needs 12 px) and leave SfM nothing to match


@dataclass
class Source:
    kind: str          # video | images
    files: list[Path]  # one video, or the image files in order
    label: str         # what the user passed

    def content_hash(self) -> str:
        """sha256 of the bytes (and names, for sequences): the cache key changes if the input changes."""
        h = hashlib.sha256()
        for f in self.files:
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()


def resolve_source(spec: str | Path) -> Source:
    """Find what the user means: a video file, a folder of images (or a folder with images/ inside), a glob."""
    text = str(spec)
    if any(c in text for c in "*?[") and not Path(text).exists():
        files = [Path(p) for p in _natsorted(globlib.glob(text)) if Path(p).suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise InputError(f"no images match {text}")
        return Source("images", files, text)
    path = Path(text)
    if not path.exists():
        if path.is_symlink():
            try:
                path.resolve(strict=True)
            except (RuntimeError, OSError) as e:
                if "loop" in str(e).lower() or getattr(e, "errno", None) == 40:
                    raise InputError(f"{path} is a symlink loop (it points back to itself): pass the real file") from None
            raise InputError(f"{path} is a broken symlink (its target {os.readlink(path)} does not exist)")
        raise InputError(f"no such file or folder: {path}")
    if path.is_dir():
        try:
            entries = list(path.iterdir())
        except PermissionError:
            raise InputError(f"cannot read folder {path} (permission denied)") from None
        files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not files and (path / "images").is_dir():
            return resolve_source(path / "images")
        if not files:
            raise InputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
        return Source("images", _natsorted(files, key=lambda p: p.name), text)
    if path.stat().st_size == 0:
        raise InputError(f"not a video: {path} is an empty file (0 bytes)")
    return Source("video", [path], text)


# ---- frame iterators: yield (timestamp seconds, HxWx3 uint8) -------------------------------------------

def _rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    """Apply a display rotation (counter-clockwise degrees, as FFmpeg reports it) to get the upright image."""
    turns = int(round(degrees / 90.0)) % 4
    if turns == 0:
        return img
    # FFmpeg's display matrix angle is counter-clockwise; showing the video upright means rotating the
    # stored picture by the same angle counter-clockwise (np.rot90 rotates counter-clockwise).
    return np.ascontiguousarray(np.rot90(img, k=turns))


def _natsorted(items, key=str):
    """Natural order (frame2 before frame10); natsort is only needed for image sequences."""
    try:
        from natsort import natsorted
    except ImportError:
        raise InputError("reading an image sequence needs natsort: `pip install natsort`") from None
    return natsorted(items, key=key)


def _iter_pyav(path: Path) -> Iterator[tuple[float, np.ndarray]]:
    try:
        import av
    except ImportError:
        raise InputError("decoding a video needs PyAV: `pip install av` (or --decoder decord with decord "
                         "installed)") from None

    try:
        container = av.open(str(path))
    except Exception as e:  # PyAV raises several error types for non-media input
        raise InputError(f"not a video: {path} (PyAV: {_first_line(e)})") from None
    with container:
        if not container.streams.video:
            raise InputError(f"no video stream in {path}")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else i / float(stream.average_rate or IMAGE_SEQUENCE_FPS)
                # rgb24 conversion maps 10-bit (and other) pixel formats to 8 bits via swscale
                img = frame.to_ndarray(format="rgb24")
                yield float(t), _rotate(img, getattr(frame, "rotation", 0) or 0)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"cannot decode {path} (PyAV: {_first_line(e)})") from None


def _iter_decord(path: Path) -> Iterator[tuple[float, np.ndarray]]:
    try:
        import decord
    except ImportError:
        raise InputError("decord is not installed; use --decoder pyav or `pip install decord`") from None
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    except Exception as e:
        raise InputError(f"not a video: {path} (decord: {_first_line(e)})") from None
    times = reader.get_frame_timestamp(range(len(reader)))[:, 0]
    for i in range(len(reader)):
        yield float(times[i]), reader[i].asnumpy()


def _iter_images(files: list[Path]) -> Iterator[tuple[float, np.ndarray]]:
    first_shape = None
    for i, f in enumerate(files):
        img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise InputError(f"cannot read image {f}")
        img = _to_rgb8(img)
        if first_shape is None:
            first_shape = img.shape
        elif img.shape != first_shape:
            raise InputError(f"mixed image sizes: {files[0].name} is {first_shape[1]}x{first_shape[0]} but "
                             f"{f.name} is {img.shape[1]}x{img.shape[0]}; resize them to one size first")
        yield i / IMAGE_SEQUENCE_FPS, img


def _to_rgb8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img.astype(np.float32) * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    elif img.shape[2] == 4:
        img = img[..., :3]
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if img.shape[2] == 3 else img


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# ---- selection ----------------------------------------------------------------------------------------

def select_frames(stream: Iterator[tuple[float, np.ndarray]], cfg: DecodeConfig
                  ) -> Iterator[tuple[float, np.ndarray]]:
    """Apply --start/--end (seconds), --fps (first frame at or after each tick) and --max-frames, lazily."""
    next_tick = None
    kept = 0
    for t, img in stream:
        if cfg.start is not None and t < cfg.start - 1e-6:
            continue
        if cfg.end is not None and t > cfg.end + 1e-6:
            break
        if cfg.fps:
            if next_tick is None:
                next_tick = t
            if t + 1e-6 < next_tick:
                continue
            while next_tick <= t + 1e-6:
                next_tick += 1.0 / cfg.fps
        yield t, img
        kept += 1
        if cfg.max_frames and kept >= cfg.max_frames:
            break


def resize_max_side(img: np.ndarray, max_side: int | None) -> np.ndarray:
    h, w = img.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return img
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def decode(source: Source, cfg: DecodeConfig, advance=lambda n=1: None
           ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Decode and select frames. Returns frames (T,H,W,3) uint8, timestamps (T,) seconds, meta dict."""
    if source.kind == "video":
        raw = _iter_decord(source.files[0]) if cfg.backend == "decord" else _iter_pyav(source.files[0])
    else:
        raw = _iter_images(source.files)
    frames, times, native = [], [], None
    for t, img in select_frames(raw, cfg):
        native = native or (img.shape[1], img.shape[0])
        frames.append(resize_max_side(img, cfg.max_side))
        times.append(t)
        advance(1)
    if frames:
        check_frame_size(frames[0].shape, native, cfg.max_side)
    if len(frames) < 2:
        what = "no frames" if not frames else "only one frame"
        raise InputError(f"{source.label} gives {what} after selection; monodyn needs a video of at least 2 frames"
                         + (" (check --start/--end/--fps)" if (cfg.start or cfg.end or cfg.fps) else ""))
    times_arr = np.asarray(times, dtype=np.float64)
    fps = (len(times) - 1) / (times_arr[-1] - times_arr[0]) if times_arr[-1] > times_arr[0] else IMAGE_SEQUENCE_FPS
    meta = {"num_frames": len(frames), "width": frames[0].shape[1], "height": frames[0].shape[0],
            "native_width": native[0], "native_height": native[1], "fps": round(float(fps), 4),
            "source": source.label, "source_kind": source.kind}
    return np.stack(frames), times_arr, meta


def check_frame_size(shape: tuple[int, ...], native: tuple[int, int], max_side: int | None) -> None:
    """Refuse frames (H, W, 3) whose short side is below MIN_FRAME_SIDE, naming --max-side when it shrank them."""
    h, w = shape[:2]
    if min(h, w) >= MIN_FRAME_SIDE:
        return
    cause = (f" after --max-side {max_side} (the input is {native[0]}x{native[1]}): raise --max-side"
             if (w, h) != tuple(native) else ": use a larger video or larger images")
    raise InputError(f"frames are {w}x{h}, smaller than the {MIN_FRAME_SIDE} px per side the pipeline needs{cause}")


def estimate_count(source: Source) -> int | None:
    """Frame count for the progress bar (None when the container does not say)."""
    if source.kind == "images":
        return len(source.files)
    try:
        import av

        with av.open(str(source.files[0])) as c:
            return c.streams.video[0].frames or None
    except Exception:
        return None


def config_for(source: Source, cfg: DecodeConfig) -> dict:
    """The cache config: the options plus the input's content hash (a changed input is a new key)."""
    return {**asdict(cfg), "source_sha256": source.content_hash()}


def run(ctx: StageContext, source: Source, cfg: DecodeConfig) -> list[str]:
    total = estimate_count(source)
    if cfg.max_frames and total:
        total = min(total, cfg.max_frames)
    with ctx.progress.task("decode", total) as advance:
        frames, times, meta = decode(source, cfg, advance)
    if frames[:: max(1, len(frames) // 16)].std() < 1.0:  # within one grey level: nothing to reconstruct
        raise InputError(f"{source.label} is blank: every frame is one flat colour ({int(frames[0, 0, 0, 0])}, "
                         f"{int(frames[0, 0, 0, 1])}, {int(frames[0, 0, 0, 2])}); check the video")
    meta["source_sha256"] = ctx.config["source_sha256"]
    np.save(ctx.out / DECODE.frames, frames)
    np.save(ctx.out / DECODE.timestamps, times)
    (ctx.out / DECODE.meta).write_text(json.dumps(meta, indent=2))
    ctx.extra["summary"] = f"{meta['num_frames']} frames {meta['width']}x{meta['height']} @ {meta['fps']:.3g} fps"
    return [DECODE.frames, DECODE.timestamps, DECODE.meta]
