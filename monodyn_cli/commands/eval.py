"""`monodyn eval`: fit (cached) and score rendered views against ground truth: PSNR, SSIM, LPIPS + masked variants."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from models.methods import METHODS
from monodyn_cli.console import handle_errors

PROTOCOLS = ("holdout", "synth", "multiview")


def register(app: typer.Typer) -> None:
    app.command(name="eval",
                help="Score a method against held-out views: holdout (any clip), synth (monodyn synth ground truth), "
                     "multiview (images + cameras npz). Method options follow, as for fit.",
                context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                add_help_option=False)(evaluate)


@handle_errors
def evaluate(
    ctx: typer.Context,
    protocol: str = typer.Option("holdout", help="holdout: fit every other frame, score the rest; synth: score "
                                                 "held-out cameras of a `monodyn synth` scene (--gt DIR); "
                                                 "multiview: fit the train split of --gt FILE.npz, score its test split."),
    method: str = typer.Option("dpdy", "--method", "-m", help=f"Method: {', '.join(sorted(METHODS))}."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w",
                                             help="Workspace (multiview: where to cache the fit, default FILE.monodyn)."),
    gt: Optional[Path] = typer.Option(None, "--gt", help="Ground truth: the `monodyn synth` folder, or the multiview npz."),
    cameras: Optional[str] = typer.Option(None, help="synth: comma-separated held-out camera names (default: all)."),
    lpips_weights: Optional[Path] = typer.Option(None, help="LPIPS linear-layer weights (alex.pth); LPIPS is skipped "
                                                            "without them."),
    lpips_backbone: Optional[Path] = typer.Option(None, help="AlexNet backbone weights for LPIPS (torchvision format)."),
    every: int = typer.Option(1, "--every", help="Score every N-th test image only (rendering is the slow "
                                                        "part on a CPU; the fit is the same)."),
    device: str = typer.Option("auto", help="Torch device for rendering: auto (CUDA when present), cpu, cuda, cuda:N."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    help_: bool = typer.Option(False, "--help", "-h", help="Show this help, and the method's fit options."),
) -> None:
    from models.errors import InputError
    from monodyn_cli.options import check_range, method_options_help, parse_method_options

    if help_:
        method_options_help(ctx, method, "Config", "eval")
        raise typer.Exit(0)
    if protocol not in PROTOCOLS:
        raise InputError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    check_range("--every", every, 1, 1_000_000)
    if protocol == "holdout" and gt is not None:
        raise InputError("--gt is the ground truth of --protocol synth (a `monodyn synth` folder) or --protocol "
                         "multiview (an npz); --protocol holdout scores held-out frames of the clip itself: drop --gt, "
                         "or add --protocol synth")
    if cameras is not None and protocol != "synth":
        raise InputError("--cameras names held-out cameras of --protocol synth: add --protocol synth --gt DIR, or drop "
                         "--cameras")
    method, impl, cfg = parse_method_options(method, "Config", list(ctx.args))
    _evaluate(protocol, method, impl, cfg, workspace, gt, cameras, lpips_weights, lpips_backbone, every, device,
              quiet)


def _evaluate(protocol, method, impl, cfg, workspace, gt, cameras, lpips_weights, lpips_backbone, every, device,
              quiet) -> None:
    import json
    import time

    import torch

    from models.devices import resolve_device
    from models.errors import InputError
    from monodyn_cli import evaluation, metrics, render_cache
    from monodyn_cli.console import RichProgress, RunLog, stdout
    from monodyn_cli.fits import fit_cached
    from monodyn_cli.outputs import Outputs
    from monodyn_cli.priors import prepare_prior
    from monodyn_cli.scene_loader import load_scene, resolve_workspace
    from monodyn_cli.workspace import Workspace

    device = str(resolve_device(device))
    if protocol == "multiview":
        if gt is None:
            raise InputError("--protocol multiview needs --gt FILE.npz")
        scene, views_list = evaluation.load_multiview_npz(gt)
        views_list = [views_list]
        ws = Workspace(workspace or gt.with_suffix(".monodyn"))
        ws.ensure(source=str(gt))
        keys = {"multiview": _file_key(gt)}
        train_scene, tag = scene, "-multiview"
    else:
        from monodyn_cli.commands.fit import osn_placements

        ws = resolve_workspace(workspace)
        scene, keys = load_scene(ws, object_sfm=getattr(impl, "reads_object_sfm", False))
        osn_placements(ws, method, cfg)  # the fit a user's `monodyn fit` makes: DpDy at OSN's scales when it has them
        if protocol == "holdout":
            train_scene, held = evaluation.holdout_split(scene)
            views_list, tag = [held], "-holdout"
        else:
            if gt is None:
                raise InputError("--protocol synth needs --gt DIR (the folder `monodyn synth` wrote)")
            views_list = evaluation.synth_views(gt, scene, cameras.split(",") if cameras else None)
            train_scene, tag = scene, ""
    lpips_model, lpips_note = metrics.try_load_lpips("alex", lpips_weights, lpips_backbone, device)
    with ws.lock():
        log = RunLog(ws.root, "eval")
        progress = RichProgress(quiet, log)
        start = time.perf_counter()
        if impl.Config is not None:
            prepare_prior(ws, cfg, train_scene, keys, progress, log)
        ckpt = None if impl.Config is None else fit_cached(ws, method, impl, cfg, train_scene, keys, progress,
                                                           resume=False, force=False, log=log, tag=tag)
        fit_seconds = time.perf_counter() - start
        renderer = impl.load(ckpt, train_scene, impl.RenderOptions(), device)
        with Outputs(ws.root) as outputs:
            target = ws.root / "eval" / f"{protocol}-{method}-{time.strftime('%Y%m%d-%H%M%S')}"
            out_dir = outputs.folder(target)
            all_rows, summaries = [], {}
            for views in views_list:
                views = views.every(every)
                rgb = render_cache.render_frames(renderer, method, train_scene, views.cameras, views.times, device,
                                                 progress, f"render {views.name}", ws.root).rgb
                pred = torch.from_numpy(rgb).float() / 255  # scored as delivered: 8-bit frames
                rows = evaluation.score(pred, views, lpips_model)
                for r in rows:
                    r["view"] = views.name
                all_rows += rows
                summaries[views.name] = metrics.summarize(rows)
                floor = metrics.summarize(evaluation.score(floor_prediction(train_scene, views.times), views))
                summaries[views.name].update({f"floor_{k}": v for k, v in floor.items()
                                              if k in evaluation.FLOOR_METRICS})
                _save_strip(out_dir / f"{views.name}.png", pred, views.images)
            metrics.write_csv(out_dir / "per_frame.csv", all_rows)
            summary = {"protocol": protocol, "method": method, "checkpoint": str(ckpt), "fit_seconds": round(fit_seconds, 1),
                       "every": every, "views": summaries, "lpips": lpips_note or "computed"}
            (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            outputs.commit()
        log.close()
    print_summary(summaries, f"{method} / {protocol}")
    if lpips_note:
        stdout.print(lpips_note)
    stdout.print(f"per-frame CSV and summary: {target}", markup=False)


def floor_prediction(scene, times):
    """The floor every method must beat: for each test time, the training frame nearest in time, as it is
    (for held-out cameras of a synthetic scene, the input frame t itself)."""
    nearest = (times.cpu()[:, None] - scene.times[None]).abs().argmin(1)
    return scene.images(nearest.numpy())


def print_summary(summaries: dict[str, dict], title: str) -> None:
    from rich.table import Table

    from monodyn_cli.console import stdout

    cols = sorted({k for s in summaries.values() for k in s})
    table = Table(title=title)
    table.add_column("view")
    for c in cols:
        table.add_column(c, justify="right")
    for name, s in summaries.items():
        table.add_row(name, *(f"{s[c]:.4f}" if isinstance(s.get(c), float) else str(s.get(c, "")) for c in cols))
    stdout.print(table)


def _save_strip(path: Path, pred, gt, n: int = 4) -> None:
    """A PNG with a few ground-truth / rendered pairs ((N,H,W,3) tensors in [0,1]), to look at."""
    import cv2
    import numpy as np

    idx = np.linspace(0, len(pred) - 1, min(n, len(pred))).round().astype(int)
    rows = [np.concatenate([gt[i].numpy(), pred[i].numpy()], axis=1) for i in idx]
    img = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).round().astype(np.uint8)
    cv2.imwrite(str(path), img[..., ::-1])


def _file_key(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
