"""`monodyn weights list|fetch|path`: the pretrained models the pipeline can use (models/weights.py KNOWN), where they
are found, and getting them from their official sources (monodyn_cli/weights_fetch.py)."""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.table import Table

from monodyn_cli.console import console, handle_errors, human_bytes, stdout


def register(weights_app: typer.Typer) -> None:
    weights_app.command("list", help="Every model the pipeline can use: whether it is present, where it was found "
                                     "(an environment variable, the monodyn cache, the Hugging Face cache), its size, "
                                     "what uses it and its official source.")(list_weights)
    weights_app.command(help="Download models from their official sources (Hugging Face, the authors' URLs) into the "
                             "monodyn cache, with a progress bar; checked against published checksums; an interrupted "
                             "download resumes when run again. Models already present are skipped (--force fetches "
                             "them again).")(fetch)
    weights_app.command(help="Print where a model's file (or folder) is, as the pipeline would find it; exit code 1 "
                             "with what to do when it is missing. Never downloads.")(path)


def _size(path) -> int:
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


@handle_errors
def list_weights(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    from pathlib import Path

    from models import weights

    table = Table(title=f"weights (cache: {weights.cache_dir()})")
    for column in ("name", "present", "where", "size", "used by", "source"):
        table.add_column(column, overflow="fold")
    for spec in weights.KNOWN.values():
        found, how = weights.locate(spec)
        if found is None:
            size = f"~{human_bytes(spec.approx_bytes)}" if spec.approx_bytes else "?"
            present, where = "[red]no[/red]", how
        else:
            size = human_bytes(_size(found)) if isinstance(found, Path) else "-"  # a hub id: the hub's cache
            present, where = "[green]yes[/green]", f"{found} ({how})"
        source = spec.url or f"huggingface.co/{spec.hub_id}"
        table.add_row(spec.name, present, where, size, spec.used_by, source)
    stdout.print(table)


@handle_errors
def fetch(
    names: Optional[List[str]] = typer.Argument(None, help="Model names (see `monodyn weights list`)."),
    all_: bool = typer.Option(False, "--all", help="Every model in `monodyn weights list`."),
    force: bool = typer.Option(False, "--force", help="Download even when a copy is found."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    from models import weights
    from models.errors import InputError
    from monodyn_cli import weights_fetch

    if all_ == bool(names):
        raise InputError("name the models to fetch (see `monodyn weights list`) or pass --all, not both")
    specs = list(weights.KNOWN.values()) if all_ else [weights.spec_named(n) for n in dict.fromkeys(names)]
    wanted = []
    for spec in specs:
        found, how = weights.locate(spec)
        if found is not None and not force:
            console.print(f"{spec.name}: already present at {found} ({how})")
        else:
            wanted.append(spec)
    failed = 0
    with _ByteBars(quiet) as bars:
        for spec, path, err in weights_fetch.fetch_many(wanted, bars.meter):
            if path is None:
                failed += 1
                console.print(f"[bold red]error:[/bold red] {spec.name}: {err}", soft_wrap=True, markup=True,
                              highlight=False)
            else:
                console.print(f"{spec.name}: {path} ({human_bytes(_size(path))})")
    if failed:
        raise typer.Exit(1)


@handle_errors
def path(
    name: str = typer.Argument(..., help="Model name (see `monodyn weights list`)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    from models import weights
    from models.errors import WeightsNotFoundError

    spec = weights.spec_named(name)
    found, how = weights.locate(spec)
    if found is None:
        if how != "not found":
            raise WeightsNotFoundError(how)
        raise WeightsNotFoundError(f"{name} is not on this machine: `monodyn weights fetch {name}` puts it at "
                                   f"{weights.cache_dir() / spec.filenames[0]}")
    print(found)


class _ByteBars:
    """Rich byte progress bars (size, speed, time left) on stderr, one per download; silent with --quiet."""

    def __init__(self, quiet: bool):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bar = None if quiet else Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                                               TransferSpeedColumn(), TimeRemainingColumn(), console=console)

    def __enter__(self) -> "_ByteBars":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def meter(self):
        bar = self.bar

        class Meter:
            task = None

            def start(self, description: str, total: int | None, done: int) -> None:
                if bar is not None:
                    self.task = bar.add_task(description, total=total, completed=done)

            def advance(self, n: int) -> None:
                if bar is not None and self.task is not None:
                    bar.update(self.task, advance=n)

        return Meter()
