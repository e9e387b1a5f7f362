"""The options of every preprocessing stage, declared once. `monodyn preprocess` generates its command-line
options from these dataclasses (the string under a field is its --help; `metadata["option"]` its flag when it
is not `--<field>`; `cli=False` keeps it off the command line), and each config's `validate()` runs before the
workspace is touched. No heavy imports here: the CLI reads this module to build `--help`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

from models.errors import InputError
from monodyn_cli.options import check_range

CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL")
_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"


def opt(default, option: str | None = None, cli: bool = True, parse=None, **kw):
    """A config field with its command-line flag (`option`), whether it is on the command line (`cli`), and a
    parser for repeatable string options (`parse`: str -> item; the field holds a tuple of items)."""
    return field(default=default, metadata={"option": option, "cli": cli, "parse": parse}, **kw)


def _choice(option: str, value, choices) -> None:
    if value not in choices:
        raise InputError(f"{option} must be one of {', '.join(map(str, choices))}, not {value!r}")


@dataclass
class DecodeConfig:
    fps: float | None = None
    """Resample to this frame rate using timestamps (default: every frame)."""
    max_frames: int | None = None
    """Keep at most this many frames (after --fps, --start, --end)."""
    max_side: int = opt(512)
    """Resize so the longer image side is at most this many pixels (0: native size)."""
    start: float | None = None
    """Start time in seconds."""
    end: float | None = None
    """End time in seconds."""
    backend: Literal["pyav", "decord"] = opt("pyav", "--decoder")
    """Video decoder: pyav, or decord (faster, same frames)."""

    def validate(self) -> None:
        check_range("--fps", self.fps, 1e-3, 1000)
        check_range("--max-frames", self.max_frames, 1, 1_000_000)
        if self.max_side != 0:
            check_range("--max-side", self.max_side, 16, 16384)
        check_range("--start", self.start, 0, 1e7)
        check_range("--end", self.end, 0, 1e7)
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise InputError(f"--end ({self.end}) must be after --start ({self.start})")
        _choice("--decoder", self.backend, ("pyav", "decord"))


@dataclass
class FlowConfig:
    backend: Literal["dis", "raft"] = opt("dis", "--flow")
    """Optical flow: dis (OpenCV, no weights) or raft (RAFT weights, more accurate)."""
    raft_checkpoint: str | None = None
    """RAFT checkpoint raft-small.pth / raft-things.pth (default: $MONODYN_RAFT_CHECKPOINT, ~/.cache/monodyn)."""
    iters: int | None = opt(None, "--raft-iters")
    """RAFT refinement iterations (default 12 small / 20 large)."""
    dis_preset: Literal["ultrafast", "fast", "medium"] = "medium"
    """DIS quality preset: ultrafast, fast, medium."""
    device: str = opt("cpu", cli=False)
    """Torch device for RAFT (from --device)."""

    def validate(self) -> None:
        _choice("--flow", self.backend, ("dis", "raft"))
        _choice("--dis-preset", self.dis_preset, ("ultrafast", "fast", "medium"))
        check_range("--raft-iters", self.iters, 1, 100)

    def key(self) -> dict:
        """The cache config: what changes the output (not the device)."""
        return {"backend": self.backend, "raft_checkpoint": self.raft_checkpoint, "iters": self.iters,
                "dis_preset": self.dis_preset}


def parse_point(text: str) -> tuple[float, float, int]:
    """'X,Y' or 'X,Y@FRAME' -> (x, y, frame)."""
    m = re.fullmatch(_NUM + "," + _NUM + r"(?:@\s*(\d+)\s*)?", text)
    if not m:
        raise InputError(f"--point {text!r}: expected X,Y or X,Y@FRAME (pixels of the original video, frame index)")
    return float(m[1]), float(m[2]), int(m[3] or 0)


def parse_box(text: str) -> tuple[float, float, float, float, int]:
    """'X0,Y0,X1,Y1' or 'X0,Y0,X1,Y1@FRAME' -> (x0, y0, x1, y1, frame)."""
    m = re.fullmatch(_NUM + "," + _NUM + "," + _NUM + "," + _NUM + r"(?:@\s*(\d+)\s*)?", text)
    if not m:
        raise InputError(f"--box {text!r}: expected X0,Y0,X1,Y1 or X0,Y0,X1,Y1@FRAME (pixels of the original video)")
    return float(m[1]), float(m[2]), float(m[3]), float(m[4]), int(m[5] or 0)


@dataclass
class SegmentConfig:
    backend: Literal["motion", "sam", "sam2"] = opt("motion", "--segment")
    """Segmentation: motion (from optical flow, no weights), sam (segment-anything + flow tracking) or sam2
    (SAM 2 video)."""
    points: tuple[tuple[float, float, int], ...] = opt((), "--point", parse=parse_point)
    """sam/sam2 prompt X,Y[@FRAME] in original video pixels; one object per prompt (repeatable)."""
    boxes: tuple[tuple[float, float, float, float, int], ...] = opt((), "--box", parse=parse_box)
    """sam/sam2 prompt X0,Y0,X1,Y1[@FRAME] in original video pixels (repeatable)."""
    min_area: float = opt(0.002, "--min-object-area")
    """motion: smallest object, as a fraction of the image area."""
    max_objects: int = 8
    """motion: keep at most this many objects (the largest over the video)."""
    refine: bool = opt(True, "--refine-masks")
    """motion: snap mask edges to colour edges (GrabCut in a narrow band; about half the time)."""
    sam_model: Literal["vit_b", "vit_l", "vit_h"] = "vit_b"
    """sam: which official SAM checkpoint: vit_b, vit_l, vit_h."""
    sam_checkpoint: str | None = None
    """sam: checkpoint file (default: $MONODYN_SAM_VIT_B / _L / _H, or ~/.cache/monodyn)."""
    sam2_checkpoint: str | None = None
    """sam2: folder saved with save_pretrained (default: $MONODYN_SAM2, ~/.cache/monodyn/sam2, or the Hugging
    Face cache of facebook/sam2.1-hiera-tiny)."""
    device: str = opt("auto", cli=False)
    """Torch device for sam/sam2 (from --device)."""

    def validate(self) -> None:
        _choice("--segment", self.backend, ("motion", "sam", "sam2"))
        _choice("--sam-model", self.sam_model, ("vit_b", "vit_l", "vit_h"))
        check_range("--min-object-area", self.min_area, 0, 1)
        check_range("--max-objects", self.max_objects, 1, 255)
        if self.backend != "motion" and not (self.points or self.boxes):
            raise InputError(f"--segment {self.backend} needs prompts: --point X,Y[@FRAME] or --box "
                             "X0,Y0,X1,Y1[@FRAME]")

    def key(self) -> dict:
        """The cache config: the options that change this backend's output (not the device)."""
        keep = {"motion": ("min_area", "max_objects", "refine"),
                "sam": ("points", "boxes", "sam_model", "sam_checkpoint"),
                "sam2": ("points", "boxes", "sam2_checkpoint")}[self.backend]
        return {"backend": self.backend, **{k: getattr(self, k) for k in keep}}


