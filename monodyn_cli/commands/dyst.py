"""`monodyn dyst pca WORKSPACE` and `monodyn dyst eval`: DyST's latent analysis and its evidence table.

Registering this module also lends models/dyst the workspace loader it needs for `monodyn render --method dyst
--camera-from CLIP` (models never import the CLI).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from monodyn_cli.console import RichProgress, handle_errors, stdout

dyst_app = typer.Typer(help="DyST tools: latent PCA of a clip, evaluation on held-out synthetic scenes and clips.",
                       no_args_is_help=True)


def load_workspace_scene(path: Path):
    """The Scene of a preprocessed clip's workspace folder (for --camera-from / --dynamics-from)."""
    from monodyn_cli.scene_loader import load_scene
    from monodyn_cli.workspace import Workspace

    ws = Workspace(Path(path))
    ws.check_exists("the folder of a clip that `monodyn preprocess` made")
    return load_scene(ws)[0]


def register(app: typer.Typer) -> None:
    from models.dyst.options import set_scene_loader

    set_scene_loader(load_workspace_scene)
    app.add_typer(dyst_app, name="dyst")


CHECKPOINT_HELP = ("DyST checkpoint folder (default: $MONODYN_DYST_CHECKPOINT, $MONODYN_CACHE/dyst/model, then "
                   "the bundled model).")


@dyst_app.command(help="Principal components of a clip's camera and dynamics latents: a PNG of each frame's "
                       "coordinates and the explained variance, and one mp4 per latent in which every tile moves "
                       "along one component (the other latent held at the middle frame).")
