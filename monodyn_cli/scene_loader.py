"""Build the `Scene` a method receives from a workspace's current stage results (arrays memory-mapped)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from models.cameras import Cameras
from models.errors import InputError
from models.scene import Scene
from monodyn_cli.workspace import Workspace


def resolve_workspace(option: Path | None) -> Workspace:
    """--workspace if given; else the current folder if it is a workspace; else the one `*.monodyn` here."""
    if option is not None:
        ws = Workspace(option)
    elif (Path.cwd() / "workspace.json").exists():
        ws = Workspace(Path.cwd())
    else:
        found = sorted(p for p in Path.cwd().glob("*.monodyn") if (p / "workspace.json").exists())
        if not found:
            raise InputError("no workspace here: run `monodyn preprocess VIDEO` first, or pass --workspace DIR")
        if len(found) > 1:
            raise InputError(f"several workspaces here ({', '.join(p.name for p in found)}): pass --workspace DIR")
        ws = Workspace(found[0])
    ws.check_exists()
    return ws


def load_scene(ws: Workspace) -> tuple[Scene, dict[str, str]]:
    """The scene and the keys of the stage results it was built from (they go into a fit's cache key)."""
    decode = ws.require("decode")
    sfm = ws.require("sfm", "run `monodyn preprocess` (the sfm stage gives the cameras)")
    keys = {"decode": decode.key, "sfm": sfm.key}
    frames = np.load(decode.file("frames.npy"), mmap_mode="r")
    timestamps = np.load(decode.file("timestamps.npy"))
    cams_json = json.loads(sfm.file("cameras.json").read_text())
    cameras = Cameras.from_dict(cams_json)
    sfm_info = json.loads(sfm.file("sfm.json").read_text()) if sfm.file("sfm.json").exists() else {}
    scene = Scene(frames=frames, timestamps=timestamps, cameras=cameras, meta={"workspace": str(ws.root)})
    scene.static_camera = sfm_info.get("mode") == "static-fallback"
    scene.no_parallax = sfm_info.get("mode") in ("static-fallback", "rotation-fallback")
    bounds = sfm_info.get("bounds", {})
    if "center" in bounds:
        scene.center = np.asarray(bounds["center"], np.float32)
        scene.radius = float(bounds["radius"])
    if sfm.file("points3d.npy").exists():
        scene.points = np.load(sfm.file("points3d.npy"))
        if sfm.file("points_rgb.npy").exists():
            scene.points_rgb = np.load(sfm.file("points_rgb.npy"))
    objects_json = sfm.file("objects.json")
    if objects_json.exists():
        report = json.loads(objects_json.read_text()).get("objects", {})
        scene.meta["object_sfm"] = report  # per object: ok, reason, hint (why per-object SfM failed, for errors)
        for obj_id, info in report.items():
            cams = sfm.path / "objects" / str(obj_id) / "cameras.json"
            if info.get("ok") and cams.exists():
                scene.object_cameras[int(obj_id)] = Cameras.from_dict(json.loads(cams.read_text()))
    if (seg := ws.current("segment")) is not None:
        scene.instances = np.load(seg.file("instances.npy"), mmap_mode="r")
        keys["segment"] = seg.key
    if (flow := ws.current("flow")) is not None:
        scene.flow_fw = np.load(flow.file("flow_fw.npy"), mmap_mode="r")
        scene.flow_bw = np.load(flow.file("flow_bw.npy"), mmap_mode="r")
        scene.valid_fw = np.load(flow.file("valid_fw.npy"), mmap_mode="r")
        scene.valid_bw = np.load(flow.file("valid_bw.npy"), mmap_mode="r")
        keys["flow"] = flow.key
    if (depth := ws.current("depth")) is not None and depth.file("depth.npy").exists():
        scene.depth = np.load(depth.file("depth.npy"), mmap_mode="r")
        keys["depth"] = depth.key
    if len(cameras) != scene.num_frames:
        raise InputError(f"workspace {ws.root} is inconsistent: {scene.num_frames} frames but {len(cameras)} "
                         "cameras; rerun `monodyn preprocess --force sfm`")
    if cameras.width != scene.width or cameras.height != scene.height:
        cameras_scaled = cameras.scaled(scene.width / cameras.width)
        scene.cameras = Cameras(cameras_scaled.K, cameras_scaled.w2c, scene.width, scene.height)
    return scene, keys
