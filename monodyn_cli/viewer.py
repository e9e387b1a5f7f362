"""`monodyn view`: the fitted Gaussians in the browser (viser), with the input cameras, a time slider and a free camera.

The splats are drawn by viser's own WebGL splat renderer in the browser: the server only sends the Gaussians when
time (or an OSN scale) changes, and the static set of a DpDy fit is sent once, so a free camera moves at the
browser's frame rate whatever the CPU does. Moving the time slider sends the dynamic Gaussians at that frame (the
`update_seconds` of the viewer say how long the server takes per step; viser's browser side redraws splats only
when its camera moves, so each update also moves every client's camera by a sub-pixel step, see `_redraw`).
OSN's objects are placed at the scales of their sliders (starting from the default valid combination). "Save
view" and "Save path" write nerfstudio camera_path.json files into `<workspace>/renders/` that `monodyn render --camera-path FILE` renders.

World axes are monodyn's (OpenCV-style SfM world); viser's cameras and frustums use the OpenCV convention too, so
poses pass through unchanged; the viewer's "up" is the input cameras' mean image-up.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from models.cameras import Cameras, mean_image_up
from models.errors import InputError
from models.splatting.project import covariance_3d
from monodyn_cli import paths

VIEWABLE = ("dpdy", "osn")
MAX_FRUSTUMS = 48  # input cameras drawn (evenly spaced over the clip)
THUMBNAIL_SIDE = 96  # pixels of the frame image inside each frustum
NUDGE = 1e-5  # scene units a camera moves to make the browser draw new splats (SfM scenes span ~1 to 100)


@dataclass
class Splats:
    """Gaussians in world space, as numpy: centers (N,3), covariances (N,3,3), rgbs (N,3) in [0,1], opacities (N,1)."""
    centers: np.ndarray
    covariances: np.ndarray
    rgbs: np.ndarray
    opacities: np.ndarray

    def __len__(self) -> int:
        return len(self.centers)


def to_splats(means: Float[Tensor, "N 3"], quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"],
              opacities: Float[Tensor, " N"], colors: Float[Tensor, "N 3"]) -> Splats:
    """Model Gaussians (wxyz quaternions, scales = standard deviations) -> what viser's splat renderer takes."""
    return Splats(means.detach().float().cpu().numpy(), covariance_3d(quats.float(), scales.float()).cpu().numpy(),
                  colors.detach().float().clamp(0, 1).cpu().numpy(),
                  opacities.detach().float().clamp(0, 1).reshape(-1, 1).cpu().numpy())


@dataclass
class ObjectScale:
    """One OSN object's slider: its id, the scale range the fit searched, and the default valid scale."""
    index: int
    low: float
    high: float
    default: float


@dataclass
class GaussianScene:
    """A fit's Gaussians at any normalised time (and, for OSN, object scales). `static` never changes (DpDy)."""
    method: str
    static: Splats | None
    objects: list[ObjectScale] = field(default_factory=list)
    model: object = None

    def moving(self, time: float, scales: list[float] | None = None) -> Splats:
        """The Gaussians that change with time: DpDy's dynamic set; for OSN every object placed at `scales`
        (one per object 1..K) with the background."""
        with torch.no_grad():
            if self.method == "dpdy":
                g = self.model.gaussians_at(float(time))
                dyn = g["is_dynamic"] > 0.5
                return to_splats(*(g[k][dyn] for k in ("means", "quats", "scales", "opacities", "colors")))
            full = [1.0] + list(scales if scales is not None else [o.default for o in self.objects])
            placed = [self.model.placed(o, full[o], float(time)) for o in range(len(self.model.sets))]
            return to_splats(*(torch.cat([getattr(p, k) for p in placed])
                               for k in ("means", "quats", "scales", "opacities", "colors")))


