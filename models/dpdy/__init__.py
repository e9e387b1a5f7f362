"""DpDy (Wang et al., "Diffusion Priors for Dynamic View Synthesis from Monocular Videos", 2024) on our dynamic
3D Gaussian core: a static Gaussian set for the background and a dynamic set moved by motion bases
(models/gaussians), fitted with photometric, depth, 2D-track, mask and motion-smoothness losses. The paper's
diffusion priors (models/priors: LDM3D + AnimateDiff when their weights exist, else a small shipped RGB-D prior)
act on novel views through the guidance hook; `--prior none` leaves a plain static + dynamic decomposition.

- config.py    `DpDyConfig` (the options of `monodyn fit --method dpdy`)
- task.py      `DpDyTask`: the fit task for models/fitting.py (losses, densification, resumable state)
- guidance.py  the guidance hook type and the novel cameras it renders (the priors: models/priors)
- method.py    `DpDyMethod` (fit / load / render), checkpoint loading
"""
