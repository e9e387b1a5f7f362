"""Camera poses with COLMAP (pycolmap): SIFT features on masked frames, sequential matching, one shared camera,
incremental mapping; the result as arrays in our conventions.

COLMAP's image convention is ours: `cam_from_world` is a world-to-camera transform with OpenCV axes, and pixel
(0, 0)'s centre is at (0.5, 0.5). Masks follow COLMAP's ImageReaderOptions.mask_path: a PNG named
`<image name>.png` per image, 0 = no features there.

pycolmap logs through glog; `capture_log` sends those messages to a file instead of the terminal.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2  # before pycolmap: both bundle libraries and this order is the one that loads cleanly
import numpy as np
import pycolmap
from jaxtyping import Bool, Float, Int, UInt8

from models.sfm.align import Sim3, transform_w2c

CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL")


@dataclass
class ColmapOptions:
    camera_model: str = "SIMPLE_PINHOLE"  # one of CAMERA_MODELS; shared by all frames
    focal: float | None = None            # known focal length (px at the images' size): held fixed
    max_features: int = 4096              # SIFT features per image
    overlap: int = 10                     # sequential matching: each frame against the next `overlap` frames
    num_threads: int = 2                  # more than 1 thread makes COLMAP's results vary slightly run to run
    seed: int = 0


@dataclass
class SparseModel:
    """One COLMAP reconstruction as arrays, frames in the order of `names`."""

    names: list[str]
    registered: Bool[np.ndarray, " T"]
    w2c: Float[np.ndarray, "T 4 4"]            # identity where not registered
    K: Float[np.ndarray, "3 3"]
    camera_model: str
    camera_params: list[float]                 # COLMAP's parameter vector (e.g. f, cx, cy, k)
    points: Float[np.ndarray, "N 3"]
    colors: UInt8[np.ndarray, "N 3"]
    point_error: Float[np.ndarray, " N"]        # mean reprojection error of each point (px)
    track_length: Int[np.ndarray, " N"]
    obs_frame: Int[np.ndarray, " M"]            # observation m: frame index, keypoint xy, point index
    obs_xy: Float[np.ndarray, "M 2"]
    obs_point: Int[np.ndarray, " M"]
    mean_reprojection_error: float
    num_models: int                            # sub-models COLMAP made (we keep the largest)
    reconstruction: pycolmap.Reconstruction = field(repr=False)

    @property
    def registered_fraction(self) -> float:
        return float(self.registered.mean()) if len(self.registered) else 0.0

    def obs_depth(self) -> Float[np.ndarray, " M"]:
        """Camera-space z-depth of every observation's 3D point in its frame."""
        row_z = self.w2c[self.obs_frame, 2]  # (M,4): z = row_z . (X, 1)
        return np.einsum("mj,mj->m", row_z[:, :3], self.points[self.obs_point]) + row_z[:, 3]

    def transform(self, sim: Sim3) -> None:
        """Move everything (arrays and the pycolmap reconstruction) into the world x' = s R x + t."""
        reg = self.registered
        self.w2c[reg] = transform_w2c(self.w2c[reg], sim)
        self.points = sim.apply(self.points)
        self.reconstruction.transform(pycolmap.Sim3d(sim.scale, pycolmap.Rotation3d(sim.R), sim.t))


