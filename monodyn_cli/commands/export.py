"""`monodyn export`: the fitted Gaussians as 3DGS .ply files and the cameras (see monodyn_cli/exporting.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from models.methods import GAUSSIAN_METHODS
from monodyn_cli.console import handle_errors


def register(app: typer.Typer) -> None:
    app.command(help="Export the fitted Gaussians as standard 3DGS .ply files (one per frame, plus the static "
                     "set) with the cameras (nerfstudio transforms.json, COLMAP model) for splat viewers and "
                     "other tools.")(export)


@handle_errors
def export(
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w",
                                             help="Workspace (default: the one *.monodyn folder here)."),
    method: str = typer.Option("dpdy", "--method", "-m",
                               help=f"Which fit to export (a Gaussian method: {', '.join(GAUSSIAN_METHODS)})."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (default: "
                                                                      "<workspace>/export/<method>-<fit key>/)."),
    frames: Optional[str] = typer.Option(None, "--frames", help="Input frames to export, e.g. 0,10,20-30 "
                                                               "(default: all)."),
    every: Optional[int] = typer.Option(None, "--every", help="Export every N-th input frame (0, N, 2N, ...)."),
    static_only: bool = typer.Option(False, "--static-only", help="Only static.ply (no per-frame files)."),
    dynamic_only: bool = typer.Option(False, "--dynamic-only", help="Per-frame files with the dynamic Gaussians "
                                                                   "only, and no static.ply."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    from monodyn_cli.exporting import run

    run(workspace=workspace, method=method, output=output, frames=frames, every=every, static_only=static_only,
        dynamic_only=dynamic_only, quiet=quiet)
