"""Moving content off the input path (issue 21): `monodyn synth` scenes run through the CLI as a user runs it,
synth -> preprocess -> fit --method dpdy (a fixed budget) -> eval --protocol synth, scored beside the floor.

    .venv/bin/python bench/bench_dynamic.py                                    # 3 seeds x 3 kinds, 5-minute fits
    .venv/bin/python bench/bench_dynamic.py --seeds 1 --fit-args "--steps 200" --frames 12 --size 128x96

Kinds (2 moving objects each):
- rigid:        moving input camera (a 30-40 degree arc), rigid blocks;
- articulated:  moving input camera, walking figures (torso, head, swinging arms and legs: non-rigid);
- nvidia:       the NVIDIA Dynamic Scenes protocol: a rig of --rig-cameras fixed cameras on a short arc, input
                frame t taken by rig camera t mod R, a rigid block and a figure; scored at rig camera 0 while
                time plays.
Views: "fixed cam" (input camera of frame 0 held still while time plays), "30 deg" / "90 deg" (the input path
rotated about the scene's vertical axis), "nvidia cam0" (rig camera 0).

Per scene: the fit's seconds, steps and last PSNR on its training frames. Per view: PSNR, masked PSNR
(co-visible pixels: what the input saw), dyn PSNR (co-visible pixels of the moving objects), SSIM and m-sharp
(gradient energy of the render over the ground truth's, on co-visible pixels: 1 = as sharp, below 1 blurred),
each beside its floor from `monodyn eval` (the input frame nearest in time used as the prediction), plus the
masked-PSNR gain over the floor, which issue 21's targets are about (fixed cam >= +8 dB, 30 deg >= +6,
90 deg >= +3; nvidia cam0 >= 27 dB). "cam err" is how far preprocessing's
SfM cameras are from the true input cameras after eval's similarity alignment (worst rotation, degrees, and
focal length, %): views are scored through that alignment, so a large error caps every score of the scene.
"mask IoU" is the segment stage's moving pixels against the true ones over the clip: what moves is only as right as
that (without SAM weights the motion backend reaches 0.2-0.65 on these scenes, the main cause of the dyn PSNR).
Seeds 1-5 are the ones the methods were tuned on: report others. --save-strips DIR copies eval's PNG strips
(per row: ground truth | render).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bench_pipeline import latest_eval, latest_eval_dir, run  # noqa: E402
from bench.tables import table  # noqa: E402

KINDS = {  # synth options and default frame count of each kind
    "rigid": (["--camera", "moving", "--movers", "rigid", "--heldout-azimuths", "30,90", "--stabilized", "0"], 48),
    "articulated": (["--camera", "moving", "--movers", "articulated", "--heldout-azimuths", "30,90", "--stabilized",
                     "0"], 48),
    "nvidia": (["--camera", "rig", "--movers", "mixed", "--heldout-azimuths", ""], 24),
}
VIEWS = {"stabilized0": "fixed cam", "heldout_az30": "30 deg", "heldout_az90": "90 deg", "rig0": "nvidia cam0"}
# (column, summary key): each printed beside its floor
METRICS = (("PSNR", "psnr"), ("mPSNR", "mpsnr"), ("dyn PSNR", "dpsnr"), ("SSIM", "ssim"), ("m-sharp", "msharpness"))


def load_pair(ws: Path, scene: Path):
    """The workspace's scene and the ground truth's input view, each read once for the checks below."""
    from monodyn_cli.scene_loader import load_scene
    from monodyn_cli.synth import load_gt
    from monodyn_cli.workspace import Workspace

    return load_scene(Workspace(ws))[0], load_gt(scene).view("input")


def camera_error(est, truth) -> tuple[float, float]:
    """Worst rotation error (degrees) of the workspace scene's cameras against the true input cameras (the ground
    truth's input view) aligned as eval aligns them, and the relative error of the focal length (%)."""
    import torch

    from monodyn_cli.evaluation import sim3_from_cameras, transform_cameras

    true = truth.cameras
    aligned = transform_cameras(true, sim3_from_cameras(est.cameras, true)).w2c[:, :3, :3]
    cos = ((aligned @ est.cameras.w2c[:, :3, :3].transpose(1, 2)).diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
    focal = float(est.cameras.K[:, 0, 0].median()) / (float(true.K[0, 0, 0]) * est.width / true.width)
    return float(torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).max()), 100 * (focal - 1)


def mask_iou(est, truth) -> float | None:
    """IoU of the segment stage's moving pixels (any object) with the ground truth's, over the whole clip (at the
    workspace's size): the moving content can only be as right as the masks that say what moves. None without a
    segment stage."""
    import cv2
    import numpy as np

    if est.instances is None:
        return None
    true = np.asarray(truth.instances) > 0
    size = (est.width, est.height)
    true = np.stack([cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0 for m in true])
    pred = np.asarray(est.instances) > 0
    return float((pred & true).sum() / max((pred | true).sum(), 1))


