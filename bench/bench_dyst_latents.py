"""Is DyST's R_dyn high because of latent directions the decoder ignores? Contrastiveness measured raw and
through the decoder (models.dyst.evaluate.decoder_contrastiveness) on held-out synthetic scenes.

    .venv/bin/python bench/bench_dyst_latents.py [--dyst-checkpoint DIR ...] [--scenes 20]   # ~5 min, 2-core CPU

Each view's latents are those `monodyn dyst eval` computes (3 fixed inputs per scene, latents from the view
itself); the decoder metric is the scene's mean J^T J over its 25 views (J: rendered image w.r.t. the latent).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see monodyn_cli/__init__.py

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.tables import table  # noqa: E402
from models.dyst.data import load_training_set  # noqa: E402
from models.dyst.evaluate import contrastiveness, decoder_contrastiveness, grid_factors, scene_latents  # noqa: E402
from models.dyst.method import find_checkpoint, load_model  # noqa: E402
from models.dyst.model import pixel_queries  # noqa: E402
from models.weights import cache_dir  # noqa: E402
from monodyn_cli.dyst_data import EVAL_SEED0, build_set  # noqa: E402


@torch.no_grad()
def ratios(model, ts, scenes: int) -> dict[str, float]:
    model.eval()
    S, P, C = ts.synth_rgb.shape[:3]
    pose_of, cam_of = grid_factors(P, C)
    xy = pixel_queries(ts.height, ts.width)[None].expand(P * C, -1, -1)
    out = {"R_cam": [], "R_cam decoder": [], "R_dyn": [], "R_dyn decoder": []}
    for s in range(min(S, scenes)):
        _, z, cam, dyn = scene_latents(model, ts, s)
        out["R_cam"].append(contrastiveness(cam, cam_of))
        out["R_dyn"].append(contrastiveness(dyn, pose_of))
        out["R_cam decoder"].append(decoder_contrastiveness(lambda c: model.decode(z, xy, c, dyn), cam, cam_of))
        out["R_dyn decoder"].append(decoder_contrastiveness(lambda d: model.decode(z, xy, cam, d), dyn, pose_of))
    return {k: float(np.mean(v)) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dyst-checkpoint", action="append", default=None, help="checkpoint folder (default: shipped)")
    ap.add_argument("--scenes", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for ck in args.dyst_checkpoint or [None]:
        model, meta = load_model(find_checkpoint(ck), "cpu")
        ts = load_training_set(build_set(cache_dir() / "dyst", "eval", args.scenes, EVAL_SEED0, model.cfg.height,
                                         model.cfg.width, []))
        r = ratios(model, ts, args.scenes)
        rows.append([ck or "shipped", meta.get("train", {}).get("swap"), *(f"{r[k]:.3f}" for k in r)])
    table(f"DyST contrastiveness, raw and through the decoder ({args.scenes} held-out scenes)",
          ["model", "swap", "R_cam", "R_cam decoder", "R_dyn", "R_dyn decoder"], rows)


if __name__ == "__main__":
    main()
