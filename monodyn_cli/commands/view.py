"""`monodyn view [WORKSPACE]`: an interactive 4D viewer of a fit in the browser (viser; see monodyn_cli/viewer.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from monodyn_cli.console import console, handle_errors


def register(app: typer.Typer) -> None:
    app.command(help="Open the fitted Gaussians in the browser: a free camera, the input cameras as frustums with "
                     "their frames, a time slider that plays the motion (OSN: a slider per object scale), and "
                     "buttons that save the view or a keyframed path as a camera_path.json for `monodyn render "
                     "--camera-path`. Serves until Ctrl-C.")(view)


@handle_errors
def view(
    workspace: Optional[Path] = typer.Argument(None, help="Workspace with a fit (default: the one *.monodyn folder "
                                                          "here)."),
    method: str = typer.Option("dpdy", "--method", "-m", help="Which fit to show: dpdy or osn."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on (0.0.0.0: every interface, e.g. "
                                                         "to view a remote GPU machine's fit)."),
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="Port (the next free one if taken)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    from models.errors import InputError
    from monodyn_cli.fits import current_checkpoint
    from monodyn_cli.scene_loader import load_scene, resolve_workspace
    from monodyn_cli.viewer import VIEWABLE, Viewer

    if method not in VIEWABLE:
        raise InputError(f"monodyn view shows Gaussian fits ({', '.join(VIEWABLE)}), not {method!r}: use "
                         f"`monodyn render --method {method}`")
    ws = resolve_workspace(workspace)
    method, ckpt = current_checkpoint(ws, method)
    scene, _ = load_scene(ws)
    viewer = Viewer(ws, method, ckpt, scene, host=host, port=port)
    console.print(f"viewing {method} fit {ckpt.name} of {ws.root} at [bold]{viewer.url}[/bold] (Ctrl-C stops)")
    try:
        viewer.run()
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