def fit_record(checkpoint: Path) -> dict:
    """Seconds and steps of the fit (its manifest and last metrics line, so a cached fit reports its real run) and
    its last logged PSNR on the training frames."""
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    lines = (checkpoint / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1]) if lines else {}
    return {"fit_s": manifest["seconds"], "steps": last.get("step"), "train_psnr": last.get("psnr")}


def bench_scene(kind: str, seed: int, work: Path, frames: int | None, size: tuple[int, int], rig_cameras: int,
                fit_args: list[str], every: int, strips: Path | None) -> list[dict]:
    """synth -> preprocess -> fit -> eval of one scene; one row per scored view."""
    synth_opts, default_frames = KINDS[kind]
    frames = frames or default_frames
    name = f"{kind}-seed{seed}-{frames}f-{size[0]}x{size[1]}"
    scene, ws = work / name, work / f"{name}.monodyn"
    if not (scene / "gt" / "scene.json").exists():
        run(["synth", scene, "--seed", seed, "--frames", frames, "--width", size[0], "--height", size[1],
             "--objects", 2, "--fixed-cameras", 0, "--rig-cameras", rig_cameras, *synth_opts], work)
    run(["preprocess", scene / "input.mp4", "-w", ws], work)
    run(["fit", "-w", ws, "--method", "dpdy", *fit_args], work)
    run(["eval", "-w", ws, "--protocol", "synth", "--gt", scene, "--method", "dpdy", "--every", every, *fit_args], work)
    summary, folder = latest_eval(ws), latest_eval_dir(ws)
    est, truth = load_pair(ws, scene)
    rot_err, focal_err = camera_error(est, truth)
    iou = mask_iou(est, truth)
    fit = fit_record(Path(summary["checkpoint"]))
    rows = []
    for view, s in summary["views"].items():
        if strips is not None:
            shutil.copyfile(folder / f"{view}.png", strips / f"{name}-{view}.png")
        rows.append({"scene": f"{kind} s{seed}", "view": VIEWS.get(view, view), **fit,
                     "cam_err": f"{rot_err:.1f} deg {focal_err:+.0f}%", "mask_iou": iou,
                     **{k: s.get(k) for _, key in METRICS for k in (key, f"floor_{key}")}})
    return rows


def print_rows(title: str, rows: list[dict]) -> None:
    def num(v):
        return "-" if v is None else float(v)

    header = ["scene", "view", "fit s", "steps", "train PSNR", "cam err", "mask IoU"]
    for col, _ in METRICS:
        header += [col, "floor"] + (["gain"] if col == "mPSNR" else [])
    body = []
    for r in rows:
        line = [r["scene"], r["view"], num(r["fit_s"]), r["steps"], num(r["train_psnr"]), r["cam_err"], num(r["mask_iou"])]
        for col, key in METRICS:
            value, floor = r.get(key), r.get(f"floor_{key}")
            line += [num(value), num(floor)]
            if col == "mPSNR":
                line.append("-" if value is None or floor is None else value - floor)
        body.append(line)
    table(title, header, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="11,12,13", help="comma-separated synth seeds (1-5 were tuned on)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {', '.join(KINDS)}")
    parser.add_argument("--fit-args", default="--minutes 5", help="dpdy options for fit and eval, e.g. '--steps 2000'")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per scene (default: 48 with a moving camera, 24 for nvidia)")
    parser.add_argument("--size", default="256x192", help="WIDTHxHEIGHT of the synthetic input")
    parser.add_argument("--rig-cameras", type=int, default=12, help="cameras of the nvidia rig")
    parser.add_argument("--every", type=int, default=2, help="score every N-th frame of each view (rendering is slow)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per monodyn command (0: its default)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench_dynamic", help="scratch folder")
    parser.add_argument("--save-strips", type=Path, default=None, help="copy eval's PNG strips (ground truth | "
                                                                       "render) here, one per scene and view")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.threads:
        os.environ["MONODYN_THREADS"] = str(args.threads)  # read by the monodyn command line of every run
    args.work.mkdir(parents=True, exist_ok=True)
    if args.save_strips is not None:
        args.save_strips.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in kinds:
        for seed in (int(s) for s in args.seeds.split(",") if s):
            scene_rows = bench_scene(kind, seed, args.work, args.frames, (width, height), args.rig_cameras,
                                     shlex.split(args.fit_args), args.every, args.save_strips)
            print_rows(f"{kind} seed {seed}", scene_rows)
            rows += scene_rows
    print_rows(f"dpdy, fit {args.fit_args!r}: every scene and view (floor = the input frame nearest in time)", rows)


if __name__ == "__main__":
    main()
