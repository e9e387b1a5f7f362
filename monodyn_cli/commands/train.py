"""`monodyn train METHOD`: train a pretrained (generative) method once, on synthetic scenes and clips.

Each method's trainer registers itself here (`monodyn train gcd`, `monodyn train dyst`); the per-video
methods (dpdy, osn) have no training of their own and are fitted with `monodyn fit`.
"""

from __future__ import annotations

import typer

train_app = typer.Typer(
    name="train",
    help="Train a generative method (gcd, dyst) on synthetic multi-view scenes (and real clips). Per-video "
         "methods need no training: use `monodyn fit`.",
    no_args_is_help=True,
)

# modules with a `register(train_app)`; keep their top-level imports light (no torch) so --help stays fast
TRAINERS: tuple[str, ...] = ("train_dyst", "train_gcd", "train_prior")


def register(app: typer.Typer) -> None:
    import importlib

    for module in TRAINERS:
        importlib.import_module(f"monodyn_cli.commands.{module}").register(train_app)
    app.add_typer(train_app)
