"""CG-projected atomistic forces and the distance between their distributions.

A backmapped structure is one of many atomistic microstates of its CG configuration, so its
atomic forces cannot be compared one by one with the reference's; their projection onto the beads
can. DeepBackmap (Stieffenhofer, Wand and Bereau, "Adversarial reverse mapping of equilibrated
condensed-phase molecular structures", Mach. Learn.: Sci. Technol. 1, 045014 (2020), and its first
author's thesis, eq. 6.3 and table 6.2) evaluates the atomistic force field on reference and
backmapped frames, sums the forces of each bead's atoms, F_I = sum_{i in I} f_i, and reports the
Jensen-Shannon divergence between the force distributions: long tails towards large forces mean
steric clashes.

Force map: f_I = sum_i d_Ii f_i with d_Ii = 1 for the atoms of bead I (mapping weight c_Ii != 0)
and 0 otherwise. Noid, Chu, Ayton, Krishna, Izvekov, Voth, Das and Andersen, "The multiscale
coarse-graining method. I. A rigorous bridge between atomistic and coarse-grained models",
J. Chem. Phys. 128, 244114 (2008), show that a force map is consistent with a linear mapping
R_I = sum_i c_Ii r_i (rows summing to one) when sum_i d_Ii c_Ji = delta_IJ; for a non-overlapping
mapping (each atom in at most one bead) the sum of the bead's atomic forces satisfies it for any
weights (centre of mass, centre of geometry, a single atom: the slice map). Atoms in no bead
(e.g. hydrogens of a heavy-atom mapping) contribute nothing. Overlapping mappings have no
unique consistent map: pass ``force_map`` explicitly.

Forces come as arrays (kJ/mol/nm), e.g. from
:meth:`finegrain.platform.science.energies.TorchForceField.energies_and_forces` or
:func:`finegrain.platform.science.energies.openmm_energies_forces`; this module evaluates no
force field. Distances: JS (nats) of histograms on fixed bins (values beyond the last edge
land in the last bin, :func:`~finegrain.platform.science.metrics.divergences.clipped_histogram`)
and W1 (kJ/mol/nm) of the samples, of the bead force magnitudes |F_I| and of the Cartesian
components (x, y and z pooled: the distribution of an isotropic ensemble does not depend on the
axis), overall and per bead type.
"""

from __future__ import annotations

import re

import numpy as np

from finegrain.platform.science.errors import InputError
from finegrain.platform.science.metrics.divergences import histogram_js, wasserstein_1
from finegrain.platform.science.metrics.floors import N_BLOCKS, N_BOOTSTRAP
from finegrain.platform.science.metrics.rdf import score_rows_with_floor

__all__ = [
    "FORCE_MAGNITUDE_EDGES_KJ_MOL_NM",
    "FORCE_COMPONENT_EDGES_KJ_MOL_NM",
    "force_map_matrix",
    "project_forces",
    "compare_force_distributions",
    "force_metrics",
]

#: Bead force magnitudes: 0-5000 kJ/mol/nm in 200 bins of 25 (atomic forces at 300 K are ~10^3 kJ/mol/nm).
FORCE_MAGNITUDE_EDGES_KJ_MOL_NM = np.linspace(0.0, 5000.0, 201)
#: Bead force components: -5000-5000 kJ/mol/nm in 400 bins of 25.
FORCE_COMPONENT_EDGES_KJ_MOL_NM = np.linspace(-5000.0, 5000.0, 401)


def force_map_matrix(mapping) -> np.ndarray:
    """The sum force map d [n, N] of a non-overlapping mapping: d_Ii = 1 where c_Ii != 0, else 0.

    mapping : CGMapping or its matrix c [n, N]. An atom with a non-zero weight in two beads raises
    InputError (no unique consistent force map; Noid et al. 2008).
    """
    c = np.asarray(getattr(mapping, "matrix", mapping), np.float64)
    if c.ndim != 2:
        raise InputError(f"mapping: expected a matrix [n_beads, n_atoms], got shape {c.shape}")
    d = (c != 0).astype(np.float64)
    shared = np.flatnonzero(d.sum(axis=0) > 1)
    if shared.size:
        raise InputError(f"mapping: atoms {shared[:10].tolist()} belong to more than one bead; an overlapping "
                         f"mapping has no unique consistent force map (pass force_map [n, N] explicitly)")
    return d


