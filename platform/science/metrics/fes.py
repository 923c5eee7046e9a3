"""Free-energy surfaces: ADP Ramachandran (phi, psi) and chignolin's 2-D TICA of CA-CA distances.

Shmilovich et al., "Temporally coherent backmapping of molecular trajectories
from coarse-grained to atomistic resolution" (2022), sec. 3.1.2 / 3.2.2. Surfaces are 2-D histograms on fixed bins; two
surfaces are compared by KL(reference || backmapped) with the pseudo-count
:data:`~finegrain.platform.science.metrics.divergences.FES_PSEUDO_COUNT` per bin, and
by their JS divergence. Free energies for plots are -ln p in kT.
"""

from __future__ import annotations

import numpy as np

from finegrain.platform.science.metrics.divergences import FES_PSEUDO_COUNT, js_divergence, kl_divergence
from finegrain.platform.science.metrics.structure import check_frames

__all__ = [
    "RAMACHANDRAN_EDGES_RAD",
    "TICA_BINS",
    "TICA_PADDING",
    "ramachandran",
    "ca_distances",
    "fit_tica",
    "tica_project",
    "tica_edges",
    "histogram_2d",
    "compare_fes",
    "free_energy_kt",
]

#: Ramachandran bins: -pi..pi in 36 bins of 10 degrees on each axis (1296 bins).
RAMACHANDRAN_EDGES_RAD = np.linspace(-np.pi, np.pi, 37)
#: TICA surfaces: 36 x 36 bins spanning the reference's range of each IC ...
TICA_BINS = 36
#: ... widened by 10 % on each side (backmapped points outside land in the edge bins).
TICA_PADDING = 0.1


def ramachandran(xyz, topology) -> tuple[np.ndarray, np.ndarray]:
    """Backbone dihedrals (radians, -pi..pi) by mdtraj: phi [F, n_phi], psi [F, n_psi].

    xyz [F, N, 3] nm. ADP has one of each (C-N-CA-C and N-CA-C-N).
    """
    import mdtraj as md

    xyz = check_frames(xyz, "xyz", topology.n_atoms)
    traj = md.Trajectory(np.asarray(xyz, dtype=np.float32), topology)
    _, phi = md.compute_phi(traj, periodic=False)
    _, psi = md.compute_psi(traj, periodic=False)
    if phi.shape[1] == 0 or psi.shape[1] == 0:
        raise ValueError("topology: no backbone phi/psi dihedral found (need C-N-CA-C and N-CA-C-N)")
    return phi.astype(np.float64), psi.astype(np.float64)


def ca_distances(xyz, topology) -> np.ndarray:
    """All pairwise C-alpha distances (nm) [F, n_ca (n_ca - 1) / 2]; 45 for chignolin's 10 residues."""
    import mdtraj as md

    xyz = check_frames(xyz, "xyz", topology.n_atoms)
    ca = topology.select("name CA")
    if ca.size < 2:
        raise ValueError(f"topology: need >= 2 CA atoms for CA-CA distances, found {ca.size}")
    i, j = np.triu_indices(ca.size, k=1)
    traj = md.Trajectory(np.asarray(xyz, dtype=np.float32), topology)
    return md.compute_distances(traj, np.stack([ca[i], ca[j]], 1), periodic=False).astype(np.float64)


def fit_tica(features, lag: int, dim: int = 2):
    """A deeptime TICA model (kinetic-map scaling) fitted on reference features.

    features : [F, d] or a list of per-trajectory arrays; lag in frames.
    """
    from deeptime.decomposition import TICA

    seq = [np.asarray(features, dtype=np.float64)] if isinstance(features, np.ndarray) else [np.asarray(f, np.float64) for f in features]
    usable = [f for f in seq if f.shape[0] > lag]
    if not usable:
        raise ValueError(f"features: no trajectory longer than the TICA lag of {lag} frames")
    return TICA(lagtime=int(lag), dim=dim, scaling="kinetic_map").fit_fetch(usable)


def tica_project(model, features) -> np.ndarray:
    """Project features [F, d] onto the fitted ICs: [F, dim]."""
    return np.asarray(model.transform(np.asarray(features, dtype=np.float64)), dtype=np.float64)


def tica_edges(ref_projection) -> tuple[np.ndarray, np.ndarray]:
    """Fixed bin edges of a TICA surface from the reference projection [F, 2] (see TICA_BINS, TICA_PADDING)."""
    p = np.asarray(ref_projection, dtype=np.float64)
    edges = []
    for c in range(2):
        lo, hi = float(p[:, c].min()), float(p[:, c].max())
        pad = TICA_PADDING * (hi - lo) if hi > lo else 0.5
        edges.append(np.linspace(lo - pad, hi + pad, TICA_BINS + 1))
    return edges[0], edges[1]


def histogram_2d(x, y, edges_x, edges_y) -> np.ndarray:
    """Counts [Bx, By] of points (x, y) on fixed edges; outliers land in the edge bins."""
    x = np.clip(np.asarray(x, dtype=np.float64).ravel(), edges_x[0], edges_x[-1])
    y = np.clip(np.asarray(y, dtype=np.float64).ravel(), edges_y[0], edges_y[-1])
    if x.shape != y.shape:
        raise ValueError(f"y: expected the shape of x {x.shape}, got {y.shape}")
    counts, _, _ = np.histogram2d(x, y, bins=[edges_x, edges_y])
    return counts


def compare_fes(ref_counts, bm_counts, pseudo_count: float = FES_PSEUDO_COUNT) -> dict[str, float]:
    """KL(ref || bm) with ``pseudo_count`` per bin, and JS (no pseudo-count), in nats."""
    return {"kl": kl_divergence(ref_counts, bm_counts, pseudo_count), "js": js_divergence(ref_counts, bm_counts)}


def free_energy_kt(counts) -> np.ndarray:
    """-ln p in kT, shifted to a minimum of 0; NaN where a bin is empty (for plotting)."""
    c = np.asarray(counts, dtype=np.float64)
    with np.errstate(divide="ignore"):
        f = -np.log(c / c.sum())
    f[~np.isfinite(f)] = np.nan
    return f - np.nanmin(f) if np.any(np.isfinite(f)) else f
