"""`monodyn preprocess INPUT`: decode -> flow -> segment -> sfm -> depth, every stage cached in the workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from monodyn_cli import pipeline
from monodyn_cli.console import RichProgress, RunLog, handle_errors, stdout
from monodyn_cli.stages import decode
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
        results = pipeline.run_chain(ws, requests, progress, force=force, log=log)
        log.close()
    for name, res in results.items():
        state = "cached" if res.cached else f"{res.manifest['seconds']:.1f}s"
        summary = res.manifest.get("summary", "")
        stdout.print(f"[green]{name:>8}[/green] {summary} ({state})")
    stdout.print(f"workspace: {ws.root}")


def _refuse_inside_input(root: Path, source: decode.Source) -> None:
    """The user's input folder is read-only to us: a workspace must not be created inside it."""
    from models.errors import InputError

    if source.kind == "images":
        folder = source.files[0].parent.resolve()
        if root.resolve() == folder or folder in root.resolve().parents:
            raise InputError(f"workspace {root} is inside the input folder {folder}; pass --workspace elsewhere")
