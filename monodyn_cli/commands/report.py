"""`monodyn report [WORKSPACE]`: one self-contained HTML page of what a workspace holds, to look at.

Top-level imports stay light (`monodyn --help` must start fast): numpy, cv2 and matplotlib load in the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from monodyn_cli.console import RichProgress, handle_errors, stdout


def register(app: typer.Typer) -> None:
    app.command(help="Write <workspace>/report/report.html: per stage what it found (frames, masks, flow, SfM "
                     "cameras and points, depth), the fits' loss and PSNR curves, renders, evaluation tables and "
                     "OSN scale plots, in one self-contained file.")(report)


@handle_errors
def report(
    workspace: Optional[Path] = typer.Argument(None, help="Workspace folder (default: the current folder if it is "
                                                          "one, else the one *.monodyn folder here)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="HTML file to write (default: "
                                                                      "<workspace>/report/report.html)."),
    frames: int = typer.Option(8, "--frames", min=1, max=64, help="Frames shown per stage (evenly spaced)."),
    thumb: int = typer.Option(200, "--thumb", min=32, max=1024, help="Long side of each thumbnail, pixels."),
    embed_mb: float = typer.Option(8.0, "--embed-mb", min=0.0, help="Embed the rendered videos when together "
                                                                    "they are at most this many MB; else link them."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors (and let a failing section fail "
                                                      "the command)."),
) -> None:
    from monodyn_cli.report import build_report
    from monodyn_cli.scene_loader import WORKSPACE_ARGUMENT, resolve_workspace

    ws = resolve_workspace(workspace, WORKSPACE_ARGUMENT)
    path = build_report(ws, output, RichProgress(quiet), n_frames=frames, thumb=thumb, embed_limit_mb=embed_mb,
                        debug=debug)
    size = path.stat().st_size / 1024 ** 2
    stdout.print(f"wrote {path} ({size:.1f} MB); open it in a browser", markup=False)
