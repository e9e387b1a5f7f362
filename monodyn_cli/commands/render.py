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
EMPTY_FRAME = 0.1  # a frame is empty when less than this share of its pixels shows the scene
WORK_BYTES = 256  # device memory one rendered pixel takes while its frame is rasterised (an upper estimate)


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
    orbit: Optional[float] = typer.Option(None, help="Arc of this many degrees around the scene centre while time plays, "
                                                     "in [-3600, 3600]."),
    bullet_time: Optional[float] = typer.Option(None, help="Freeze time at this normalised time in [0,1] and orbit "
                                                           "(arc from --degrees)."),
    spiral: bool = typer.Option(False, help="A spiral around the input camera path while time plays."),
    dolly: Optional[float] = typer.Option(None, help="Move toward the scene centre by this fraction of the distance "
                                                    "(negative: away), in (-4, 1)."),
    stabilize: Optional[int] = typer.Option(None, help="Hold the camera of input frame FRAME fixed while time plays."),
    camera_path: Optional[Path] = typer.Option(None, help="nerfstudio camera_path.json (camera_to_world, fov, "
                                                          "render_time)."),
    degrees: Optional[float] = typer.Option(None, help="Arc for --bullet-time, in degrees (default 90)."),
    time_: Optional[float] = typer.Option(None, "--time", help="Normalised time in [0,1] to hold for every path "
                                                              "(default: time plays over the clip)."),
    frames: Optional[int] = typer.Option(None, help="Number of output frames, 1..100000 (default: the clip's frame "
                                                   "count, at least 60 for bullet time)."),
    fps: Optional[float] = typer.Option(None, help="Output frame rate (default: the clip's)."),
    scale: float = typer.Option(1.0, help="Output resolution relative to the preprocessed frames, in (0, 4]."),
    depth: bool = typer.Option(False, "--depth", help="Also write a colour-mapped depth video."),
    side_by_side: bool = typer.Option(False, "--side-by-side", help="Also write input | render side by side."),
    png: bool = typer.Option(False, "--png", help="Also write the frames as PNG files."),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="Write the video even when most frames show nothing "
                                                                  "(black or transparent)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output mp4 (default: "
                                                                      "<workspace>/renders/<method>-<path>-<time>.mp4); "
                                                                      "never an input or the workspace's own files."),
    device: str = typer.Option("auto", help="Torch device for rendering: auto (CUDA when present), cpu, cuda, cuda:N."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    help_: bool = typer.Option(False, "--help", "-h", help="Show this help, and the method's render options."),
) -> None:
    from monodyn_cli.options import check_range, method_options_help

    if help_:
        method_options_help(ctx, method, "RenderOptions", "render")
        raise typer.Exit(0)
    from models.errors import InputError

    chosen = [n for n, v in zip(PATH_KINDS, (orbit, bullet_time, spiral or None, dolly, stabilize, camera_path))
              if v is not None]
    if len(chosen) > 1:
        raise InputError("choose one camera path: --orbit DEG, --bullet-time T, --spiral, --dolly F, --stabilize "
                         f"FRAME or --camera-path FILE (got {', '.join(chosen)})")
    _refuse_idle_options(chosen[0] if chosen else "input", degrees, time_, frames)
    check_range("--orbit", orbit, -3600, 3600)
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
    if output is not None and output.suffix.lower() != ".mp4":
        raise InputError(f"--output {output}: the video is an mp4; name it *.mp4 (the other outputs are named after it)")
    from monodyn_cli.options import parse_method_options

    name, impl, options = parse_method_options(method, "RenderOptions", list(ctx.args), workspace=workspace)
    _render(workspace=workspace, method=name, impl=impl, options=options, kind=chosen[0] if chosen else "input",
            orbit=orbit, bullet_time=bullet_time, dolly=dolly, stabilize=stabilize, camera_path=camera_path,
            degrees=90.0 if degrees is None else degrees, hold_time=time_, frames=frames, fps=fps, scale=scale,
            depth=depth, side_by_side=side_by_side, png=png, allow_empty=allow_empty, output=output, device=device,
            quiet=quiet)


def _refuse_idle_options(kind: str, degrees, hold_time, frames) -> None:
    """Options that would do nothing for the chosen path are refused, naming the combination that works."""
    from models.errors import InputError

    if degrees is not None and kind != "bullet-time":
        raise InputError("--degrees sets the arc of --bullet-time T: add --bullet-time, or give the arc to --orbit DEG "
                         "(time plays)")
    if hold_time is not None and kind == "bullet-time":
        raise InputError("--bullet-time T already holds time at T: drop --time")
    if hold_time is not None and kind == "input":
        raise InputError("--time holds time along a camera path: add --orbit DEG, --spiral, --dolly F, --stabilize "
                         "FRAME or --camera-path FILE")
    if frames is not None and kind == "camera-path":
        raise InputError("--frames sets the length of a generated path; a --camera-path file has one frame per entry: "
                         "drop --frames")


