"""Structural metrics: CG consistency, bonded-geometry distributions, clashes, diversity.

Coordinates are nm, angles radians. Bonded terms come from the topology's bond
graph (mdtraj): bonds i-j, angles i-j-k, proper dihedrals i-j-k-l, each
classed by the elements of its atoms ("C-H", "C-N-H", "C-C-N-H"; a term and
its reverse are one class). Distributions are histograms on the fixed bins
below, compared per class by the Jensen-Shannon divergence; the aggregate
``js`` is the mean over classes weighted by the number of terms in each (so
each bond/angle/dihedral counts once).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from finegrain.platform.metrics.divergences import clipped_histogram, js_divergence
from finegrain.platform.validation import check_xyz

__all__ = [
    "BOND_EDGES_NM",
    "ANGLE_EDGES_RAD",
    "DIHEDRAL_EDGES_RAD",
    "CLASH_THRESHOLD_NM",
    "CLASH_MIN_BOND_SEPARATION",
    "bonded_terms",
    "term_classes",
    "class_histograms",
    "internal_js",
    "bond_length_errors",
    "cg_rmsd",
    "nonbonded_heavy_pairs",
    "min_nonbonded_heavy_distance",
    "clash_fraction",
    "diversity_rmsd",
    "check_frames",
]

#: Bond lengths: 0.05-0.25 nm in 200 bins of 0.001 nm (all covalent bonds of
#: organic molecules, C-H 0.109 to C-S 0.18, with room for distortion; values
#: outside land in the end bins).
BOND_EDGES_NM = np.linspace(0.05, 0.25, 201)
#: Bond angles: 0-pi in 180 bins of 1 degree.
ANGLE_EDGES_RAD = np.linspace(0.0, np.pi, 181)
#: Proper dihedrals: -pi..pi in 72 bins of 5 degrees.
DIHEDRAL_EDGES_RAD = np.linspace(-np.pi, np.pi, 73)
#: A steric clash: two heavy atoms more than three bonds apart (beyond 1-4)
#: closer than 0.22 nm. Equilibrium non-bonded heavy-atom contacts are longer
#: (hydrogen-bonded N/O...O 0.26-0.30 nm; ADP's shortest in a 300 K run 0.28 nm),
#: so reference frames score 0 and only genuinely overlapping atoms count.
CLASH_THRESHOLD_NM = 0.22
#: Pairs within this many bonds of each other (1-2, 1-3, 1-4) are not "non-bonded".
CLASH_MIN_BOND_SEPARATION = 4

_EDGES = {"bonds": BOND_EDGES_NM, "angles": ANGLE_EDGES_RAD, "dihedrals": DIHEDRAL_EDGES_RAD}
_CHUNK = 4096  # frames per mdtraj call (bounds memory for long trajectories)


def check_frames(xyz, argument: str, n_atoms: int | None = None) -> np.ndarray:
    """Validate coordinates [F, N, 3] nm (or [N, 3], one frame); ValueError naming ``argument``."""
    return check_xyz(xyz, n_atoms, argument)


def bonded_terms(topology) -> dict[str, np.ndarray]:
    """Bonds [M, 2], angles [A, 3] and proper dihedrals [D, 4] (atom indices) of the bond graph."""
    n = topology.n_atoms
    bonds = sorted({tuple(sorted((a.index, b.index))) for a, b in topology.bonds})
    nbr: list[set[int]] = [set() for _ in range(n)]
    for i, j in bonds:
        nbr[i].add(j)
        nbr[j].add(i)
    angles = [(i, j, k) for j in range(n) for i, k in combinations(sorted(nbr[j]), 2)]
    dihedrals = []
    for j, k in bonds:
        for i in sorted(nbr[j] - {k}):
            for l in sorted(nbr[k] - {j}):
                if l != i:
                    dihedrals.append((i, j, k, l))
    return {
        "bonds": np.asarray(bonds, dtype=int).reshape(-1, 2),
        "angles": np.asarray(angles, dtype=int).reshape(-1, 3),
        "dihedrals": np.asarray(dihedrals, dtype=int).reshape(-1, 4),
    }


def _element(atom) -> str:
    if atom.element is not None and atom.element.symbol:
        return atom.element.symbol
    return atom.name[:1] or "X"


def term_classes(topology, terms: np.ndarray) -> list[str]:
    """Element class of each term [M, k]: "C-H", "H-C-N", ... (canonical direction)."""
    elements = [_element(a) for a in topology.atoms]
    out = []
    for row in np.asarray(terms, dtype=int):
        fwd = [elements[i] for i in row]
        out.append("-".join(min(fwd, fwd[::-1])))
    return out


def _compute(kind: str, xyz: np.ndarray, topology, terms: np.ndarray) -> np.ndarray:
    import mdtraj as md

    traj = md.Trajectory(np.asarray(xyz, dtype=np.float32), topology)
    if kind == "bonds":
        return md.compute_distances(traj, terms, periodic=False)
    if kind == "angles":
        return md.compute_angles(traj, terms, periodic=False)
    return md.compute_dihedrals(traj, terms, periodic=False)


def _check_kind(kind: str) -> None:
    if kind not in _EDGES:
        raise ValueError(f"kind: expected one of {sorted(_EDGES)}, got {kind!r}")


def class_histograms(xyz, topology, kind: str) -> dict[str, np.ndarray]:
    """Per-class histogram counts of one kind of bonded term over all frames.

    xyz : [F, N, 3] nm. kind : "bonds" (nm, :data:`BOND_EDGES_NM`), "angles"
    (rad, :data:`ANGLE_EDGES_RAD`) or "dihedrals" (rad, :data:`DIHEDRAL_EDGES_RAD`).
    Returns {class: counts [B]} (float64), empty when the topology has no such term.
    """
    _check_kind(kind)
    xyz = check_frames(xyz, "xyz", topology.n_atoms)
    terms = bonded_terms(topology)[kind]
    if terms.shape[0] == 0:
        return {}
    classes = term_classes(topology, terms)
    names = sorted(set(classes))
    cols = {c: np.flatnonzero(np.asarray(classes) == c) for c in names}
    edges = _EDGES[kind]
    out = {c: np.zeros(edges.size - 1) for c in names}
    for start in range(0, xyz.shape[0], _CHUNK):
        values = _compute(kind, xyz[start:start + _CHUNK], topology, terms)
        for c in names:
            out[c] += clipped_histogram(values[:, cols[c]], edges)
    return out


def internal_js(ref_xyz, bm_xyz, topology, kind: str) -> dict:
    """JS divergence (nats) of bonded-term distributions, reference vs backmapped.

    ref_xyz [F, N, 3], bm_xyz [G, N, 3] nm (frame counts may differ).
    Returns {"js": term-count-weighted mean over classes, "per_class": {class: js},
    "ref": {class: counts}, "bm": {class: counts}, "edges": bin edges}; "js" is
    NaN when the topology has no term of this kind.
    """
    ref = class_histograms(ref_xyz, topology, kind)
    bm = class_histograms(bm_xyz, topology, kind)
    per_class = {c: js_divergence(ref[c], bm[c]) for c in ref}
    weights = {c: ref[c].sum() for c in ref}
    total = sum(weights.values())
    js = float(sum(per_class[c] * weights[c] for c in ref) / total) if total > 0 else float("nan")
    return {"js": js, "per_class": per_class, "ref": ref, "bm": bm, "edges": _EDGES[kind]}


def bond_length_errors(ref_xyz, bm_xyz, topology) -> dict[str, float]:
    """Bond-length errors in nm.

    ``mean_bond_error_nm``: mean over bonds of |<d>_bm - <d>_ref| (frame averages,
    frame counts may differ). ``mae_bond_nm`` (only when both have F frames,
    paired: backmapped frame f reconstructs reference frame f): mean over
    frames and bonds of |d_bm[f, b] - d_ref[f, b]|.
    """
    ref_xyz = check_frames(ref_xyz, "ref_xyz", topology.n_atoms)
    bm_xyz = check_frames(bm_xyz, "bm_xyz", topology.n_atoms)
    bonds = bonded_terms(topology)["bonds"]
    if bonds.shape[0] == 0:
        return {}
    d_ref = np.concatenate([_compute("bonds", ref_xyz[s:s + _CHUNK], topology, bonds) for s in range(0, len(ref_xyz), _CHUNK)])
    d_bm = np.concatenate([_compute("bonds", bm_xyz[s:s + _CHUNK], topology, bonds) for s in range(0, len(bm_xyz), _CHUNK)])
    out = {"mean_bond_error_nm": float(np.mean(np.abs(d_bm.mean(0, dtype=np.float64) - d_ref.mean(0, dtype=np.float64))))}
    if d_ref.shape == d_bm.shape:
        out["mae_bond_nm"] = float(np.mean(np.abs(d_bm.astype(np.float64) - d_ref)))
    return out


def cg_rmsd(aa_xyz, cg_xyz, mapping) -> float:
    """CG consistency: RMSD (nm) between M(aa_xyz) and the input CG.

    aa_xyz [F, N, 3], cg_xyz [F, n, 3] nm, ``mapping`` a CGMapping [n, N].
    sqrt(mean over frames and beads of |C x - y|^2); no superposition (the
    backmapped structure must sit on its CG, not merely resemble it). 0 for an
    exact fibre point.
    """
    aa = check_frames(aa_xyz, "aa_xyz", mapping.n_atoms).astype(np.float64)
    cg = check_frames(cg_xyz, "cg_xyz", mapping.n_beads).astype(np.float64)
    if cg.shape[0] != aa.shape[0]:
        raise ValueError(f"cg_xyz: expected {aa.shape[0]} frames (one per aa_xyz frame), got {cg.shape[0]}")
    diff = mapping.map(aa) - cg
    return float(np.sqrt(np.mean(np.sum(diff**2, axis=-1))))


def nonbonded_heavy_pairs(topology, min_separation: int = CLASH_MIN_BOND_SEPARATION) -> np.ndarray:
    """Heavy-atom pairs [P, 2] at least ``min_separation`` bonds apart (or in different molecules)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import shortest_path

    n = topology.n_atoms
    heavy = np.array([a.index for a in topology.atoms if _element(a) != "H"], dtype=int)
    bonds = bonded_terms(topology)["bonds"]
    graph = sp.coo_matrix((np.ones(len(bonds)), (bonds[:, 0], bonds[:, 1])), shape=(n, n)).tocsr() if len(bonds) else sp.csr_matrix((n, n))
    hops = shortest_path(graph, directed=False, unweighted=True, indices=heavy)[:, heavy]
    i, j = np.triu_indices(heavy.size, k=1)
    keep = hops[i, j] >= min_separation  # inf (disconnected) counts as far apart
    return np.stack([heavy[i[keep]], heavy[j[keep]]], axis=1)


