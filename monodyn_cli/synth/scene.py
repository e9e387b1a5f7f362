"""Scene description: objects, motion, cameras and scale variants (deterministic from a seed).

World is z-up with the ground plane at z = 0; the scene centre sits above the origin. Distances are in
arbitrary "units" (objects are ~0.3-0.5 units in radius, cameras ~5 units from the centre). Object time is
the frame index t (seconds = t / fps); object motion is defined in seconds, so a longer clip shows the same
speeds, while the input camera's sweep spans the clip whatever its length.

Everything random comes from `numpy.random.default_rng([seed, stream, ...])`, one stream per purpose
(object k's shape and texture, the motion, the cameras, the room, figure k), so adding held-out or fixed
cameras or scale variants leaves the rest of the scene unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from models.cameras import Cameras, intrinsics_from_fov, look_at
from models.errors import InputError
from monodyn_cli.synth.figures import PartSpec, ground_height, part_transforms, sample_figure
from monodyn_cli.synth.geometry import lowest_point_offset, random_rotation, rotation, signed_distance, surface_samples, unit
from monodyn_cli.synth.textures import TextureSpec, background_texture, object_texture

SCENE_VERSION = 1  # bump when the meaning of the written arrays / scene.json changes
SHAPES = ("sphere", "box", "cylinder")
MAX_OBJECTS = 8
GROUND_GAP = 1e-3  # resting objects float this far above the ground, so touching is not interpenetrating
CENTRE_Z = 0.4

_STREAM_OBJECTS, _STREAM_PATHS, _STREAM_CAMERAS, _STREAM_BACKGROUND, _STREAM_FIGURES = 1, 2, 3, 4, 5
CAMERA_MODES = ("moving", "static", "rig")
MOVERS = ("rigid", "articulated", "mixed")
RIG_SPAN_OF_SWEEP = 1 / 3  # the rig spans a third of the moving camera's 30-40 degree sweep: ~20% of the distance


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines a synthetic scene; the same config gives the same arrays."""

    seed: int = 0
    frames: int = 48
    width: int = 256
    height: int = 192
    fps: float = 12.0
    objects: int = 2
    # the input camera: "moving" (an arc around the centre), "static", or "rig": `rig_cameras` fixed cameras on a
    # short horizontal arc, frame t taken by rig camera t mod rig_cameras (the NVIDIA Dynamic Scenes protocol)
    camera: str = "moving"
    rig_cameras: int = 12
    movers: str = "rigid"  # "rigid" objects, "articulated" figures (figures.py), or "mixed" (every other one a figure)
    heldout_azimuths: tuple[float, ...] = (30.0, 90.0, 180.0)  # degrees; the input trajectory rotated about z
    fixed_cameras: int = 2
    stabilized_frames: tuple[int, ...] = ()  # input frames whose camera is held fixed while time plays ("stabilized<F>")
    room: bool = True  # closed room (finite depth everywhere); False: ground plane under a sky at infinity
    scale_variants: tuple[tuple[float, ...], ...] = ()  # per variant one scale per object (about the input camera)
    fov_deg: float = 55.0  # horizontal field of view

    def validate(self) -> None:
        """Raise InputError naming the first unusable option."""
        if self.frames < 2:
            raise InputError(f"--frames must be at least 2 (flow needs two frames), got {self.frames}")
        if not (8 <= self.width <= 8192 and 8 <= self.height <= 8192):
            raise InputError(f"--width/--height must be within 8..8192 pixels, got {self.width}x{self.height}")
        if not self.fps > 0:
            raise InputError(f"--fps must be positive, got {self.fps}")
        if not 0 <= self.objects <= MAX_OBJECTS:
            raise InputError(f"--objects must be within 0..{MAX_OBJECTS}, got {self.objects}")
        if self.camera not in CAMERA_MODES:
            raise InputError(f"--camera must be one of {', '.join(CAMERA_MODES)}, got {self.camera!r}")
        if not 2 <= self.rig_cameras <= 64:
            raise InputError(f"--rig-cameras must be within 2..64, got {self.rig_cameras}")
        if self.movers not in MOVERS:
            raise InputError(f"--movers must be one of {', '.join(MOVERS)}, got {self.movers!r}")
        if any(not 0 <= f < self.frames for f in self.stabilized_frames):
            raise InputError(f"--stabilized frames must be within 0..{self.frames - 1}, got {self.stabilized_frames}")
        if not 0 <= self.fixed_cameras <= 16:
            raise InputError(f"--fixed-cameras must be within 0..16, got {self.fixed_cameras}")
        if not 10.0 <= self.fov_deg <= 120.0:
            raise InputError(f"field of view must be within 10..120 degrees, got {self.fov_deg}")
        if any(not math.isfinite(a) for a in self.heldout_azimuths):
            raise InputError(f"--heldout-azimuths must be finite numbers, got {self.heldout_azimuths}")
        names = [heldout_name(a) for a in self.heldout_azimuths]
        if len(set(names)) != len(names):
            raise InputError(f"--heldout-azimuths has repeated values: {self.heldout_azimuths}")
        for i, scales in enumerate(self.scale_variants):
            if len(scales) != self.objects:
                raise InputError(f"scale variant {i} has {len(scales)} scales but the scene has {self.objects} "
                                 f"objects: give one scale per object (or one for all)")
            if any(not (0.1 <= s <= 10.0) for s in scales):
                raise InputError(f"scale variant {i} has a scale outside 0.1..10: {scales}")


