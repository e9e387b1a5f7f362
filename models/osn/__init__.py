"""OSN (Song, Li, Yang, ICML 2024): all the 3D scenes a monocular video admits, one per valid combination of
object scales.

A rigid object's scale is ambiguous in a monocular video: scaled by s about the camera, it looks the same
wherever the depth order against other objects does not change. OSN keeps each object (the static background is
object 0, scale fixed to 1) as a set of Gaussians in its own frame, with camera-to-object poses from its flow
tracks (PnP, the initialiser DpDy shares) or per-object SfM, and learns which scale combinations are valid:

- `objects.py`   object frames and poses (tracks or SfM; unrecoverable objects stay background), scales as
                 transforms (F = P S(1/s) w2c), pose interpolation;
- `composite.py` scaled composite rendering: every object's Gaussians placed at its scale, one rasterisation;
- `zbuffer.py`   soft Z-buffer: per-object depth/opacity rendered once, H scale combinations blended in 2D,
                 0/1 validity pseudo-labels from the masks;
- `scale_net.py` the object scale network (normalised log-scales -> validity) and valid-sample drawing;
- `trainer.py`   stage 1 (objects alone) and stage 2 (alternating objects / scale network) as the
                 `models.fitting` task (the driver owns device, budgets, checkpoints, resume);
- `model.py`, `method.py` the model, checkpoint I/O and the registry `Method` (`monodyn fit --method osn`);
- `report.py`    learned valid scale ranges (`monodyn osn scales`);
- `synthetic.py` a Scene straight from synthetic ground truth (tests, bench).
"""
