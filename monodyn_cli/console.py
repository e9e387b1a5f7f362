"""Terminal output for every command: Rich progress bars, one-line errors, per-run log files.

Only the CLI prints. Library code raises `models.errors.MonodynError`; `handle_errors` turns it into one red
line on stderr and exit code 1 (the traceback only with --debug).
"""

from __future__ import annotations

import errno
import functools
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgressBar

from models.errors import MonodynError
from monodyn_cli.workspace import Progress

# emoji=False: user text such as `--dynamics-from ws:abc` must print as typed, not as an emoji code
console = Console(stderr=True, highlight=False, emoji=False)
# Results (tables) go to stdout. Piped into a file or a CI log, rich would assume 80 columns and cut the
# headers and names of wide tables ("floor_m…"): there nobody resizes the window, so print them whole.
stdout = Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 200)


class RichProgress(Progress):
    """Progress bars on stderr; silent with --quiet. Warnings always print (they matter)."""

    def __init__(self, quiet: bool = False, log: Callable[[str], None] | None = None):
        self.quiet = quiet
        self.log = log or (lambda s: None)

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        start = time.perf_counter()
        if self.quiet or not console.is_terminal and not _force_bars():
            yield lambda n=1, **info: None
        else:
            columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                       MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                       TextColumn("{task.fields[info]}")]
            with RichProgressBar(*columns, console=console, transient=False) as bar:
                task_id = bar.add_task(description, total=total, info="")

                def advance(n: int = 1, **info) -> None:
                    bar.update(task_id, advance=n,
                               info=" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in info.items()))

                yield advance
        self.log(f"{description}: {time.perf_counter() - start:.2f}s")

    def warn(self, message: str) -> None:
        console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)
        self.log(f"warning: {message}")


def _force_bars() -> bool:
    import os

    return os.environ.get("MONODYN_PROGRESS") == "1"


class RunLog:
    """Appends timestamped lines to <workspace>/logs/<start time>-<command>.log."""

    def __init__(self, workspace: Path, command: str):
        logs = Path(workspace) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.path = logs / f"{stamp}-{command}.log"
        self._fh = open(self.path, "a", buffering=1)
        self(f"monodyn {command}: {' '.join(sys.argv[1:])}")

    def __call__(self, line: str) -> None:
        self._fh.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    def close(self) -> None:
        self._fh.close()


def error(message: str) -> None:
    """One red line; the message is plain text (paths and option values in it are not Rich markup)."""
    console.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)


def handle_errors(fn: Callable) -> Callable:
    """Decorator for Typer commands: MonodynError -> one line + exit 1; unexpected -> one line + exit 1
    (traceback with --debug); Ctrl-C -> exit 130. Commands must accept a `debug: bool` keyword."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = bool(kwargs.get("debug", False))
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            error("interrupted; the workspace is consistent (incomplete stages are redone next run)")
            raise typer.Exit(130)
        except MonodynError as e:
            if debug:
                traceback.print_exc()
            error(str(e))
            raise typer.Exit(1)
        except OSError as e:
            if debug:
                traceback.print_exc()
            if e.errno == errno.ENOSPC:
                where = f" while writing {e.filename}" if e.filename else ""
                error(f"no space left on the device{where}: free some space and run the command again (what was "
                      "cut short is redone; finished results are kept)")
            else:
                error(f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''} "
                      "(run again with --debug for the details)")
            raise typer.Exit(1)
        except Exception:  # a bug or an environment problem: one line, no library text, unless --debug
            if debug:
                traceback.print_exc()
            error(f"{fn.__name__.replace('_', ' ')} failed unexpectedly (a monodyn bug or a broken install): run it "
                  "again with --debug for the details")
            raise typer.Exit(1)

    return wrapper


def human_bytes(n: float) -> str:
    for unit in ["B", "KB", "MB", "GB"]:
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
