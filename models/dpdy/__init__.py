"""DpDy (Wang et al., "Diffusion Priors for Dynamic View Synthesis from Monocular Videos", 2024) on our dynamic
3D Gaussian core: a static Gaussian set for the background and a dynamic set moved by motion bases
(models/gaussians), fitted with photometric, depth, 2D-track, mask and motion-smoothness losses. The paper's
diffusion priors act through the novel-view guidance hook (`DpDyMethod.fit(..., guidance=...)`); without prior
weights it runs as a plain static + dynamic decomposition.

- config.py    `DpDyConfig` (the options of `monodyn fit --method dpdy`)
- task.py      `DpDyTask`: the fit task for models/fitting.py (losses, densification, resumable state)
- guidance.py  the guidance hook type and the novel cameras it is shown
- method.py    `DpDyMethod` (fit / load / render), checkpoint loading
"""
