"""`monodyn doctor`: what this machine can run (torch device, codecs, decoders, COLMAP, weights found)."""

from __future__ import annotations

import importlib

import typer
from rich.table import Table

from monodyn_cli.console import handle_errors, stdout


def register(app: typer.Typer) -> None:
    app.command(help="Check the installation: versions against requirements.lock, torch and device, video codecs, "
                     "decord, pycolmap, weights found.")(doctor)


def _version(module: str) -> tuple[bool, str]:
    try:
        if module == "pycolmap":
            import cv2  # noqa: F401  (cv2 must be imported before pycolmap)
        mod = importlib.import_module(module)
        return True, str(getattr(mod, "__version__", "installed"))
    except Exception as e:
        return False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _codecs() -> list[tuple[str, bool, str]]:
    import av

    rows = []
    for name, mode in (("libx264", "w"), ("h264", "r"), ("hevc", "r"), ("vp9", "r")):
        try:
            av.codec.Codec(name, mode)
            rows.append((f"PyAV {name} {'encode' if mode == 'w' else 'decode'}", True, "available"))
        except Exception as e:
            rows.append((f"PyAV {name} {'encode' if mode == 'w' else 'decode'}", False, str(e).splitlines()[0]))
    return rows


def _lock_rows(row) -> None:
    """One row on whether the installed versions are the locked ones, and one per package that differs."""
    from monodyn_cli import lockfile

    if not lockfile.LOCK.is_file():
        row("lock", True, "no requirements.lock beside this installation: installed from pyproject.toml's ranges")
        return
    differ = lockfile.drift()
    if not differ:
        row("lock", True, f"every package is at its version in {lockfile.LOCK.name}")
        return
    row("lock", False, f"{len(differ)} package(s) differ from {lockfile.LOCK.name}: run `make install` to return to it, "
                       "or `make lock` to move the lock deliberately")
    for d in differ:
        row(f"  {d.name}", False, f"locked {d.locked}, installed {d.installed or 'nothing'}")


@handle_errors
def doctor(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    import torch

    from models import weights

    table = Table(title="monodyn doctor")
    table.add_column("check")
    table.add_column("ok")
    table.add_column("detail", overflow="fold")

    def row(name: str, ok: bool, detail: str) -> None:
        table.add_row(name, "[green]yes[/green]" if ok else "[red]no[/red]", detail)

    _lock_rows(row)
    cuda = torch.cuda.is_available()
    row("torch", True, f"{torch.__version__}, {torch.get_num_threads()} CPU threads")
    row("CUDA", cuda, torch.cuda.get_device_name(0) if cuda else "not available: methods run on the CPU")
    for module in ("av", "decord", "cv2", "pycolmap", "transformers", "diffusers", "segment_anything"):
        ok, detail = _version(module)
        row(module, ok, detail)
    for name, ok, detail in _codecs():
        row(name, ok, detail)
    row("weights folder", weights.cache_dir().exists(), str(weights.cache_dir()))
    for spec in weights.KNOWN.values():
        found, how = weights.locate(spec)
        row(f"weights {spec.name}", found is not None,
            f"{found} ({how})" if found is not None else f"{how}: `monodyn weights fetch {spec.name}`")
    stdout.print(table)
