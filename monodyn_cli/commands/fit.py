"""`monodyn fit --method NAME`: fit a per-video method on the preprocessed clip; the checkpoint is cached in
the workspace (see monodyn_cli/fits.py for the cache layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from models.methods import METHODS
from monodyn_cli.console import handle_errors


def register(app: typer.Typer) -> None:
    app.command(
        help="Fit a per-video method (dpdy, osn) to the preprocessed clip. Method options follow; see "
             "`monodyn fit --method NAME --help`.",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False)(fit)


@handle_errors
def fit(
    ctx: typer.Context,
    method: str = typer.Option("dpdy", "--method", "-m", help=f"Method: {', '.join(sorted(METHODS))}."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w",
                                             help="Workspace (default: the one *.monodyn folder here)."),
    resume: bool = typer.Option(False, "--resume", help="Continue a fit that was killed, from its last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Fit again even if this exact fit is cached."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    help_: bool = typer.Option(False, "--help", "-h", help="Show this help, and the method's options."),
) -> None:
    from monodyn_cli.options import method_options_help, parse_method_options

    if help_:
        method_options_help(ctx, method, "Config", "fit")
        raise typer.Exit(0)
    name, impl, cfg = parse_method_options(method, "Config", list(ctx.args))  # validated before the workspace
    if impl.Config is None:
        from models.errors import InputError

        raise InputError(f"{name} is pretrained and needs no fit: render directly with `monodyn render --method "
                         f"{name}` (train it with `monodyn train {name}`)")
    from monodyn_cli.console import RichProgress, RunLog, stdout
    from monodyn_cli.fits import fit_cached
    from monodyn_cli.priors import prepare_prior
    from monodyn_cli.scene_loader import load_scene, resolve_workspace

    ws = resolve_workspace(workspace)
    scene, input_keys = load_scene(ws, object_sfm=getattr(impl, "reads_object_sfm", False))
    placed = osn_placements(ws, name, cfg)
    with ws.lock():
        log = RunLog(ws.root, "fit")
        progress = RichProgress(quiet, log)
        prior = prepare_prior(ws, cfg, scene, input_keys, progress, log)  # before the key: it names the prior actually used
        out = fit_cached(ws, name, impl, cfg, scene, input_keys, progress, resume, force, log)
        log.close()
    if prior:
        stdout.print(prior, markup=False, highlight=False)
    for note in getattr(impl, "fit_notes", lambda ckpt: [])(out):  # e.g. objects a fit left in the background
        stdout.print(f"note: {note}", markup=False, highlight=False)
    if placed:
        stdout.print(f"note: objects placed at OSN's {cfg.osn_scale} scales (median depth): {placed}", markup=False,
                     highlight=False)
    stdout.print(f"checkpoint: {out}")


def osn_placements(ws, name: str, cfg) -> str:
    """DpDy with --osn-scale: the object placements from the workspace's OSN fit, written into the config (so they
    are part of the fit's key); "" when not asked for or there is no OSN fit."""
    if getattr(cfg, "osn_scale", "off") == "off" or getattr(cfg, "object_scales", None) != "" or name == "osn":
        return ""
    from models.errors import InputError
    from models.osn.method import object_placements
    from monodyn_cli.fits import current_checkpoint

    try:
        _, ckpt = current_checkpoint(ws, "osn")
    except InputError:  # no OSN fit here: objects keep their depth
        return ""
    cfg.object_scales = ",".join(f"{k}:{v:.4g}" for k, v in object_placements(ckpt, cfg.osn_scale).items())
    return cfg.object_scales
