"""Structural metrics: CG consistency, bonded-geometry distributions, clashes, diversity.

Coordinates are nm, angles radians. Bonded terms come from the topology's bond
graph (mdtraj): bonds i-j, angles i-j-k, proper dihedrals i-j-k-l, each
classed by the elements of its atoms ("C-H", "C-N-H", "C-C-N-H"; a term and
its reverse are one class). Distributions are histograms on the fixed bins
below, compared per class by the Jensen-Shannon divergence; the aggregate
``js`` is the mean over classes weighted by the number of terms in each (so
each bond/angle/dihedral counts once).

Constrained bonds (e.g. X-H under OpenMM's HBonds) are delta functions in the
reference; a JS on them saturates at ln 2 for any model not within a bin of
r0. They are therefore left out of the bond JS when the constraint record is
given (``exclude``) and scored by :func:`constrained_bond_mae` instead. The
record is (pairs [C, 2] atom indices, r0 [C] nm), read from the simulation's
metadata via the shard manifest, never guessed from elements.

FlowBack-comparable scores (Jones et al., ICML 2024 workshop): :func:`bond_score`,
:func:`clash_score`, :func:`diversity_score`.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from finegrain.platform.science.metrics.divergences import clipped_histogram, js_divergence
from finegrain.platform.science.superposition import superposed_rmsd
from finegrain.platform.science.validation import check_xyz

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
    "BOND_SCORE_TOLERANCE",
    "CLASH_SCORE_THRESHOLD_NM",
    "check_constraints",
    "constrained_bond_mask",
    "constrained_bond_mae",
    "bond_score",
    "clash_score",
    "diversity_score",
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
#: FlowBack's bond score: a bond is "right" within 10 % of its reference length.
BOND_SCORE_TOLERANCE = 0.1
#: FlowBack's clash score: two heavy atoms (not bonded to each other) closer than 0.12 nm.
CLASH_SCORE_THRESHOLD_NM = 0.12

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


def check_constraints(constraints, n_atoms: int, argument: str = "constraints") -> tuple[np.ndarray, np.ndarray] | None:
    """A constraint record as (pairs [C, 2] int, r0 [C] float64 nm), or None.

    constraints : None, a pair ``(pairs [C, 2], r0_nm [C])`` or rows [C, 3] of
    (i, j, r0 nm) as stored in a shard manifest. Indices must be distinct atoms
    in 0..n_atoms-1 and r0 finite and > 0; ValueError naming ``argument`` otherwise.
    """
    if constraints is None:
        return None
    if isinstance(constraints, tuple) and len(constraints) == 2:
        pairs, r0 = np.asarray(constraints[0]), np.asarray(constraints[1], dtype=np.float64)
    else:
        rows = np.asarray(constraints, dtype=np.float64)
        if rows.size == 0:
            rows = rows.reshape(0, 3)
        if rows.ndim != 2 or rows.shape[1] != 3:
            raise ValueError(f"{argument}: expected (pairs [C, 2], r0_nm [C]) or rows [C, 3] of (i, j, r0 nm), "
                             f"got shape {rows.shape}")
        pairs, r0 = rows[:, :2], rows[:, 2]
    pairs = np.asarray(pairs)
    if pairs.size == 0:
        pairs = pairs.reshape(0, 2)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or r0.shape != (pairs.shape[0],):
        raise ValueError(f"{argument}: expected pairs [C, 2] and r0_nm [C], got {pairs.shape} and {r0.shape}")
    if pairs.size and (not np.all(np.isfinite(pairs)) or np.any(pairs != np.round(pairs))):
        raise ValueError(f"{argument}: atom indices must be integers")
    pairs = pairs.astype(int)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n_atoms or np.any(pairs[:, 0] == pairs[:, 1])):
        raise ValueError(f"{argument}: atom indices must be two distinct atoms in 0..{n_atoms - 1}")
    if not np.all(np.isfinite(r0) & (r0 > 0)):
        raise ValueError(f"{argument}: r0 must be finite and > 0 nm")
    return pairs, r0


def constrained_bond_mask(bonds, pairs) -> np.ndarray:
    """[M] bool: which bonds [M, 2] are among the constrained ``pairs`` [C, 2] (either order)."""
    bonds = np.asarray(bonds, dtype=int).reshape(-1, 2)
    if pairs is None or len(pairs) == 0:
        return np.zeros(bonds.shape[0], dtype=bool)
    keys = {tuple(sorted(p)) for p in np.asarray(pairs, dtype=int).tolist()}
    return np.array([tuple(sorted(b)) in keys for b in bonds.tolist()], dtype=bool)


def class_histograms(xyz, topology, kind: str, exclude=None) -> dict[str, np.ndarray]:
    """Per-class histogram counts of one kind of bonded term over all frames.

    xyz : [F, N, 3] nm. kind : "bonds" (nm, :data:`BOND_EDGES_NM`), "angles"
    (rad, :data:`ANGLE_EDGES_RAD`) or "dihedrals" (rad, :data:`DIHEDRAL_EDGES_RAD`).
    exclude : constrained atom pairs [C, 2] left out of the bonds (ignored for
    angles and dihedrals). Returns {class: counts [B]} (float64), empty when
    the topology has no such term (or all of its bonds are excluded).
    """
    _check_kind(kind)
    xyz = check_frames(xyz, "xyz", topology.n_atoms)
    terms = bonded_terms(topology)[kind]
    if kind == "bonds" and exclude is not None:
        terms = terms[~constrained_bond_mask(terms, exclude)]
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


def internal_js(ref_xyz, bm_xyz, topology, kind: str, exclude=None) -> dict:
    """JS divergence (nats) of bonded-term distributions, reference vs backmapped.

    ref_xyz [F, N, 3], bm_xyz [G, N, 3] nm (frame counts may differ).
    exclude : constrained atom pairs [C, 2] kept out of the bond JS (see module docstring).
    Returns {"js": term-count-weighted mean over classes, "per_class": {class: js},
    "ref": {class: counts}, "bm": {class: counts}, "edges": bin edges}; "js" is
    NaN when the topology has no term of this kind.
    """
    ref = class_histograms(ref_xyz, topology, kind, exclude)
    bm = class_histograms(bm_xyz, topology, kind, exclude)
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


def _distances(xyz: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """|x_i - x_j| [F, P] nm (float64) for atom pairs [P, 2] of frames [F, N, 3]."""
    x = np.asarray(xyz, dtype=np.float64)
    return np.linalg.norm(x[:, pairs[:, 0]] - x[:, pairs[:, 1]], axis=-1)


def constrained_bond_mae(xyz, constraints, n_atoms: int | None = None) -> float:
    """Mean absolute deviation (nm) of constrained distances from their r0.

    xyz [F, N, 3] nm; constraints (pairs [C, 2], r0 [C] nm) or rows [C, 3]
    (see :func:`check_constraints`). mean over frames and pairs of |d - r0|;
    0 for an exact placement. NaN when there is no constraint.
    """
    xyz = check_frames(xyz, "xyz", n_atoms)
    cons = check_constraints(constraints, xyz.shape[1])
    if cons is None or cons[0].shape[0] == 0:
        return float("nan")
    pairs, r0 = cons
    return float(np.mean(np.abs(_distances(xyz, pairs) - r0)))


def bond_score(ref_xyz, bm_xyz, topology, tolerance: float = BOND_SCORE_TOLERANCE) -> float:
    """FlowBack's bond score: fraction of bonds within ``tolerance`` of their reference length.

    ref_xyz [F, N, 3], bm_xyz [G, N, 3] nm (frame counts may differ). The
    reference length of bond b is its mean over the reference frames, r_b;
    the score is the fraction over backmapped frames and all bonds (constrained
    ones too) with |d - r_b| < tolerance * r_b. 1 is perfect; NaN without bonds.
    """
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance: must be in (0, 1), got {tolerance}")
    ref_xyz = check_frames(ref_xyz, "ref_xyz", topology.n_atoms)
    bm_xyz = check_frames(bm_xyz, "bm_xyz", topology.n_atoms)
    bonds = bonded_terms(topology)["bonds"]
    if bonds.shape[0] == 0:
        return float("nan")
    r_ref = _distances(ref_xyz, bonds).mean(axis=0)
    return float(np.mean(np.abs(_distances(bm_xyz, bonds) - r_ref) < tolerance * r_ref))


def clash_score(xyz, topology, threshold_nm: float = CLASH_SCORE_THRESHOLD_NM) -> float:
    """FlowBack-style clash score: % of residues with a heavy-atom contact below ``threshold_nm``.

    xyz [F, N, 3] nm. A contact is a pair of heavy atoms not bonded to each
    other (1-3 and farther pairs count; the 1-2 bond itself is the bond
    score's business) closer than ``threshold_nm`` (default 0.12 nm); a
    residue clashes in a frame when one of its heavy atoms is in such a
    contact. Returns 100 * mean over frames and residues (with heavy atoms)
    of "clashes", in percent; 0 for physical structures.
    """
    if not threshold_nm > 0:
        raise ValueError(f"threshold_nm: must be > 0, got {threshold_nm}")
    xyz = check_frames(xyz, "xyz", topology.n_atoms)
    pairs = nonbonded_heavy_pairs(topology, min_separation=2)
    residues = sorted({a.residue.index for a in topology.atoms if _element(a) != "H"})
    if not residues:
        return float("nan")
    if pairs.shape[0] == 0:
        return 0.0
    res_of = np.array([a.residue.index for a in topology.atoms])
    col = {r: k for k, r in enumerate(residues)}
    touches = np.zeros((pairs.shape[0], len(residues)))  # [P, R]: pair p involves residue r
    for p, (i, j) in enumerate(pairs.tolist()):
        touches[p, col[res_of[i]]] = touches[p, col[res_of[j]]] = 1.0
    clashed = 0.0
    for s in range(0, xyz.shape[0], _CHUNK):
        close = (_distances(xyz[s:s + _CHUNK], pairs) < threshold_nm).astype(np.float64)  # [F, P]
        clashed += float(np.sum(close @ touches > 0))
    return 100.0 * clashed / (xyz.shape[0] * len(residues))


def diversity_score(samples, ref_xyz) -> float:
    """FlowBack's diversity: 1 - mean sample-sample RMSD / mean sample-reference RMSD.

    samples : [K >= 2, F, N, 3] nm, K reconstructions of the CG frames of
    ref_xyz [F, N, 3] nm (paired frame by frame). RMSDs are superposed
    (as ``mdtraj.rmsd``), averaged over frames and over all sample pairs
    (numerator) or all samples (denominator). 0: samples differ from each
    other as much as from the reference; 1: identical samples (no diversity);
    independent errors of equal size give 1 - sqrt(2).
    """
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim != 4 or s.shape[-1] != 3 or s.shape[0] < 2:
        raise ValueError(f"samples: expected shape [K >= 2, n_frames, n_atoms, 3], got {s.shape}")
    ref = check_frames(ref_xyz, "ref_xyz", s.shape[2])
    if ref.shape[0] != s.shape[1]:
        raise ValueError(f"ref_xyz: expected {s.shape[1]} frames (one per sampled frame), got {ref.shape[0]}")
    if not np.all(np.isfinite(s)):
        raise ValueError("samples: non-finite coordinates")
    between = np.mean([superposed_rmsd(s[a], s[b]) for a, b in combinations(range(s.shape[0]), 2)])
    to_ref = np.mean([superposed_rmsd(s[k], ref) for k in range(s.shape[0])])
    return float(1.0 - between / to_ref) if to_ref > 0 else float("nan")
