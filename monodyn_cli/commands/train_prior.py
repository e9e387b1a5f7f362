"""`monodyn train prior`: train the small RGB-D prior that DpDy uses when no official LDM3D weights exist.

The pairs (monodyn_cli/prior_data.py) are built once into `--data-dir` (default $MONODYN_CACHE/prior); the
shipped weights (models/priors/pretrained/rgbd-small) were made with the defaults (see docs/prior.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from monodyn_cli.console import RichProgress, handle_errors, stdout


def register(train_app: typer.Typer) -> None:
    train_app.command("prior", help="Train DpDy's small RGB-D prior: a denoiser conditioned on a novel-view render "
                                    "(rgb, alpha, depth) and the nearest input frame, on ground truth of `monodyn "
                                    "synth` scenes warped into other cameras and on frames of real clips with "
                                    "holes. Writes config.json + model.safetensors to --out.")(train_prior)


@handle_errors
def train_prior(
    out: Path = typer.Option(Path("prior-model"), "--out", "-o", help="Checkpoint folder to write."),
    steps: int = typer.Option(6000, "--steps", help="Training steps (the schedule's length)."),
    minutes: float = typer.Option(0.0, "--minutes", help="Stop after this many minutes (0: no time limit); the "
                                                         "learning-rate schedule follows whichever budget ends first."),
    scenes: int = typer.Option(100, "--scenes", help="Synthetic scenes (4 frames x 5 other cameras of pairs each)."),
    real: Optional[list[Path]] = typer.Option(None, "--real", help="Folder of real clips (videos or image folders), "
                                                                   "repeatable. Default: ../shared/data/clips when present."),
    no_real: bool = typer.Option(False, "--no-real", help="Synthetic pairs only."),
    real_pairs: int = typer.Option(120, "--real-pairs", help="Pairs cut from each real clip."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where the cached pairs live (default "
                                                                     "$MONODYN_CACHE/prior)."),
    width: int = typer.Option(64, "--width", help="Training image width (pixels, divisible by 8)."),
    height: int = typer.Option(48, "--height", help="Training image height (pixels, divisible by 8)."),
    channels: int = typer.Option(32, "--channels", help="Model channels at full resolution (x2, x3 below)."),
    batch: int = typer.Option(12, "--batch", help="Pairs per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (AdamW; warm-up, then cosine decay)."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from the weights of this prior folder (e.g. "
                                                            "models/priors/pretrained/rgbd-small) instead of random."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation and of every batch draw."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run from --out's resume state."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", help="Steps between resume states."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    import time

    from models.devices import resolve_device
    from models.errors import InputError
    from models.fitting import STATE_FILE, Budget, run_fit
    from models.priors.train import PairSet, PriorTrainConfig, PriorTrainTask
    from models.weights import cache_dir
    from monodyn_cli.dyst_data import default_real_dirs, find_clips
    from monodyn_cli.options import check_range
    from monodyn_cli.outputs import Outputs, check_output
    from monodyn_cli.prior_data import build_pairs

    check_range("--steps", steps, 1, 10**9)
    check_range("--minutes", minutes, 0, 10**6)
    check_range("--scenes", scenes, 1, 10**6)
    check_range("--real-pairs", real_pairs, 1, 10**6)
    check_range("--batch", batch, 1, 4096)
    check_range("--channels", channels, 8, 512)
    check_range("--lr", lr, 0, 1, low_open=True)
    check_range("--checkpoint-every", checkpoint_every, 0, 10**9)
    if width % 8 or height % 8 or not (16 <= width <= 1024 and 16 <= height <= 1024):
        raise InputError(f"--width/--height must be 16..1024 and divisible by 8, got {width}x{height}")
    if channels % 8:
        raise InputError(f"--channels must be a multiple of 8 (group norm), got {channels}")
    if no_real and real:
        raise InputError("--no-real trains on synthetic pairs only, so --real would be ignored: drop one of them")
    clips = [] if no_real else find_clips(real if real else default_real_dirs())
    data_root = data_dir or cache_dir() / "prior"
    check_output(data_root, folder=True, option="--data-dir", replaceable=lambda p: True)  # a cache: its own files
    budget = Budget(steps, minutes or None)
    progress = RichProgress(quiet)
    with Outputs() as outputs:
        outputs.work_folder(out, keep=lambda p: (p / STATE_FILE).exists())
        with progress.task("prior training pairs", scenes + len(clips)) as advance:
            path = build_pairs(data_root, scenes, height, width, clips, real_pairs, advance)
        data = PairSet(path)
        dev = resolve_device(device)
        task = PriorTrainTask(data, PriorTrainConfig(batch=batch, lr=lr, seed=seed, width=channels,
                                                               init=str(init) if init else ""), dev,
                              info={"data": path.name, "pairs": data.n, "scenes": scenes,
                                    "real": [p.name for p in clips], "size": [width, height]})
        start = time.perf_counter()
        with progress.task("train prior", budget.steps) as advance:
            last = [0]

            def report(step: int, total: int | None = None, **metrics) -> None:
                advance(step - last[0], **{k: v for k, v in metrics.items() if k in ("loss", "hole_psnr")})
                last[0] = step

            run_fit(task, out, budget, report, checkpoint_every=checkpoint_every, resume=resume, log_every=20)
        outputs.commit()
    stdout.print(f"wrote {out} ({data.n} pairs from {path}; {time.perf_counter() - start:.0f}s of training)",
                 markup=False)
