"""GCD benchmarks: novel-view PSNR on held-out synthetic scenes, sampling time, the official-size model.

    .venv/bin/python bench/bench_gcd.py                           # the shipped small model, 5 held-out scenes
    .venv/bin/python bench/bench_gcd.py --model build/gcd-small-run --seeds 1,2 --frames 28 --width 64 --height 48
    .venv/bin/python bench/bench_gcd.py --clip-probe              # does a randomly initialised CLIP carry anything?
    .venv/bin/python bench/bench_gcd.py --official-size           # SVD-size GCD, random weights, 384x256 (GPU)

Held-out scenes: `monodyn synth` scenes with seeds 1..5 (training uses seeds >= 100000; the bundled sample
is seed 0; seed 5 at 48 frames 256x192 is bench_pipeline.py's synth-moving scene), `--objects` objects,
moving input camera, held-out cameras = the input trajectory rotated by
30 / 90 / 180 degrees about the vertical axis through the scene centre (the same protocol as
bench/bench_pipeline.py's synth cases). GCD gets the generator's input cameras (no SfM), renders every
held-out view through `GCDRenderer` (direct mode: each frame conditioned on its own Δ), and is scored at
the evaluation size against the rendered ground truth. The floor is the input frame of the same time used
as the prediction. Seconds per 14-frame window are wall-clock on this machine (note the load).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tables import table  # noqa: E402


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    """PSNR over a whole clip (uint8 or [0,1] float arrays)."""
    p = pred.astype(np.float64) / (255.0 if pred.dtype == np.uint8 else 1.0)
    g = gt.astype(np.float64) / (255.0 if gt.dtype == np.uint8 else 1.0)
    return float(10 * np.log10(1.0 / max(np.mean((p - g) ** 2), 1e-12)))


def heldout(args) -> None:
    from models.gcd.method import GCDMethod, GCDRenderOptions
    from models.scene import Scene
    from monodyn_cli.synth import SynthConfig, generate_scene

    azimuths = tuple(float(a) for a in args.azimuths.split(","))
    options = GCDRenderOptions(gcd_checkpoint=args.model, steps=args.steps, seed=args.seed, mode="direct",
                               samples=args.samples)
    method = GCDMethod()
    from monodyn_cli.metrics import sharpness, ssim

    per_az: dict[float, dict[str, list[float]]] = {a: {k: [] for k in ("gcd", "floor", "ssim", "sharp", "floor_ssim", "warp",
                                                                       "warp_valid")}
                                                   for a in azimuths}
    window_seconds = []
    renderer = None
    seeds = [int(v) for v in args.seeds.split(",")]
    for seed in seeds:
        cfg = SynthConfig(seed=seed, frames=args.frames, width=args.width, height=args.height, objects=args.objects,
                          heldout_azimuths=azimuths, fixed_cameras=0)
        sc = generate_scene(cfg)
        inp = sc.view("input")
        scene = Scene(frames=inp.rgb, timestamps=np.arange(cfg.frames) / cfg.fps, cameras=inp.cameras,
                      center=np.asarray(sc.spec.centre, np.float32), depth=input_depth(inp.depth, args.depth, seed))
        if renderer is None:
            renderer = method.load(None, scene, options, "cpu")
        else:  # one model for every scene: only the clip changes
            from models.gcd.method import GCDRenderer

            renderer = GCDRenderer(renderer.model, scene, options, torch.device("cpu"))
        # the held-out cameras turn about the synthetic world's z; `render --orbit` paths turn about the cameras'
        # mean image-up, and GCD measures with the up its paths use: here that is z
        renderer.up = torch.tensor([0.0, 0.0, 1.0])
        times = scene.times
        for az in azimuths:
            from monodyn_cli.synth.scene import heldout_name

            gt = sc.view(heldout_name(az))
            frames = []
            for s in range(0, cfg.frames, renderer.chunk):
                start = time.perf_counter()
                out = renderer.render(gt.cameras[s:s + renderer.chunk], times[s:s + renderer.chunk])
                window_seconds.append(time.perf_counter() - start)
                frames.append((out.rgb.numpy() * 255).round().astype(np.uint8))
            pred = np.concatenate(frames)
            per_az[az]["gcd"].append(psnr(pred, gt.rgb))
            per_az[az]["floor"].append(psnr(inp.rgb, gt.rgb))
            if scene.depth is not None:  # the warp itself as the prediction, its holes filled with the input frame
                from models.gcd.warp import forward_warp

                src = torch.from_numpy(inp.rgb).float().permute(0, 3, 1, 2)
                warped, valid = forward_warp(src, torch.from_numpy(scene.depth), inp.cameras.K, inp.cameras.w2c,
                                             gt.cameras.K, gt.cameras.w2c)
                filled = torch.where(valid[:, None] > 0, warped, src).permute(0, 2, 3, 1).round().byte().numpy()
                per_az[az]["warp"].append(psnr(filled, gt.rgb))
                per_az[az]["warp_valid"].append(float(valid.mean()))
            as_float = (lambda a: torch.from_numpy(a).float() / 255.0)  # noqa: E731
            per_az[az]["ssim"].append(float(ssim(as_float(pred), as_float(gt.rgb)).mean()))
            per_az[az]["floor_ssim"].append(float(ssim(as_float(inp.rgb), as_float(gt.rgb)).mean()))
            per_az[az]["sharp"].append(float(sharpness(as_float(pred), as_float(gt.rgb)).mean()))
            if args.save_strips:
                import cv2

                Path(args.save_strips).mkdir(parents=True, exist_ok=True)
                k = np.linspace(0, cfg.frames - 1, 5).round().astype(int)
                strip = np.concatenate([np.concatenate(list(a[k]), 1) for a in (inp.rgb, gt.rgb, pred)], 0)
                cv2.imwrite(str(Path(args.save_strips) / f"seed{seed}-az{az:g}.png"), strip[..., ::-1])
        print(f"scene {seed}: " + ", ".join(f"az{a:g} gcd {per_az[a]['gcd'][-1]:.2f} floor "
                                            f"{per_az[a]['floor'][-1]:.2f}" for a in azimuths), flush=True)
    rows = [[f"{az:g}", float(np.mean(v["gcd"])), float(np.mean(v["floor"])),
             float(np.mean(v["gcd"]) - np.mean(v["floor"])), float(np.mean(v["ssim"])), float(np.mean(v["floor_ssim"])),
             float(np.mean(v["sharp"]))] for az, v in per_az.items()]
    if per_az[azimuths[0]]["warp"]:
        table(f"The warp alone ({args.depth} depth; holes filled with the input frame)",
              ["Δazimuth", "warp PSNR", "valid share"],
              [[f"{az:g}", float(np.mean(v["warp"])), float(np.mean(v["warp_valid"]))] for az, v in per_az.items()])
    if 5 in seeds:
        k = seeds.index(5)
        table("Seed 5 alone (the scene of bench_pipeline.py synth-moving)", ["Δazimuth", "GCD PSNR", "floor PSNR"],
              [[f"{az:g}", v["gcd"][k], v["floor"][k]] for az, v in per_az.items()])
    table(f"GCD on held-out synth scenes (seeds {args.seeds}, {args.frames} frames {args.width}x{args.height}, "
          f"{args.objects} objects, {args.steps} steps, {args.samples} sample(s), "
          f"model {renderer.model.cfg.width}x{renderer.model.cfg.height}, warp {renderer.model.cfg.warp}, "
          f"depth {args.depth})",
          ["Δazimuth", "GCD PSNR", "floor PSNR", "GCD - floor", "GCD SSIM", "floor SSIM", "sharpness"], rows)
    table("GCD sampling time on this CPU", ["threads", "seconds per 14-frame window (mean)", "windows"],
          [[torch.get_num_threads(), float(np.mean(window_seconds)), len(window_seconds)]])


def input_depth(exact: np.ndarray, kind: str, seed: int) -> np.ndarray | None:
    """The depth the renderer gets: the generator's (`exact`), estimator-like (`noisy`: `perturb_depth`, the
    training perturbation) or none."""
    if kind == "none":
        return None
    depth = np.where(np.isfinite(exact), exact, 0.0).astype(np.float32)
    if kind == "noisy":
        from models.gcd.warp import perturb_depth

        depth = perturb_depth(torch.from_numpy(depth), torch.Generator().manual_seed(seed)).numpy()
    return depth


def clip_probe(args) -> None:
    """Linear probe: how well do image tokens predict the frame's coarse content (a 4x3 colour thumbnail)?
    Ridge regression on half the frames, R² on the other half; tokens of a randomly initialised CLIP vision
    model vs the trained small FrameEncoder vs the thumbnail's own pixels' fixed random projection."""
    import cv2
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from models.gcd.method import GCDRenderOptions, resolve_weights
    from models.gcd.model import GCDModel
    from monodyn_cli.synth import SynthConfig, generate_scene

    frames = []
    for seed in range(1, args.scenes * 4 + 1):
        sc = generate_scene(SynthConfig(seed=seed, frames=8, width=64, height=48, objects=2, heldout_azimuths=(),
                                        fixed_cameras=0))
        frames.append(sc.view("input").rgb)
    frames = np.concatenate(frames)
    thumbs = np.stack([cv2.resize(f, (4, 3), interpolation=cv2.INTER_AREA) for f in frames]).reshape(len(frames), -1) / 255.0
    x = torch.from_numpy(frames).float().permute(0, 3, 1, 2) / 127.5 - 1
    torch.manual_seed(0)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=6,
                                                          num_attention_heads=4, patch_size=8, image_size=64,
                                                          projection_dim=64, hidden_act="gelu")).eval()
    model = GCDModel.load(resolve_weights(GCDRenderOptions(gcd_checkpoint=args.model)).path)
    with torch.no_grad():
        from models.gcd.model import FrameEncoder

        torch.manual_seed(0)
        x64 = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
        feats = {"random CLIP (ViT, 6 layers, 64x64 input)": clip(pixel_values=x64).image_embeds.numpy(),
                 "random FrameEncoder": FrameEncoder.from_config(model.image_encoder.config).eval()(x).numpy(),
                 "trained FrameEncoder (shipped model)": model.image_encoder(x).numpy()}
    n = len(frames) // 2
    rows = []
    for name, f in feats.items():
        f = (f - f[:n].mean(0)) / (f[:n].std(0) + 1e-8)
        A = np.concatenate([f, np.ones((len(f), 1))], 1)
        W = np.linalg.solve(A[:n].T @ A[:n] + 1.0 * np.eye(A.shape[1]), A[:n].T @ thumbs[:n])
        pred = A[n:] @ W
        r2 = 1 - ((pred - thumbs[n:]) ** 2).sum() / ((thumbs[n:] - thumbs[:n].mean(0)) ** 2).sum()
        rows.append([name, f.shape[1], float(r2)])
    table(f"Image tokens: linear probe of a 4x3 thumbnail ({len(frames)} frames, half held out)",
          ["encoder", "dims", "held-out R²"], rows)


def official_size(args) -> None:
    """SVD-size GCD (UNet 1.5 B parameters, ViT-H/14 CLIP, SVD VAE) with random weights: one 25-step sample
    of 14 frames at 384x256 with CFG, as in the paper (about 10 s on an A100)."""
    from models.gcd.model import GCDModel, official_configs
    from models.gcd.sampling import sample

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.allow_cpu:
        raise SystemExit("--official-size needs a GPU (pass --allow-cpu to time it on the CPU anyway: hours)")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    model = GCDModel.from_configs(official_configs()).to(device, dtype).eval()
    build = time.perf_counter() - t0
    counts = {n: sum(p.numel() for p in getattr(model, n).parameters()) / 1e6 for n in ("unet", "vae", "image_encoder")}
    frames = torch.rand(1, 14, 3, 256, 384, device=device, dtype=dtype) * 2 - 1
    deltas = torch.zeros(1, 14, 3, device=device, dtype=dtype)
    deltas[..., 0] = torch.linspace(0, 90, 14)
    times = []
    for _ in range(args.repeats + 1):  # the first run warms up kernels
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        sample(model, frames, deltas, steps=25)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    table("Official-size GCD, random weights, 14 frames 384x256, 25 Euler steps with CFG (batch 2)",
          ["device", "dtype", "UNet M", "VAE M", "CLIP M", "build s", "s per sample (first)", "s per sample",
           "peak GiB"],
          [[name, str(dtype).split(".")[-1], counts["unet"], counts["vae"], counts["image_encoder"], build, times[0],
            float(np.mean(times[1:])) if len(times) > 1 else math.nan, peak]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GCD weights (default: the shipped small model)")
    ap.add_argument("--seeds", default="1,2,3,4,5", help="held-out synth seeds (5 = bench_pipeline's synth-moving)")
    ap.add_argument("--scenes", type=int, default=8, help="--clip-probe: scenes x 4 of 8 frames")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--height", type=int, default=192)
    ap.add_argument("--objects", type=int, default=2)
    ap.add_argument("--azimuths", default="30,90,180")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=1, help="average this many samples per view (render --samples)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--depth", choices=("exact", "noisy", "none"), default="noisy",
                    help="depth for the warp of a warp-conditioned model (noisy: scale/smooth errors and holes)")
    ap.add_argument("--save-strips", default=None, help="folder for input / ground truth / GCD strips (PNG)")
    ap.add_argument("--clip-probe", action="store_true")
    ap.add_argument("--official-size", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--allow-cpu", action="store_true")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.official_size:
        official_size(args)
    elif args.clip_probe:
        clip_probe(args)
    else:
        heldout(args)


if __name__ == "__main__":
    main()