def project_forces(forces_kj_mol_nm, mapping=None, *, force_map=None) -> np.ndarray:
    """Bead forces [F, n, 3] kJ/mol/nm: F_I = sum_i d_Ii f_i of atomic forces [F, N, 3] kJ/mol/nm.

    mapping : CGMapping [n, N] (its sum force map, :func:`force_map_matrix`), or force_map : an
    explicit d [n, N]. Accepts numpy arrays or torch tensors (converted to float64 numpy).
    """
    f = forces_kj_mol_nm
    if hasattr(f, "detach"):
        f = f.detach().cpu().numpy()
    f = np.asarray(f, np.float64)
    if f.ndim != 3 or f.shape[-1] != 3:
        raise InputError(f"forces_kj_mol_nm: expected atomic forces [F, N, 3] kJ/mol/nm, got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise InputError("forces_kj_mol_nm: forces contain non-finite values")
    if (mapping is None) == (force_map is None):
        raise InputError("mapping, force_map: give exactly one")
    d = force_map_matrix(mapping) if force_map is None else np.asarray(force_map, np.float64)
    if d.ndim != 2 or d.shape[1] != f.shape[1]:
        raise InputError(f"{'force_map' if force_map is not None else 'mapping'}: expected [n, {f.shape[1]}] "
                         f"(one column per atom), got shape {d.shape}")
    return np.einsum("bi,fic->fbc", d, f)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


def compare_force_distributions(ref_bead_forces, gen_bead_forces, bead_types=None, *,
                                magnitude_edges=FORCE_MAGNITUDE_EDGES_KJ_MOL_NM,
                                component_edges=FORCE_COMPONENT_EDGES_KJ_MOL_NM) -> dict[str, float]:
    """JS (nats) and W1 (kJ/mol/nm) between reference and generated bead-force distributions.

    ref_bead_forces [F, n, 3], gen_bead_forces [G, n, 3] kJ/mol/nm (:func:`project_forces`);
    bead_types [n] labels (e.g. :func:`~finegrain.platform.science.metrics.rdf.bead_type_labels`;
    None: no per-type metrics). Returns ``js_force_magnitude``, ``w1_force_magnitude_kj_mol_nm``,
    ``js_force_component``, ``w1_force_component_kj_mol_nm`` over all beads and, per type T,
    the same names suffixed ``_<T>``.
    """
    ref, gen = np.asarray(ref_bead_forces, np.float64), np.asarray(gen_bead_forces, np.float64)
    for name, arr in (("ref_bead_forces", ref), ("gen_bead_forces", gen)):
        if arr.ndim != 3 or arr.shape[-1] != 3 or arr.shape[0] == 0:
            raise InputError(f"{name}: expected bead forces [F, n, 3] kJ/mol/nm with F >= 1, got shape {arr.shape}")
    if gen.shape[1] != ref.shape[1]:
        raise InputError(f"gen_bead_forces: has {gen.shape[1]} beads, ref_bead_forces {ref.shape[1]}")
    groups = {"": np.arange(ref.shape[1])}
    if bead_types is not None:
        types = np.asarray(bead_types).astype(str)
        if types.shape != (ref.shape[1],):
            raise InputError(f"bead_types: expected one type per bead [{ref.shape[1]}], got shape {types.shape}")
        groups.update({f"_{t}": np.flatnonzero(types == t) for t in sorted(set(types.tolist()))})
    out = {}
    for suffix, idx in groups.items():
        a, b = ref[:, idx], gen[:, idx]
        ma, mb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
        out[_safe(f"js_force_magnitude{suffix}")] = histogram_js(ma, mb, magnitude_edges)
        out[_safe(f"w1_force_magnitude_kj_mol_nm{suffix}")] = wasserstein_1(ma, mb)
        out[_safe(f"js_force_component{suffix}")] = histogram_js(a, b, component_edges)
        out[_safe(f"w1_force_component_kj_mol_nm{suffix}")] = wasserstein_1(a, b)
    return out


def force_metrics(ref_forces_kj_mol_nm, gen_forces_kj_mol_nm, mapping=None, *, force_map=None, bead_types=None,
                  traj_id_ref=None, traj_id_gen=None, second_forces_kj_mol_nm=None, traj_id_second=None,
                  magnitude_edges=FORCE_MAGNITUDE_EDGES_KJ_MOL_NM, component_edges=FORCE_COMPONENT_EDGES_KJ_MOL_NM,
                  n_boot: int = N_BOOTSTRAP, n_blocks: int = N_BLOCKS, seed: int = 0) -> dict[str, float]:
    """CG-projected force agreement of generated with reference frames, with floors and 95 % intervals.

    ref_forces_kj_mol_nm [F, N, 3], gen_forces_kj_mol_nm [G, N, 3]: atomic forces (kJ/mol/nm) of the
    reference and generated (backmapped) frames under the same atomistic force field; mapping or
    force_map as in :func:`project_forces`; bead_types as in :func:`compare_force_distributions`.
    second_forces_kj_mol_nm: forces of an independent reference run for the floor (default: the
    reference's halves). Metric names of :func:`compare_force_distributions` with the floor names of
    :func:`~finegrain.platform.science.metrics.rdf.score_rows_with_floor`.
    """
    parts = [project_forces(ref_forces_kj_mol_nm, mapping, force_map=force_map),
             project_forces(gen_forces_kj_mol_nm, mapping, force_map=force_map)]
    if second_forces_kj_mol_nm is not None:
        parts.append(project_forces(second_forces_kj_mol_nm, mapping, force_map=force_map))
    pooled = np.concatenate(parts)

    def score(rows_a, rows_b):
        return compare_force_distributions(pooled[rows_a], pooled[rows_b], bead_types,
                                           magnitude_edges=magnitude_edges, component_edges=component_edges)

    return score_rows_with_floor(score, parts[0].shape[0], parts[1].shape[0], traj_id_ref=traj_id_ref,
                                 traj_id_gen=traj_id_gen, n_second=parts[2].shape[0] if len(parts) == 3 else 0,
                                 traj_id_second=traj_id_second, n_boot=n_boot, n_blocks=n_blocks, seed=seed)
