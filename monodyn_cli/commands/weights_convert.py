"""`monodyn weights convert gcd CKPT`: an official GCD Lightning checkpoint -> the model folder render loads.

The ~20 GB file is read once (memory-mapped), renamed to diffusers / transformers names, checked against the
architecture and written as `gcd.json` + `unet/` (fp16), `vae/` (fp32), `image_encoder/` (fp16), by default
into the cache (`$MONODYN_CACHE/gcd/<name>/`, where `render --method gcd` looks). The user's file is only read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from monodyn_cli.console import handle_errors

CONVERTERS = ("gcd",)


def register(weights_app: typer.Typer) -> None:
    weights_app.command("convert", help="Convert an official checkpoint once into monodyn's model folder (GCD: "
                                        "kubric_{gradual,direct}_max{90,180}.ckpt), so renders load it in "
                                        "seconds instead of re-reading 20 GB.")(convert)


@handle_errors
def convert(
    method: str = typer.Argument(..., help="Which method's checkpoint: gcd."),
    ckpt: Path = typer.Argument(..., help="The official checkpoint file (e.g. kubric_gradual_max90.ckpt)."),
    config: Optional[Path] = typer.Option(None, "--config", help="The checkpoint's training YAML (e.g. "
                                                                 "configs/train_kubric_max90.yaml of basilevh/gcd): "
                                                                 "motion normalisation, camera range and mode. "
                                                                 "Without it they are read from the file name."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Model folder to write (default: "
                                                                 "$MONODYN_CACHE/gcd/<checkpoint name>, found by render)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    import time

    from models.errors import InputError
    from monodyn_cli.console import RichProgress, stdout
    from monodyn_cli.outputs import Outputs

    if method not in CONVERTERS:
        raise InputError(f"monodyn weights convert knows {', '.join(CONVERTERS)}, not {method!r}")
    if not ckpt.is_file():
        raise InputError(f"{ckpt}: no such file")
    if config is not None and not config.is_file():
        raise InputError(f"--config {config}: no such file")
    from models.gcd.method import cache_folder
    from models.gcd.official import read_official

    target = out or cache_folder() / ckpt.stem
    progress = RichProgress(quiet)
    start = time.perf_counter()
    with Outputs(inputs=[ckpt] + ([config] if config else [])) as outputs:
        folder = outputs.folder(target, replaceable=_converted_folder, option="--out")
        conversion = read_official(ckpt, config)
        with progress.task(f"convert {ckpt.name}", conversion.tensors) as advance:
            conversion.write(folder, advance)
        outputs.commit()
    settings = conversion.settings
    if settings.source != "yaml":
        progress.warn(f"settings read from the file name {ckpt.name} (no --config): ±{settings.max_azimuth:g} deg "
                      f"azimuth, ±{settings.max_elevation:g} deg elevation, {settings.mode} mode; pass the training "
                      "YAML with --config to take them from the source")
    stdout.print(f"converted {ckpt.name} in {time.perf_counter() - start:.0f} s: {settings.mode}, ±{settings.max_azimuth:g} "
                 f"deg azimuth, ±{settings.max_elevation:g} deg elevation (settings from the {settings.source})")
    stdout.print(f"wrote {target}  (render: monodyn render --method gcd" +
                 ("" if out is None else f" --gcd-checkpoint {target}") + ")", markup=False)


def _converted_folder(folder: Path) -> bool:
    """A folder an earlier conversion wrote, which a new one may replace."""
    return (folder / "gcd.json").exists() and {p.name for p in folder.iterdir()} <= {
        "gcd.json", "unet", "vae", "image_encoder"}
