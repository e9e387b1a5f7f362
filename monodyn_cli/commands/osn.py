"""`monodyn osn scales WORKSPACE`: the object scales the fitted OSN model finds valid (table + PNG plot)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from monodyn_cli.console import handle_errors, stdout

osn_app = typer.Typer(help="OSN tools: inspect the learned object scale ranges.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(osn_app, name="osn")


def _fmt(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.3g}"


@osn_app.command(help="Table of the valid scale range of every object (s_k multiplies object k's camera-to-object "
                      "translation; background = 1) and a PNG of validity against scale, saved in the workspace.")
@handle_errors
def scales(
    workspace: Optional[Path] = typer.Argument(None, help="Workspace with a fitted OSN model (default: the one "
                                                          "*.monodyn folder here)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="PNG to write (default: "
                                                                      "<workspace>/osn/scales-<fit key>.png)."),
    seed: int = typer.Option(0, help="Seed of the candidate scale combinations (as render's scale samples)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    from models.osn.method import load_model
    from models.osn.report import scale_report
    from monodyn_cli.fits import current_checkpoint
    from monodyn_cli.outputs import Outputs
    from monodyn_cli.report.figures import plot_osn_scales
    from monodyn_cli.scene_loader import WORKSPACE_ARGUMENT, resolve_workspace

    ws = resolve_workspace(workspace, WORKSPACE_ARGUMENT)
    _, ckpt = current_checkpoint(ws, "osn")
    png = output or ws.root / "osn" / f"scales-{ckpt.name[:8]}.png"
    with Outputs(ws.root) as outputs:
        tmp = outputs.file(png)
        report = scale_report(load_model(ckpt), seed=seed)
        plot_osn_scales(report, tmp)
        outputs.commit()
    table = Table(title=f"OSN object scales ({report.n_valid} of {report.n_candidates} candidate combinations valid)")
    for col in ("object", "searched", "valid (any combination)", "valid (others at default)", "default"):
        table.add_column(col, justify="right")
    for k, obj in enumerate(report.ids):
        table.add_row(str(obj), f"{report.search_lo[k]:.3g} .. {report.search_hi[k]:.3g}",
                      f"{_fmt(float(report.valid_lo[k]))} .. {_fmt(float(report.valid_hi[k]))}",
                      f"{_fmt(float(report.axis_lo[k]))} .. {_fmt(float(report.axis_hi[k]))}",
                      f"{float(report.default[k]):.3g}")
    stdout.print(table)
    stdout.print("scale = the object's median distance from the camera in background units; render one with "
                 "`monodyn render ... --scales " + ",".join(f"{float(s):.3g}" for s in report.default) + "`")
    stdout.print(f"wrote {png}", markup=False)
