"""`monodyn train gcd`: train a small GCD model on paired multi-view clips from our synthetic generator.

Data (Kubric-4D style, `make_pairs`): per pair one `monodyn synth` scene (seed 100000 + --seed x --pairs + pair index,
1-4 objects, T frames at the model size) seen by its input camera (moving or fixed, half each) and by an
output camera about the scene centre: Δazimuth up to ±90 (half the pairs) or ±180 degrees, Δelevation up to
±15 (the output elevation kept within 3..40 degrees, inside the room), Δr up to ±25 %; the output camera
moves gradually (frame t at t/(T-1) of the offset, GCD's 'gradual') or directly (half each). The deltas
the model is conditioned on are computed from the cameras by `models.gcd.geometry.camera_deltas`, the same
code that converts render paths. Pairs are written once to a cached training set (`--data`, keyed by
everything that determines them) and reused.

Stages (each resumable, `--resume`): the VAE (`stage-vae/`), then the diffusion model (UNet + image
encoder) into OUT (a diffusers-style folder `monodyn render --method gcd --gcd-checkpoint OUT` loads).
Under torchrun both stages train data-parallel (`models/parallel.py`; bf16 autocast on CUDA); docs/training.md
has the commands for 1 GPU, 8 GPUs and several nodes.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import typer

from monodyn_cli.console import RichProgress, handle_errors, stdout

DATA_VERSION = 2  # 2: the input views' depth and both cameras (for the warp conditioning)
ARRAYS = ("inputs", "targets", "deltas", "modes", "seeds", "depth", "K", "w2c_in", "w2c_out")
TEST_SEEDS_BELOW = 100_000  # training scenes use seeds >= this (the bundled sample is seed 0, benches use < 1000)


def register(train_app: typer.Typer) -> None:
    train_app.command(name="gcd", help="Train a small GCD model (VAE, then the camera-conditioned video "
                                       "diffusion model) on synthetic multi-view clips.")(train_gcd)


def pair_config(pairs: int, seed: int, width: int, height: int, frames: int) -> dict:
    return {"version": DATA_VERSION, "pairs": pairs, "seed": seed, "width": width, "height": height,
            "frames": frames}


def make_pairs(pairs: int, seed: int, width: int, height: int, frames: int, advance=None) -> dict:
    """Paired clips (see the module docstring): inputs/targets (P,T,H,W,3) uint8, deltas (P,T,3) float32,
    modes (P,) 0 direct / 1 gradual, seeds (P,); the input views' exact z-depth (P,T,H,W) float16, the
    intrinsics K (P,T,3,3) of both cameras and their w2c_in / w2c_out (P,T,4,4) float32."""
    import numpy as np
    import torch

    from models.cameras import Cameras, look_at
    from models.gcd.geometry import camera_deltas
    from monodyn_cli.synth import SynthConfig, build_scene, render_view
    from monodyn_cli.synth.scene import CameraRig

    inputs = np.empty((pairs, frames, height, width, 3), np.uint8)
    targets = np.empty_like(inputs)
    deltas = np.empty((pairs, frames, 3), np.float32)
    modes = np.empty(pairs, np.int64)
    depth = np.empty((pairs, frames, height, width), np.float16)
    Ks = np.empty((pairs, frames, 3, 3), np.float32)
    w2c_in, w2c_out = np.empty((pairs, frames, 4, 4), np.float32), np.empty((pairs, frames, 4, 4), np.float32)
    seeds = np.arange(pairs) + TEST_SEEDS_BELOW + seed * pairs
    up = torch.tensor([0.0, 0.0, 1.0])
    for p in range(pairs):
        rng = np.random.default_rng([int(seeds[p]), 77])
        cfg = SynthConfig(seed=int(seeds[p]), frames=frames, width=width, height=height,
                          objects=int(rng.integers(1, 5)), camera="moving" if rng.random() < 0.5 else "static",
                          heldout_azimuths=(), fixed_cameras=0)
        spec = build_scene(cfg)
        centre = torch.as_tensor(spec.centre, dtype=torch.float32)
        src = spec.cameras["input"].cameras
        eyes = torch.linalg.inv(src.w2c)[:, :3, 3]
        off = eyes - centre
        r = off.norm(dim=-1)
        az = torch.atan2(off[:, 1], off[:, 0])
        el = torch.asin(off[:, 2] / r)
        max_az = 90.0 if rng.random() < 0.5 else 180.0
        end = np.array([rng.uniform(-max_az, max_az), rng.uniform(-15, 15),
                        rng.uniform(-0.25, 0.25) if rng.random() < 0.7 else 0.0])
        gradual = rng.random() < 0.5
        w = torch.linspace(0.0, 1.0, frames) if gradual else torch.ones(frames)
        az_t = az + torch.deg2rad(torch.tensor(end[0], dtype=torch.float32)) * w
        el_t = (el + torch.deg2rad(torch.tensor(end[1], dtype=torch.float32)) * w).clamp(np.radians(3), np.radians(40))
        r_t = r * (1 + float(end[2]) * w)
        eye_t = centre + r_t[:, None] * torch.stack([el_t.cos() * az_t.cos(), el_t.cos() * az_t.sin(), el_t.sin()], -1)
        w2c = look_at(eye_t, centre.expand(frames, 3), up.expand(frames, 3))
        dst = Cameras(src.K.clone(), w2c, width, height)
        spec.cameras["gcd_target"] = CameraRig("gcd_target", "heldout", dst)
        view = render_view(spec, "input")
        inputs[p] = view.rgb
        depth[p] = np.where(np.isfinite(view.depth), view.depth, 0.0)
        Ks[p], w2c_in[p], w2c_out[p] = src.K.numpy(), src.w2c.numpy(), w2c.numpy()
        targets[p] = render_view(spec, "gcd_target").rgb
        deltas[p] = camera_deltas(src, dst, centre, up).numpy()
        modes[p] = int(gradual)
        if advance is not None:
            advance(1)
    return {"inputs": inputs, "targets": targets, "deltas": deltas, "modes": modes, "seeds": seeds, "depth": depth,
            "K": Ks, "w2c_in": w2c_in, "w2c_out": w2c_out}


def load_or_make_pairs(root: Path, cfg: dict, progress: RichProgress) -> dict:
    """The cached training set for `cfg` under `root/<key16>/` (made once; `manifest.json` written last)."""
    import numpy as np

    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
    folder = root / key
    if (folder / "manifest.json").exists():
        return {name: np.load(folder / f"{name}.npy", mmap_mode="r")
                for name in ARRAYS}
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with progress.task(f"training pairs ({cfg['pairs']})", cfg["pairs"]) as advance:
        data = make_pairs(cfg["pairs"], cfg["seed"], cfg["width"], cfg["height"], cfg["frames"], advance)
    for name, arr in data.items():
        np.save(folder / f"{name}.npy", arr)
    (folder / "manifest.json").write_text(json.dumps({"config": cfg, "key": key,
                                                      "seconds": round(time.perf_counter() - start, 1)}))
    return data


@handle_errors
def train_gcd(
    out: Path = typer.Option(Path("build/gcd-small"), "--out", "-o", help="Output model folder (diffusers-style)."),
    data: Path = typer.Option(Path("build/gcd-data"), "--data", help="Cache folder of training sets."),
    pairs: int = typer.Option(2000, help="Training clips (pairs of input and output views)."),
    width: int = typer.Option(64, help="Model frame width (pixels, a multiple of 16)."),
    height: int = typer.Option(48, help="Model frame height (pixels, a multiple of 16)."),
    frames: int = typer.Option(14, help="Frames per clip (GCD: 14)."),
    channels: str = typer.Option("32,64", help="UNet block_out_channels (at least 2 levels)."),
    vae_channels: str = typer.Option("32,64,64", help="VAE block_out_channels (the latents are 2^(n-1) times smaller)."),
    vae_steps: int = typer.Option(5000, help="VAE training steps."),
    vae_minutes: float = typer.Option(12.0, help="VAE time budget in minutes (0 = none)."),
    steps: int = typer.Option(100000, help="Diffusion training steps (the time budget usually ends first)."),
    minutes: float = typer.Option(38.0, help="Diffusion time budget in minutes (0 = none)."),
    lr: float = typer.Option(4e-4, help="Adam learning rate of the diffusion model (cosine decay, 100 warm-up steps)."),
    batch: int = typer.Option(1, help="Clips per diffusion step, over all processes (a multiple of processes x "
                                      "--accumulate)."),
    accumulate: int = typer.Option(1, help="Micro-batches per optimizer step on each process (gradient accumulation)."),
    vae_batch: int = typer.Option(2, help="Snippets per VAE step, over all processes."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N (under torchrun: each process takes the GPU of "
                                            "its LOCAL_RANK)."),
    warp: bool = typer.Option(True, "--warp/--no-warp", help="Also condition on the input frames warped into the "
                              "output cameras by depth (the training depth gets noise and holes, so that estimated "
                              "depth works at render time)."),
    init: Path | None = typer.Option(None, "--init", help="Start from this model folder (its VAE, UNet and image "
                                     "encoder; new warp inputs start at zero) and skip the VAE stage."),
    seed: int = typer.Option(0, help="Seed of the weights and of the training order (and of the data set)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in OUT."),
    checkpoint_every: int = typer.Option(200, help="Steps between resume states."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    from models.errors import InputError
    from models.fitting import STATE_FILE
    from monodyn_cli.options import check_range
    from monodyn_cli.outputs import Outputs, check_output

    def ints(text: str, name: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise InputError(f"{name} expects comma-separated integers like 64,128, got {text!r}") from None
        if any(v <= 0 or v % 32 for v in values):
            raise InputError(f"{name}: channels must be positive multiples of 32 (GroupNorm of 32), got {text}")
        return values

    # every budget and size is checked before the data set is made and the VAE trained (minutes of work)
    check_range("--steps", steps, 1, 10**9)
    check_range("--vae-steps", vae_steps, 1, 10**9)
    check_range("--minutes", minutes, 0, 10**6)
    check_range("--vae-minutes", vae_minutes, 0, 10**6)
    check_range("--lr", lr, 0, 1, low_open=True)
    check_range("--batch", batch, 1, 1 << 20)
    check_range("--vae-batch", vae_batch, 1, 1 << 20)
    check_range("--checkpoint-every", checkpoint_every, 0, 10**9)
    check_range("--width", width, 16, 4096)
    check_range("--height", height, 16, 4096)
    check_range("--pairs", pairs, 1, 10**7)
    check_range("--frames", frames, 2, 1024)
    ch, vch = ints(channels, "--channels"), ints(vae_channels, "--vae-channels")
    down = 2 ** (len(vch) - 1) * 2 ** (len(ch) - 1)
    if width % down or height % down:
        raise InputError(f"--width/--height must be multiples of {down} for these channel settings, got {width}x{height}")
    from models.parallel import Parallel

    parallel = Parallel.from_env(device, accumulate)
    parallel.check_batch(batch)
    parallel.check_batch(vae_batch)
    check_output(data, folder=True, option="--data", replaceable=lambda p: True)  # a cache: its own files only
    if not parallel.is_main:  # rank 0 owns the output folder; the others follow its barriers
        _train(out, data, pairs, width, height, frames, ch, vch, vae_steps, vae_minutes, steps, minutes, lr, batch,
               vae_batch, seed, resume, checkpoint_every, True, parallel, warp, init)
        return
    with Outputs() as outputs:
        outputs.work_folder(out, keep=lambda p: any(p.rglob(STATE_FILE)) or (p / "stage-vae" / "stage.json").exists())
        _train(out, data, pairs, width, height, frames, ch, vch, vae_steps, vae_minutes, steps, minutes, lr, batch,
               vae_batch, seed, resume, checkpoint_every, quiet, parallel, warp, init)
        outputs.commit()


def _train(out, data, pairs, width, height, frames, ch, vch, vae_steps, vae_minutes, steps, minutes, lr, batch,
           vae_batch, seed, resume, checkpoint_every, quiet, parallel, warp=True, init=None) -> None:
    import shutil

    import torch

    from models.errors import InputError
    from models.fitting import Budget, run_fit
    from models.gcd.model import GCDModel, small_configs, with_warp_inputs
    from models.gcd.train import DiffusionTask, VAETask, encode_pairs, warp_pairs

    progress = RichProgress(quiet)
    torch.manual_seed(seed)
    start = time.perf_counter()
    dcfg = pair_config(pairs, seed, width, height, frames)
    if parallel.is_main:  # one process makes the cached set, the others then read it
        load_or_make_pairs(data, dcfg, progress)
    parallel.barrier()
    ds = load_or_make_pairs(data, dcfg, progress)
    t_data = time.perf_counter() - start

    configs = small_configs(height=height, width=width, channels=ch, vae_channels=vch, warp=warp)
    configs["gcd"].num_frames = frames
    configs["unet"]["num_frames"] = frames
    configs["gcd"].notes = {"data": dcfg, "channels": list(ch), "vae_channels": list(vch)}
    if init is None:
        model = GCDModel.from_configs(configs, seed=seed)
    else:
        model = GCDModel.load(init)
        if (model.cfg.height, model.cfg.width, model.cfg.num_frames) != (height, width, frames):
            raise InputError(f"--init {init} works at {model.cfg.width}x{model.cfg.height}, {model.cfg.num_frames} "
                             f"frames; train with --width {model.cfg.width} --height {model.cfg.height} --frames "
                             f"{model.cfg.num_frames}")
        if model.cfg.warp and not warp:
            raise InputError(f"--init {init} takes the warp conditioning: train it without --no-warp")
        model = with_warp_inputs(model) if warp else model
        model.cfg.notes = {**model.cfg.notes, "init": str(init), "data": dcfg}
    if parallel.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            for p in (out / "stage-vae", out / "unet", out / "vae", out / "image_encoder"):
                shutil.rmtree(p, ignore_errors=True)
            (out / "gcd.json").unlink(missing_ok=True)
    parallel.barrier()

    # 1. the VAE
    vae_dir = out / "stage-vae"
    frames_all = ds["inputs"]
    if init is not None:  # its VAE, as it is
        model.vae.save_pretrained(vae_dir / "vae", safe_serialization=True)
        if not (vae_dir / "stage.json").exists():
            (vae_dir / "stage.json").write_text(json.dumps({"stage": "vae", "steps": 0, "seconds": 0.0, "init": str(init)}))
    if not (vae_dir / "stage.json").exists():
        budget = Budget(vae_steps, vae_minutes or None)
        with progress.task("vae", vae_steps) as advance:
            last = [0]

            def report(step, total, **metrics):
                advance(step - last[0], **{k: metrics[k] for k in ("loss", "psnr") if k in metrics})
                last[0] = step

            run_fit(VAETask(model, frames_all, seed=seed, total_steps=vae_steps, batch=vae_batch, parallel=parallel),
                    vae_dir, budget, report, checkpoint_every=checkpoint_every, resume=resume, parallel=parallel)
    from diffusers import AutoencoderKLTemporalDecoder

    model.vae = AutoencoderKLTemporalDecoder.from_pretrained(vae_dir / "vae", low_cpu_mem_usage=False).to(parallel.device)
    vae_info = json.loads((vae_dir / "stage.json").read_text())
    for p in model.vae.parameters():
        p.requires_grad_(False)

    # 2. the diffusion model
    with progress.task("encode pairs", pairs) as advance:
        z, c = encode_pairs(model, ds["inputs"], ds["targets"], seed=seed, progress=lambda n: advance(1))
    if model.cfg.warp:
        with progress.task("warp pairs", pairs) as advance:
            c = torch.cat([c, warp_pairs(model, ds["inputs"], ds["depth"], ds["K"], ds["w2c_in"], ds["w2c_out"],
                                         seed=seed, progress=lambda n: advance(1))], dim=2)
    task = DiffusionTask(model, ds["inputs"], ds["deltas"], z, c, lr=lr, batch=batch, seed=seed, parallel=parallel)
    budget = Budget(steps, minutes or None)
    t0 = time.perf_counter()
    with progress.task("diffusion", steps) as advance:
        last = [0]

        def report(step, total, **metrics):
            advance(step - last[0], **{k: metrics[k] for k in ("loss", "mse") if k in metrics})
            last[0] = step

        model.cfg.notes.update({"vae_steps": vae_info["steps"], "vae_seconds": round(vae_info["seconds"], 1),
                                "data_seconds": round(t_data, 1)})
        run_fit(task, out, budget, report, checkpoint_every=checkpoint_every, resume=resume, log_every=10,
                parallel=parallel)
    if not parallel.is_main:
        return
    stdout.print(f"trained GCD in {(time.perf_counter() - start) / 60:.1f} min (data {t_data:.0f} s, VAE "
                 f"{vae_info['seconds']:.0f} s, {vae_info['steps']} steps; diffusion {time.perf_counter() - t0:.0f} s)")
    stdout.print(f"wrote {out}  (use: monodyn render --method gcd --gcd-checkpoint {out})", markup=False)
