"""What each preprocessing stage writes, declared once: the stage writes these files and `load_scene` reads
them, through the same names. An `Out` is the file's path in the stage folder (a `str`, so `folder / Out`
works) plus the `Scene` field it fills, or None for files that are for people and other tools (previews,
COLMAP model, logs). `tests/test_scene_contract.py` runs the real stages and checks that every file with a
Scene field lands in `Scene`.

Templates: `{id}` is an object id (per-object SfM).
"""

from __future__ import annotations


class Out(str):
    """A stage output file name that knows which `Scene` field it fills."""

    into: str | None

    def __new__(cls, name: str, into: str | None = None):
        obj = super().__new__(cls, name)
        obj.into = into
        return obj

    def format_id(self, object_id: int) -> str:
        return self.format(id=object_id)


class DECODE:
    frames = Out("frames.npy", "frames")  # (T,H,W,3) uint8 RGB
    timestamps = Out("timestamps.npy", "timestamps")  # (T,) float64 seconds
    meta = Out("meta.json", "fps")  # size, native size, fps, source hash


class FLOW:
    flow_fw = Out("flow_fw.npy", "flow_fw")  # (T-1,H,W,2) float16 pixels, frame t -> t+1
    flow_bw = Out("flow_bw.npy", "flow_bw")  # (T-1,H,W,2) float16 pixels, frame t+1 -> t
    valid_fw = Out("valid_fw.npy", "valid_fw")  # (T-1,H,W) bool forward-backward consistent
    valid_bw = Out("valid_bw.npy", "valid_bw")
    summary = Out("flow.json")
    preview = Out("preview.png")


class SEGMENT:
    instances = Out("instances.npy", "instances")  # (T,H,W) uint8 object ids, 0 = background
    objects = Out("objects.json")  # per object: area, frames
    preview_video = Out("preview.mp4")
    preview = Out("preview.png")


class SFM:
    cameras = Out("cameras.json", "cameras")  # models.cameras.Cameras.to_dict(), one camera per frame
    info = Out("sfm.json", "no_parallax")  # mode (colmap / fallbacks), bounds -> Scene.center/radius
    registered = Out("registered.npy")  # (T,) bool frames COLMAP registered (others interpolated)
    points = Out("points3d.npy", "points")  # (N,3) float32 world
    points_rgb = Out("points_rgb.npy", "points_rgb")  # (N,3) uint8
    sparse_depth = Out("sparse_depth.npz")  # observations frame/xy/depth/point (the depth stage's sfm backend)
    transforms = Out("transforms.json")  # nerfstudio cameras of the frames
    images = Out("images")  # the frames as PNGs (COLMAP's and transforms.json's)
    colmap = Out("colmap/sparse/0")  # COLMAP model
    log = Out("colmap.log")


class OBJECT_SFM:
    """The optional per-object SfM stage (--per-object-sfm)."""

    objects = Out("objects.json", "object_sfm")  # per object: ok, reason, hint, bounds
    object_cameras = Out("objects/{id}/cameras.json", "object_cameras")  # camera-from-object per frame
    object_registered = Out("objects/{id}/registered.npy")
    object_points = Out("objects/{id}/points3d.npy")
    object_points_rgb = Out("objects/{id}/points_rgb.npy")
    object_sparse_depth = Out("objects/{id}/sparse_depth.npz", "object_depth")  # -> (T,H,W) z in object units
    log = Out("colmap.log")


class DEPTH:
    depth = Out("depth.npy", "depth")  # (T,H,W) float16 z-depth in world units, 0 = unknown
    meta = Out("depth_meta.json")  # backend, alignment per frame
    preview = Out("preview.png")


STAGE_OUTPUTS: dict[str, type] = {"decode": DECODE, "flow": FLOW, "segment": SEGMENT, "sfm": SFM,
                                   "object_sfm": OBJECT_SFM, "depth": DEPTH}
OPTIONAL_STAGES = ("object_sfm",)  # run only when asked for (--per-object-sfm)


def outputs_of(stage: str) -> list[Out]:
    """Every declared output of `stage`."""
    spec = STAGE_OUTPUTS[stage]
    return [v for k, v in vars(spec).items() if isinstance(v, Out)]
