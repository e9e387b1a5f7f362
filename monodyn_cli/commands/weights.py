"""`monodyn weights ...`: the pretrained weights monodyn uses (one sub-command per module).

Each module in SUBCOMMANDS has a `register(weights_app)`; keep their top-level imports light (no torch) so
--help stays fast.
"""

from __future__ import annotations

import typer

weights_app = typer.Typer(
    name="weights",
    help="Pretrained weights: list what is found where, fetch from the official sources (nothing downloads unless "
         "asked), print a path, convert an official checkpoint once into the folder monodyn loads.",
    no_args_is_help=True,
)

SUBCOMMANDS: tuple[str, ...] = ("weights_cache", "weights_convert")


def register(app: typer.Typer) -> None:
    import importlib

    for module in SUBCOMMANDS:
        importlib.import_module(f"monodyn_cli.commands.{module}").register(weights_app)
    app.add_typer(weights_app)