@handle_errors
def pca(
    workspace: Optional[Path] = typer.Argument(None, help="Preprocessed clip (default: the one *.monodyn here)."),
    checkpoint: Optional[Path] = typer.Option(None, "--dyst-checkpoint", help=CHECKPOINT_HELP),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Folder for pca.png and the videos "
                                                                               "(default: <workspace>/dyst)."),
    components: int = typer.Option(8, "--components", min=1, max=64, help="Components shown."),
    frames: int = typer.Option(48, "--frames", min=2, max=1000, help="Frames of each component video."),
    scale: float = typer.Option(2.0, "--scale", min=0.25, max=16, help="Video tile size relative to the model's "
                                                                       "resolution."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    import numpy as np
    import torch

    from models.devices import resolve_device
    from models.dyst.analysis import pca as run_pca
    from models.dyst.analysis import sweep
    from models.dyst.method import ClipLatents, find_checkpoint, load_model
    from monodyn_cli.outputs import Outputs
    from monodyn_cli.scene_loader import WORKSPACE_ARGUMENT, load_scene, resolve_workspace
    from monodyn_cli.video_io import write_mp4

    ws = resolve_workspace(workspace, WORKSPACE_ARGUMENT)
    scene, _ = load_scene(ws)
    dev = resolve_device(device)
    out = output_dir or ws.root / "dyst"
    with Outputs(ws.root) as outputs:
        tmp = {name: outputs.file(out / name, "--output-dir")
               for name in ("pca.png", "pca-camera.mp4", "pca-dynamics.mp4", "pca.json")}
        model, _ = load_model(find_checkpoint(checkpoint), dev)
        clip = ClipLatents(model, scene, dev)
        results = {"camera": run_pca(clip.camera.cpu(), components), "dynamics": run_pca(clip.dynamics.cpu(), components)}
        plot_pca(results, tmp["pca.png"])
        mid = len(clip.frames) // 2
        h, w = round(model.cfg.height * scale), round(model.cfg.width * scale)
        for which, p in results.items():
            tiles = [sweep(model, clip.z, clip.camera[mid], clip.dynamics[mid], which, p, k, frames, h, w)
                     for k in range(len(p.std))]
            video = tile_grid(torch.stack(tiles).cpu(), cols=min(4, len(tiles)))
            write_mp4(tmp[f"pca-{which}.mp4"], (video.numpy() * 255 + 0.5).astype(np.uint8), 24.0)
        summary = {w: {"explained": [round(float(v), 4) for v in p.explained], "std": [round(float(v), 4) for v in p.std]}
                   for w, p in results.items()}
        tmp["pca.json"].write_text(json.dumps(summary, indent=1))
        outputs.commit()
    for which, p in results.items():
        stdout.print(f"{which} latent: explained variance " + " ".join(f"{float(v):.2f}" for v in p.explained))
    for name in ("pca.png", "pca-camera.mp4", "pca-dynamics.mp4"):
        stdout.print(f"wrote {out / name}", markup=False)


def tile_grid(tiles, cols: int):
    """(K,F,H,W,3) -> (F, rows*H, cols*W, 3), a 2-px dark border between tiles."""
    import torch

    K, F_, H, W, _ = tiles.shape
    rows = math.ceil(K / cols)
    grid = torch.full((F_, rows * (H + 2), cols * (W + 2), 3), 0.1)
    for k in range(K):
        r, c = divmod(k, cols)
        grid[:, r * (H + 2):r * (H + 2) + H, c * (W + 2):c * (W + 2) + W] = tiles[k]
    return grid


def plot_pca(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    for row, (which, p) in enumerate(results.items()):
        ax = axes[row, 0]
        for k in range(min(4, p.scores.shape[1])):
            ax.plot(p.scores[:, k].numpy(), label=f"PC{k + 1}")
        ax.set_xlabel("frame")
        ax.set_ylabel("coordinate")
        ax.set_title(f"{which} latent: principal components over the clip", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[row, 1]
        ax.bar(range(1, len(p.explained) + 1), p.explained.numpy(), color="C0" if which == "camera" else "C1")
        ax.set_xlabel("component")
        ax.set_ylabel("share of variance")
        ax.set_title(f"{which} latent: explained variance", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@dyst_app.command("eval", help="Held-out synthetic scenes (seeds never trained on): novel-view PSNR and the "
                               "contrastiveness ratios R_cam / R_dyn (lower is better); PSNR on the held-out frames "
                               "(t % 4 == 2) of real clips. One row per checkpoint.")
@handle_errors
def eval_(
    checkpoints: Optional[list[Path]] = typer.Option(None, "--dyst-checkpoint", help=CHECKPOINT_HELP + " Repeatable."),
    scenes: int = typer.Option(20, "--scenes", min=1, help="Held-out synthetic scenes."),
    real: Optional[list[Path]] = typer.Option(None, "--real", help="Folder of real clips (default: ../shared/data/clips "
                                                                   "when present). Repeatable."),
    no_real: bool = typer.Option(False, "--no-real", help="Skip the real clips."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Cache of the evaluation set (default "
                                                                     "$MONODYN_CACHE/dyst)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the numbers as JSON here."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    from dataclasses import asdict

    from rich.table import Table

    from models.devices import resolve_device
    from models.dyst.data import load_training_set
    from models.dyst.evaluate import evaluate_real, evaluate_synth
    from models.dyst.method import find_checkpoint, load_model
    from models.weights import cache_dir
    from monodyn_cli.dyst_data import EVAL_SEED0, build_set, default_real_dirs, find_clips
    from monodyn_cli.outputs import Outputs, check_output

    if output is not None:
        check_output(output)  # before the evaluation, which takes minutes
    dev = resolve_device(device)
    ckpts = list(checkpoints) if checkpoints else [find_checkpoint(None)]
    loaded = [load_model(find_checkpoint(c), dev) for c in ckpts]
    sizes = {(m.cfg.width, m.cfg.height) for m, _ in loaded}
    clips = [] if no_real else find_clips(real if real else default_real_dirs())
    progress = RichProgress(quiet)
    sets = {}
    for w, h in sizes:
        with progress.task(f"dyst eval set {w}x{h}", scenes + len(clips)) as advance:
            sets[(w, h)] = load_training_set(build_set(data_dir or cache_dir() / "dyst", "eval", scenes, EVAL_SEED0,
                                                       h, w, clips, advance))
    table = Table(title=f"DyST on {scenes} held-out synthetic scenes (seeds {EVAL_SEED0}..) and held-out real frames")
    for col in ("model", "swap", "steps", "PSNR swap", "PSNR own", "PSNR head", "PSNR still", "R_cam", "R_dyn",
                "PSNR real"):
        table.add_column(col, justify="right")
    rows = []
    for path, (model, meta) in zip(ckpts, loaded):
        ts = sets[(model.cfg.width, model.cfg.height)]
        rep = evaluate_synth(model, ts, dev)
        real_psnr = evaluate_real(model, ts.real, dev) if ts.real else []
        mean_real = float(sum(real_psnr) / len(real_psnr)) if real_psnr else float("nan")
        swap = meta.get("train", {}).get("swap")
        table.add_row(Path(path).name, str(swap), str(meta.get("step", "?")), f"{rep.psnr_swap:.2f}", f"{rep.psnr_self:.2f}",
                      f"{rep.psnr_orbit:.2f}", f"{rep.psnr_still:.2f}", f"{rep.r_cam:.3f}", f"{rep.r_dyn:.3f}",
                      f"{mean_real:.2f}")
        rows.append({"checkpoint": str(path), "swap": swap, "step": meta.get("step"), **asdict(rep),
                     "psnr_real": dict(zip(ts.real_names, real_psnr)), "psnr_real_mean": mean_real})
    stdout.print(table)
    t3 = Table(title="Does the decoder use the dynamics latent? PSNR where the objects are (novel views)")
    for col in ("model", "own dynamics latent", "another pose's dynamics latent", "input views (own latents)"):
        t3.add_column(col, justify="right")
    for r in rows:
        t3.add_row(Path(r["checkpoint"]).name, f"{r['psnr_dynamic_own']:.2f}", f"{r['psnr_dynamic_other']:.2f}",
                   f"{r['psnr_inputs']:.2f}")
    stdout.print(t3)
    if any(r["psnr_real"] for r in rows):
        t2 = Table(title="PSNR on held-out frames of real clips (latents from the frame itself)")
        t2.add_column("clip")
        for r in rows:
            t2.add_column(Path(r["checkpoint"]).name, justify="right")
        for name in rows[0]["psnr_real"]:
            t2.add_row(name, *[f"{r['psnr_real'].get(name, float('nan')):.2f}" for r in rows])
        stdout.print(t2)
    stdout.print("Novel views (22 per scene, 3 inputs). PSNR swap: camera latent from the same camera at another "
                 "pose, dynamics latent from the same pose at another camera; own: both from the target itself; head: "
                 "the orbit head moves the camera latent of another camera (same pose) by the true (d-azimuth, "
                 "d-elevation); still: that camera's latent unmoved (the head's baseline). R: lower is better. PSNR "
                 "real: mean over clips of held-out frames (t % 4 == 2), latents from the frame itself.")
    for path in ckpts:
        stdout.print(f"model {Path(path).name}: {path}")
    if output is not None:
        with Outputs() as outputs:
            outputs.file(output).write_text(json.dumps(rows, indent=1))
            outputs.commit()
        stdout.print(f"wrote {output}", markup=False)