def parse_scale_variants(text: str, n_objects: int) -> tuple[tuple[float, ...], ...]:
    """'1.0,0.7;1.4' -> ((1.0, 0.7), (1.4, 1.4)) for 2 objects: variants split by ';', one scale per object
    split by ','; a single number scales every object. Empty text: no variants."""
    variants = []
    for i, part in enumerate(p.strip() for p in text.split(";")):
        if not part:
            continue
        try:
            scales = tuple(float(s) for s in part.split(","))
        except ValueError:
            raise InputError(f"--scale-variants: cannot read {part!r} as comma-separated numbers "
                             f"(example: '1.0,0.7;1.4,1.2')") from None
        if len(scales) == 1:
            scales = scales * n_objects
        variants.append(scales)
    return tuple(variants)


def heldout_name(azimuth: float) -> str:
    """Camera name of a held-out azimuth: 30 -> heldout_az30, -45 -> heldout_azm45, 22.5 -> heldout_az22p5."""
    return f"heldout_az{azimuth:g}".replace("-", "m").replace(".", "p")


@dataclass
class ObjectSpec:
    """One moving object (one instance id). Sizes are half-sizes in its local frame: sphere (r,), box
    (hx, hy, hz), cylinder (r, h) with the axis along local z. motion: "ground" (rests on the ground; boxes
    and cylinders slide and spin about z, spheres roll), "air" (tumbles above the ground) or "walk" (a
    figure). A figure (shape "figure") is the union of its `parts`, each posed relative to the object's
    frame (its torso); a rigid object is its own single part."""

    id: int
    shape: str
    size: tuple[float, ...]
    motion: str
    texture: TextureSpec
    parts: tuple[PartSpec, ...] = ()

    @property
    def bounding_radius(self) -> float:
        if self.parts:
            return max(p.reach for p in self.parts)
        return float(np.linalg.norm(self.size)) if self.shape != "sphere" else self.size[0]

    def to_json(self) -> dict:
        out = {"id": self.id, "shape": self.shape, "size": list(self.size), "motion": self.motion,
               "bounding_radius": self.bounding_radius, "colour": self.texture.colour_a[0].round(4).tolist()}
        if self.parts:
            out["parts"] = [p.to_json() for p in self.parts]
        return out


@dataclass
class Primitive:
    """What the ray caster intersects: one sphere, box or cylinder, drawn as instance `owner + 1`."""

    owner: int  # index of its object
    shape: str
    size: tuple[float, ...]
    texture: TextureSpec

    @property
    def bounding_radius(self) -> float:
        return float(np.linalg.norm(self.size)) if self.shape != "sphere" else self.size[0]


def primitives(objects: list[ObjectSpec]) -> list[Primitive]:
    """Every object's parts in order (a rigid object: itself), the layout of `part_poses`."""
    return [Primitive(k, p.shape, p.size, p.texture) for k, o in enumerate(objects)
            for p in (o.parts or (o,))]


