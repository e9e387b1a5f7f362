"""`monodyn render`: render a method along a camera path into an H.264 mp4 (+ depth, side-by-side, PNGs).

Per-video methods (dpdy, osn) render their current fit; pretrained ones (gcd, dyst) need no fit and condition
on the workspace's frames and cameras. Method-specific render options follow the command, as for `fit`
(`monodyn render --method osn --scale-samples 3`); `monodyn render --method NAME --help` lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from monodyn_cli.console import handle_errors

PATH_KINDS = ("orbit", "bullet-time", "spiral", "dolly", "stabilize", "camera-path")


def register(app: typer.Typer) -> None:
    app.command(help="Render along a camera path (orbit, bullet time, spiral, dolly, stabilised, a nerfstudio "
                     "camera_path.json, or by default the input cameras) to mp4. Method render options follow; "
                     "see `monodyn render --method NAME --help`.",
                context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                add_help_option=False)(render)


@handle_errors
def render(
    ctx: typer.Context,
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w",
                                             help="Workspace (default: the one *.monodyn folder here)."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Method to render (default: the one fitted "
                                                                      "last)."),
    orbit: Optional[float] = typer.Option(None, help="Arc of this many degrees around the scene centre while time plays."),
    bullet_time: Optional[float] = typer.Option(None, help="Freeze time at this normalised time in [0,1] and orbit "
                                                           "(arc from --degrees)."),
    spiral: bool = typer.Option(False, help="A spiral around the input camera path while time plays."),
    dolly: Optional[float] = typer.Option(None, help="Move toward the scene centre by this fraction of the distance "
                                                    "(negative: away), in (-4, 1)."),
    stabilize: Optional[int] = typer.Option(None, help="Hold the camera of input frame FRAME fixed while time plays."),
    camera_path: Optional[Path] = typer.Option(None, help="nerfstudio camera_path.json (camera_to_world, fov, "
                                                          "render_time)."),
    degrees: float = typer.Option(90.0, help="Arc for --bullet-time, in degrees."),
    time_: Optional[float] = typer.Option(None, "--time", help="Normalised time in [0,1] to hold for every path "
                                                              "(default: time plays over the clip)."),
    frames: Optional[int] = typer.Option(None, help="Number of output frames, 1..100000 (default: the clip's frame "
                                                   "count, at least 60 for bullet time)."),
    fps: Optional[float] = typer.Option(None, help="Output frame rate (default: the clip's)."),
    scale: float = typer.Option(1.0, help="Output resolution relative to the preprocessed frames, in (0, 4]."),
    depth: bool = typer.Option(False, "--depth", help="Also write a colour-mapped depth video."),
    side_by_side: bool = typer.Option(False, "--side-by-side", help="Also write input | render side by side."),
    png: bool = typer.Option(False, "--png", help="Also write the frames as PNG files."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output mp4 (default: "
                                                                      "<workspace>/renders/<method>-<path>-<time>.mp4)."),
    device: str = typer.Option("auto", help="Torch device for rendering: auto (CUDA when present), cpu, cuda, cuda:N."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    help_: bool = typer.Option(False, "--help", "-h", help="Show this help, and the method's render options."),
) -> None:
    from monodyn_cli.options import check_finite, check_range, method_options_help

    if help_:
        method_options_help(ctx, method, "RenderOptions", "render")
        raise typer.Exit(0)
    from models.errors import InputError

    chosen = [n for n, v in zip(PATH_KINDS, (orbit, bullet_time, spiral or None, dolly, stabilize, camera_path))
              if v is not None]
    if len(chosen) > 1:
        raise InputError("choose one camera path: --orbit DEG, --bullet-time T, --spiral, --dolly F, --stabilize "
                         f"FRAME or --camera-path FILE (got {', '.join(chosen)})")
    check_finite("--orbit", orbit)
    check_range("--degrees", degrees, -3600, 3600)
    check_range("--dolly", dolly, -4, 1, inclusive=False)
    check_range("--scale", scale, 0, 4, low_open=True)
    check_range("--time", time_, 0, 1)
    check_range("--bullet-time", bullet_time, 0, 1)
    check_range("--frames", frames, 1, 100_000)
    check_range("--fps", fps, 0, 1000, low_open=True)
    if stabilize is not None and stabilize < 0:
        raise InputError(f"--stabilize is an input frame index (>= 0), got {stabilize}")
    if camera_path is not None and not camera_path.is_file():
        raise InputError(f"--camera-path {camera_path}: no such file")
    from monodyn_cli.options import parse_method_options

    name, impl, options = parse_method_options(method, "RenderOptions", list(ctx.args), workspace=workspace)
    _render(workspace=workspace, method=name, impl=impl, options=options, kind=chosen[0] if chosen else "input",
            orbit=orbit, bullet_time=bullet_time, dolly=dolly, stabilize=stabilize, camera_path=camera_path,
            degrees=degrees, hold_time=time_, frames=frames, fps=fps, scale=scale, depth=depth,
            side_by_side=side_by_side, png=png, output=output, device=device, quiet=quiet)


def _render(*, workspace, method, impl, options, kind, orbit, bullet_time, dolly, stabilize, camera_path, degrees,
            hold_time, frames, fps, scale, depth, side_by_side, png, output, device, quiet) -> None:
    import time

    from models.errors import InputError
    from models.fitting import resolve_device
    from monodyn_cli import paths, render_cache
    from monodyn_cli.console import RichProgress, stdout
    from monodyn_cli.fits import current_checkpoint
    from monodyn_cli.outputs import check_writable, colorize_depth, side_by_side_frames
    from monodyn_cli.scene_loader import load_scene, resolve_workspace
    from monodyn_cli.video_io import write_mp4

    ws = resolve_workspace(workspace)
    ckpt = current_checkpoint(ws, method)[1] if impl.Config is not None else None
    scene, _ = load_scene(ws)
    if stabilize is not None and stabilize >= scene.num_frames:
        raise InputError(f"--stabilize {stabilize}: the clip has frames 0..{scene.num_frames - 1}")
    n = frames or (max(60, scene.num_frames) if bullet_time is not None else scene.num_frames)
    path, label = paths.build_path(scene, kind, n, orbit_degrees=orbit, bullet_time_at=bullet_time,
                                   dolly_amount=dolly, stabilize=stabilize, camera_path=camera_path, degrees=degrees, hold_time=hold_time)
    if (warning := paths.path_warning(scene, path, kind)) is not None:
        RichProgress(quiet).warn(warning)
    cams, times = path
    if scale != 1.0:
        cams = cams.scaled(scale)
    out = output or ws.root / "renders" / f"{method}-{label}-{time.strftime('%Y%m%d-%H%M%S')}.mp4"
    check_writable(out)
    dev = str(resolve_device(device))
    renderer = impl.load(ckpt, scene, options, dev)
    start = time.perf_counter()
    rgb, depth_all, cached = render_cache.render_frames(renderer, method, scene, cams, times, dev, RichProgress(quiet),
                                                        f"render {method} {label}", ws.root, keep_depth=depth)
    if cached:
        stdout.print(f"reusing the frames of an identical earlier render (in {ws.root / render_cache.FOLDER})")
    seconds = max(time.perf_counter() - start, 1e-9)
    out_fps = fps or scene.fps
    write_mp4(out, rgb, out_fps)
    written = [out]
    if depth:
        written.append(write_mp4(out.with_name(out.stem + "-depth.mp4"), colorize_depth(depth_all), out_fps))
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
    if not cached:
        stdout.print(f"rendered {len(rgb)} frames {rgb.shape[2]}x{rgb.shape[1]} at {len(rgb) / seconds:.2f} frames/s")
    for p in written:
        stdout.print(f"wrote {p}")
