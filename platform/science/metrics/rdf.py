"""Radial distribution functions g(r) under periodic boundaries, and how far apart two of them are.

Condensed-phase metrics (Stieffenhofer, Wand and Bereau, "Adversarial reverse mapping of
equilibrated condensed-phase molecular structures", Mach. Learn.: Sci. Technol. 1, 045014
(2020), and the DeepBackmap thesis of M. Stieffenhofer: backmapped liquids are judged by their
atomistic pair correlation functions, per atom type, and by the bead RDFs of the CG model).

Definition (the normalisation of ``mdtraj.compute_rdf``, cpptraj and gromacs ``rdf``): for a set
of P atom pairs, F frames of volume V_f and bins [r_k, r_k+1),

    g_k = C_k / (P * sum_f 1/V_f * 4/3 pi (r_k+1^3 - r_k^3)),

C_k the pair distances (minimum image) in bin k summed over frames. Distances come from
``mdtraj.compute_distances`` (exact minimum image, also for triclinic boxes); the per-frame
histograms are kept, so the floors and block-bootstrap intervals of
:mod:`~finegrain.platform.science.metrics.floors` resample frames without recomputing distances.
Minimum-image distances are exact only up to half the smallest box height, so ``r_range`` beyond
it is refused. For an ideal gas every pair indicator is uncorrelated with every other one (the
box is translation invariant), so C_k is binomial and g_k = 1 +- sqrt((1 - p_k) / (F P p_k)),
p_k = shell volume / V (tests/test_rdf.py checks this).

Pairs: for one atom group with itself the unordered pairs i < j, for two groups every (i, j),
never i = j. An **intermolecular** RDF leaves out pairs inside one molecule (``molecules`` [N]
labels, e.g. :func:`molecule_ids`: bonded components, residues or chains), as DeepBackmap's
"non-bonded" pair correlations do; P counts only the pairs kept, so g -> 1 at large r in a
homogeneous liquid. Per-type RDFs: one g(r) per unordered pair of labels
(:func:`element_labels`, :func:`atom_name_labels`, :func:`bead_type_labels`).

Comparison (:func:`rdf_w1`, the headline): the Wasserstein-1 distance (nm) between the two
g(r) curves read as distributions over r on the shell r_range (g_k dr_k normalised: the curve
DeepBackmap's figures show, each distance weighted alike). DeepBackmap judges RDFs by eye and
quantifies force distributions with a JS divergence; for g(r) a W1 is the better number: it is
in nm (how far, on average, g's weight must move: a peak shifted by dr moves its share of
the weight by dr), it grows smoothly and monotonically as peaks shift (a dilated liquid) where a
binned JS saturates at ln 2 once two peaks stop overlapping and depends on the bin width, and
excess weight at small r (clashes, DeepBackmap's "tails towards small distances") costs its
distance to the first peak. Weighting r like g does, rather than by the number of pairs
(g r^2, the pair-distance distribution), matters: most pairs of a shell lie at large r, where
g = 1 on both sides, so the pair-distance W1 of a 5 % dilated hard-sphere liquid is only 1.5x
its reference-halves floor on 0-1.2 nm, the g-weighted W1 6x (tests/test_rdf.py). :func:`rdf_js`
(nats) of the same distributions is reported beside it for comparison with the force JS.
Aggregates over type pairs are means weighted by the number of pairs in each (as
:mod:`.structure` weights bonded classes). A density difference alone (same g, other box) does
not show: compare frames of the same box (backmapped frames share their CG frame's box).

Units: nm, nm^3; g dimensionless; divergences in nats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import combinations_with_replacement
from typing import Callable, Mapping, Sequence

import numpy as np

from finegrain.platform.science.errors import InputError
from finegrain.platform.science.frames import Frames
from finegrain.platform.science.metrics.divergences import js_divergence
from finegrain.platform.science.metrics.floors import N_BLOCKS, N_BOOTSTRAP, score_with_floor

__all__ = [
    "RDF_R_RANGE_NM",
    "RDF_BIN_WIDTH_NM",
    "RDFCounts",
    "check_box",
    "box_volumes",
    "box_heights",
    "molecule_ids",
    "bead_molecule_ids",
    "element_labels",
    "atom_name_labels",
    "bead_type_labels",
    "group_pairs",
    "pair_distance_counts",
    "radial_distribution",
    "rdf_counts_by_type",
    "shell_distribution",
    "rdf_w1",
    "rdf_js",
    "coordination_number",
    "compare_rdfs",
    "rdf_metrics",
    "score_rows_with_floor",
]

#: Default shell: 0-1 nm (the first two or three solvation shells of a molecular liquid).
RDF_R_RANGE_NM = (0.0, 1.0)
#: Default bin width, nm (mdtraj's default).
RDF_BIN_WIDTH_NM = 0.005
#: Distances computed at once (frames x pairs), bounds the memory of one chunk (~80 MB of float32).
_CHUNK_DISTANCES = 20_000_000


# ----------------------------------------------------------------------------------------------
# boxes
# ----------------------------------------------------------------------------------------------
def check_box(box_nm, n_frames: int, argument: str = "box_nm") -> np.ndarray:
    """Box vectors as float64 [F, 3, 3] nm (rows a, b, c), checked.

    Accepts [F, 3, 3] (one box per frame), [3, 3] (the same box every frame), [F, 3] or [3]
    (orthorhombic edge lengths). None, non-finite values or a degenerate box raise InputError
    naming ``argument``: an RDF under periodic boundaries needs the box.
    """
    if box_nm is None:
        raise InputError(f"{argument}: box vectors [F, 3, 3] nm are required for a periodic RDF "
                         f"(got None; without a box there is no minimum image and no density)")
    box = np.asarray(box_nm, dtype=np.float64)
    if box.shape == (3,):
        box = np.diag(box)
    if box.ndim == 2 and box.shape == (n_frames, 3) and n_frames != 3:
        box = np.einsum("fi,ij->fij", box, np.eye(3))
    elif box.shape == (3, 3):
        box = np.broadcast_to(box, (n_frames, 3, 3))
    if box.shape != (n_frames, 3, 3):
        raise InputError(f"{argument}: expected box vectors [{n_frames}, 3, 3] nm (or [3, 3], [{n_frames}, 3], [3]),"
                         f" got shape {np.shape(box_nm)}")
    if not np.all(np.isfinite(box)):
        raise InputError(f"{argument}: box vectors contain non-finite values")
    if np.any(np.abs(np.linalg.det(box)) <= 1e-12):
        raise InputError(f"{argument}: a box has zero volume")
    return np.ascontiguousarray(box)


def box_volumes(box_nm) -> np.ndarray:
    """|det| of box vectors [F, 3, 3] nm: volumes [F] nm^3."""
    return np.abs(np.linalg.det(np.asarray(box_nm, np.float64)))


def box_heights(box_nm) -> np.ndarray:
    """Distances between opposite faces [F, 3] nm (V / |b x c|, V / |c x a|, V / |a x b|); minimum-image
    distances are exact below half the smallest one."""
    b = np.asarray(box_nm, np.float64)
    v = box_volumes(b)
    cross = np.stack([np.cross(b[:, 1], b[:, 2]), np.cross(b[:, 2], b[:, 0]), np.cross(b[:, 0], b[:, 1])], axis=1)
    return v[:, None] / np.linalg.norm(cross, axis=-1)


def _edges(r_range, bin_width: float) -> np.ndarray:
    lo, hi = (float(x) for x in r_range)
    if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 <= lo < hi):
        raise InputError(f"r_range: expected 0 <= r_min < r_max (nm), got {tuple(r_range)}")
    if not (np.isfinite(bin_width) and bin_width > 0):
        raise InputError(f"bin_width: expected a width > 0 nm, got {bin_width}")
    n_bins = max(1, int(np.floor((hi - lo) / bin_width + 1e-9)))
    return np.linspace(lo, hi, n_bins + 1)


# ----------------------------------------------------------------------------------------------
# groups, molecules, pairs
# ----------------------------------------------------------------------------------------------
def molecule_ids(topology, by: str = "molecule") -> np.ndarray:
    """Molecule label [N] int of every atom of an mdtraj Topology.

    by : ``"molecule"`` (connected components of the bond graph, ``Topology.find_molecules``;
    needs bonds), ``"residue"`` or ``"chain"``.
    """
    labels = np.full(topology.n_atoms, -1, dtype=np.int64)
    if by == "molecule":
        for k, mol in enumerate(topology.find_molecules()):
            labels[[a.index for a in mol]] = k
    elif by == "residue":
        labels[:] = [a.residue.index for a in topology.atoms]
    elif by == "chain":
        labels[:] = [a.residue.chain.index for a in topology.atoms]
    else:
        raise InputError(f"by: expected 'molecule', 'residue' or 'chain', got {by!r}")
    return labels


def bead_molecule_ids(mapping, atom_molecules) -> np.ndarray:
    """Molecule label [n] of every bead: the molecule of the atoms it is made of (mapping weight != 0).

    mapping : CGMapping [n, N] (or its matrix); atom_molecules : [N] labels (:func:`molecule_ids`).
    A bead spanning two molecules raises InputError.
    """
    m = np.asarray(getattr(mapping, "matrix", mapping), np.float64)
    mol = np.asarray(atom_molecules)
    if mol.shape != (m.shape[1],):
        raise InputError(f"atom_molecules: expected [{m.shape[1]}] labels (one per atom), got shape {mol.shape}")
    out = []
    for b, row in enumerate(m):
        ids = np.unique(mol[row != 0])
        if ids.size != 1:
            raise InputError(f"mapping: bead {b} is made of atoms of {ids.size} molecules ({ids.tolist()[:5]})")
        out.append(ids[0])
    return np.asarray(out)


def element_labels(topology) -> np.ndarray:
    """Element symbol [N] of every atom ("C", "H", "O"; "X" when unknown)."""
    return np.asarray([a.element.symbol if a.element is not None and a.element.symbol else "X"
                       for a in topology.atoms])


def atom_name_labels(topology) -> np.ndarray:
    """``RES-NAME`` [N] of every atom (residue name and atom name: the force-field atom type of a
    one-component liquid, e.g. ``CUME-CA1``)."""
    return np.asarray([f"{a.residue.name}-{a.name}" for a in topology.atoms])


_BEAD_NAME = re.compile(r"([A-Za-z0-9]*?[A-Za-z])-?\d+(?:-(\S+))?")


def bead_type_labels(mapping) -> np.ndarray:
    """Bead type [n] from the mapping's bead names, residue numbers dropped.

    ``ALA2-CA`` -> ``ALA-CA``, ``CUME7`` -> ``CUME``; other names are their own type.
    """
    names = getattr(mapping, "bead_names", mapping)
    out = []
    for name in names:
        m = _BEAD_NAME.fullmatch(str(name))
        out.append(m.group(1) + (f"-{m.group(2)}" if m.group(2) else "") if m else str(name))
    return np.asarray(out)


def group_pairs(group_a, group_b=None, molecules=None) -> np.ndarray:
    """Index pairs [P, 2] int between two atom groups (or within one).

    group_a, group_b : atom indices (group_b None or equal to group_a: pairs within the group,
    i < j, each unordered pair once; else every (i, j) with i in a, j in b, i != j, an unordered
    pair counted once when the groups overlap). molecules : [N] labels; when given, pairs inside
    one molecule are left out (intermolecular pairs only).
    """
    a = np.unique(np.asarray(group_a, dtype=np.int64).ravel())
    same = group_b is None or np.array_equal(a, np.unique(np.asarray(group_b, dtype=np.int64).ravel()))
    if same:
        i, j = np.triu_indices(a.size, k=1)
        pairs = np.stack([a[i], a[j]], axis=1)
    else:
        b = np.unique(np.asarray(group_b, dtype=np.int64).ravel())
        ii, jj = np.meshgrid(a, b, indexing="ij")
        pairs = np.stack([ii.ravel(), jj.ravel()], axis=1)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        pairs = np.unique(np.sort(pairs, axis=1), axis=0)  # (i, j) and (j, i) from overlapping groups: once
    if molecules is not None and pairs.size:
        mol = np.asarray(molecules)
        if mol.ndim != 1 or mol.size <= pairs.max():
            raise InputError(f"molecules: expected one label per particle (>= {pairs.max() + 1}), got shape {mol.shape}")
        pairs = pairs[mol[pairs[:, 0]] != mol[pairs[:, 1]]]
    return pairs.reshape(-1, 2)


# ----------------------------------------------------------------------------------------------
# per-frame histograms and g(r)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class RDFCounts:
    """Per-frame pair-distance histograms of one pair set: everything g(r) and its resamples need.

    - ``edges`` [B + 1] nm; ``counts`` [F, B] pair distances per frame and bin;
    - ``inv_volume`` [F] nm^-3 (1 / box volume of each frame); ``n_pairs`` P;
    - ``n_centres``: particles of the first group (for coordination numbers).
    """

    edges: np.ndarray
    counts: np.ndarray
    inv_volume: np.ndarray
    n_pairs: int
    n_centres: int = 0

    @property
    def r(self) -> np.ndarray:
        """Bin centres [B] nm."""
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    @property
    def n_frames(self) -> int:
        return int(self.counts.shape[0])

    def g(self, rows=None) -> np.ndarray:
        """g(r) [B] over all frames, or over the frames ``rows`` (indices, repeats allowed)."""
        c, iv = (self.counts, self.inv_volume) if rows is None else (self.counts[rows], self.inv_volume[rows])
        shell = (4.0 / 3.0) * np.pi * (self.edges[1:] ** 3 - self.edges[:-1] ** 3)
        norm = self.n_pairs * float(np.sum(iv)) * shell
        return c.sum(axis=0) / norm if self.n_pairs > 0 and iv.size else np.zeros(shell.size)

    def take(self, rows) -> "RDFCounts":
        """The frames ``rows``."""
        return RDFCounts(self.edges, self.counts[rows], self.inv_volume[rows], self.n_pairs, self.n_centres)


def _check_xyz(xyz_nm, argument: str) -> np.ndarray:
    xyz = np.asarray(xyz_nm)
    if xyz.ndim != 3 or xyz.shape[-1] != 3 or xyz.shape[0] == 0:
        raise InputError(f"{argument}: expected coordinates [F, N, 3] nm with F >= 1, got shape {xyz.shape}")
    if not np.all(np.isfinite(xyz)):
        raise InputError(f"{argument}: coordinates contain non-finite values")
    return xyz


def pair_distance_counts(xyz_nm, box_nm, pairs, *, r_range=RDF_R_RANGE_NM, bin_width: float = RDF_BIN_WIDTH_NM,
                         n_centres: int = 0) -> RDFCounts:
    """Per-frame histograms of minimum-image pair distances (mdtraj) on the bins of ``r_range``.

    xyz_nm [F, N, 3] nm; box_nm [F, 3, 3] nm (see :func:`check_box`); pairs [P, 2] indices
    (:func:`group_pairs`). Bins are [r_k, r_k+1), the last one closed (``np.histogram``); distances
    outside ``r_range`` are not counted. r_max above half the smallest box height raises InputError.
    """
    import mdtraj as md

    xyz = _check_xyz(xyz_nm, "xyz_nm")
    box = check_box(box_nm, xyz.shape[0], "box_nm")
    edges = _edges(r_range, bin_width)
    half = 0.5 * float(box_heights(box).min())
    if edges[-1] > half * (1 + 1e-9):
        raise InputError(f"r_range: r_max {edges[-1]:g} nm exceeds half the smallest box height ({half:g} nm), "
                         f"beyond which minimum-image distances are not all pair distances")
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    f, b = xyz.shape[0], edges.size - 1
    counts = np.zeros((f, b))
    if pairs.size:
        if pairs.min() < 0 or pairs.max() >= xyz.shape[1]:
            raise InputError(f"pairs: indices must lie in [0, {xyz.shape[1]}), got [{pairs.min()}, {pairs.max()}]")
        atoms, local = np.unique(pairs, return_inverse=True)  # only the atoms the pairs touch travel to mdtraj
        local = local.reshape(-1, 2).astype(np.int32)
        sub = np.ascontiguousarray(xyz[:, atoms], dtype=np.float32)
        step = max(1, _CHUNK_DISTANCES // len(pairs))
        for s in range(0, f, step):
            traj = md.Trajectory(sub[s:s + step], None)
            traj.unitcell_vectors = box[s:s + step]  # stored as lengths and angles: distances are rotation invariant
            d = md.compute_distances(traj, local, periodic=True)  # [f', P] float32
            k = np.searchsorted(edges, d, side="right") - 1
            k[d == edges[-1]] = b - 1  # the last bin is closed
            rows = np.broadcast_to(np.arange(d.shape[0])[:, None], d.shape)
            ok = (k >= 0) & (k < b)
            counts[s:s + step] = np.bincount(rows[ok] * b + k[ok], minlength=d.shape[0] * b).reshape(-1, b)
    return RDFCounts(edges=edges, counts=counts, inv_volume=1.0 / box_volumes(box), n_pairs=int(len(pairs)),
                     n_centres=int(n_centres))


def radial_distribution(xyz_nm, box_nm, pairs, *, r_range=RDF_R_RANGE_NM,
                        bin_width: float = RDF_BIN_WIDTH_NM) -> tuple[np.ndarray, np.ndarray]:
    """(r [B] bin centres nm, g [B]) of ``pairs`` over all frames (``mdtraj.compute_rdf``'s normalisation,
    see the module docstring); a box is required (``box_nm``)."""
    c = pair_distance_counts(xyz_nm, box_nm, pairs, r_range=r_range, bin_width=bin_width)
    return c.r, c.g()


def rdf_counts_by_type(xyz_nm, box_nm, labels, *, molecules=None, intermolecular: bool = True,
                       type_pairs: Sequence[tuple[str, str]] | None = None, r_range=RDF_R_RANGE_NM,
                       bin_width: float = RDF_BIN_WIDTH_NM) -> dict[str, RDFCounts]:
    """Per-frame histograms of every pair of particle types: {"A-B": RDFCounts} (A <= B).

    xyz_nm [F, N, 3] nm (atoms, or beads with their CG coordinates); box_nm [F, 3, 3] nm;
    labels [N] type of each particle (:func:`element_labels`, :func:`atom_name_labels`,
    :func:`bead_type_labels`); molecules [N] molecule labels (:func:`molecule_ids`,
    :func:`bead_molecule_ids`). intermolecular (default): pairs inside one molecule are left out,
    which needs ``molecules``; False: every pair counts. type_pairs : the (A, B) to compute
    (default: all unordered pairs of labels). Type pairs without any pair are left out.
    """
    xyz = _check_xyz(xyz_nm, "xyz_nm")
    lab = np.asarray(labels).astype(str)
    if lab.shape != (xyz.shape[1],):
        raise InputError(f"labels: expected one type per particle [{xyz.shape[1]}], got shape {lab.shape}")
    if intermolecular and molecules is None:
        raise InputError("molecules: intermolecular RDFs need molecule labels [N] (molecule_ids(topology)); "
                         "pass intermolecular=False to count pairs inside molecules too")
    mol = None
    if intermolecular:
        mol = np.asarray(molecules)
        if mol.shape != (xyz.shape[1],):
            raise InputError(f"molecules: expected one label per particle [{xyz.shape[1]}], got shape {mol.shape}")
    box = check_box(box_nm, xyz.shape[0], "box_nm")
    types = sorted(set(lab.tolist()))
    wanted = [tuple(sorted(p)) for p in type_pairs] if type_pairs is not None else \
        list(combinations_with_replacement(types, 2))
    out = {}
    for a, b in wanted:
        ga, gb = np.flatnonzero(lab == a), np.flatnonzero(lab == b)
        pairs = group_pairs(ga, None if a == b else gb, mol)
        if len(pairs) == 0:
            continue
        out[f"{a}-{b}"] = pair_distance_counts(xyz, box, pairs, r_range=r_range, bin_width=bin_width,
                                               n_centres=ga.size)
    return out


def coordination_number(g, edges, density_nm3: float) -> np.ndarray:
    """Running coordination number n(r_k+1) = sum_{l<=k} density * g_l * 4/3 pi (r_l+1^3 - r_l^3) [B].

    density_nm3 : partners per centre per volume (for one group with itself, (N - 1) / V; for A-B,
    N_B / V, less the pairs excluded per centre).
    """
    e = np.asarray(edges, np.float64)
    shell = (4.0 / 3.0) * np.pi * (e[1:] ** 3 - e[:-1] ** 3)
    return np.cumsum(float(density_nm3) * np.asarray(g, np.float64) * shell)


# ----------------------------------------------------------------------------------------------
# comparing two g(r)
# ----------------------------------------------------------------------------------------------
def shell_distribution(g, edges) -> np.ndarray:
    """g(r) on the shell as a distribution over r [B] (sums to 1): g_k times the bin width, normalised.
    A g that is zero everywhere raises ValueError."""
    e = np.asarray(edges, np.float64)
    w = np.clip(np.asarray(g, np.float64), 0.0, None) * np.diff(e)
    if w.shape != (e.size - 1,) or not np.all(np.isfinite(w)):
        raise ValueError(f"g: expected [{e.size - 1}] finite values on edges [{e.size}], got shape {np.shape(g)}")
    total = w.sum()
    if total <= 0:
        raise ValueError("g: no pair in the shell (g is zero everywhere)")
    return w / total


def rdf_w1(g_a, g_b, edges) -> float:
    """Wasserstein-1 (nm) between two g(r) on the same ``edges`` as distributions over the shell
    (:func:`shell_distribution`): sum_k |P_a(r <= r_k+1) - P_b(r <= r_k+1)| (r_k+1 - r_k), the W1 of the
    two binned distributions with each bin's weight at its upper edge (bins of one width: exact for
    weight anywhere in a bin, as long as both put it at the same place)."""
    e = np.asarray(edges, np.float64)
    pa, pb = shell_distribution(g_a, e), shell_distribution(g_b, e)
    return float(np.sum(np.abs(np.cumsum(pa) - np.cumsum(pb))[:-1] * np.diff(e)[:-1]))


def rdf_js(g_a, g_b, edges) -> float:
    """Jensen-Shannon divergence (nats) between the shell distributions of two g(r) on the same ``edges``."""
    return js_divergence(shell_distribution(g_a, edges), shell_distribution(g_b, edges))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


def compare_rdfs(reference: Mapping[str, RDFCounts], generated: Mapping[str, RDFCounts], rows_ref=None,
                 rows_gen=None, per_type: bool = True) -> dict[str, float]:
    """W1 (nm) and JS (nats) between reference and generated g(r) of every type pair both hold.

    rows_ref / rows_gen : frames to use (indices, repeats allowed; None: all). Returns ``rdf_w1_nm`` and
    ``rdf_js`` (means over type pairs weighted by their reference pair counts) and, with ``per_type``,
    ``rdf_w1_nm_<A-B>``, ``rdf_js_<A-B>``. Type pairs with no pair distance in the shell on either side
    are left out (no metric when none is left).
    """
    out: dict[str, float] = {}
    w1s, jss, weights = [], [], []
    for name in sorted(set(reference) & set(generated)):
        ref, gen = reference[name], generated[name]
        if not np.array_equal(ref.edges, gen.edges):
            raise InputError(f"generated: RDF '{name}' has other bins than the reference")
        ga, gb = ref.g(rows_ref), gen.g(rows_gen)
        if not (np.any(ga > 0) and np.any(gb > 0)):
            continue
        w1, js = rdf_w1(ga, gb, ref.edges), rdf_js(ga, gb, ref.edges)
        if per_type:
            out[_safe_name(f"rdf_w1_nm_{name}")] = w1
            out[_safe_name(f"rdf_js_{name}")] = js
        w1s.append(w1)
        jss.append(js)
        weights.append(ref.n_pairs)
    if weights:
        out["rdf_w1_nm"] = float(np.average(w1s, weights=weights))
        out["rdf_js"] = float(np.average(jss, weights=weights))
    return out


# ----------------------------------------------------------------------------------------------
# floors and intervals on precomputed per-frame quantities
# ----------------------------------------------------------------------------------------------
def score_rows_with_floor(score_rows: Callable[[np.ndarray, np.ndarray], dict[str, float]], n_ref: int, n_gen: int,
                          *, traj_id_ref=None, traj_id_gen=None, n_second: int = 0, traj_id_second=None,
                          n_boot: int = N_BOOTSTRAP, n_blocks: int = N_BLOCKS, seed: int = 0) -> dict[str, float]:
    """:func:`~finegrain.platform.science.metrics.floors.score_with_floor` for metrics of per-frame arrays.

    Frames are rows of one pooled array: reference rows 0..n_ref-1, generated rows n_ref..n_ref+n_gen-1,
    an optional second reference after them (n_second rows). ``score_rows(rows_a, rows_b)`` scores the
    pooled rows ``rows_a`` (reference side) against ``rows_b``. The floor (reference halves, by
    trajectory when ``traj_id_ref`` names two or more, else in time, or the reference against the
    second reference) and the moving-block bootstrap intervals are those of the floors module, so
    the names are the same (``m_ci_lo``, ``m_floor``, ``m_over_floor``, ...).
    """
    def frames(offset, n, traj_id):
        tid = None if traj_id is None else np.asarray(traj_id)
        return Frames(frame=np.arange(offset, offset + n), traj_id=tid)

    ref = frames(0, n_ref, traj_id_ref)
    gen = frames(n_ref, n_gen, traj_id_gen)
    second = frames(n_ref + n_gen, n_second, traj_id_second) if n_second > 0 else None

    def score(a: Frames, b: Frames) -> dict[str, float]:
        return score_rows(np.asarray(a.frame), np.asarray(b.frame))

    return score_with_floor(score, ref, gen, second_reference=second, n_boot=n_boot, n_blocks=n_blocks, seed=seed)


def rdf_metrics(ref_xyz_nm, ref_box_nm, gen_xyz_nm, gen_box_nm, labels, *, molecules=None,
                intermolecular: bool = True, type_pairs=None, r_range=RDF_R_RANGE_NM,
                bin_width: float = RDF_BIN_WIDTH_NM, traj_id_ref=None, traj_id_gen=None, second_xyz_nm=None,
                second_box_nm=None, traj_id_second=None, per_type: bool = True, n_boot: int = N_BOOTSTRAP,
                n_blocks: int = N_BLOCKS, seed: int = 0) -> tuple[dict[str, float], dict[str, dict]]:
    """RDF agreement of generated with reference frames, with floors and 95 % intervals.

    ref_xyz_nm [F, N, 3], gen_xyz_nm [G, N, 3] nm; ref_box_nm [F, 3, 3], gen_box_nm [G, 3, 3] nm (required:
    InputError naming the argument when None); labels [N], molecules [N], intermolecular, type_pairs as in
    :func:`rdf_counts_by_type`. second_xyz_nm / second_box_nm: an independent reference run for the floor
    (default: the reference's halves). Returns (metrics, curves): metrics of :func:`compare_rdfs` with
    the floor names of :func:`score_rows_with_floor` (``n_boot=0``: no intervals), curves
    {"A-B": {"r": [B], "reference": g [B], "generated": g [B]}} for
    :func:`~finegrain.platform.science.metrics.plots.plot_rdfs`.
    """
    ref_xyz, gen_xyz = _check_xyz(ref_xyz_nm, "ref_xyz_nm"), _check_xyz(gen_xyz_nm, "gen_xyz_nm")
    if gen_xyz.shape[1] != ref_xyz.shape[1]:
        raise InputError(f"gen_xyz_nm: has {gen_xyz.shape[1]} particles per frame, ref_xyz_nm {ref_xyz.shape[1]}")
    sets = [(ref_xyz, check_box(ref_box_nm, ref_xyz.shape[0], "ref_box_nm")),
            (gen_xyz, check_box(gen_box_nm, gen_xyz.shape[0], "gen_box_nm"))]
    if second_xyz_nm is not None:
        sec = _check_xyz(second_xyz_nm, "second_xyz_nm")
        sets.append((sec, check_box(second_box_nm, sec.shape[0], "second_box_nm")))
    kw = dict(molecules=molecules, intermolecular=intermolecular, type_pairs=type_pairs, r_range=r_range,
              bin_width=bin_width)
    parts = [rdf_counts_by_type(x, b, labels, **kw) for x, b in sets]
    names = sorted(set.intersection(*(set(p) for p in parts)))
    pooled = {n: RDFCounts(parts[0][n].edges, np.concatenate([p[n].counts for p in parts]),
                           np.concatenate([p[n].inv_volume for p in parts]), parts[0][n].n_pairs,
                           parts[0][n].n_centres) for n in names}
    n_ref, n_gen = ref_xyz.shape[0], gen_xyz.shape[0]
    n_second = sets[2][0].shape[0] if len(sets) == 3 else 0
    metrics = score_rows_with_floor(lambda a, b: compare_rdfs(pooled, pooled, a, b, per_type=per_type), n_ref, n_gen,
                                    traj_id_ref=traj_id_ref, traj_id_gen=traj_id_gen, n_second=n_second,
                                    traj_id_second=traj_id_second, n_boot=n_boot, n_blocks=n_blocks, seed=seed)
    ref_rows, gen_rows = np.arange(n_ref), np.arange(n_ref, n_ref + n_gen)
    curves = {n: {"r": c.r, "reference": c.g(ref_rows), "generated": c.g(gen_rows)} for n, c in pooled.items()}
    return metrics, curves