def _render(*, workspace, method, impl, options, kind, orbit, bullet_time, dolly, stabilize, camera_path, degrees,
            hold_time, frames, fps, scale, depth, side_by_side, png, allow_empty, output, device, quiet) -> None:
    import time

    from models.devices import resolve_device
    from models.errors import InputError
    from monodyn_cli import paths, render_cache
    from monodyn_cli.console import RichProgress, stdout
    from monodyn_cli.fits import current_checkpoint
    from monodyn_cli.outputs import Outputs, colorize_depth, side_by_side_frames
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
        if min(round(cams.width * scale), round(cams.height * scale)) < paths.MIN_RENDER_SIDE:  # no image to render
            raise InputError(f"--scale {scale:g} makes {round(cams.width * scale)}x{round(cams.height * scale)} images; "
                             f"the smallest for these {cams.width}x{cams.height} cameras is "
                             f"{paths.MIN_RENDER_SIDE / min(cams.width, cams.height):.3g}")
        cams = cams.scaled(scale)
    dev = str(resolve_device(device))
    check_memory(len(cams), cams.width, cams.height, dev, depth=depth, side_by_side=side_by_side,
                 from_file=kind == "camera-path")
    out = output or ws.root / "renders" / f"{method}-{label}-{time.strftime('%Y%m%d-%H%M%S')}.mp4"
    with Outputs(ws.root, inputs=[camera_path] if camera_path else []) as outputs:
        video = outputs.file(out)
        extra = {"depth": outputs.file(out.with_name(out.stem + "-depth.mp4")) if depth else None,
                 "sbs": outputs.file(out.with_name(out.stem + "-sbs.mp4")) if side_by_side else None,
                 "png": outputs.folder(out.with_suffix(""), replaceable=_png_folder) if png else None}
        camera_file = outputs.file(out.with_name(out.stem + "-camera_path.json"))
        renderer = impl.load(ckpt, scene, options, dev)
        if getattr(renderer, "notice", None):  # which pretrained weights, when several could be meant
            stdout.print(renderer.notice, markup=False)
        start = time.perf_counter()
        result = render_cache.render_frames(renderer, method, scene, cams, times, dev, RichProgress(quiet),
                                            f"render {method} {label}", ws.root, keep_depth=depth)
        seconds = max(time.perf_counter() - start, 1e-9)
        if not allow_empty:
            check_not_empty(result.coverage)
        rgb, out_fps = result.rgb, fps or scene.fps
        write_mp4(video, rgb, out_fps)
        if depth:
            write_mp4(extra["depth"], colorize_depth(result.depth), out_fps)
        if side_by_side:
            write_mp4(extra["sbs"], side_by_side_frames(scene, rgb, times), out_fps)
        if png:
            import cv2

            for i, img in enumerate(rgb):
                if not cv2.imwrite(str(extra["png"] / f"{i:05d}.png"), img[..., ::-1]):
                    raise OSError(f"could not write {extra['png'] / f'{i:05d}.png'}")
        paths.save_camera_path(camera_file, paths.CameraPath(cams, times), out_fps)
        written = [target for tmp, target in outputs.pending if tmp != camera_file]
        outputs.commit()
    if result.cached:
        stdout.print(f"reusing the frames of an identical earlier render (in {ws.root / render_cache.FOLDER})", markup=False)
    else:
        stdout.print(f"rendered {len(rgb)} frames {rgb.shape[2]}x{rgb.shape[1]} at {len(rgb) / seconds:.2f} frames/s")
    for p in written:
        stdout.print(f"wrote {p}", markup=False)


def check_not_empty(coverage) -> None:
    """A render whose frames mostly show nothing is a failure, not a result (unless --allow-empty)."""
    from models.errors import InputError

    empty = int((coverage < EMPTY_FRAME).sum())
    if empty * 2 > len(coverage):
        raise InputError(f"the render is empty: {empty} of {len(coverage)} frames show the scene in less than "
                         f"{EMPTY_FRAME:.0%} of their pixels (black or transparent), so the camera looks away from what "
                         "was reconstructed; try a smaller arc or another path, or pass --allow-empty to write it anyway")


def _png_folder(folder: Path) -> bool:
    """A --png folder an earlier render wrote (frame PNGs only), which a new render may replace."""
    return all(p.is_file() and p.name[:5].isdigit() and p.name.endswith(".png") for p in folder.iterdir())


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), or None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(n: int, width: int, height: int, device: str, depth: bool, side_by_side: bool, from_file: bool) -> None:
    """Refuse, before any work, a render whose frames cannot fit in memory. The frames are held until encoded:
    8-bit rgb (twice while stacked), float depth, and the colour-mapped depth (float64 colour map) or the
    side-by-side copy when asked; one frame's rasterisation takes about WORK_BYTES per pixel on the device."""
    from models.errors import InputError
    from monodyn_cli.console import human_bytes

    pixels = n * width * height
    host = pixels * (6 + 8 + (56 if depth else 0) + (6 if side_by_side else 0)) + width * height * WORK_BYTES
    limits = [("memory", available_memory(), host)]
    if device.startswith("cuda"):
        import torch

        limits.append(("GPU memory", torch.cuda.mem_get_info(torch.device(device))[0], width * height * WORK_BYTES))
    fix = "a smaller render_width/render_height or fewer entries in the camera path" if from_file else \
        "fewer --frames or a smaller --scale"
    for what, free, need in limits:
        if free is not None and need > 0.8 * free:
            raise InputError(f"this render ({n} frames of {width}x{height}) needs about {human_bytes(need)} of {what}, "
                             f"and {human_bytes(free)} are available: use {fix}")
