"""DyST (Seitzer et al. 2023): a dynamic scene transformer with camera and dynamics control latents.

Kept torch-free at import (the CLI reads `options.py` at start-up); the model lives in `model.py`, training
in `train.py`, the registry entry in `method.py`. See docs/dyst.md.
"""
