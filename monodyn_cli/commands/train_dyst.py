"""`monodyn train dyst`: train DyST on DySO-style synthetic scenes (latent control swap) co-trained with real clips.

The training set is rendered / decoded once into the cache (`--data-dir`, default $MONODYN_CACHE/dyst) and
memory-mapped by later runs. Budgets: `--steps` and/or `--minutes`; `--resume` continues a killed run from its
last resume state (every `--checkpoint-every` steps); the same seed and options give the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from monodyn_cli.console import RichProgress, handle_errors, stdout


def register(train_app: typer.Typer) -> None:
    train_app.command("dyst", help="Train DyST (dynamic scene transformer): 3 views -> set latent; camera and "
                                   "dynamics control latents; synthetic 5x5 pose/camera grids with the latent "
                                   "control swap, alternating with real-clip batches. Writes config.json + "
                                   "model.safetensors to --out.")(train_dyst)


@handle_errors
def train_dyst(
    out: Path = typer.Option(Path("dyst-model"), "--out", "-o", help="Checkpoint folder to write."),
    steps: int = typer.Option(20000, "--steps", help="Training steps (the schedule's length)."),
    minutes: float = typer.Option(0.0, "--minutes", help="Stop after this many minutes (0: no time limit); the "
                                                         "learning-rate schedule follows whichever budget ends first."),
    scenes: int = typer.Option(2400, "--scenes", help="Synthetic training scenes (25 views each)."),
    real: Optional[list[Path]] = typer.Option(None, "--real", help="Folder of real clips (videos or image folders), "
                                                                   "repeatable. Default: ../shared/data/clips when present."),
    no_real: bool = typer.Option(False, "--no-real", help="Synthetic scenes only."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where the cached training set lives "
                                                                     "(default $MONODYN_CACHE/dyst)."),
    width: int = typer.Option(64, "--width", help="Model image width (pixels)."),
    height: int = typer.Option(48, "--height", help="Model image height (pixels)."),
    dim: int = typer.Option(96, "--dim", help="Token width."),
    batch: int = typer.Option(8, "--batch", help="Scenes per batch."),
    rays: int = typer.Option(256, "--rays", help="Target pixels per scene per step."),
    lr: float = typer.Option(5e-4, "--lr", help="Peak learning rate (AdamW; warm-up, then cosine decay)."),
    real_every: int = typer.Option(4, "--real-every", help="Every N-th batch is a real-clip batch (0: none)."),
    dynamic_fraction: float = typer.Option(0.5, "--dynamic-fraction", help="Share of a synthetic target's rays "
                                                                           "drawn where its objects are (in this or "
                                                                           "another pose); the rest uniform."),
    nearest: bool = typer.Option(False, "--nearest-dynamics-source/--random-dynamics-source",
                                 help="Swap: estimate the dynamics latent from the target pose's closest other "
                                      "camera, or from a random other camera (the default, the shipped model's "
                                      "recipe). See docs/dyst.md for what the closest camera changes."),
    no_swap: bool = typer.Option(False, "--no-swap", help="Ablation: estimate both latents from the target itself "
                                                          "on synthetic batches too (no latent control swap)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation and of every batch draw."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run from --out's resume state."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", help="Steps between resume states."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (under torchrun: each process "
                                                        "takes the GPU of its LOCAL_RANK)."),
    accumulate: int = typer.Option(1, "--accumulate", help="Micro-batches per optimizer step on each process "
                                                           "(gradient accumulation; --batch counts all processes)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    from models.dyst.config import DySTConfig
    from models.dyst.train import TrainConfig
    from models.errors import InputError
    from models.fitting import STATE_FILE, Budget
    from models.weights import cache_dir
    from monodyn_cli.dyst_data import default_real_dirs, find_clips
    from monodyn_cli.options import check_range
    from monodyn_cli.outputs import Outputs, check_output

    # budgets and sizes are checked before the training set is built (minutes of work)
    check_range("--steps", steps, 1, 10**9)
    check_range("--minutes", minutes, 0, 10**6)
    check_range("--scenes", scenes, 1, 10**7)
    check_range("--checkpoint-every", checkpoint_every, 0, 10**9)
    if no_real and real:
        raise InputError("--no-real trains on synthetic scenes only, so --real would be ignored: drop one of them")
    model_cfg = DySTConfig(width=width, height=height, dim=dim, mlp=2 * dim)
    model_cfg.validate()
    cfg = TrainConfig(seed=seed, batch=batch, rays=rays, lr=lr, real_every=real_every, swap=not no_swap,
                      dynamic_fraction=dynamic_fraction, nearest=nearest)
    cfg.validate()
    budget = Budget(steps, minutes or None)
    clips = [] if no_real else find_clips(real if real else default_real_dirs())
    data_root = data_dir or cache_dir() / "dyst"
    check_output(data_root, folder=True, option="--data-dir", replaceable=lambda p: True)  # a cache: its own files only
    from models.parallel import Parallel

    parallel = Parallel.from_env(device, accumulate)
    parallel.check_batch(batch)
    if not parallel.is_main:  # rank 0 owns the output folder; the others follow its barriers
        _train(out, data_root, scenes, height, width, clips, model_cfg, cfg, budget, parallel, checkpoint_every,
               resume, True)
        return
    with Outputs() as outputs:
        outputs.work_folder(out, keep=lambda p: (p / STATE_FILE).exists())
        folder = _train(out, data_root, scenes, height, width, clips, model_cfg, cfg, budget, parallel,
                        checkpoint_every, resume, quiet)
        outputs.commit()
    stdout.print(f"wrote {out} (training set {folder})", markup=False)


def _train(out, data_root, scenes, height, width, clips, model_cfg, cfg, budget, parallel, checkpoint_every, resume,
           quiet) -> Path:
    import time

    from models.dyst.data import load_training_set
    from models.dyst.train import DySTTask
    from models.fitting import run_fit
    from monodyn_cli.dyst_data import TRAIN_SEED0, build_set

    progress = RichProgress(quiet)
    if parallel.is_main:  # one process builds the cached set, the others then read it
        with progress.task("dyst training set", scenes + len(clips)) as advance:
            build_set(data_root, "train", scenes, TRAIN_SEED0, height, width, clips, advance)
    parallel.barrier()
    folder = build_set(data_root, "train", scenes, TRAIN_SEED0, height, width, clips, lambda n=1, **k: None)
    data = load_training_set(folder)
    dev = parallel.device
    task = DySTTask(data, model_cfg, cfg, dev, info={"data": str(folder), "scenes": scenes, "real": data.real_names,
                                                     "device": str(dev), "processes": parallel.world},
                    parallel=parallel)
    start = time.perf_counter()
    with progress.task("train dyst", budget.steps) as advance:
        last = [0]

        def report(step: int, total: int | None = None, **metrics) -> None:
            advance(step - last[0], **{k: v for k, v in metrics.items() if k in ("loss", "psnr_synth", "psnr_real")})
            last[0] = step

        run_fit(task, out, budget, report, checkpoint_every=checkpoint_every, resume=resume, log_every=20,
                parallel=parallel)
    if parallel.is_main:
        stdout.print(f"trained DyST for {time.perf_counter() - start:.0f}s this run")
    return folder