def write_images(frames: UInt8[np.ndarray, "T H W 3"], folder: Path, masks: Bool[np.ndarray, "T H W"] | None = None,
                 mask_folder: Path | None = None, names: list[str] | None = None) -> list[str]:
    """Write RGB frames as PNG (lossless: SIFT sees exactly the decoded frames) and, optionally, COLMAP masks
    (`<name>.png`, 255 where features may be found). Returns the image names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"{i:05d}.png" for i in range(len(frames))]
    for name, img in zip(names, frames):
        if not (folder / name).exists():
            cv2.imwrite(str(folder / name), cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR))
    if masks is not None:
        write_masks(masks, mask_folder, names)
    return names


def write_masks(masks: Bool[np.ndarray, "T H W"], folder: Path, names: list[str]) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, m in zip(names, masks):
        cv2.imwrite(str(folder / f"{name}.png"), np.where(m, 255, 0).astype(np.uint8))


@contextlib.contextmanager
def capture_log(path: Path) -> Iterator[None]:
    """Send COLMAP's glog messages to `path` (appended) instead of stderr while the block runs.

    glog names its files `<base><timestamp>.<pid>`; they are gathered into `path` afterwards.
    """
    path = Path(path)
    base = path.with_name(path.name + ".part.")
    L = pycolmap.logging
    saved = (L.logtostderr, L.alsologtostderr, L.stderrthreshold)
    L.logtostderr, L.alsologtostderr, L.stderrthreshold = False, False, 3
    for level in (L.WARNING, L.ERROR, L.FATAL):  # those go into the INFO file as well
        L.set_log_destination(level, "")
    L.set_log_destination(L.INFO, str(base))
    try:
        yield
    finally:
        L.set_log_destination(L.INFO, "")  # closes (and flushes) the file
        L.logtostderr, L.alsologtostderr, L.stderrthreshold = saved
        with open(path, "a") as out:
            for part in sorted(path.parent.glob(base.name + "*")):
                out.write(part.read_text(errors="replace"))
                part.unlink()


def run_colmap(image_dir: Path, names: list[str], workdir: Path, opts: ColmapOptions,
               mask_dir: Path | None = None, progress=lambda step: None) -> tuple[SparseModel | None, dict]:
    """Features, sequential matching and incremental mapping of `names` (in video order) from `image_dir`.

    Everything COLMAP writes goes under `workdir` (database, sub-models). Returns the largest sub-model as a
    `SparseModel` (None when COLMAP could not build any model: too few matches, no initial pair) and match
    statistics from the database (features per image, verified pairs, inlier matches) that explain a failure.
    """
    if opts.camera_model not in CAMERA_MODELS:
        raise ValueError(f"camera model {opts.camera_model!r} is not one of {CAMERA_MODELS}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "database.db"
    if db.exists():
        db.unlink()
    pycolmap.set_random_seed(opts.seed)
    h, w = cv2.imread(str(Path(image_dir) / names[0]), cv2.IMREAD_UNCHANGED).shape[:2]

    reader = pycolmap.ImageReaderOptions(camera_model=opts.camera_model)
    if mask_dir is not None:
        reader.mask_path = str(mask_dir)
    if opts.focal:
        f, cx, cy = opts.focal, w / 2, h / 2
        reader.camera_params = {"SIMPLE_PINHOLE": f"{f},{cx},{cy}", "PINHOLE": f"{f},{f},{cx},{cy}",
                                "SIMPLE_RADIAL": f"{f},{cx},{cy},0"}[opts.camera_model]
    extraction = pycolmap.FeatureExtractionOptions(num_threads=opts.num_threads)
    extraction.sift.max_num_features = opts.max_features
    pycolmap.extract_features(db, image_dir, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                              reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu)
    progress("features")

    pairing = pycolmap.SequentialPairingOptions(overlap=opts.overlap, loop_detection=False)
    matching = pycolmap.FeatureMatchingOptions(num_threads=opts.num_threads)
    pycolmap.match_sequential(db, matching_options=matching, pairing_options=pairing, device=pycolmap.Device.cpu)
    progress("matching")
    with pycolmap.Database.open(db) as database:
        stats = {"features_per_image": round(database.num_keypoints() / max(1, database.num_images()), 1),
                 "verified_pairs": database.num_verified_image_pairs(),
                 "inlier_matches": database.num_inlier_matches()}

    mapping = pycolmap.IncrementalPipelineOptions(num_threads=opts.num_threads, random_seed=opts.seed)
    mapping.min_model_size = 3
    if opts.focal:
        mapping.ba_refine_focal_length = False
        mapping.mapper.abs_pose_refine_focal_length = False
    sparse_dir = workdir / "sparse"
    sparse_dir.mkdir(exist_ok=True)
    models = pycolmap.incremental_mapping(db, image_dir, sparse_dir, options=mapping)
    progress("mapping")
    stats["num_models"] = len(models)
    if not models:
        return None, stats
    rec = max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))
    return _to_arrays(rec, names, len(models)), stats


def _to_arrays(rec: pycolmap.Reconstruction, names: list[str], num_models: int) -> SparseModel:
    index = {n: i for i, n in enumerate(names)}
    T = len(names)
    registered = np.zeros(T, bool)
    w2c = np.tile(np.eye(4), (T, 1, 1))
    point_ids = sorted(rec.point3D_ids())
    row = {pid: k for k, pid in enumerate(point_ids)}
    obs_frame, obs_xy, obs_point = [], [], []
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        t = index[image.name]
        registered[t] = True
        w2c[t, :3] = image.cam_from_world().matrix()
        observed = [(p.xy, p.point3D_id) for p in image.points2D if p.has_point3D()]
        if observed:
            obs_xy.append(np.array([o[0] for o in observed], np.float64))
            obs_point.append(np.array([row[o[1]] for o in observed], np.int64))
            obs_frame.append(np.full(len(observed), t, np.int64))
    points = [rec.points3D[pid] for pid in point_ids]
    camera = next(iter(rec.cameras.values()))
    cat = lambda xs, shape, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(shape, dt)  # noqa: E731
    return SparseModel(
        names=list(names), registered=registered, w2c=w2c,
        K=np.asarray(camera.calibration_matrix(), np.float64), camera_model=camera.model.name,
        camera_params=[float(p) for p in camera.params],
        points=np.array([p.xyz for p in points], np.float64).reshape(-1, 3),
        colors=np.array([p.color for p in points], np.uint8).reshape(-1, 3),
        point_error=np.array([p.error for p in points], np.float64),
        track_length=np.array([p.track.length() for p in points], np.int64),
        obs_frame=cat(obs_frame, (0,), np.int64), obs_xy=cat(obs_xy, (0, 2), np.float64),
        obs_point=cat(obs_point, (0,), np.int64),
        mean_reprojection_error=float(rec.compute_mean_reprojection_error()), num_models=num_models,
        reconstruction=rec)


def fixed_camera_reconstruction(names: list[str], K: Float[np.ndarray, "3 3"], w2c: Float[np.ndarray, "T 4 4"],
                                width: int, height: int) -> pycolmap.Reconstruction:
    """A COLMAP model with known cameras and no points (for exporting poses that did not come from COLMAP)."""
    rec = pycolmap.Reconstruction()
    camera = pycolmap.Camera(camera_id=1, model="PINHOLE", width=width, height=height,
                             params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
    rec.add_camera_with_trivial_rig(camera)
    for i, (name, pose) in enumerate(zip(names, w2c)):
        image = pycolmap.Image(name=name, camera_id=1, image_id=i + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(np.asarray(pose[:3], np.float64)))
    return rec
