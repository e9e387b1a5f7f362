"""Procedural textures: the spec (`TextureSpec`, evaluated by raycast.py) and how objects and rooms draw theirs."""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

from monodyn_cli.synth.geometry import unit


@dataclass
class TextureSpec:
    """Procedural albedo in a surface's own coordinates (object-local for objects, world for the room):
    a 3D checker of cell size `period` on the lattice `lattice` (3x3 rotation, columns = lattice axes)
    blending `colour_a`/`colour_b`, times (1 + sum of plane waves), each wave m with wave vector
    `wave_k[m]` (rad per unit), phase and an RGB amplitude `wave_colour[m]`. Colours are (S,3): one row
    per surface of the owner (1 for objects, 6 for the room). Each checker cell is also shifted in
    colour by a hash of its index (`cell_colour`)."""

    period: float
    lattice: np.ndarray
    phase: np.ndarray
    colour_a: np.ndarray
    colour_b: np.ndarray
    wave_k: np.ndarray
    wave_phase: np.ndarray
    wave_colour: np.ndarray
    cell_colour: np.ndarray  # (2,3): per-cell colour shift = (hash1 - 0.5, hash2 - 0.5) @ cell_colour


def colour(rng: np.random.Generator, hue: float | None = None, sat=(0.45, 0.9), val=(0.6, 1.0)) -> np.ndarray:
    hue = rng.uniform() if hue is None else hue % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(*sat), rng.uniform(*val)))


def waves(rng: np.random.Generator, n: int, wavelengths: tuple[float, float], strength: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n plane waves with wavelengths spread evenly in log scale (jittered), random directions and RGB
    amplitudes (mostly brightness, some hue)."""
    u = (np.arange(n) + rng.uniform(0, 1, n)) / n
    lam = np.exp(np.log(wavelengths[0]) + u * np.log(wavelengths[1] / wavelengths[0]))
    k = unit(rng.normal(size=(n, 3))) * (2 * np.pi / lam)[:, None]
    amp = strength * rng.uniform(0.5, 1.0, n)
    colour = amp[:, None] * (0.7 * rng.normal(size=(n, 1)) + 0.35 * rng.normal(size=(n, 3)))
    return k, rng.uniform(0, 2 * np.pi, n), colour / math.sqrt(n)


def object_texture(rng: np.random.Generator, period: float, lattice: np.ndarray) -> TextureSpec:
    hue = rng.uniform()
    a = colour(rng, hue)
    b = colour(rng, hue + rng.uniform(0.1, 0.35), val=(0.2, 0.55))
    k, ph, col = waves(rng, 8, (0.05, 1.0), 0.5)
    cells = 0.5 * rng.normal(size=(2, 3))
    return TextureSpec(period, lattice, np.zeros(3), a[None], b[None], k, ph, col, cells)


def background_texture(rng: np.random.Generator, period: float) -> TextureSpec:
    # floor, ceiling, 4 walls: related but distinct colour pairs so each wall is recognisable
    hue = rng.uniform()
    a = np.stack([colour(rng, hue + 0.13 * i, sat=(0.2, 0.6), val=(0.7, 0.95)) for i in range(6)])
    b = np.stack([colour(rng, hue + 0.13 * i + 0.2, sat=(0.2, 0.6), val=(0.2, 0.45)) for i in range(6)])
    k, ph, col = waves(rng, 12, (0.06, 5.0), 0.6)
    cells = 0.6 * rng.normal(size=(2, 3))
    # phase pi/2 on z: the floor z=0 sits on a crest of the checker's z factor (a clean 2D checker)
    return TextureSpec(period, np.eye(3), np.array([0.0, 0.0, np.pi / 2]), a, b, k, ph, col, cells)
