"""Argument checks for coordinates at the public boundary.

Every check raises :class:`InputError` (a ``ValueError``) whose message names
the argument or file and, where it applies, the frame and atom.
"""

from __future__ import annotations

import numpy as np

from finegrain.platform.science.errors import InputError

__all__ = ["check_xyz", "check_units_nm", "median_bond_length_nm"]

#: Bonded distances in molecules lie in 0.09-0.20 nm. A median bond length in
#: this window is taken as nm; ~10x larger means Angstrom were given.
NM_BOND_WINDOW = (0.05, 0.3)


def check_xyz(xyz, n_particles: int | None, argument: str, what: str = "atoms", frame_offset: int = 0,
              frames_per_sample: int | None = None) -> np.ndarray:
    """Check a coordinate array [F, n, 3] (or [n, 3], promoted to one frame).

    Raises InputError naming ``argument`` on a wrong shape, a wrong particle
    count (if ``n_particles`` is given), an empty array, or a non-finite value
    (naming the first bad frame, counted from ``frame_offset``, and particle;
    with ``frames_per_sample``, F = K samples x T frames and the sample is named too).
    """
    arr = np.asarray(xyz)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise InputError(f"{argument}: expected shape [n_frames, n_{what}, 3], got {arr.shape}")
    if arr.shape[0] == 0:
        raise InputError(f"{argument}: no frames")
    if n_particles is not None and arr.shape[1] != n_particles:
        raise InputError(f"{argument}: has {arr.shape[1]} {what} per frame, expected {n_particles}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    finite = np.isfinite(arr).all(axis=-1)
    if not finite.all():
        frame, particle = map(int, np.argwhere(~finite)[0])
        where = (f"frame {frame + frame_offset}" if frames_per_sample is None
                 else f"sample {frame // frames_per_sample}, frame {frame % frames_per_sample + frame_offset}")
        raise InputError(f"{argument}: non-finite coordinate at {where}, {what[:-1]} {particle}")
    return arr


def median_bond_length_nm(xyz: np.ndarray, bonds: np.ndarray) -> float:
    """Median bonded distance of the first frame. xyz [F, N, 3]; bonds [M, 2] int."""
    d = np.linalg.norm(xyz[0, bonds[:, 0]] - xyz[0, bonds[:, 1]], axis=-1)
    return float(np.median(d))


def check_units_nm(xyz: np.ndarray, bonds: np.ndarray, argument: str) -> None:
    """Refuse coordinates whose bond lengths are not those of nm.

    xyz [F, N, 3]; bonds [M, 2] atom index pairs (e.g. from the topology).
    A median bond length ~10x too large is reported as Angstrom.
    """
    bonds = np.asarray(bonds, dtype=int).reshape(-1, 2)
    if bonds.size == 0:
        return
    med = median_bond_length_nm(xyz, bonds)
    lo, hi = NM_BOND_WINDOW
    if med > hi:
        hint = " (looks like Angstrom; convert to nm by dividing by 10)" if 0.5 < med < 3.0 else ""
        raise InputError(f"{argument}: median bond length {med:.3f} is not a length in nm{hint}")
    if med < lo:
        raise InputError(f"{argument}: median bond length {med:.4f} nm is too short for a molecule (wrong units?)")
