"""Procedural dynamic multi-view scenes with exact ground truth (our Kubric-4D / DySO-like generator).

A z-up room (textured floor, four walls, ceiling; or `room=False`: a ground plane under a sky at infinity)
holds K moving objects whose procedural textures live in the objects' own coordinates: rigid spheres, boxes
and cylinders, or (`movers="articulated"`/`"mixed"`, figures.py) walking figures whose torso, head, arms
and legs are rigid parts posed relative to each other under one instance id: non-rigid movers. Objects
slide, roll, hop, tumble and walk smoothly without touching each other or the ground (checked). The input
camera sweeps ~30-40 degrees of azimuth around the scene centre, stays still, or (`camera="rig"`, the
NVIDIA Dynamic Scenes protocol) is a rig of R fixed cameras on a short horizontal arc where frame t is taken
by rig camera t mod R; held-out cameras are the input trajectory rotated about the vertical axis through
the centre; fixed cameras stay still elsewhere ("rig0": rig camera 0). Every camera sees every frame.
Rendering is analytic ray casting (`raycast.py`): depth, instance ids and flow are exact, not estimated.

Python API (memory or disk):

    cfg = SynthConfig(seed=0, frames=48, width=256, height=192, objects=2)
    scene = generate_scene(cfg)                   # in memory: scene.view("input").rgb, .depth, ...
    write_scene(scene, "out")                     # or synthesize(cfg, "out"): straight to disk, less memory
    gt = load_gt("out"); v = gt.view("heldout_az90"); cams = v.cameras  # memory-mapped arrays + Cameras

On disk (`monodyn synth OUT_DIR`); T frames, H x W pixels, K objects, frame index t = 0..T-1:

    OUT_DIR/input.mp4                  the input camera's frames (H.264 yuv420p, crf 12, fps = cfg.fps)
    OUT_DIR/gt/scene.json              version, seed, fps, size, frames, fov, scene centre, room, light,
                                       objects [{id, shape, size (half-sizes), motion, bounding_radius,
                                       colour}], cameras [{name, role, azimuth_offset}], variants
                                       [{name, scales, penetration_objects, penetration_background,
                                       camera_inside_object, input_changed_fraction, valid}]; figures
                                       add objects[k].parts [{name, shape, size, hinge, offset, axis,
                                       amplitude, omega, phase}] and "movers"; a rig adds "rig_cameras"
    OUT_DIR/gt/objects.npy             (K,T,4,4) float32 object-to-world (s R | t): local p -> world (a
                                       figure's frame is its torso's)
    OUT_DIR/gt/parts.npy               only with figures: (P,T,4,4) part-to-world of every primitive, object
                                       by object (a rigid object is one part; a figure's follow objects[k].parts)
    OUT_DIR/gt/<camera>/               camera = input | heldout_az<deg> | fixed<i> | stabilized<F> | rig0
        rgb.npy        (T,H,W,3) uint8     the rendered frames (input.mp4 is these, encoded)
        depth.npy      (T,H,W) float32     camera-space z; inf only for sky pixels (no room)
        instances.npy  (T,H,W) uint8       0 static background, k+1 object k
        flow_fw.npy    (T-1,H,W,2) float32 [i]: where frame i's pixel centres move in frame i+1 (pixels, x,y)
        flow_bw.npy    (T-1,H,W,2) float32 [i]: where frame i+1's pixel centres move in frame i
        valid_fw.npy, valid_bw.npy (T-1,H,W) bool  the moved point is in front of the other frame's
                                           camera, inside its image and not occluded there
        cameras.json   {"name", "role", "width", "height", "K": (T,3,3), "w2c": (T,4,4)} (Cameras.from_dict)
    OUT_DIR/gt/variants/<v>/objects.npy and OUT_DIR/gt/variants/<v>/<camera>/...  the same for scale
                                       variant v (v0, v1, ...), every camera

Scale variants (OSN's scale ambiguity): object k's every point X at frame t becomes C_t + s_k (X - C_t),
C_t the input camera's centre, so size and camera-relative position scale together: the input video is
unchanged wherever occlusion order is, held-out views are not. A variant is `valid` when nothing
interpenetrates (objects, ground, walls; measured on dense surface samples, > 1e-3 units), no camera
is inside an object, and at most 1e-4 of the input video's pixels change by more than 8 levels.

Conventions follow models/cameras.py: OpenCV camera axes, world-to-camera w2c, pixel centres at +0.5.
Flow is computed exactly: each pixel's surface point moves with its object's pose (static background,
sky directions) and is projected into the other frame's camera.
"""

from monodyn_cli.synth.raycast import ViewGT, render_view
from monodyn_cli.synth.scene import SceneSpec, SynthConfig, build_scene, parse_scale_variants
from monodyn_cli.synth.writer import SynthGT, SynthScene, generate_scene, load_gt, synthesize, write_scene

__all__ = ["SceneSpec", "SynthConfig", "SynthGT", "SynthScene", "ViewGT", "build_scene", "generate_scene",
           "load_gt", "parse_scale_variants", "render_view", "synthesize", "write_scene"]
