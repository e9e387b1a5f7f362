"""Structure from motion for monocular video: camera poses of every frame (and of every rigid object).

- `colmap`: the pycolmap pipeline (masked SIFT, sequential matching, one shared camera, incremental mapping)
  and its result as numpy arrays in our conventions (`SparseModel`).
- `validate`: camera-motion checks before SfM (static / rotation-only / translating), rotations and focal
  length from homographies, reconstruction quality, pose interpolation (slerp) for unregistered frames.
- `align`: Umeyama similarity alignment, ATE and rotation error, the upright normalised world frame.

Poses are world-to-camera 4x4 float64 numpy arrays with OpenCV axes (COLMAP's `cam_from_world` is the same
convention), intrinsics 3x3 in pixels with pixel centres at +0.5 (COLMAP's convention too).
"""