def part_poses(objects: list[ObjectSpec], poses: Poses, fps: float) -> Poses:
    """World poses (T,P) of every primitive from the objects' poses (T,K): a rigid object's are its own
    numbers; a figure part's compose the figure's pose with the part's swing at t / fps seconds."""
    scale, R, t = [], [], []
    tau = np.arange(poses.scale.shape[0]) / fps
    for k, o in enumerate(objects):
        if not o.parts:
            scale.append(poses.scale[:, k:k + 1])
            R.append(poses.R[:, k:k + 1])
            t.append(poses.t[:, k:k + 1])
            continue
        Rl, tl = part_transforms(o.parts, tau)
        Ro, s = poses.R[:, k, None].astype(np.float64), poses.scale[:, k, None].astype(np.float64)
        scale.append(np.repeat(poses.scale[:, k:k + 1], len(o.parts), 1))
        R.append((Ro @ Rl).astype(np.float32))
        t.append((s[..., None] * (Ro @ tl[..., None])[..., 0] + poses.t[:, k, None]).astype(np.float32))
    T = poses.scale.shape[0]
    if not scale:
        return Poses(np.ones((T, 0), np.float32), np.zeros((T, 0, 3, 3), np.float32), np.zeros((T, 0, 3), np.float32))
    return Poses(np.concatenate(scale, 1), np.concatenate(R, 1), np.concatenate(t, 1))


@dataclass
class Background:
    """Ground plane z=0 and, when `room`, walls at |x|, |y| = half_size and a ceiling at z = height.
    Surface ids: 0 floor, 1 ceiling, 2..5 walls x-, x+, y-, y+, 6 sky (no room, rays going up)."""

    room: bool
    half_size: float
    height: float
    texture: TextureSpec


SKY = 6
BG_NORMALS = np.array([[0, 0, 1], [0, 0, -1], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 0]],
                      np.float32)


@dataclass
class Poses:
    """Rigid-plus-scale pose of every object at every frame: local point p -> world s R p + t.

    scale (T,K), R (T,K,3,3), t (T,K,3), all float32: the renderer uses exactly these numbers.
    """

    scale: np.ndarray
    R: np.ndarray
    t: np.ndarray

    def object_to_world(self) -> np.ndarray:
        """(K,T,4,4) float32 object-to-world matrices (s R | t), the layout of gt/objects.npy."""
        T, K = self.scale.shape
        M = np.zeros((K, T, 4, 4), np.float32)
        M[..., :3, :3] = (self.scale[..., None, None] * self.R).transpose(1, 0, 2, 3)
        M[..., :3, 3] = self.t.transpose(1, 0, 2)
        M[..., 3, 3] = 1
        return M


@dataclass
class CameraRig:
    name: str
    role: str  # input | heldout | fixed
    cameras: Cameras  # T cameras, one per frame
    azimuth_offset: float | None = None  # heldout: degrees about the vertical axis through the scene centre


@dataclass
class Variant:
    """A scale variant: object k scaled by scales[k] about the input camera centre at every frame."""

    name: str
    scales: tuple[float, ...]
    poses: Poses
    checks: dict = field(default_factory=dict)  # penetration / input-change numbers and "valid"


