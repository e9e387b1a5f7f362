"""DpDy's prior on unseen parts (issue 23): the same fit with --prior none and with the prior, on `monodyn synth`
scenes scored at held-out cameras 60 and 90 degrees off the input path, as a user runs it (synth -> preprocess
-> eval --protocol synth, which fits through the cache), then the renders' empty pixels counted in-process.

    .venv/bin/python bench/bench_prior.py                                   # seed 11, 3-minute fits
    .venv/bin/python bench/bench_prior.py --seeds 11 12 --fit-args "--steps 1500 --minutes 3" --priors none small

Per scene and prior: fit seconds (from the fit's manifest), the prior's own seconds and the Gaussians it lifted
(prior.json), PSNR on the input views (all training frames re-rendered; the prior must cost <= 0.3 dB). Per
held-out view: empty % (pixels the render leaves with alpha < 0.5: black, as the background is black), PSNR over
the frame, masked PSNR (co-visible pixels: what the input saw), SSIM and sharpness (gradient energy over the
ground truth's; 1 = as sharp). LPIPS needs weights that cannot be downloaded here, so SSIM and sharpness stand in.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bench_pipeline import latest_eval, run  # noqa: E402
from bench.tables import table  # noqa: E402

VIEWS = {"heldout_az60": "60 deg", "heldout_az90": "90 deg"}


def empty_and_input_psnr(ws: Path, gt: Path, checkpoint: Path) -> tuple[dict[str, float], float]:
    """Share of empty pixels (alpha < 0.5) per held-out view, and PSNR on the input views."""
    import torch

    from models.dpdy.method import DpDyMethod
    from monodyn_cli.evaluation import synth_views
    from monodyn_cli.scene_loader import load_scene
    from monodyn_cli.workspace import Workspace

    scene, _ = load_scene(Workspace(ws))
    renderer = DpDyMethod().load(checkpoint, scene, None, "cpu")
    empty = {}
    for views in synth_views(gt, scene, list(VIEWS)):
        alpha = torch.cat([renderer.render(views.cameras[i:i + 1], views.times[i:i + 1]).alpha
                           for i in range(len(views.times))])
        empty[views.name] = 100 * float((alpha < 0.5).float().mean())
    err = []
    for t in range(scene.num_frames):
        rgb = renderer.render(scene.cameras[t:t + 1], scene.times[t:t + 1]).rgb[0]
        err.append(float(((rgb - torch.as_tensor(scene.images([t])[0])) ** 2).mean()))
    import math

    return empty, -10 * math.log10(sum(err) / len(err))


def bench_scene(seed: int, prior: str, work: Path, frames: int, size: tuple[int, int], fit_args: list[str],
                every: int) -> list[dict]:
    name = f"seed{seed}-{frames}f-{size[0]}x{size[1]}"
    scene, ws = work / name, work / f"{name}.monodyn"
    if not (scene / "gt" / "scene.json").exists():
        run(["synth", scene, "--seed", seed, "--frames", frames, "--width", size[0], "--height", size[1],
             "--objects", 2, "--fixed-cameras", 0, "--heldout-azimuths", "60,90"], work)
    run(["preprocess", scene / "input.mp4", "-w", ws], work)
    run(["eval", "-w", ws, "--protocol", "synth", "--gt", scene, "--method", "dpdy", "--every", every,
         "--cameras", ",".join(VIEWS), "--prior", prior, *fit_args], work)
    summary = latest_eval(ws)
    ckpt = Path(summary["checkpoint"])
    manifest = json.loads((ckpt / "manifest.json").read_text())
    stats = json.loads((ckpt / "prior.json").read_text()) if (ckpt / "prior.json").exists() else {}
    empty, input_psnr = empty_and_input_psnr(ws, scene, ckpt)
    rows = []
    for view, s in summary["views"].items():
        rows.append({"scene": f"s{seed}", "prior": prior, "fit_s": manifest["seconds"],
                     "prior_s": stats.get("seconds", 0.0), "lifted": stats.get("lifted", 0),
                     "input_psnr": input_psnr, "view": VIEWS.get(view, view), "empty": empty[view],
                     **{k: s.get(k) for k in ("psnr", "mpsnr", "ssim", "sharpness")}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[11])
    ap.add_argument("--priors", nargs="+", default=["none", "small"])
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", default="128x96")
    ap.add_argument("--fit-args", default="--steps 1500 --minutes 3")
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench_prior")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    size = tuple(int(v) for v in a.size.split("x"))
    rows = [r for seed in a.seeds for prior in a.priors
            for r in bench_scene(seed, prior, a.work, a.frames, size, shlex.split(a.fit_args), a.every)]
    table(f"DpDy with and without the prior ({a.fit_args}; {a.frames} frames {a.size})",
          ["scene", "prior", "fit s", "prior s", "lifted", "input PSNR", "view", "empty %", "PSNR", "mPSNR", "SSIM",
           "sharpness"],
          [[r["scene"], r["prior"], r["fit_s"], r["prior_s"], r["lifted"], r["input_psnr"], r["view"], r["empty"],
            r["psnr"], r["mpsnr"], r["ssim"], r["sharpness"]] for r in rows])


if __name__ == "__main__":
    main()
