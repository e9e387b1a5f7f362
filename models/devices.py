"""`resolve_device`: the one place that turns `--device auto|cpu|cuda|cuda:N` into a torch device (stages and
renderers import it without the fit loop)."""

from __future__ import annotations

import torch

from models.errors import InputError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` -> CUDA when present, else the CPU; `cpu`; `cuda` / `cuda:N` (an InputError when absent)."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        try:
            device = torch.device(name)
        except RuntimeError:
            raise InputError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: no CUDA device is available here; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        return device
    raise InputError(f"--device {name}: unknown device; use auto, cpu, cuda or cuda:N")