def load_gaussians(method: str, ckpt: Path, scene) -> GaussianScene:
    """The fitted model of `method` at checkpoint `ckpt` as a GaussianScene (CPU)."""
    if method == "dpdy":
        from models.registry import get_method

        model = get_method("dpdy").load(ckpt, scene, None, "cpu").model
        with torch.no_grad():
            g = model.gaussians_at(0.0)
            static = g["is_dynamic"] < 0.5
            fixed = to_splats(*(g[k][static] for k in ("means", "quats", "scales", "opacities", "colors")))
        return GaussianScene("dpdy", fixed, [], model)
    if method == "osn":
        from models.osn.method import load_model

        model = load_model(ckpt, "cpu")
        default = model.default_scales()
        low, high = model.space.log_lo.exp(), model.space.log_hi.exp()  # the range the scale network searched
        objects = [ObjectScale(k + 1, float(low[k]), float(high[k]), float(default[k])) for k in range(model.n_objects)]
        return GaussianScene("osn", None, objects, model)
    raise InputError(f"monodyn view shows Gaussian fits ({', '.join(VIEWABLE)}); {method} has none: use "
                     f"`monodyn render --method {method}`")


# ---- cameras between the browser and nerfstudio camera_path.json ----------------------------------------------

def wxyz_to_matrix(wxyz) -> np.ndarray:
    w, x, y, z = np.asarray(wxyz, np.float64) / np.linalg.norm(wxyz)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_to_wxyz(R: np.ndarray) -> np.ndarray:
    """A rotation matrix -> a unit wxyz quaternion (Shepperd's method: the largest diagonal term leads)."""
    R = np.asarray(R, np.float64)
    t = np.trace(R)
    if t > 0:
        s = 2 * math.sqrt(1 + t)
        q = [s / 4, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2 * math.sqrt(1 + R[i, i] - R[j, j] - R[k, k])
        q = [0.0] * 4
        q[0] = (R[k, j] - R[j, k]) / s
        q[1 + i], q[1 + j], q[1 + k] = s / 4, (R[j, i] + R[i, j]) / s, (R[k, i] + R[i, k]) / s
    q = np.array(q)
    return q / np.linalg.norm(q) * (1 if q[0] >= 0 else -1)


@dataclass
class ViewPose:
    """A browser camera: OpenCV camera-to-world rotation (wxyz) and position, vertical fov (radians), time in [0,1]."""
    wxyz: np.ndarray
    position: np.ndarray
    fov: float
    time: float


def path_from_poses(poses: list[ViewPose], width: int, height: int) -> paths.CameraPath:
    """Cameras (OpenCV world-to-camera, square pixels, centred principal point) of these poses at width x height."""
    c2w = torch.eye(4, dtype=torch.float64).repeat(len(poses), 1, 1)
    K = torch.zeros(len(poses), 3, 3, dtype=torch.float64)
    for i, p in enumerate(poses):
        c2w[i, :3, :3] = torch.from_numpy(wxyz_to_matrix(p.wxyz))
        c2w[i, :3, 3] = torch.as_tensor(np.asarray(p.position, np.float64))
        f = 0.5 * height / math.tan(p.fov / 2)
        K[i] = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=torch.float64)
    times = torch.tensor([p.time for p in poses], dtype=torch.float32)
    return paths.CameraPath(Cameras(K.float(), torch.linalg.inv(c2w).float(), width, height), times)


def interpolate_keyframes(keys: list[ViewPose], frames: int) -> list[ViewPose]:
    """`frames` poses through the keyframes in order: positions, fov and time linear, rotations by slerp, each
    segment given frames in proportion to its share of the path (evenly when the camera stays put)."""
    if len(keys) < 2:
        raise InputError("a path needs at least 2 keyframes: move the camera and press 'Add keyframe' again")
    if frames < len(keys):
        raise InputError(f"a path of {len(keys)} keyframes needs at least {len(keys)} frames")
    s = np.linspace(0, len(keys) - 1, frames)
    out = []
    for u in s:
        i = min(int(u), len(keys) - 2)
        a, b, f = keys[i], keys[i + 1], u - i
        out.append(ViewPose(_slerp(a.wxyz, b.wxyz, f), (1 - f) * np.asarray(a.position) + f * np.asarray(b.position),
                            (1 - f) * a.fov + f * b.fov, float(np.clip((1 - f) * a.time + f * b.time, 0, 1))))
    return out


