"""`monodyn status WORKSPACE`: a table of every stage folder (current, stale, crashed)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from monodyn_cli.console import handle_errors, human_bytes, stdout
from monodyn_cli.workspace import Workspace


def register(app: typer.Typer) -> None:
    app.command(help="Show the stages cached in a workspace: key, config, outputs, sizes, seconds, state.")(status)


@handle_errors
def status(
    workspace: Path = typer.Argument(..., help="Workspace folder made by `monodyn preprocess`."),
    all_keys: bool = typer.Option(False, "--all", help="Also list stale results (older configs) of each stage."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    ws = Workspace(workspace)
    ws.check_exists()
    table = Table(title=f"monodyn workspace {ws.root}")
    for col in ("stage", "key", "state", "config", "outputs", "size", "seconds", "summary"):
        table.add_column(col, overflow="fold")
    for row in ws.entries():
        m = row["manifest"]
        if m is None:
            state = "[red]crashed[/red] (no manifest; redone next run)"
        elif row["current"]:
            state = "[green]valid[/green]"
        elif not all_keys:
            continue
        else:
            state = "stale"
        cfg = json.dumps({k: v for k, v in (m or {}).get("config", {}).items() if "sha256" not in k},
                         separators=(",", ":")) if m else ""
        outputs = ", ".join(m["outputs"]) if m else ""
        seconds = f"{m['seconds']:.1f}" if m else ""
        table.add_row(row["stage"], row["key"], state, cfg, outputs, human_bytes(row["bytes"]), seconds,
                      str((m or {}).get("summary", "")))
    stdout.print(table)
    info = json.loads((ws.root / "workspace.json").read_text())
    stdout.print(f"source: {info.get('source')}  created: {time.ctime(info.get('created', 0))}")