@dataclass
class SceneSpec:
    """Everything needed to render any camera of the scene at any frame (no pixels yet)."""

    cfg: SynthConfig
    objects: list[ObjectSpec]
    background: Background
    light_dir: np.ndarray  # (3,) unit vector towards the light
    ambient: float
    centre: np.ndarray  # (3,) the point every camera looks at
    poses: Poses
    cameras: dict[str, CameraRig]
    variants: list[Variant]

    def poses_for(self, variant: str | None) -> Poses:
        if variant is None:
            return self.poses
        for v in self.variants:
            if v.name == variant:
                return v.poses
        raise KeyError(f"no scale variant {variant!r}; have {[v.name for v in self.variants]}")

    def parts(self, variant: str | None = None) -> tuple[list[Primitive], Poses]:
        """The primitives to ray cast and their world poses (T,P) in the base scene or a scale variant."""
        return primitives(self.objects), part_poses(self.objects, self.poses_for(variant), self.cfg.fps)

    def to_json(self) -> dict:
        cfg = self.cfg
        return {
            "version": SCENE_VERSION, "seed": cfg.seed, "fps": cfg.fps, "frames": cfg.frames,
            "width": cfg.width, "height": cfg.height, "fov_deg": cfg.fov_deg, "camera_motion": cfg.camera,
            "time": "frame index t = 0..frames-1 (seconds t / fps, normalised t / (frames - 1))",
            "up": [0, 0, 1], "scene_centre": self.centre.tolist(),
            "room": {"enabled": self.background.room, "half_size": self.background.half_size,
                     "height": self.background.height},
            "light_dir": self.light_dir.tolist(), "ambient": self.ambient,
            "objects": [o.to_json() for o in self.objects],
            "cameras": [{"name": c.name, "role": c.role, "azimuth_offset": c.azimuth_offset}
                        for c in self.cameras.values()],
            "variants": [{"name": v.name, "scales": list(v.scales), **v.checks} for v in self.variants],
            # new keys only where used, so that existing scenes' scene.json stays byte for byte the same
            **({"rig_cameras": cfg.rig_cameras, "rig": "input frame t is taken by rig camera t mod rig_cameras; "
                "rig0 is rig camera 0 at every time"} if cfg.camera == "rig" else {}),
            **({"movers": cfg.movers} if cfg.movers != "rigid" else {}),
        }



# ---- objects and motion ----------------------------------------------------------------------------------

def _sample_mover(k: int, cfg: SynthConfig) -> ObjectSpec:
    """Object k: rigid, or an articulated figure (its own random stream, so rigid objects stay as they were)."""
    if cfg.movers == "articulated" or (cfg.movers == "mixed" and k % 2 == 1):
        parts = sample_figure(np.random.default_rng([cfg.seed, _STREAM_FIGURES, k]))
        return ObjectSpec(k + 1, "figure", parts[0].size, "walk", parts[0].texture, parts)  # its frame: the torso's
    return _sample_object(k, cfg.seed)


def _sample_object(k: int, seed: int) -> ObjectSpec:
    rng = np.random.default_rng([seed, _STREAM_OBJECTS, k])
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    period = rng.uniform(0.12, 0.2)
    if shape == "sphere":
        size = (rng.uniform(0.28, 0.45),)
        lattice = random_rotation(rng)
    else:
        # half-sizes at odd multiples of period/2 put every flat face on a checker crest: clean checkers
        def half(lo, hi):
            m = int(rng.integers(math.ceil(lo / period - 0.5), math.floor(hi / period - 0.5) + 1))
            return (m + 0.5) * period

        size = (half(0.15, 0.42), half(0.15, 0.42), half(0.15, 0.42)) if shape == "box" else \
            (rng.uniform(0.2, 0.35), half(0.15, 0.42))
        lattice = np.eye(3)
    motion = "ground" if rng.uniform() < 0.5 else "air"
    return ObjectSpec(k + 1, shape, tuple(float(s) for s in size), motion, object_texture(rng, period, lattice))


def region_radius(n_objects: int) -> float:
    """Radius of the disc (about the origin) the object anchors are drawn from."""
    return 0.6 + 0.35 * max(n_objects, 1)


@dataclass
class _Path:
    """Closed-form horizontal path (bounded: the offset never exceeds |amp|) and hop height."""

    anchor: np.ndarray
    Q: np.ndarray
    amp: np.ndarray
    omega: np.ndarray
    phase: np.ndarray
    hop: float
    hop_omega: float
    hop_phase: float

    def xy(self, tau: np.ndarray) -> np.ndarray:
        off = self.amp * np.sin(self.omega * tau[:, None] + self.phase)
        return self.anchor + off @ self.Q.T

    def hop_z(self, tau: np.ndarray) -> np.ndarray:
        return self.hop * 0.5 * (1 - np.cos(self.hop_omega * tau + self.hop_phase))


def _sample_path(rng: np.random.Generator, obj: ObjectSpec, region: float, amp_factor: float) -> _Path:
    r = region * math.sqrt(rng.uniform())
    a = rng.uniform(0, 2 * np.pi)
    theta = rng.uniform(0, 2 * np.pi)
    Q = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    hop = rng.uniform(0.1, 0.5) if obj.motion == "air" else 0.0
    return _Path(np.array([r * math.cos(a), r * math.sin(a)]), Q, amp_factor * rng.uniform(0.3, 0.65, 2),
                 rng.uniform(0.6, 1.5, 2), rng.uniform(0, 2 * np.pi, 2), hop, rng.uniform(1.5, 3.0),
                 rng.uniform(0, 2 * np.pi))