def _slerp(q0, q1, f: float) -> np.ndarray:
    q0, q1 = np.asarray(q0, np.float64), np.asarray(q1, np.float64)
    q0, q1 = q0 / np.linalg.norm(q0), q1 / np.linalg.norm(q1)
    d = float(q0 @ q1)
    if d < 0:
        q1, d = -q1, -d
    if d > 0.9995:
        q = q0 + f * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(d)
    return (math.sin((1 - f) * theta) * q0 + math.sin(f * theta) * q1) / math.sin(theta)


# ---- the server ---------------------------------------------------------------------------------------------

class Viewer:
    """A viser server showing one workspace's fit. `show(frame)` updates the moving Gaussians; `run()` serves
    until interrupted, playing the clip while 'Play' is ticked."""

    def __init__(self, ws, method: str, ckpt: Path, scene, host: str = "127.0.0.1", port: int = 8080,
                 save_dir: Path | None = None):
        import viser

        self.ws, self.scene, self.method = ws, scene, method
        self.save_dir = save_dir or ws.root / "renders"
        self.gaussians = load_gaussians(method, ckpt, scene)
        self.T = scene.num_frames
        self.update_seconds: list[float] = []
        self.keyframes: list[ViewPose] = []
        self.saved: list[Path] = []
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.server.scene.set_up_direction(tuple(float(v) for v in mean_image_up(scene.cameras)))
        self._frustums()
        if self.gaussians.static is not None:
            s = self.gaussians.static
            self.server.scene.add_gaussian_splats("/static", s.centers, s.covariances, s.rgbs, s.opacities)
        self._gui()
        self.moving = None
        self.show(0)
        self._initial_view()

    @property
    def url(self) -> str:
        return f"http://{self.server.get_host()}:{self.server.get_port()}"

    def _frustums(self) -> None:
        import cv2

        cams = self.scene.cameras
        c2w = cams.c2w.double().numpy()
        fov = 2 * math.atan(0.5 * cams.height / float(cams.K[0, 1, 1]))
        extent = np.linalg.norm(c2w[:, :3, 3] - c2w[:, :3, 3].mean(0), axis=1).max()
        size = float(max(extent, 1e-3)) * 0.08 or 0.05
        scale = THUMBNAIL_SIDE / max(cams.width, cams.height)
        for t in np.unique(np.linspace(0, self.T - 1, min(self.T, MAX_FRUSTUMS)).round().astype(int)):
            thumb = cv2.resize(np.asarray(self.scene.frames[t]), (max(1, round(cams.width * scale)),
                                                                   max(1, round(cams.height * scale))),
                               interpolation=cv2.INTER_AREA)
            self.server.scene.add_camera_frustum(f"/cameras/{t:05d}", fov=fov, aspect=cams.width / cams.height,
                                                 scale=size, image=thumb, wxyz=matrix_to_wxyz(c2w[t, :3, :3]),
                                                 position=c2w[t, :3, 3], color=(240, 120, 40))

    def _initial_view(self) -> None:
        """New browsers start at the first input camera."""
        c2w = self.scene.cameras.c2w.double().numpy()[0]
        pose = (matrix_to_wxyz(c2w[:3, :3]), c2w[:3, 3])

        @self.server.on_client_connect
        def _(client) -> None:
            client.camera.wxyz, client.camera.position = pose
            client.camera.fov = 2 * math.atan(0.5 * self.scene.height / float(self.scene.cameras.K[0, 1, 1]))

    def _gui(self) -> None:
        gui = self.server.gui
        gui.add_markdown(f"**monodyn** · {self.method} · {self.T} frames")
        self.frame = gui.add_slider("frame", min=0, max=max(self.T - 1, 1), step=1, initial_value=0)
        self.play = gui.add_checkbox("play", initial_value=False)
        self.fps = gui.add_slider("frames/s", min=1, max=30, step=1, initial_value=min(10, round(self.scene.fps)))
        self.frame.on_update(lambda _: self.show(int(self.frame.value)))
        self.scale_sliders = []
        if self.gaussians.objects:
            with gui.add_folder("object scales"):
                for o in self.gaussians.objects:
                    slider = gui.add_slider(f"object {o.index}", min=o.low, max=o.high, step=(o.high - o.low) / 100,
                                            initial_value=min(max(o.default, o.low), o.high))
                    slider.on_update(lambda _: self.show(int(self.frame.value)))
                    self.scale_sliders.append(slider)
        with gui.add_folder("camera path"):
            self.width = gui.add_number("render width", initial_value=int(self.scene.width), min=8, max=16384, step=1)
            self.height = gui.add_number("render height", initial_value=int(self.scene.height), min=8, max=16384,
                                         step=1)
            self.path_frames = gui.add_number("path frames", initial_value=60, min=2, max=100000, step=1)
            gui.add_button("Save view").on_click(lambda e: self.save_view(e.client))
            gui.add_button("Add keyframe").on_click(lambda e: self.add_keyframe(e.client))
            gui.add_button("Clear keyframes").on_click(lambda e: self.keyframes.clear() or self._note())
            gui.add_button("Save path").on_click(lambda e: self.save_path())
            self.note = gui.add_markdown("")

    def show(self, frame: int) -> None:
        """Send the moving Gaussians at input frame `frame` (and the sliders' object scales)."""
        start = time.perf_counter()
        t = frame / max(self.T - 1, 1)
        scales = [float(s.value) for s in self.scale_sliders] or None
        s = self.gaussians.moving(t, scales)
        if self.moving is None:
            self.moving = self.server.scene.add_gaussian_splats("/moving", s.centers, s.covariances, s.rgbs,
                                                                s.opacities)
        else:
            self.moving.set_gaussians(s.centers, s.covariances, s.rgbs, s.opacities)
            self._redraw()
        self.update_seconds.append(time.perf_counter() - start)

    def _redraw(self) -> None:
        """viser's browser side re-sorts and redraws the splats when its camera moves, not when they change (an
        unchanged camera sent back is ignored): move each camera by a far sub-pixel step, alternating in sign so
        that it never drifts."""
        self._nudge = -getattr(self, "_nudge", -NUDGE)
        for client in self.server.get_clients().values():
            client.camera.position = np.asarray(client.camera.position) + self._nudge

    def pose_of(self, client) -> ViewPose:
        cam = client.camera
        return ViewPose(np.asarray(cam.wxyz, np.float64), np.asarray(cam.position, np.float64), float(cam.fov),
                        int(self.frame.value) / max(self.T - 1, 1))

    def save_view(self, client) -> Path:
        return self._save([self.pose_of(client)], "view")

    def add_keyframe(self, client) -> None:
        self.keyframes.append(self.pose_of(client))
        self._note()

    def save_path(self) -> Path | None:
        try:
            poses = interpolate_keyframes(self.keyframes, int(self.path_frames.value))
        except InputError as e:
            self.note.content = f"_{e}_"
            return None
        return self._save(poses, "path")

    def _save(self, poses: list[ViewPose], kind: str) -> Path:
        from monodyn_cli.outputs import Outputs

        target = self.save_dir / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-camera_path.json"
        with Outputs(self.ws.root) as outputs:
            paths.save_camera_path(outputs.file(target), path_from_poses(poses, int(self.width.value),
                                                                         int(self.height.value)),
                                   fps=float(self.fps.value))
            outputs.commit()
        self.saved.append(target)
        self._note(f"saved {target.name}: `monodyn render --method {self.method} --camera-path {target}`")
        return target

    def _note(self, text: str = "") -> None:
        self.note.content = f"{len(self.keyframes)} keyframe(s). {text}"

    def step(self) -> float:
        """Advance one frame while playing; returns the seconds to wait before the next step."""
        if self.play.value:
            self.frame.value = (int(self.frame.value) + 1) % self.T  # on_update sends the Gaussians
        return 1.0 / max(float(self.fps.value), 1.0)

    def run(self) -> None:
        while True:
            time.sleep(self.step())

    def stop(self) -> None:
        self.server.stop()