@dataclass
class SfmConfig:
    method: Literal["colmap", "none"] = opt("colmap", "--sfm")
    """colmap (camera poses from COLMAP, with fallbacks) or none (one fixed camera, like --static-camera)."""
    static_camera: bool = opt(False, "--static-camera")
    """The camera does not move: skip SfM and use one fixed camera (K from --focal, else from --fov)."""
    focal: float | None = None
    """Focal length in pixels of the input's native resolution (default: estimated; a --fov guess if it cannot be)."""
    fov: float = 60.0
    """Field of view in degrees across the longer image side, assumed when the focal length is neither given
    nor estimable (fixed camera); 1..170."""
    camera_model: Literal["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL"] = opt("SIMPLE_PINHOLE", "--sfm-camera-model")
    """COLMAP camera model shared by all frames: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL (its distortion is
    recorded, not applied)."""
    max_frames: int = opt(200, "--sfm-max-frames")
    """Run COLMAP on at most this many evenly spaced frames; the others get interpolated poses."""
    max_features: int = opt(4096, "--sfm-max-features")
    """SIFT features per frame."""
    overlap: int = opt(10, "--sfm-overlap")
    """Sequential matching: every frame is matched with this many following frames."""
    mask_dilate: int = opt(5, "--sfm-mask-dilate")
    """Grow the object masks by this many pixels before excluding them from background features."""
    min_registered: float = opt(0.5, "--sfm-min-registered")
    """SfM counts as failed when it registers less than this fraction of frames."""
    min_baseline: float = opt(0.01, "--sfm-min-baseline")
    """SfM counts as failed when the camera travels less than this fraction of the median scene depth."""
    threads: int = opt(2, "--sfm-threads")
    """CPU threads for COLMAP (1: slower but the same result on every run; with more, results vary slightly)."""
    seed: int = opt(0, "--sfm-seed")
    """Random seed for COLMAP's RANSAC and mapper."""

    def validate(self) -> None:
        _choice("--sfm", self.method, ("colmap", "none"))
        _choice("--sfm-camera-model", self.camera_model, CAMERA_MODELS)
        if self.focal is not None and not (math.isfinite(self.focal) and self.focal > 0):
            raise InputError(f"--focal must be a positive number of pixels, got {self.focal}")
        check_range("--fov", self.fov, 1, 170)
        check_range("--sfm-max-frames", self.max_frames, 2, 100_000)
        check_range("--sfm-max-features", self.max_features, 64, 1_000_000)
        check_range("--sfm-overlap", self.overlap, 1, 1000)
        check_range("--sfm-mask-dilate", self.mask_dilate, 0, 256)
        check_range("--sfm-min-registered", self.min_registered, 0, 1)
        check_range("--sfm-min-baseline", self.min_baseline, 0, 10)
        check_range("--sfm-threads", self.threads, 1, 256)


