"""`monodyn preprocess INPUT`: decode -> flow -> segment -> sfm -> depth, every stage cached in the workspace."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from monodyn_cli import pipeline
from monodyn_cli.console import RichProgress, RunLog, handle_errors, stdout
from monodyn_cli.stages import decode, depth as depth_stage, flow as flow_stage, segment as segment_stage, sfm as sfm_stage
from monodyn_cli.workspace import Workspace


def register(app: typer.Typer) -> None:
    app.command(help="Decode a clip and run the preprocessing stages into a cached workspace.")(preprocess)


@handle_errors
def preprocess(
    input: str = typer.Argument(..., help="Video file (mp4/mov/mkv/webm/avi), folder of images, or a quoted glob "
                                          "like 'frames/*.jpg'."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w",
                                             help="Workspace folder (default: INPUT's name + .monodyn beside it)."),
    fps: Optional[float] = typer.Option(None, help="Resample to this frame rate using timestamps (default: every frame)."),
    max_frames: Optional[int] = typer.Option(None, help="Keep at most this many frames."),
    max_side: int = typer.Option(512, help="Resize so the longer image side is at most this many pixels (0: native)."),
    start: Optional[float] = typer.Option(None, help="Start time in seconds."),
    end: Optional[float] = typer.Option(None, help="End time in seconds."),
    decoder: str = typer.Option("pyav", help="Video decoder: pyav, or decord (faster, same frames)."),
    flow: str = typer.Option("dis", help="Optical flow: dis (OpenCV, no weights) or raft (RAFT weights)."),
    raft_checkpoint: Optional[Path] = typer.Option(None, help="RAFT checkpoint (raft-small.pth / raft-things.pth)."),
    segment: str = typer.Option("motion", help="Segmentation: motion (from flow, no weights), sam (segment-anything "
                                               "+ flow tracking), sam2 (SAM 2 video)."),
    point: list[str] = typer.Option([], "--point", help="sam/sam2 prompt X,Y[@FRAME] in video pixels; one object "
                                                         "per prompt (repeatable)."),
    box: list[str] = typer.Option([], "--box", help="sam/sam2 prompt X0,Y0,X1,Y1[@FRAME] (repeatable)."),
    sam_model: str = typer.Option("vit_b", help="SAM model: vit_b, vit_l, vit_h."),
    sam_checkpoint: Optional[Path] = typer.Option(None, help="SAM checkpoint file (sam_vit_b_01ec64.pth, ...)."),
    sam2_checkpoint: Optional[Path] = typer.Option(None, help="SAM 2 video model folder (save_pretrained)."),
    min_object_area: float = typer.Option(0.002, help="motion: smallest object, as a fraction of the image."),
    max_objects: int = typer.Option(8, help="motion: keep at most this many objects."),
    refine_masks: bool = typer.Option(True, "--refine-masks/--no-refine-masks",
                                      help="motion: snap mask edges to colour edges (GrabCut; about half the time)."),
    static_camera: bool = typer.Option(False, "--static-camera", help="The camera does not move: skip COLMAP, "
                                                                      "use a fixed camera."),
    focal: Optional[float] = typer.Option(None, help="Focal length in pixels of the original video (for a static or "
                                                    "turning camera; default: a --fov guess)."),
    fov: float = typer.Option(60.0, help="Horizontal field of view in degrees assumed when the focal is unknown."),
    sfm_max_frames: int = typer.Option(200, help="Run COLMAP on at most this many evenly spaced frames; the others get "
                                                 "interpolated poses."),
    sfm_threads: int = typer.Option(2, help="COLMAP threads (1 gives bit-identical results run to run)."),
    per_object_sfm: bool = typer.Option(False, "--per-object-sfm", help="Also run SfM per segmented object "
                                                                        "(needed by --method osn)."),
    depth: str = typer.Option("auto", help="Depth: depth-anything (needs weights), sfm (sparse SfM depth), none; "
                                           "auto = depth-anything when its weights are found, else sfm."),
    depth_checkpoint: Optional[Path] = typer.Option(None, help="Depth Anything folder (save_pretrained)."),
    until: str = typer.Option("depth", help="Stop after this stage: decode, flow, segment, sfm, depth."),
    device: str = typer.Option("auto", help="Torch device for RAFT / SAM / Depth Anything (auto: cuda if present)."),
    force: list[str] = typer.Option([], "--force", help="Redo this stage and every stage after it (repeatable)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    from models.errors import InputError

    if decoder not in {"pyav", "decord"}:
        raise InputError(f"--decoder must be pyav or decord, not {decoder!r}")
    for name, value in (("--fps", fps), ("--max-frames", max_frames)):
        if value is not None and value <= 0:
            raise InputError(f"{name} must be positive, got {value}")
    if max_side < 0:
        raise InputError(f"--max-side must be >= 0, got {max_side}")
    if start is not None and end is not None and end <= start:
        raise InputError(f"--end ({end}) must be after --start ({start})")

    # every option is checked before the workspace is touched
    later = _later_stages(
        until=until, flow=flow, raft_checkpoint=raft_checkpoint, segment=segment, point=point, box=box,
        sam_model=sam_model, sam_checkpoint=sam_checkpoint, sam2_checkpoint=sam2_checkpoint,
        min_object_area=min_object_area, max_objects=max_objects, refine_masks=refine_masks,
        static_camera=static_camera, focal=focal, fov=fov, sfm_max_frames=sfm_max_frames, sfm_threads=sfm_threads,
        per_object_sfm=per_object_sfm, depth=depth, depth_checkpoint=depth_checkpoint, device=device)
    source = decode.resolve_source(input)
    ws = Workspace(workspace or Workspace.default_for(Path(input)))
    _refuse_inside_input(ws.root, source)
    ws.ensure(source=str(Path(input).resolve()) if Path(input).exists() else input)
    dcfg = decode.DecodeConfig(fps=fps, max_frames=max_frames, max_side=max_side or None, start=start, end=end,
                               backend=decoder)
    with ws.lock():
        log = RunLog(ws.root, "preprocess")
        progress = RichProgress(quiet, log)
        ws.clean_trash()
        spec = pipeline.StageSpec(decode.NAME, decode.VERSION, (),
                                  run=lambda ctx, cfg: decode.run(ctx, source, cfg))
        requests = [pipeline.StageRequest(spec, dcfg, decode.config_for(source, dcfg))]
        requests += later
        results = pipeline.run_chain(ws, requests, progress, force=force, log=log)
        log.close()
    for name, res in results.items():
        state = "cached" if res.cached else f"{res.manifest['seconds']:.1f}s"
        summary = res.manifest.get("summary", "")
        stdout.print(f"[green]{name:>8}[/green] {summary} ({state})")
    stdout.print(f"workspace: {ws.root}")


STAGES = ("decode", "flow", "segment", "sfm", "depth")


def _later_stages(*, until, flow, raft_checkpoint, segment, point, box, sam_model, sam_checkpoint, sam2_checkpoint,
                  min_object_area, max_objects, refine_masks, static_camera, focal, fov, sfm_max_frames, sfm_threads,
                  per_object_sfm, depth, depth_checkpoint, device) -> list[pipeline.StageRequest]:
    """Requests for flow -> segment -> sfm -> depth, up to --until; options are checked before anything runs."""
    from models.errors import InputError
    from models.fitting import resolve_device

    if until not in STAGES:
        raise InputError(f"--until must be one of {', '.join(STAGES)}, not {until!r}")
    wanted = STAGES[1:STAGES.index(until) + 1]
    torch_device = str(resolve_device(device))  # a string: stage configs are JSON
    requests = []
    if "flow" in wanted:
        if flow not in {"dis", "raft"}:
            raise InputError(f"--flow must be dis or raft, not {flow!r}")
        cfg = flow_stage.FlowConfig(backend=flow, raft_checkpoint=str(raft_checkpoint) if raft_checkpoint else None,
                                    device=torch_device)
        key = {k: v for k, v in asdict(cfg).items() if k != "device"}
        requests.append(pipeline.StageRequest(flow_stage.SPEC, cfg, key))
    if "segment" in wanted:
        if segment not in {"motion", "sam", "sam2"}:
            raise InputError(f"--segment must be motion, sam or sam2, not {segment!r}")
        if segment != "motion" and not (point or box):
            raise InputError(f"--segment {segment} needs prompts: --point X,Y[@FRAME] or --box X0,Y0,X1,Y1[@FRAME]")
        cfg = segment_stage.SegmentConfig(
            backend=segment, points=tuple(segment_stage.parse_point(p) for p in point),
            boxes=tuple(segment_stage.parse_box(b) for b in box), min_area=min_object_area, max_objects=max_objects,
            refine=refine_masks,
            sam_model=sam_model, sam_checkpoint=str(sam_checkpoint) if sam_checkpoint else None,
            sam2_checkpoint=str(sam2_checkpoint) if sam2_checkpoint else None, device=torch_device)
        requests.append(pipeline.StageRequest(segment_stage.SPEC, cfg, segment_stage.key_config(cfg)))
    if "sfm" in wanted:
        if focal is not None and focal <= 0:
            raise InputError(f"--focal must be positive, got {focal}")
        if not 1 <= fov < 180:
            raise InputError(f"--fov must be in [1, 180) degrees, got {fov}")
        cfg = sfm_stage.SfmConfig(static_camera=static_camera, focal=focal, fov=fov, max_frames=sfm_max_frames,
                                  threads=sfm_threads, per_object=per_object_sfm)
        requests.append(pipeline.StageRequest(sfm_stage.SPEC, cfg))
    if "depth" in wanted:
        if depth not in {"auto", "depth-anything", "sfm", "none"}:
            raise InputError(f"--depth must be auto, depth-anything, sfm or none, not {depth!r}")
        if depth == "auto":
            depth = "depth-anything" if _depth_weights_found(depth_checkpoint) else "sfm"
        cfg = depth_stage.DepthConfig(backend=depth, checkpoint=str(depth_checkpoint) if depth_checkpoint else None,
                                      device=torch_device)
        requests.append(pipeline.StageRequest(depth_stage.SPEC_WITH_SEGMENT, cfg, depth_stage.key_config(cfg)))
    return requests


def _depth_weights_found(explicit: Optional[Path]) -> bool:
    from models import weights

    try:
        weights.hub_source(weights.KNOWN["depth-anything"], explicit)
        return True
    except weights.WeightsNotFoundError:
        return False


def _refuse_inside_input(root: Path, source: decode.Source) -> None:
    """The user's input folder is read-only to us: a workspace must not be created inside it."""
    from models.errors import InputError

    if source.kind == "images":
        folder = source.files[0].parent.resolve()
        if root.resolve() == folder or folder in root.resolve().parents:
            raise InputError(f"workspace {root} is inside the input folder {folder}; pass --workspace elsewhere")
