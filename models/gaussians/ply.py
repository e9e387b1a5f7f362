"""3D Gaussian splat files: the binary little-endian PLY of the INRIA 3DGS code, spherical harmonics of degree 0.

This is the file the INRIA viewer, SuperSplat, gsplat's and nerfstudio's tools open. One vertex per Gaussian,
17 float32 properties in this order (the order the INRIA `save_ply` writes; some viewers rely on it):

    x y z             mean (world)
    nx ny nz          normals, unused: 0
    f_dc_0..2         colour as the degree-0 SH coefficient: (rgb - 0.5) / SH_C0
    opacity           logit of the opacity
    scale_0..2        log of the scales (standard deviations along the Gaussian's axes)
    rot_0..3          orientation quaternion, wxyz, unit length

`write_ply` takes the activated values (what `DynamicGaussians.gaussians_at` returns) and stores the raw ones;
`read_ply` inverts that. numpy only (no plyfile).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from jaxtyping import Float

from models.errors import InputError

SH_C0 = 0.28209479177387814  # the degree-0 real spherical harmonic, 1 / (2 sqrt(pi))
PLY_PROPERTIES = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                  "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
PLY_DTYPE = np.dtype([(name, "<f4") for name in PLY_PROPERTIES])
OPACITY_EPS = 1e-6  # opacities are clamped to [eps, 1 - eps] so that the stored logit is finite
MIN_SCALE = 1e-12   # and scales to at least this, so that the stored log is finite

_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def ply_header(n: int) -> bytes:
    """The header of a file of `n` Gaussians, byte for byte as the INRIA code (plyfile) writes it."""
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    lines += [f"property float {name}" for name in PLY_PROPERTIES]
    return ("\n".join(lines + ["end_header"]) + "\n").encode("ascii")


def _numpy(x, name: str, shape: tuple) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (without importing torch here)
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != len(shape) or any(s is not None and a.shape[i] != s for i, s in enumerate(shape)):
        want = "(N, " + ", ".join(str(s) for s in shape[1:]) + ")" if len(shape) > 1 else "(N,)"
        raise ValueError(f"write_ply: {name} must have shape {want}, got {a.shape}")
    return a


def gaussians_to_records(means: Float[np.ndarray, "N 3"], quats: Float[np.ndarray, "N 4"],
                         scales: Float[np.ndarray, "N 3"], opacities: Float[np.ndarray, " N"],
                         colors: Float[np.ndarray, "N 3"]) -> np.ndarray:
    """Activated Gaussian parameters (numpy arrays or torch tensors) -> the (N,) structured array of the file."""
    means = _numpy(means, "means", (None, 3))
    n = len(means)
    quats = _numpy(quats, "quats", (n, 4))
    scales = _numpy(scales, "scales", (n, 3))
    opacities = _numpy(opacities, "opacities", (n,))
    colors = _numpy(colors, "colors", (n, 3))
    for name, a in (("means", means), ("quats", quats), ("scales", scales), ("opacities", opacities),
                    ("colors", colors)):
        bad = ~np.isfinite(a).all(axis=tuple(range(1, a.ndim)))
        if bad.any():
            raise InputError(f"{int(bad.sum())} of {n} Gaussians have non-finite {name} (first: row "
                             f"{int(np.flatnonzero(bad)[0])}); the fit diverged: refit with a lower learning rate")
    if (scales < 0).any():
        raise ValueError("write_ply: scales are standard deviations and must be >= 0 (pass exp(log_scales))")
    norm = np.linalg.norm(quats, axis=1, keepdims=True)
    quats = np.where(norm > 0, quats / np.where(norm > 0, norm, 1.0), np.array([1.0, 0.0, 0.0, 0.0]))
    p = np.clip(opacities, OPACITY_EPS, 1.0 - OPACITY_EPS)
    rec = np.zeros(n, PLY_DTYPE)
    for i, axis in enumerate("xyz"):
        rec[axis] = means[:, i]
    for i in range(3):
        rec[f"f_dc_{i}"] = (colors[:, i] - 0.5) / SH_C0
        rec[f"scale_{i}"] = np.log(np.maximum(scales[:, i], MIN_SCALE))
    rec["opacity"] = np.log(p) - np.log1p(-p)
    for i in range(4):
        rec[f"rot_{i}"] = quats[:, i]
    return rec


def write_ply(path: str | Path | BinaryIO, means: Float[np.ndarray, "N 3"], quats: Float[np.ndarray, "N 4"],
              scales: Float[np.ndarray, "N 3"], opacities: Float[np.ndarray, " N"],
              colors: Float[np.ndarray, "N 3"]) -> None:
    """Write N Gaussians as a 3DGS PLY (see the module docstring). means: world positions; quats: wxyz (any length,
    normalised here); scales: linear standard deviations; opacities in [0, 1]; colors: rgb in [0, 1].

    Writes `path` directly (not atomically): use models.files.atomic_write for a file others may be reading."""
    rec = gaussians_to_records(means, quats, scales, opacities, colors)
    if hasattr(path, "write"):
        path.write(ply_header(len(rec)))
        path.write(rec.tobytes())
        return
    with open(path, "wb") as f:
        f.write(ply_header(len(rec)))
        f.write(rec.tobytes())


def read_ply_records(path: str | Path) -> np.ndarray:
    """The vertex element of a binary little-endian PLY as a structured array (every scalar property, as stored)."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise InputError(f"not a PLY file: {path}")
        elements: list[tuple[str, int, list[tuple[str, str]]]] = []
        fmt = None
        while True:
            line = f.readline()
            if not line:
                raise InputError(f"{path}: the PLY header has no end_header line")
            words = line.decode("ascii", errors="replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "end_header":
                break
            if words[0] == "format":
                fmt = words[1] if len(words) > 1 else None
            elif words[0] == "element" and len(words) == 3:
                elements.append((words[1], int(words[2]), []))
            elif words[0] == "property" and elements:
                if words[1] == "list":
                    raise InputError(f"{path}: list property {words[-1]!r} in element {elements[-1][0]!r} is not "
                                     "supported (a Gaussian splat file has scalar properties only)")
                if len(words) != 3 or words[1] not in _PLY_TYPES:
                    raise InputError(f"{path}: cannot parse the PLY header line {line.decode(errors='replace')!r}")
                elements[-1][2].append((words[2], "<" + _PLY_TYPES[words[1]]))
            else:
                raise InputError(f"{path}: cannot parse the PLY header line {line.decode(errors='replace')!r}")
        if fmt != "binary_little_endian":
            raise InputError(f"{path}: PLY format {fmt!r} is not supported (Gaussian splat files are "
                             "binary_little_endian)")
        offset = f.tell()
    for name, count, props in elements:
        dtype = np.dtype(props)
        if name == "vertex":
            data = np.fromfile(path, dtype=dtype, count=count, offset=offset)
            if len(data) != count:
                raise InputError(f"{path} is truncated: {len(data)} of {count} vertices")
            return data
        offset += count * dtype.itemsize
    raise InputError(f"{path} has no vertex element")


def read_ply(path: str | Path) -> dict[str, np.ndarray]:
    """Read a 3DGS PLY (ours or the INRIA code's; higher SH bands are kept in "raw" only).

    Returns float32 arrays with the activations applied, as `write_ply` takes them: means (N,3), quats (N,4) wxyz
    unit, scales (N,3) = exp(scale_*), opacities (N,) = sigmoid(opacity), colors (N,3) = 0.5 + SH_C0 * f_dc_*
    (not clipped); and "raw": the vertex records as stored."""
    rec = read_ply_records(path)
    missing = [p for p in PLY_PROPERTIES if p not in rec.dtype.names and p not in ("nx", "ny", "nz")]
    if missing:
        raise InputError(f"{path} is not a 3D Gaussian splat file: no vertex properties {', '.join(missing)}")
    col = lambda *names: np.stack([rec[n].astype(np.float64) for n in names], axis=1)  # noqa: E731
    quats = col("rot_0", "rot_1", "rot_2", "rot_3")
    norm = np.linalg.norm(quats, axis=1, keepdims=True)
    logit = rec["opacity"].astype(np.float64)
    return {"means": col("x", "y", "z").astype(np.float32),
            "quats": (quats / np.where(norm > 0, norm, 1.0)).astype(np.float32),
            "scales": np.exp(col("scale_0", "scale_1", "scale_2")).astype(np.float32),
            "opacities": (0.5 * (1.0 + np.tanh(0.5 * logit))).astype(np.float32),  # sigmoid, no overflow
            "colors": (0.5 + SH_C0 * col("f_dc_0", "f_dc_1", "f_dc_2")).astype(np.float32),
            "raw": rec}
