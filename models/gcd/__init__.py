"""GCD (Generative Camera Dolly): camera-conditioned video diffusion on diffusers' SVD components.

model.py     the network (GCDUNet, SphericalEmbedder, FrameEncoder, GCDModel) and its folder format
sampling.py  EDM Euler sampler with per-frame classifier-free guidance
geometry.py  target cameras -> per-frame spherical deltas about the look-at point
convert.py   official Lightning checkpoints (sgm names) -> diffusers / transformers names
train.py     the training task (VAE, then UNet + image encoder) on paired multi-view clips
method.py    GCDMethod / GCDRenderer for the registry
"""