def min_nonbonded_heavy_distance(xyz, topology) -> np.ndarray:
    """Per frame, the shortest distance (nm) between non-bonded heavy atoms; [F] (inf if no pair)."""
    import mdtraj as md

    xyz = check_frames(xyz, "xyz", topology.n_atoms)
    pairs = nonbonded_heavy_pairs(topology)
    if pairs.shape[0] == 0:
        return np.full(xyz.shape[0], np.inf)
    out = []
    for s in range(0, xyz.shape[0], _CHUNK):
        traj = md.Trajectory(np.asarray(xyz[s:s + _CHUNK], dtype=np.float32), topology)
        out.append(md.compute_distances(traj, pairs, periodic=False).min(axis=1))
    return np.concatenate(out).astype(np.float64)


def clash_fraction(xyz, topology, threshold_nm: float = CLASH_THRESHOLD_NM) -> float:
    """Fraction of frames with a non-bonded heavy-atom pair closer than ``threshold_nm``.

    xyz [F, N, 3] nm; "non-bonded" = more than three bonds apart
    (:data:`CLASH_MIN_BOND_SEPARATION`); default threshold :data:`CLASH_THRESHOLD_NM`.
    """
    if not threshold_nm > 0:
        raise ValueError(f"threshold_nm: must be > 0, got {threshold_nm}")
    return float(np.mean(min_nonbonded_heavy_distance(xyz, topology) < threshold_nm))


def diversity_rmsd(samples) -> float:
    """Mean pairwise RMSD (nm) between K samples backmapped from the same CG frame.

    samples : [K, F, N, 3] nm (K >= 2). For each frame, the RMSD of every pair
    of samples (no superposition: the samples share their CG frame), averaged
    over pairs and frames.
    """
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim != 4 or s.shape[-1] != 3 or s.shape[0] < 2:
        raise ValueError(f"samples: expected shape [K >= 2, n_frames, n_atoms, 3], got {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("samples: non-finite coordinates")
    rmsds = [np.sqrt(np.mean(np.sum((s[a] - s[b]) ** 2, axis=-1), axis=-1))  # [F] per pair
             for a, b in combinations(range(s.shape[0]), 2)]
    return float(np.mean(rmsds))
