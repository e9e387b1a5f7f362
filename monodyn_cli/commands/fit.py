"""`monodyn fit --method NAME`: fit a method on the preprocessed clip; the checkpoint is cached in the workspace.

Checkpoints live in `<workspace>/fit/<method>/<key>/` (`config.json` + `*.safetensors`, manifest.json last).
The key hashes the method, its options and the stage results used, so the same command is instant the
second time. A killed fit leaves a folder without a manifest: `--resume` continues from its last
checkpoint, a plain rerun starts it over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from models.registry import METHODS, get_method
from models.scene import Scene
from monodyn_cli.console import RichProgress, RunLog, handle_errors, stdout
from monodyn_cli.dataclass_options import options_table, parse_options
from monodyn_cli.scene_loader import load_scene, resolve_workspace
from monodyn_cli.workspace import MANIFEST, Workspace, stage_key, write_json_atomic

FIT_VERSION = 1


def register(app: typer.Typer) -> None:
    app.command(
        help="Fit a method (dpdy, ...) to the preprocessed clip. Method options follow; see "
             "`monodyn fit --method NAME --help`.",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False)(fit)


def method_help(name: str) -> None:
    method = get_method(name)
    table = Table(title=f"options of --method {name}")
    for col in ("option", "type", "default", "help"):
        table.add_column(col, overflow="fold")
    for row in options_table(method.Config):
        table.add_row(*row)
    stdout.print(table)


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
    if help_:
        stdout.print(ctx.get_help())
        method_help(method)
        raise typer.Exit(0)
    impl = get_method(method)
    cfg = parse_options(impl.Config, list(ctx.args))
    if hasattr(cfg, "validate"):
        cfg.validate()  # before the workspace is touched
    ws = resolve_workspace(workspace)
    scene, input_keys = load_scene(ws)
    with ws.lock():
        log = RunLog(ws.root, "fit")
        out = fit_cached(ws, method, impl, cfg, scene, input_keys, RichProgress(quiet, log), resume, force, log)
        log.close()
    stdout.print(f"checkpoint: {out}")


def fit_cached(ws: Workspace, method: str, impl, cfg, scene: Scene, input_keys: dict[str, str],
               progress: RichProgress, resume: bool, force: bool, log, tag: str = "") -> Path:
    """Run (or reuse) a fit; returns its checkpoint folder. `tag` separates e.g. held-out-evaluation fits."""
    config = dataclasses.asdict(cfg)
    key = stage_key(f"fit-{method}{tag}", FIT_VERSION * 1000 + getattr(impl, "version", 0), config, input_keys)
    out = ws.root / "fit" / method / key
    if (out / MANIFEST).exists() and not force:
        log(f"fit {method}: cached {key}")
        if not tag:  # an evaluation fit (on a split) never becomes the fit that render and export use
            _set_current_fit(ws, method, key)
        return out
    if out.exists() and (force or not resume):
        trash = out.with_name(f".trash-{key}-{os.getpid()}")
        os.replace(out, trash)
        shutil.rmtree(trash, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    total = getattr(cfg, "steps", None)
    with progress.task(f"fit {method}", total) as advance:
        last = [0]

        def report(step: int, total_steps: int | None = None, **metrics) -> None:
            advance(step - last[0], **metrics)
            last[0] = step
            if step % 100 == 0 and metrics:
                log(f"step {step} " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        impl.fit(scene, cfg, out, report, resume=resume)
    seconds = time.perf_counter() - start
    manifest = {"stage": "fit", "method": method, "version": FIT_VERSION, "key": key, "inputs": input_keys,
                "config": config, "seconds": round(seconds, 2), "tag": tag, "created": time.time(),
                "outputs": sorted(p.name for p in out.iterdir() if p.is_file())}
    write_json_atomic(out / MANIFEST, manifest)
    if not tag:
        _set_current_fit(ws, method, key)
    log(f"fit {method}: done {key} in {seconds:.1f}s")
    return out


def _set_current_fit(ws: Workspace, method: str, key: str) -> None:
    path = ws.root / "fit" / "current.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update({method: key, "latest": method})
    write_json_atomic(path, current)


def current_checkpoint(ws: Workspace, method: str | None) -> tuple[str, Path]:
    """The checkpoint `monodyn render` uses: of `method`, or of the method fitted last."""
    from models.errors import InputError

    path = ws.root / "fit" / "current.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    method = method or current.get("latest")
    if not method or method not in current:
        raise InputError(f"no fitted {method or 'method'} in {ws.root}: run `monodyn fit --method "
                         f"{method or 'dpdy'}` first")
    ckpt = ws.root / "fit" / method / current[method]
    if not (ckpt / MANIFEST).exists():
        raise InputError(f"the {method} checkpoint {ckpt} is incomplete: rerun `monodyn fit --method {method}`")
    return method, ckpt
