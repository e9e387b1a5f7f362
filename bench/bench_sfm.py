"""The sfm stage on synthetic scenes with ground-truth cameras, and on real clips: mode, accuracy, time.

    .venv/bin/python bench/bench_sfm.py                        # synthetic 48 frames 256x192 + real clips
    .venv/bin/python bench/bench_sfm.py --no-real --frames 24  # synthetic only, shorter
    .venv/bin/python bench/bench_sfm.py --no-synth --real-frames 40 --real-side 320

Synthetic rows (monodyn_cli.synth, 2 objects, their ground-truth masks as the segment stage's output; plus the
purely rotating box room of tests/test_sfm.py): mode the stage chose, fraction of frames COLMAP registered,
ATE (RMSE of camera centres after the sim(3) alignment of models/sfm/align.py, in units of the scene radius:
the distance from the cameras to the point they look at), mean / max rotation error after alignment
(degrees), focal length error, seconds of the whole stage. Per-object rows (moving scene): each object's
camera-from-object poses against ground truth (w2c @ object-to-world), same measures.

Real rows (../shared/data/clips, decoded at --real-side px, first --real-frames frames, no object masks):
mode, registered fraction, 3D points, mean reprojection error, focal length, motion check, seconds.
Timings are wall-clock on this machine (2 shared cores: expect noise from other processes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2  # noqa: F401  (before pycolmap)

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see monodyn_cli/__init__.py

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.cameras import Cameras  # noqa: E402
from models.sfm import align  # noqa: E402
from monodyn_cli import pipeline  # noqa: E402
from monodyn_cli.stages import decode as decode_stage  # noqa: E402
from monodyn_cli.stages import sfm as sfm_stage  # noqa: E402
from monodyn_cli.workspace import Progress, Workspace  # noqa: E402

CLIPS = ROOT.parent / "shared" / "data" / "clips"


class Warnings(Progress):
    def __init__(self):
        self.messages: list[str] = []

    def warn(self, message: str) -> None:
        self.messages.append(message)


def run_stage(work: Path, source_path: Path, cfg: sfm_stage.SfmConfig, instances: np.ndarray | None = None,
              max_side: int | None = None, max_frames: int | None = None):
    """decode -> segment (given instances, or none) -> sfm in a fresh workspace; returns (result, seconds)."""
    source = decode_stage.resolve_source(source_path)
    dcfg = decode_stage.DecodeConfig(max_side=max_side, max_frames=max_frames)
    dspec = pipeline.StageSpec("decode", decode_stage.VERSION, (), lambda ctx, c: decode_stage.run(ctx, source, c))
    ws = Workspace(work)
    progress = Warnings()
    dec = pipeline.run_chain(ws, [pipeline.StageRequest(dspec, dcfg, decode_stage.config_for(source, dcfg))],
                             progress)["decode"]
    if instances is None:
        instances = np.zeros(np.load(dec.file("frames.npy"), mmap_mode="r").shape[:3], np.uint8)

    def segment(ctx, _cfg):
        np.save(ctx.out / "instances.npy", instances)
        return ["instances.npy"]

    sspec = pipeline.StageSpec("segment", 1, ("decode",), segment)
    pipeline.run_chain(ws, [pipeline.StageRequest(sspec, {"objects": int(instances.max())})], progress)
    start = time.perf_counter()
    res = pipeline.run_chain(ws, [pipeline.StageRequest(sfm_stage.SPEC, cfg)], progress)["sfm"]
    return res, time.perf_counter() - start, progress.messages


def write_frames(folder: Path, rgb: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for i, img in enumerate(rgb):
        cv2.imwrite(str(folder / f"{i:04d}.png"), img[..., ::-1])
    return folder


def load(res, sub: str = "") -> tuple[Cameras, np.ndarray]:
    base = res.path / sub
    return Cameras.from_dict(json.loads((base / "cameras.json").read_text())), np.load(base / "registered.npy")


def errors(est: Cameras, gt_w2c: np.ndarray, gt_K: np.ndarray, radius: float, mask: np.ndarray | None = None
           ) -> dict:
    w2c = est.w2c.double().numpy()
    if mask is not None:
        w2c, gt_w2c = w2c[mask], gt_w2c[mask]
    e = align.trajectory_error(w2c, gt_w2c)
    return {"ate_r": e.ate / radius, "rot": e.rot_mean_deg, "rot_max": e.rot_max_deg,
            "f_err": abs(est.K[0, 0, 0].item() / gt_K[0, 0] - 1)}


def synth_rows(args, tmp: Path) -> list[dict]:
    from monodyn_cli.synth.raycast import render_view
    from monodyn_cli.synth.scene import SynthConfig, build_scene

    rows = []
    for camera in ("moving", "static"):
        spec = build_scene(SynthConfig(seed=args.seed, frames=args.frames, width=args.width, height=args.height,
                                       camera=camera, objects=2, heldout_azimuths=(), fixed_cameras=0))
        view = render_view(spec, "input")
        gt_w2c, gt_K = view.cameras.w2c.double().numpy(), view.cameras.K[0].double().numpy()
        radius = float(np.linalg.norm(view.cameras.centers.double().numpy() - spec.centre, axis=1).mean())
        src = write_frames(tmp / f"synth_{camera}", view.rgb)
        cfg = sfm_stage.SfmConfig()
        res, sec, warns = run_stage(tmp / f"ws_{camera}", src, cfg, view.instances)
        info = json.loads(res.file("sfm.json").read_text())
        cams, reg = load(res)
        colmap_s = info.get("seconds", {}).get("colmap")
        rows.append({"scene": f"synth {camera}", "mode": info["mode"], "reg": reg.mean(), "s": sec,
                     **errors(cams, gt_w2c, gt_K, radius), "warn": len(warns),
                     "note": f"COLMAP {colmap_s:.1f}s of it" if colmap_s else ""})
        if camera == "moving":
            o2w = spec.poses.object_to_world().astype(np.float64)  # (K,T,4,4)
            from monodyn_cli.stages import object_sfm
            from monodyn_cli.stages.configs import ObjectSfmConfig

            objects_res = pipeline.run_chain(Workspace(tmp / f"ws_{camera}"), [pipeline.StageRequest(
                object_sfm.SPEC, ObjectSfmConfig(True))], Warnings())["object_sfm"]
            objects = json.loads(objects_res.file("objects.json").read_text())["objects"]
            for k, entry in objects.items():
                row = {"scene": f"  object {k}", "mode": "ok" if entry["ok"] else "failed",
                       "reg": entry.get("registered", 0) / args.frames, "s": entry.get("seconds", float("nan"))}
                if entry["ok"]:
                    w2o, oreg = load(objects_res, f"objects/{k}")
                    obj_radius = float(np.median(np.linalg.norm(
                        view.cameras.centers.double().numpy() - o2w[int(k) - 1, :, :3, 3], axis=1)))
                    row.update(errors(w2o, gt_w2c @ o2w[int(k) - 1], gt_K, obj_radius, oreg))
                else:
                    row["note"] = entry["reason"]
                rows.append(row)

    sys.path.insert(0, str(ROOT / "tests"))
    from test_sfm import box_room_clip  # the purely rotating camera of the tests, at bench size

    rgb, inst, K, w2c, _ = box_room_clip(args.frames, args.width, args.height, "rotating")
    src = write_frames(tmp / "rotating", rgb)
    res, sec, warns = run_stage(tmp / "ws_rotating", src, sfm_stage.SfmConfig(), inst)
    info = json.loads(res.file("sfm.json").read_text())
    cams, reg = load(res)
    rel = cams.w2c[:, :3, :3].double().numpy() @ cams.w2c[0, :3, :3].double().numpy().T
    rot = align.rotation_angle_deg(rel, w2c[:, :3, :3] @ w2c[0, :3, :3].T)
    rows.append({"scene": "box room rotating", "mode": info["mode"], "reg": reg.mean(), "s": sec,
                 "ate_r": float(np.linalg.norm(cams.centers.numpy(), axis=1).max()), "rot": rot.mean(),
                 "rot_max": rot.max(), "f_err": abs(cams.K[0, 0, 0].item() / K[0, 0] - 1), "warn": len(warns)})
    return rows


def real_rows(args, tmp: Path) -> list[dict]:
    rows = []
    for name, path in (("duck", CLIPS / "duck" / "images"), ("davis_rollercoaster", CLIPS / "davis_rollercoaster.mp4"),
                       ("bedroom (static)", CLIPS / "bedroom.mp4")):
        if not path.exists():
            print(f"skip {name}: {path} not present")
            continue
        res, sec, warns = run_stage(tmp / f"ws_{name.split()[0]}", path, sfm_stage.SfmConfig(),
                                    max_side=args.real_side, max_frames=args.real_frames)
        info = json.loads(res.file("sfm.json").read_text())
        rows.append({"clip": name, "mode": info["mode"], "reg": info["registered_fraction"],
                     "points": info["num_points"], "reproj": info.get("mean_reprojection_error_px", float("nan")),
                     "f": info["focal_px"], "size": f"{info['width']}x{info['height']}x{info['num_frames']}",
                     "motion": (info.get("motion") or {}).get("kind", "-"), "s": sec,
                     "note": info["reason"][:90]})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real-side", type=int, default=320)
    p.add_argument("--real-frames", type=int, default=40)
    p.add_argument("--no-synth", action="store_true")
    p.add_argument("--no-real", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.no_synth:
            print(f"\nsynthetic, {args.frames} frames {args.width}x{args.height}")
            print(f"{'scene':<20} {'mode':<18} {'reg':>5} {'ATE/r':>8} {'rot°':>6} {'max°':>6} {'f err':>6} "
                  f"{'sec':>6}  note")
            for r in synth_rows(args, tmp):
                if "ate_r" in r:
                    print(f"{r['scene']:<20} {r['mode']:<18} {r['reg']:>5.2f} {r['ate_r']:>8.4f} {r['rot']:>6.2f} "
                          f"{r['rot_max']:>6.2f} {100 * r['f_err']:>5.1f}% {r['s']:>6.1f}  {r.get('note', '')}")
                else:
                    print(f"{r['scene']:<20} {r['mode']:<18} {r['reg']:>5.2f} {'-':>8} {'-':>6} {'-':>6} {'-':>6} "
                          f"{r['s']:>6.1f}  {r.get('note', '')}")
        if not args.no_real:
            print(f"\nreal clips, --max-side {args.real_side}, first {args.real_frames} frames, no object masks")
            print(f"{'clip':<20} {'size':<12} {'mode':<18} {'reg':>5} {'points':>6} {'reproj':>6} {'f px':>6} "
                  f"{'motion':<12} {'sec':>6}  note")
            for r in real_rows(args, tmp):
                print(f"{r['clip']:<20} {r['size']:<12} {r['mode']:<18} {r['reg']:>5.2f} {r['points']:>6} "
                      f"{r['reproj']:>6.2f} {r['f']:>6.0f} {r['motion']:<12} {r['s']:>6.1f}  {r['note']}")


if __name__ == "__main__":
    main()