@dataclass
class ObjectSfmConfig:
    enabled: bool = opt(False, "--per-object-sfm")
    """Also run SfM on each segmented object's pixels (a stage of its own: camera-to-object poses that OSN uses
    where COLMAP succeeds; OSN poses objects from flow tracks without it)."""

    def validate(self) -> None:
        pass  # COLMAP's options are the sfm stage's


@dataclass
class DepthConfig:
    backend: Literal["auto", "depth-anything", "sfm", "none"] = opt("auto", "--depth")
    """Depth: depth-anything (dense, needs its weights), sfm (sparse SfM points only) or none; auto =
    depth-anything when its weights are found, else sfm."""
    checkpoint: str | None = opt(None, "--depth-checkpoint")
    """Depth Anything folder saved with save_pretrained (default: $MONODYN_DEPTH_ANYTHING,
    ~/.cache/monodyn/depth-anything, or the Hugging Face cache)."""
    input_size: int = opt(518, "--depth-input-size")
    """Longer side of the Depth Anything input in pixels (rounded to a multiple of 14)."""
    batch_size: int = opt(4, "--depth-batch-size")
    """Frames per Depth Anything batch."""
    min_points: int = opt(20, "--depth-min-points")
    """Frames with fewer usable SfM points use the scale/shift fitted over the whole clip."""
    mask_dynamic: bool = opt(True, "--depth-mask-dynamic")
    """Ignore SfM points on moving objects (segment stage masks) when aligning."""
    max_depth_factor: float = opt(20.0, "--max-depth-factor")
    """Dense depth beyond this many times the 95th percentile SfM depth is marked unknown (0)."""
    device: str = opt("auto", cli=False)
    """Torch device for Depth Anything (from --device)."""

    def validate(self) -> None:
        _choice("--depth", self.backend, ("auto", "depth-anything", "sfm", "none"))
        check_range("--depth-input-size", self.input_size, 14, 4096)
        check_range("--depth-batch-size", self.batch_size, 1, 1024)
        check_range("--depth-min-points", self.min_points, 1, 1_000_000)
        check_range("--max-depth-factor", self.max_depth_factor, 1, 1e6)

    def key(self) -> dict:
        """The cache config: options that change the outputs (device and batch size do not)."""
        d = {"backend": self.backend}
        if self.backend == "depth-anything":
            d.update(checkpoint=self.checkpoint, input_size=self.input_size, min_points=self.min_points,
                     mask_dynamic=self.mask_dynamic, max_depth_factor=self.max_depth_factor)
        return d


# stage name -> its config, in the order the stages run
STAGE_CONFIGS: dict[str, type] = {"decode": DecodeConfig, "flow": FlowConfig, "segment": SegmentConfig,
                                  "sfm": SfmConfig, "object_sfm": ObjectSfmConfig, "depth": DepthConfig}
