"""The dynamic 3D Gaussian scene model shared by the per-video methods.

- model.py     `GaussianSet`, `MotionBases`, `DynamicGaussians` (static + dynamic sets, pose at any time, render)
- init.py      initialisation from a preprocessed Scene (depth lifting, flow tracks -> motion bases)
- tracks.py    flow-chained 2D tracks, rigid fits, k-means
- strategy.py  densification and pruning (gsplat DefaultStrategy semantics)
- losses.py    photometric, depth, track, motion-smoothness losses
"""
