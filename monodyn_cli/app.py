"""The `monodyn` command: one Typer app; each command lives in its own module under commands/."""

from __future__ import annotations

import typer

from monodyn_cli.commands import (
    batch,
    doctor,
    dyst,
    eval,
    export,
    fit,
    osn,
    preprocess,
    render,
    report,
    status,
    synth,
    train,
    view,
    weights,
)

app = typer.Typer(
    name="monodyn",
    help="Novel views of a dynamic scene from one casually filmed video: orbit, dolly, bullet time, "
         "stabilised view. Preprocess a clip once (cached), fit a method, render camera paths.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)



@app.callback()
def _global_options(
    threads: int = typer.Option(0, "--threads", min=0, envvar="MONODYN_THREADS",
                                help="CPU threads for torch (0 = torch's default, one per core). On a machine "
                                     "busy with other work, 1 can be several times faster than 2."),
) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


for module in (preprocess, fit, render, export, eval, report, synth, train, osn, dyst, status, doctor, weights, batch, view):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
