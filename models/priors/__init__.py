"""DpDy's diffusion priors: what fills the parts of a scene the video never saw.

A prior looks at renders of the fit from novel cameras (input cameras orbited about their look-at point) and
returns a loss on them (score distillation) plus its estimate of the clean RGB-D image there, which the hook
lifts into new Gaussians where the render is empty (a gradient cannot reach pixels no Gaussian covers).

- rgbd.py         normalised disparity (LDM3D's depth convention), warping for training pairs, lifting pixels
- sds.py          score distillation: the loss whose gradient is w(t) (eps_hat - eps), timestep sampling
- ldm3d.py        the official RGB-D prior: diffusers' LDM3D components, its LoRA fine-tune on the clip
- animatediff.py  the official video prior: AnimateDiff's motion adapter on short rendered clips
- conditioned.py  the small shipped RGB-D prior, conditioned on the render (rgb, alpha, depth) and the nearest
                  input frame; `pretrained/` holds its weights (`monodyn train prior`)
- train.py        training pairs (ground truth warped into other cameras of `monodyn synth` scenes, real-clip
                  frames with holes) and the training loop of the shipped prior
- hook.py         `NovelViewPrior`: the DpDy fit's hook (cameras, weight schedule, lifting, timing)
"""