def _object_trajectory(rng: np.random.Generator, obj: ObjectSpec, path: _Path, tau: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (N,3,3) and centres (N,3) at times tau (seconds, dense enough to integrate rolling).

    A rolling sphere's rotations are returned as its start rotation (3,3) only: `_roll` integrates them
    once the paths are accepted (its centre does not depend on them)."""
    n = len(tau)
    xy = path.xy(tau)
    if obj.parts:  # a figure walks: it slides and turns on the ground, bobbing as its legs swing
        R = rotation(np.array([0.0, 0.0, 1.0]), rng.uniform(0, 2 * np.pi) + rng.uniform(-0.6, 0.6) * tau)
        z = ground_height(obj.parts, R, tau, GROUND_GAP)
    elif obj.motion == "ground" and obj.shape == "sphere":
        R = random_rotation(rng)
        z = np.full(n, obj.size[0] + GROUND_GAP)
    elif obj.motion == "ground":
        yaw = rng.uniform(0, 2 * np.pi) + rng.uniform(-1.2, 1.2) * tau
        R = rotation(np.array([0.0, 0.0, 1.0]), yaw)
        z = lowest_point_offset(obj.shape, obj.size, R) + GROUND_GAP
    else:
        axis = unit(rng.normal(size=3))
        angle = rng.uniform(0, 2 * np.pi) + rng.choice([-1, 1]) * rng.uniform(0.5, 1.5) * tau
        R = rotation(axis, angle) @ random_rotation(rng)
        z = lowest_point_offset(obj.shape, obj.size, R).max() + rng.uniform(0.03, 0.3) + path.hop_z(tau)
    return R, np.concatenate([xy, z[:, None]], -1)


def _roll(R0: np.ndarray, xy: np.ndarray, radius: float) -> np.ndarray:
    """Rotations (N,3,3) of a sphere rolling without slipping along xy (N,2): each step rotates it by
    |dx| / r about z x dx."""
    step = np.diff(xy, axis=0)
    dist = np.linalg.norm(step, axis=-1)
    axis = np.stack([-step[:, 1], step[:, 0], np.zeros(len(step))], -1) / np.maximum(dist, 1e-12)[:, None]
    inc = rotation(axis, dist / radius)
    R = np.empty((len(xy), 3, 3))
    R[0] = R0
    for i in range(len(step)):
        R[i + 1] = inc[i] @ R[i]
    return R


def _sample_motion(objects: list[ObjectSpec], cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (T,K,3,3) and centres (T,K,3) at the frames, redrawn until no two bounding spheres meet."""
    K, T = len(objects), cfg.frames
    sub = 4  # check collisions between frames too
    tau = np.arange((T - 1) * sub + 1) / (cfg.fps * sub)
    region = region_radius(K)
    for attempt in range(600):
        rng = np.random.default_rng([cfg.seed, _STREAM_PATHS, attempt])
        amp_factor = 0.75 ** (attempt // 100)  # long clips or crowded scenes: calmer paths
        Rs, cs = zip(*(_object_trajectory(rng, obj, _sample_path(rng, obj, region, amp_factor), tau)
                       for obj in objects))
        if _separated(objects, np.stack(cs, 1)):
            Rs = [_roll(R, c[:, :2], o.size[0]) if R.ndim == 2 else R for R, c, o in zip(Rs, cs, objects)]
            return np.stack(Rs, 1)[::sub], np.stack(cs, 1)[::sub]
    raise InputError(f"could not place {K} objects without collisions in {T} frames; use fewer --objects "
                     f"or --frames, or another --seed")


def _separated(objects: list[ObjectSpec], centres: np.ndarray, margin: float = 0.05) -> bool:
    """Whether the bounding spheres of all object pairs stay `margin` apart at every time (N,K,3)."""
    radii = np.array([o.bounding_radius for o in objects])
    i, j = np.triu_indices(len(objects), 1)
    dist = np.linalg.norm(centres[:, i] - centres[:, j], axis=-1)  # (N, pairs)
    return bool((dist >= radii[i] + radii[j] + margin).all())


# ---- cameras ---------------------------------------------------------------------------------------------

def _spherical(centre: np.ndarray, radius: float, az_deg: np.ndarray, el_deg: np.ndarray) -> np.ndarray:
    az, el = np.radians(az_deg), np.radians(el_deg)
    return centre + radius * np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1)


def rotate_about_vertical(points: np.ndarray, centre: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate (...,3) points by `degrees` about the vertical axis through `centre`."""
    Rz = rotation(np.array([0.0, 0.0, 1.0]), np.radians(degrees))
    return (points - centre) @ Rz.T + centre


def rig_positions(centre: np.ndarray, radius: float, az: float, el: float, span: float, n: int) -> np.ndarray:
    """Centres (n,3) of a rig's cameras: evenly spread over `span` degrees of horizontal arc about azimuth
    `az` at elevation `el`, camera 0 at one end (all of them look at the scene centre)."""
    return _spherical(centre, radius, az + span * (np.arange(n) / (n - 1) - 0.5), np.full(n, el))


def camera_radius(n_objects: int) -> float:
    return max(4.2, 2.0 * (region_radius(n_objects) + 0.75))


def _camera_rigs(cfg: SynthConfig, centre: np.ndarray) -> dict[str, CameraRig]:
    rng = np.random.default_rng([cfg.seed, _STREAM_CAMERAS])
    T = cfg.frames
    radius = camera_radius(cfg.objects)
    u = np.arange(T) / max(T - 1, 1) - 0.5  # -0.5 .. 0.5 over the clip
    az0, el0 = rng.uniform(0, 360), rng.uniform(14, 24)
    sweep = rng.uniform(30, 40) * rng.choice([-1, 1])
    dele = rng.uniform(3, 8) * rng.choice([-1, 1])
    if cfg.camera == "moving":
        eyes = _spherical(centre, radius, az0 + sweep * u, el0 + dele * u)
    elif cfg.camera == "rig":
        rig_eyes = rig_positions(centre, radius, az0, el0, abs(sweep) * RIG_SPAN_OF_SWEEP, cfg.rig_cameras)
        eyes = rig_eyes[np.arange(T) % cfg.rig_cameras]
    else:
        eyes = _spherical(centre, radius, np.full(T, az0), np.full(T, el0))
    K = intrinsics_from_fov(cfg.width, cfg.height, cfg.fov_deg)

    def rig(name: str, role: str, eye: np.ndarray, az: float | None = None) -> CameraRig:
        w2c = look_at(torch.tensor(eye, dtype=torch.float32), torch.tensor(centre, dtype=torch.float32)
                      .expand(len(eye), 3))
        return CameraRig(name, role, Cameras(K.expand(len(eye), 3, 3).clone(), w2c, cfg.width, cfg.height), az)

    rigs = {"input": rig("input", "input", eyes)}
    if cfg.camera == "rig":  # the NVIDIA protocol's view: rig camera 0 while time plays
        rigs["rig0"] = rig("rig0", "fixed", np.repeat(rig_eyes[:1], T, axis=0))
    for a in cfg.heldout_azimuths:
        name = heldout_name(a)
        rigs[name] = rig(name, "heldout", rotate_about_vertical(eyes, centre, a), float(a))
    n = cfg.fixed_cameras
    for i in range(n):
        az = az0 + 360.0 * (i + 1) / (n + 1) + rng.uniform(-12, 12)
        el = rng.uniform(10, 40)
        eye = _spherical(centre, radius, np.full(T, az), np.full(T, el))
        rigs[f"fixed{i}"] = rig(f"fixed{i}", "fixed", eye)
    for f in cfg.stabilized_frames:  # no random draws here: adding these cameras changes no other camera
        rigs[f"stabilized{f}"] = rig(f"stabilized{f}", "fixed", np.repeat(eyes[f:f + 1], T, axis=0))
    return rigs


# ---- the scene -------------------------------------------------------------------------------------------

def build_scene(cfg: SynthConfig) -> SceneSpec:
    """Objects, motion, background, light, cameras and scale variants for `cfg` (no rendering)."""
    cfg.validate()
    objects = [_sample_mover(k, cfg) for k in range(cfg.objects)]
    if objects:
        R, c = _sample_motion(objects, cfg)
    else:
        R, c = np.zeros((cfg.frames, 0, 3, 3)), np.zeros((cfg.frames, 0, 3))
    poses = Poses(np.ones(R.shape[:2], np.float32), R.astype(np.float32), c.astype(np.float32))
    centre = np.array([0.0, 0.0, CENTRE_Z])
    cameras = _camera_rigs(cfg, centre)

    rng = np.random.default_rng([cfg.seed, _STREAM_BACKGROUND])
    period = rng.uniform(0.45, 0.65)
    radius = camera_radius(cfg.objects)
    # walls at odd multiples of period/2 and the ceiling at a multiple of period: crests of the checker
    half_size = (round((radius + 2.5) / period) + 0.5) * period
    height = math.ceil((CENTRE_Z + radius * math.sin(math.radians(48)) + 1.0) / period) * period
    background = Background(cfg.room, float(half_size), float(height), background_texture(rng, period))
    light_az, light_el = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(45, 70))
    light = np.array([math.cos(light_el) * math.cos(light_az), math.cos(light_el) * math.sin(light_az),
                      math.sin(light_el)])

    input_centres = cameras["input"].cameras.centers.double().numpy()
    variants = [Variant(f"v{i}", tuple(float(s) for s in scales), scaled_poses(poses, scales, input_centres))
                for i, scales in enumerate(cfg.scale_variants)]
    spec = SceneSpec(cfg, objects, background, light, 0.35, centre, poses, cameras, variants)
    for v in spec.variants:
        v.checks.update(geometry_checks(spec, v.poses))
    return spec


def scaled_poses(poses: Poses, scales, centres: np.ndarray) -> Poses:
    """Scale object k by scales[k] about the camera centre C_t (T,3) at every frame t:
    X -> C_t + s (X - C_t), i.e. scale s * s_k and translation C_t + s_k (t - C_t)."""
    s = np.asarray(scales, np.float64)[None, :]
    t = centres[:, None, :] + s[..., None] * (poses.t.astype(np.float64) - centres[:, None, :])
    return Poses((poses.scale * s).astype(np.float32), poses.R.copy(), t.astype(np.float32))


def geometry_checks(spec: SceneSpec, poses: Poses) -> dict:
    """Worst interpenetration (world units) between objects and with the ground / room over the clip,
    measured on dense surface samples, and whether any camera centre lies inside an object. `poses`: the
    objects' (T,K), e.g. a scale variant's. A figure's own parts may overlap at their joints: not counted."""
    objs, bg = primitives(spec.objects), spec.background
    poses = part_poses(spec.objects, poses, spec.cfg.fps)
    world = []
    for k, o in enumerate(objs):
        p = surface_samples(o.shape, o.size)
        world.append(np.einsum("tij,mj->tmi", poses.scale[:, k, None, None] * poses.R[:, k], p)
                     + poses.t[:, k, None])
    pen_obj = 0.0
    for i in range(len(objs)):
        for j in range(len(objs)):
            if objs[i].owner == objs[j].owner:
                continue
            local = np.einsum("tmi,tij->tmj", world[i] - poses.t[:, j, None], poses.R[:, j]) \
                / poses.scale[:, j, None, None]
            sd = signed_distance(objs[j].shape, objs[j].size, local) * poses.scale[:, j, None]
            pen_obj = max(pen_obj, float(-sd.min()))
    pen_bg = 0.0
    for X in world:
        pen_bg = max(pen_bg, float(-X[..., 2].min()))
        if bg.room:
            pen_bg = max(pen_bg, float(np.abs(X[..., :2]).max() - bg.half_size), float(X[..., 2].max() - bg.height))
    inside = False
    for rig in spec.cameras.values():
        C = rig.cameras.centers.double().numpy()
        for k, o in enumerate(objs):
            local = np.einsum("ti,tij->tj", C - poses.t[:, k], poses.R[:, k]) / poses.scale[:, k, None]
            inside |= bool((signed_distance(o.shape, o.size, local) * poses.scale[:, k] < 0.05).any())
    return {"penetration_objects": max(pen_obj, 0.0), "penetration_background": max(pen_bg, 0.0),
            "camera_inside_object": inside}
