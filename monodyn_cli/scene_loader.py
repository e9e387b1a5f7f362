"""Build the `Scene` a method receives from a workspace's current stage results (arrays memory-mapped).

Every file is named through `monodyn_cli.stages.outputs`, the same declaration the stages write with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.cameras import Cameras
from models.errors import InputError
from models.scene import Scene
from monodyn_cli.stages.outputs import DECODE, DEPTH, FLOW, OBJECT_SFM, SEGMENT, SFM
from monodyn_cli.workspace import Workspace, read_json

WORKSPACE_ARGUMENT = "the workspace folder as the first argument"  # for commands that take it so (report, osn, dyst)


def resolve_workspace(option: Path | None, how: str = "--workspace DIR") -> Workspace:
    """--workspace if given; else the current folder if it is a workspace; else the one `*.monodyn` here. `how`
    names the way the command takes a workspace (commands that take it as an argument say WORKSPACE)."""
    if option is not None:
        ws = Workspace(option)
    elif (Path.cwd() / "workspace.json").exists():
        ws = Workspace(Path.cwd())
    else:
        found = sorted(p for p in Path.cwd().glob("*.monodyn") if (p / "workspace.json").exists())
        if not found:
            raise InputError(f"no workspace here: run `monodyn preprocess VIDEO` first, or pass {how}")
        if len(found) > 1:
            raise InputError(f"several workspaces here ({', '.join(p.name for p in found)}): pass {how}")
        ws = Workspace(found[0])
    ws.check_exists(how)
    return ws


def load_scene(ws: Workspace, object_sfm: bool = False) -> tuple[Scene, dict[str, str]]:
    """The scene and the keys of the stage results it was built from (they go into a fit's cache key).
    `object_sfm`: also the per-object SfM stage's result when one was made from the current sfm result (only
    a method that reads it asks, so turning that stage on changes no other fit's key)."""
    decode = ws.require("decode")
    sfm = ws.require("sfm", "run `monodyn preprocess` (the sfm stage gives the cameras)")
    keys = {"decode": decode.key, "sfm": sfm.key}
    frames = np.load(decode.file(DECODE.frames), mmap_mode="r")
    decoded = read_json(decode.file(DECODE.meta)) if decode.file(DECODE.meta).exists() else {}
    cameras = Cameras.from_dict(read_json(sfm.file(SFM.cameras)))
    info = read_json(sfm.file(SFM.info)) if sfm.file(SFM.info).exists() else {}
    scene = Scene(frames=frames, timestamps=np.load(decode.file(DECODE.timestamps)), cameras=cameras,
                  fps=float(decoded["fps"]) if decoded.get("fps") else None)
    scene.static_camera = info.get("mode") == "static-fallback"
    scene.no_parallax = info.get("mode") in ("static-fallback", "rotation-fallback")
    bounds = info.get("bounds", {})
    if "center" in bounds:
        scene.center = np.asarray(bounds["center"], np.float32)
        scene.radius = float(bounds["radius"])
    if sfm.file(SFM.points).exists():
        scene.points = np.load(sfm.file(SFM.points))
        scene.points_rgb = np.load(sfm.file(SFM.points_rgb))
    if len(cameras) != scene.num_frames:
        raise InputError(f"workspace {ws.root} is inconsistent: {scene.num_frames} frames but {len(cameras)} "
                         "cameras; rerun `monodyn preprocess --force sfm`")
    objects = ws.current("object_sfm") if object_sfm else None
    if objects is not None and objects.manifest.get("inputs", {}).get("sfm") == sfm.key:
        _load_objects(scene, objects.path, (cameras.width, cameras.height))
        keys["object_sfm"] = objects.key
    if (seg := ws.current("segment")) is not None:
        scene.instances = np.load(seg.file(SEGMENT.instances), mmap_mode="r")
        keys["segment"] = seg.key
    if (flow := ws.current("flow")) is not None:
        for name in ("flow_fw", "flow_bw", "valid_fw", "valid_bw"):
            setattr(scene, name, np.load(flow.file(getattr(FLOW, name)), mmap_mode="r"))
        keys["flow"] = flow.key
    if (depth := ws.current("depth")) is not None and depth.file(DEPTH.depth).exists():
        scene.depth = np.load(depth.file(DEPTH.depth), mmap_mode="r")
        keys["depth"] = depth.key
    if cameras.width != scene.width or cameras.height != scene.height:
        cameras_scaled = cameras.scaled(scene.width / cameras.width)
        scene.cameras = Cameras(cameras_scaled.K, cameras_scaled.w2c, scene.width, scene.height)
    return scene, keys


def _load_objects(scene: Scene, folder: Path, sfm_size: tuple[int, int]) -> None:
    """Per-object SfM (OSN): the report of every object tried, the cameras and the sparse depth of those that
    succeeded (depth splatted to (T,H,W) at the frames' size)."""
    if not (folder / OBJECT_SFM.objects).exists():
        return
    import torch

    from models.depth import sparse_depth_map

    report = read_json(folder / OBJECT_SFM.objects).get("objects", {})
    scene.object_sfm = {int(k): v for k, v in report.items()}
    T, H, W = scene.num_frames, scene.height, scene.width
    for obj_id, entry in scene.object_sfm.items():
        cams = folder / OBJECT_SFM.object_cameras.format_id(obj_id)
        if not (entry.get("ok") and cams.exists()):
            continue
        scene.object_cameras[obj_id] = Cameras.from_dict(read_json(cams))
        depth_file = folder / OBJECT_SFM.object_sparse_depth.format_id(obj_id)
        if depth_file.exists():
            with np.load(depth_file) as obs:
                xy = torch.from_numpy(obs["xy"]) * torch.tensor([W / sfm_size[0], H / sfm_size[1]])
                scene.object_depth[obj_id] = sparse_depth_map(torch.from_numpy(obs["frame"]), xy,
                                                              torch.from_numpy(obs["depth"]), T, H, W).numpy()
