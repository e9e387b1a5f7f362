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
    from monodyn_cli.scene_loader import resolve_workspace

    ws = resolve_workspace(workspace)
    _, ckpt = current_checkpoint(ws, "osn")
    report = scale_report(load_model(ckpt), seed=seed)
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
    png = output or ws.root / "osn" / f"scales-{ckpt.name[:8]}.png"
    plot_report(report, png)
    stdout.print(f"wrote {png}")


def plot_report(report, path: Path) -> Path:
    """Validity against scale per object (others at the default) and, for two or more objects, the 2D map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    K = len(report.ids)
    n = K + (report.map2d is not None)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    for k in range(K):
        ax = axes[0, k]
        ax.plot(report.curve_scales[k].numpy(), report.curve_validity[k].numpy(), color="C0")
        ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
        ax.axvline(float(report.default[k]), color="C3", lw=0.8, label="default")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"scale of object {report.ids[k]}")
        ax.set_ylabel("validity")
        ax.set_title(f"object {report.ids[k]} (others at default)", fontsize=9)
        ax.legend(fontsize=7)
    if report.map2d is not None:
        sa, sb, v = report.map2d
        ax = axes[0, K]
        mesh = ax.pcolormesh(sa.numpy(), sb.numpy(), v.numpy(), vmin=0, vmax=1, cmap="viridis", shading="auto")
        ax.contour(sa.numpy(), sb.numpy(), v.numpy(), levels=[0.5], colors="w", linewidths=0.8)
        ax.plot([float(report.default[0])], [float(report.default[1])], "r+")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"scale of object {report.ids[0]}")
        ax.set_ylabel(f"scale of object {report.ids[1]}")
        ax.set_title("validity" + (" (others at default)" if K > 2 else ""), fontsize=9)
        fig.colorbar(mesh, ax=ax)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
