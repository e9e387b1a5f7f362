"""`monodyn render`: render a fitted scene along a camera path into an H.264 mp4 (+ depth, side-by-side, PNGs)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import typer

from models.errors import InputError
from models.registry import get_method
from monodyn_cli import paths
from monodyn_cli.commands.fit import current_checkpoint
from monodyn_cli.console import RichProgress, handle_errors, stdout
from monodyn_cli.scene_loader import load_scene, resolve_workspace
from monodyn_cli.video_io import write_mp4


def register(app: typer.Typer) -> None:
    app.command(help="Render the fitted scene along a camera path (orbit, bullet time, spiral, dolly, "
                     "stabilised, or a nerfstudio camera_path.json) to mp4.")(render)


@handle_errors
def render(
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w",
                                             help="Workspace (default: the one *.monodyn folder here)."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Which fit to render (default: the latest)."),
    orbit: Optional[float] = typer.Option(None, help="Arc of this many degrees around the scene centre while time plays."),
    bullet_time: Optional[float] = typer.Option(None, help="Freeze time at this normalised time in [0,1] and orbit "
                                                           "(arc from --degrees)."),
    spiral: bool = typer.Option(False, help="A spiral around the input camera path while time plays."),
    dolly: Optional[float] = typer.Option(None, help="Move toward the scene centre by this fraction of the distance "
                                                    "(negative: away)."),
    stabilize: Optional[int] = typer.Option(None, help="Hold the camera of input frame FRAME fixed while time plays."),
    camera_path: Optional[Path] = typer.Option(None, help="nerfstudio camera_path.json (camera_to_world, fov, "
                                                          "render_time)."),
    degrees: float = typer.Option(90.0, help="Arc for --bullet-time."),
    time_: Optional[float] = typer.Option(None, "--time", help="Normalised time in [0,1] to hold for every path "
                                                              "(default: time plays over the clip)."),
    frames: Optional[int] = typer.Option(None, help="Number of output frames (default: the clip's frame count, "
                                                   "at least 60 for bullet time)."),
    fps: Optional[float] = typer.Option(None, help="Output frame rate (default: the clip's)."),
    scale: float = typer.Option(1.0, help="Output resolution relative to the preprocessed frames."),
    depth: bool = typer.Option(False, "--depth", help="Also write a colour-mapped depth video."),
    side_by_side: bool = typer.Option(False, "--side-by-side", help="Also write input | render side by side."),
    png: bool = typer.Option(False, "--png", help="Also write the frames as PNG files."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output mp4 (default: "
                                                                      "<workspace>/renders/<path>-<time>.mp4)."),
    scale_sample: Optional[int] = typer.Option(None, help="osn: render the K-th sampled valid object-scale "
                                                          "configuration."),
    scales: Optional[str] = typer.Option(None, help="osn: render this object-scale configuration, e.g. 1.0,0.7 "
                                                    "(one scale per object)."),
    scale_samples: Optional[int] = typer.Option(None, help="osn: a grid of N sampled valid configurations side by side."),
    method_args: list[str] = typer.Option([], "--method-args", help="Method-specific render option KEY=VALUE "
                                                                    "(repeatable), e.g. scale_sample=3."),
    device: str = typer.Option("auto", help="Torch device for rendering: auto (CUDA when present), cpu, cuda, cuda:N."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    chosen = [n for n, v in (("orbit", orbit), ("bullet-time", bullet_time), ("spiral", spiral or None),
                             ("dolly", dolly), ("stabilize", stabilize), ("camera-path", camera_path)) if v is not None]
    if len(chosen) != 1:
        raise InputError("choose exactly one camera path: --orbit DEG, --bullet-time T, --spiral, --dolly F, "
                         f"--stabilize FRAME or --camera-path FILE (got {', '.join(chosen) or 'none'})")
    if not 0 < scale <= 4:
        raise InputError(f"--scale must be in (0, 4], got {scale}")
    for name, value in (("--time", time_), ("--bullet-time", bullet_time)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise InputError(f"{name} is a normalised time in [0, 1], got {value}")
    ws = resolve_workspace(workspace)
    method, ckpt = current_checkpoint(ws, method)
    scene, _ = load_scene(ws)
    n = frames or (max(60, scene.num_frames) if bullet_time is not None else scene.num_frames)
    path, label = build_path(scene, chosen[0], n, orbit=orbit, bullet_time=bullet_time, dolly=dolly,
                             stabilize=stabilize, camera_path=camera_path, degrees=degrees, hold_time=time_)
    cams, times = path
    if scale != 1.0:
        cams = cams.scaled(scale)
    impl = get_method(method)
    from models.fitting import resolve_device

    device = str(resolve_device(device))
    kwargs = _parse_method_args(method_args)
    for name, value in (("scale_sample", scale_sample), ("scale_samples", scale_samples),
                        ("scales", _floats(scales, "--scales") if scales else None)):
        if value is not None:
            if method != "osn":
                raise InputError(f"--{name.replace('_', '-')} applies to --method osn, not {method}")
            kwargs[name] = value
    out = output or ws.root / "renders" / f"{method}-{label}-{time.strftime('%Y%m%d-%H%M%S')}.mp4"
    out.parent.mkdir(parents=True, exist_ok=True)
    progress = RichProgress(quiet)
    rgb_frames, depth_frames = [], []
    start = time.perf_counter()
    with progress.task(f"render {label}", len(cams)) as advance:
        for i in range(len(cams)):
            result = impl.render(ckpt, cams[i].to(device), times[i:i + 1].to(device), device=device, **kwargs)
            rgb_frames.append((result.rgb[0].clamp(0, 1) * 255).round().byte().cpu().numpy())
            if depth:
                depth_frames.append(result.depth[0].cpu().numpy())
            advance(1)
    seconds = time.perf_counter() - start
    rgb = np.stack(rgb_frames)
    out_fps = fps or float(scene.meta.get("fps") or _clip_fps(scene))
    write_mp4(out, rgb, out_fps)
    written = [out]
    if depth:
        written.append(write_mp4(out.with_name(out.stem + "-depth.mp4"), colorize_depth(np.stack(depth_frames)), out_fps))
    if side_by_side:
        written.append(write_mp4(out.with_name(out.stem + "-sbs.mp4"), side_by_side_frames(scene, rgb, times), out_fps))
    if png:
        import cv2

        folder = out.with_suffix("")
        folder.mkdir(exist_ok=True)
        for i, img in enumerate(rgb):
            cv2.imwrite(str(folder / f"{i:05d}.png"), img[..., ::-1])
        written.append(folder)
    paths.save_camera_path(out.with_name(out.stem + "-camera_path.json"), paths.CameraPath(cams, times), out_fps)
    stdout.print(f"rendered {len(rgb)} frames {rgb.shape[2]}x{rgb.shape[1]} at {len(rgb) / seconds:.2f} frames/s")
    for p in written:
        stdout.print(f"wrote {p}")


def look_at_point(scene) -> torch.Tensor:
    """Where the input cameras converge; for a forward-facing clip, the scene centre's depth along the view."""
    center = torch.as_tensor(scene.center, dtype=torch.float32)
    distance = float((scene.cameras.centers - center).norm(dim=-1).median())
    return paths.estimate_center(scene.cameras, fallback_distance=max(distance, 1e-3))


