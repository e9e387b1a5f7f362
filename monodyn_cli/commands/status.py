"""`monodyn status WORKSPACE`: a table of every stage folder (current, stale, crashed)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from monodyn_cli.console import handle_errors, human_bytes, stdout
from monodyn_cli.workspace import Workspace, lock_holder, read_json


def register(app: typer.Typer) -> None:
    app.command(help="Show the stages cached in a workspace: key, config, outputs, sizes, seconds, state.")(status)


@handle_errors
def status(
    workspace: Path = typer.Argument(..., help="Workspace folder made by `monodyn preprocess`."),
    all_keys: bool = typer.Option(False, "--all", help="Also list stale results (older configs) of each stage."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show each stage's config and output files."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    from monodyn_cli.fits import fit_state
    from monodyn_cli.outputs import stale_outputs

    ws = Workspace(workspace)
    ws.check_exists("a workspace folder (made by `monodyn preprocess`)")
    table = Table(title=f"monodyn workspace {ws.root}")
    cols = ["stage", "key", "state", "seconds", "size", "summary"] + (["config", "outputs"] if verbose else [])
    for col in cols:
        table.add_column(col, overflow="fold", no_wrap=col in {"stage", "key", "seconds", "size"})
    running = lock_holder(ws.root)
    rows = ws.entries()
    newest: dict[str, float] = {}  # a running job works in the newest result folder of its stage
    for row in rows:
        newest[row["stage"]] = max(newest.get(row["stage"], row["mtime"]), row["mtime"])
    for row in rows:
        m = row["manifest"]
        if m is None and running is not None and row["mtime"] >= newest[row["stage"]]:
            state = f"[yellow]running[/yellow] (pid {running} holds the lock)"
        elif m is None and row["stage"].startswith("fit:"):
            word, advice = fit_state(ws.root / "fit" / row["stage"][4:] / row["key"], row["stage"][4:])
            state = f"[red]{word}[/red]{escape(advice[len(word):])}"
        elif m is None:
            state = "[red]crashed or damaged[/red] (redone next run)"
        elif row["current"]:
            state = "[green]valid[/green]"
        elif not all_keys:
            continue
        else:
            state = "stale"
        cfg = " ".join(f"{k}={v}" for k, v in (m or {}).get("config", {}).items() if "sha256" not in k)
        outputs = ", ".join(m["outputs"]) if m else ""
        seconds = f"{m['seconds']:.1f}" if m else ""
        cells = [row["stage"], row["key"][:8], state, seconds, human_bytes(row["bytes"]), str((m or {}).get("summary", ""))]
        table.add_row(*cells, *([cfg, outputs] if verbose else []))
    stdout.print(table)
    info = read_json(ws.root / "workspace.json")
    stdout.print(f"source: {info.get('source')}  created: {time.ctime(info.get('created', 0))}", markup=False)
    stale = stale_outputs(ws.root)
    if stale:
        stdout.print(f"[yellow]{len(stale)} temporary file(s) of killed runs[/yellow] (the next render, export or report "
                     "in this workspace removes them):")
        for p in stale:
            stdout.print(f"  {p}", markup=False)
