"""monodyn batch CLIPS... --run "CHAIN" (e.g. "preprocess, fit --method dpdy --minutes 5, render --orbit 30"): one
chain of commands per clip, here (one clip after the other) or on a Ray cluster (`--ray`), with a live table of progress and
results. A failed clip does not stop the others; its error line is kept and the exit code is 1."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from monodyn_cli.console import console, handle_errors, stdout


def register(app: typer.Typer) -> None:
    app.command(help="Run a chain of monodyn commands on many clips: `--run \"preprocess --max-side 320, fit --method "
                     "dpdy --minutes 5, render --orbit 30\"`. Each clip gets its own workspace (beside it, or in "
                     "--workspaces); each stage runs as its own process, so a failing clip stops only its own chain. "
                     "Locally the clips run one after another; with --ray each clip is a Ray task and each stage "
                     "asks for its CPUs and GPU (see README, 'monodyn batch').")(batch)


def _table(clips, states, results) -> Table:
    table = Table(title="monodyn batch")
    for column in ("clip", "status", "stages", "seconds", "result / error"):
        table.add_column(column, overflow="fold")
    for i, clip in enumerate(clips):
        result = results[i]
        if result is None:
            table.add_row(clip.name, states[i], "", "", "")
            continue
        done = " ".join(f"{s.stage}:{s.seconds:.0f}s" for s in result.stages)
        status = "[green]done[/green]" if result.ok else f"[red]failed at {result.stages[-1].stage}[/red]"
        last = result.stages[-1].line if result.stages else ""
        table.add_row(clip.name, status, done, f"{result.seconds:.1f}", last)
    return table


@handle_errors
def batch(
    clips: List[Path] = typer.Argument(..., help="Clips: videos, image folders (as `monodyn preprocess` takes)."),
    run: str = typer.Option(..., "--run", help="The chain: monodyn commands separated by commas, each with its "
                                               "options; the clip and its workspace are filled in. Commands: "
                                               "preprocess, fit, render, eval, export, report."),
    workspaces: Optional[Path] = typer.Option(None, "--workspaces", help="Folder for the workspaces "
                                                                        "(<clip>.monodyn each; default: beside each "
                                                                        "clip). On a cluster: shared storage, or "
                                                                        "use --copy-back."),
    ray: bool = typer.Option(False, "--ray", help="Run on Ray: one task per clip. Connects to --address, "
                                                  "$RAY_ADDRESS or the cluster this machine belongs to, else starts "
                                                  "a local Ray instance."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (e.g. ray://head:10001 or "
                                                                  "auto); implies --ray."),
    copy_back: bool = typer.Option(False, "--copy-back", help="Ray: send each clip to its worker and its workspace "
                                                              "back (for clusters without shared storage)."),
    cpus: Optional[int] = typer.Option(None, "--cpus", min=1, help="Ray: CPUs every stage asks for (default: 2 "
                                                                   "for preprocess and fit, 1 for the others)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    from contextlib import nullcontext

    from rich.live import Live

    from models.errors import InputError
    from monodyn_cli import batch as runner
    from monodyn_cli.stages.decode import resolve_source

    stages = runner.parse_chain(run)
    if copy_back and not (ray or address):
        raise InputError("--copy-back is for --ray (here the workspaces are written in place)")
    for clip in clips:
        resolve_source(clip)  # every clip exists and is readable before any work
    pairs = [(clip.resolve(), runner.workspace_for(clip.resolve(), workspaces.resolve() if workspaces else None))
             for clip in clips]
    doubled = {w for _, w in pairs if [w2 for _, w2 in pairs].count(w) > 1}
    if doubled:
        raise InputError(f"two clips would share the workspace {sorted(doubled)[0]}: give the clips distinct names")
    if workspaces:
        workspaces.mkdir(parents=True, exist_ok=True)
    states = ["waiting"] * len(clips)
    results = [None] * len(clips)
    # live on a terminal; piped into a log, only the final table (on stdout) is printed
    live = Live(_table(clips, states, results), console=console, auto_refresh=False, redirect_stdout=False) \
        if console.is_terminal else nullcontext()
    with live:
        def refresh():
            if isinstance(live, Live):
                live.update(_table(clips, states, results), refresh=True)

        def done(i, result):
            results[i] = result
            refresh()

        if ray or address:
            states[:] = ["running on ray"] * len(clips)
            refresh()
            runner.run_on_ray(pairs, stages, address, copy_back, cpus, done)
        else:
            for i, (clip, ws) in enumerate(pairs):
                def started(stage, i=i):
                    states[i] = f"running {stage}"
                    refresh()

                done(i, runner.run_chain(clip, ws, stages, on_stage=started))
    if not console.is_terminal:
        stdout.print(_table(clips, states, results))
    failed = sum(not r.ok for r in results)
    if failed:
        console.print(f"[red]{failed} of {len(clips)} clip(s) failed[/red] (their error lines are in the table)")
        raise typer.Exit(1)
