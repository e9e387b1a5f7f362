"""Articulated figures: non-rigid movers made of rigid parts (a box torso, a sphere head, cylinder arms and legs)
under one instance id.

A figure's root frame is its torso's (x forward, y left, z up). Every part hangs from a hinge fixed in that
frame and swings about the hinge's axis by `amplitude * sin(omega * tau + phase)` (tau in seconds), so arms and
legs move relative to the torso and to each other while the figure walks its ground path. Parts are still exact
primitives, so the ray caster keeps exact depth, instances and flow: each part is intersected with its own pose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monodyn_cli.synth.geometry import lowest_point_offset, rotation
from monodyn_cli.synth.textures import TextureSpec, object_texture

_Y = (0.0, 1.0, 0.0)  # limbs swing forward and back: about the figure's sideways axis


@dataclass
class PartSpec:
    """One rigid part of a figure. At swing angle a its local point p goes to the root frame as
    rotation(axis, a) @ (p + offset) + hinge: `offset` is the part's centre relative to its hinge at rest."""

    name: str
    shape: str
    size: tuple[float, ...]
    texture: TextureSpec
    hinge: tuple[float, float, float] = (0.0, 0.0, 0.0)
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    axis: tuple[float, float, float] = _Y
    amplitude: float = 0.0  # radians
    omega: float = 0.0  # radians per second
    phase: float = 0.0

    @property
    def reach(self) -> float:
        """Farthest distance of any of its points from the root origin, at any swing angle."""
        r = self.size[0] if self.shape == "sphere" else float(np.linalg.norm(self.size))
        return float(np.linalg.norm(self.hinge) + np.linalg.norm(self.offset) + r)

    def to_json(self) -> dict:
        return {"name": self.name, "shape": self.shape, "size": list(self.size), "hinge": list(self.hinge),
                "offset": list(self.offset), "axis": list(self.axis), "amplitude": self.amplitude,
                "omega": self.omega, "phase": self.phase}


def part_transforms(parts: tuple[PartSpec, ...], tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Part-to-root rotations (N,n,3,3) and translations (N,n,3), float64, at times tau (N,) seconds."""
    angle = np.stack([p.amplitude * np.sin(p.omega * tau + p.phase) for p in parts], -1)  # (N,n)
    R = rotation(np.array([p.axis for p in parts]), angle)
    t = (R @ np.array([p.offset for p in parts])[..., None])[..., 0] + np.array([p.hinge for p in parts])
    return R, t


def ground_height(parts: tuple[PartSpec, ...], yaw: np.ndarray, tau: np.ndarray, gap: float) -> np.ndarray:
    """Root heights (N,) that keep the lowest part `gap` above the ground at every time, for root rotations
    yaw (N,3,3) about the vertical (which leave heights unchanged): the figure bobs as its legs swing."""
    R, t = part_transforms(parts, tau)
    world = yaw[:, None] @ R
    below = np.stack([lowest_point_offset(p.shape, p.size, world[:, i]) for i, p in enumerate(parts)], -1)
    return (below - t[..., 2]).max(-1) + gap


def sample_figure(rng: np.random.Generator) -> tuple[PartSpec, ...]:
    """A walker: torso, head, two arms and two legs; arms swing against the legs on their side."""
    period = rng.uniform(0.06, 0.1)  # finer checkers than rigid objects: parts are small

    def half(lo, hi):  # the nearest odd multiple of period/2: the torso's flat faces sit on checker crests
        return float((max(round(rng.uniform(lo, hi) / period - 0.5), 0) + 0.5) * period)

    shirt, skin, trousers = (object_texture(rng, period, np.eye(3)) for _ in range(3))
    hx, hy, hz = half(0.1, 0.16), half(0.15, 0.22), half(0.2, 0.3)
    head_r = float(rng.uniform(0.09, 0.13))
    leg_r, leg_h = float(rng.uniform(0.045, 0.06)), float(rng.uniform(0.16, 0.22))
    arm_r, arm_h = float(rng.uniform(0.035, 0.05)), float(rng.uniform(0.13, 0.18))
    omega = float(rng.uniform(4.0, 6.0))  # one stride frequency for the whole body
    phase = float(rng.uniform(0, 2 * np.pi))
    leg_amp, arm_amp = float(rng.uniform(0.35, 0.6)), float(rng.uniform(0.4, 0.9))
    parts = [PartSpec("torso", "box", (hx, hy, hz), shirt),
             PartSpec("head", "sphere", (head_r,), skin, hinge=(0.0, 0.0, hz + 0.8 * head_r))]
    for side, sign in (("left", 1.0), ("right", -1.0)):
        swing = phase + (0.0 if sign > 0 else np.pi)
        # legs under the torso, arms beside it (outside its y-slab, so they never cut into it)
        parts.append(PartSpec(f"leg_{side}", "cylinder", (leg_r, leg_h), trousers, hinge=(0.0, sign * hy / 2, -hz),
                              offset=(0.0, 0.0, -leg_h), amplitude=leg_amp, omega=omega, phase=swing))
        parts.append(PartSpec(f"arm_{side}", "cylinder", (arm_r, arm_h), shirt,
                              hinge=(0.0, sign * (hy + arm_r + 0.01), hz - arm_r), offset=(0.0, 0.0, -arm_h),
                              amplitude=arm_amp, omega=omega, phase=swing + np.pi))
    return tuple(parts)
