"""`monodyn synth OUT_DIR`: a procedural dynamic multi-view scene with exact ground truth."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from monodyn_cli.console import RichProgress, handle_errors, stdout


def register(app: typer.Typer) -> None:
    app.command(help="Generate a synthetic dynamic scene: input.mp4 from a moving (static, or rig) camera plus exact "
                     "ground truth (rgb, depth, instances, flow, visibility, cameras, object poses) for the input, "
                     "held-out and fixed cameras, and optional object-scale variants (OSN).")(synth)


def _parse_frames(text: str) -> tuple[int, ...]:
    from models.errors import InputError

    try:
        return tuple(int(f) for f in text.split(",") if f.strip())
    except ValueError:
        raise InputError(f"--stabilized must be comma-separated frame indices like '0,24', got {text!r}") from None


def _parse_azimuths(text: str) -> tuple[float, ...]:
    from models.errors import InputError

    try:
        return tuple(float(a) for a in text.split(",") if a.strip())
    except ValueError:
        raise InputError(f"--heldout-azimuths must be comma-separated degrees like '30,90,180', got {text!r}") from None


@handle_errors
def synth(
    out_dir: Path = typer.Argument(..., help="Folder to create (input.mp4 + gt/); --force replaces an earlier scene "
                                             "there."),
    seed: int = typer.Option(0, help="Random seed: the same seed and options give the same scene."),
    frames: int = typer.Option(48, help="Number of frames (time steps)."),
    width: int = typer.Option(256, help="Image width in pixels."),
    height: int = typer.Option(192, help="Image height in pixels."),
    objects: int = typer.Option(2, help="Number of moving objects (0..8)."),
    camera: str = typer.Option("moving", help="Input camera: moving (a ~35 degree arc around the scene), static, or rig "
                                              "(the NVIDIA Dynamic Scenes protocol: frame t is taken by camera t mod "
                                              "--rig-cameras of a fixed rig on a short arc; ground truth 'rig0' is rig "
                                              "camera 0 while time plays)."),
    rig_cameras: int = typer.Option(12, help="Cameras of the --camera rig (NVIDIA's rig has 12)."),
    movers: str = typer.Option("rigid", help="Moving objects: rigid (spheres, boxes, cylinders), articulated (walking "
                                             "figures: torso, head, swinging arms and legs) or mixed (every other one "
                                             "a figure)."),
    heldout_azimuths: str = typer.Option("30,90,180", help="Held-out cameras: the input trajectory rotated by these "
                                                            "azimuths in degrees (comma-separated; '' for none)."),
    fixed_cameras: int = typer.Option(2, help="Number of extra static cameras at other azimuths / elevations."),
    stabilized: str = typer.Option("", help="Input frames whose camera is also rendered held fixed while time plays "
                                            "(comma-separated, e.g. '0': ground truth for `render --stabilize 0`)."),
    room: bool = typer.Option(True, "--room/--no-room", help="Closed room (finite depth everywhere) or a ground "
                                                             "plane under a sky at infinity."),
    fps: float = typer.Option(12.0, help="Frame rate of input.mp4 and of the object motion (speeds are per second)."),
    scale_variants: str = typer.Option("", help="Object-scale variants for OSN, ';'-separated, each one scale per "
                                                "object (or one for all), e.g. '1.0,0.7;1.4,1.2'."),
    crf: int = typer.Option(12, help="H.264 quality of input.mp4 (lower is better; 0 is near-lossless)."),
    device: str = typer.Option("cpu", help="Torch device for rendering (cpu, cuda, cuda:N, auto)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT_DIR if it holds an earlier `monodyn synth` scene."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    from models.devices import resolve_device
    from models.errors import InputError
    from monodyn_cli.outputs import Outputs, check_output, empty_folder
    from monodyn_cli.synth import SynthConfig, parse_scale_variants, synthesize

    if not 0 <= crf <= 51:
        raise InputError(f"--crf must be within 0..51, got {crf}")
    if out_dir.is_dir() and not empty_folder(out_dir) and not force:
        raise InputError(f"output folder is not empty: {out_dir} (pass --force to replace it)")
    # --force replaces an earlier scene only, never a folder of other files
    check_output(out_dir, folder=True, option="OUT_DIR",
                 replaceable=lambda p: empty_folder(p) or (p / "gt" / "scene.json").is_file())
    device = str(resolve_device(device))
    cfg = SynthConfig(seed=seed, frames=frames, width=width, height=height, fps=fps, objects=objects,
                      camera=camera, rig_cameras=rig_cameras, movers=movers, heldout_azimuths=_parse_azimuths(heldout_azimuths),
                      fixed_cameras=fixed_cameras, room=room,
                      stabilized_frames=_parse_frames(stabilized),
                      scale_variants=parse_scale_variants(scale_variants, objects))
    start = time.perf_counter()
    with Outputs() as outputs:  # the scene itself goes to a temporary folder renamed into place (synth/writer.py)
        outputs.mkdirs(out_dir.parent, "OUT_DIR")
        out = synthesize(cfg, out_dir, force=force, crf=crf, device=device, progress=RichProgress(quiet))
        outputs.commit()
    if quiet:
        return
    from monodyn_cli.synth import load_gt

    gt = load_gt(out)
    stdout.print(f"[green]synth[/green] {out}: {frames} frames {width}x{height}, {objects} objects, cameras "
                 f"{', '.join(gt.camera_names)} ({time.perf_counter() - start:.1f}s)", soft_wrap=True)
    for v in gt.meta["variants"]:
        state = "[green]valid[/green]" if v["valid"] else "[yellow]invalid[/yellow]"
        stdout.print(f"  variant {v['name']} scales {v['scales']}: {state} (penetration "
                     f"{max(v['penetration_objects'], v['penetration_background']):.3f}, input changed "
                     f"{100 * v['input_changed_fraction']:.3f}% of pixels)", soft_wrap=True)