def build_path(scene, kind: str, n: int, *, orbit=None, bullet_time=None, dolly=None, stabilize=None,
               camera_path=None, degrees=90.0, hold_time=None) -> tuple[paths.CameraPath, str]:
    """The chosen camera path (cameras + normalised times) and a short label for file names."""
    center = look_at_point(scene)
    hold = None if hold_time is None else torch.full((n,), float(hold_time))
    if kind == "orbit":
        return paths.orbit(scene.cameras, center, orbit, n, times=hold), f"orbit{orbit:g}"
    if kind == "bullet-time":
        return paths.bullet_time(scene.cameras, center, degrees, n, time=bullet_time), f"bullet{bullet_time:g}"
    if kind == "spiral":
        return paths.spiral(scene.cameras, center, n, times=hold), "spiral"
    if kind == "dolly":
        return paths.dolly(scene.cameras, center, n, amount=dolly, times=hold), f"dolly{dolly:g}"
    if kind == "stabilize":
        times = hold if hold is not None else torch.linspace(0.0, 1.0, n)  # --frames resamples time
        return paths.stabilized(scene.cameras, stabilize, times=times), f"stabilized{stabilize}"
    path = paths.load_camera_path(camera_path)
    if hold_time is not None:
        path = paths.CameraPath(path.cameras, torch.full((len(path.cameras),), float(hold_time)))
    return path, Path(camera_path).stem


def _parse_method_args(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--method-args expects KEY=VALUE, got {item!r}")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{option} expects comma-separated numbers like 1.0,0.7, got {text!r}") from None


def _clip_fps(scene) -> float:
    ts = np.asarray(scene.timestamps)
    return (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 24.0


def colorize_depth(depth: np.ndarray) -> np.ndarray:
    """(N,H,W) depth -> (N,H,W,3) uint8 with a turbo colour map on inverse depth (near = warm), robust range."""
    import cv2

    inv = 1.0 / np.clip(depth, 1e-6, None)
    lo, hi = np.percentile(inv, [2, 98])
    norm = np.clip((inv - lo) / max(hi - lo, 1e-8), 0, 1)
    return np.stack([cv2.applyColorMap((d * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1] for d in norm])


def side_by_side_frames(scene, rgb: np.ndarray, times: torch.Tensor) -> np.ndarray:
    """Input frame nearest in time | render, resized to the render's height."""
    import cv2

    idx = (times.numpy() * (scene.num_frames - 1)).round().astype(int)
    h, w = rgb.shape[1:3]
    left = np.stack([cv2.resize(np.asarray(scene.frames[i]), (round(scene.width * h / scene.height), h),
                                interpolation=cv2.INTER_AREA) for i in idx])
    return np.concatenate([left, rgb], axis=2)
