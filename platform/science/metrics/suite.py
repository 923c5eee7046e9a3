"""One entry point: every applicable metric and figure for reference vs backmapped frames.

``evaluate_frames(reference, backmapped, topology, mapping, features)`` where
reference and backmapped are :class:`~finegrain.platform.science.frames.Frames`
(or dicts with their keys, those of ``finegrain.datasets.shards.read_frames``,
converted by ``Frames.from_dict``) holding:

- ``aa_xyz_nm`` [F, N, 3] (required),
- ``energy_kj_mol`` [F] (optional; NaN = unknown; or pass ``energy_fn``),
- ``traj_id`` [F], ``time_ps`` [F] (optional; MSMs and velocities use them to
  split trajectories and get the time step),
- ``cg_xyz_nm`` [F, n, 3] (optional: the CG input; else the reference's CG
  when frames are paired),
- backmapped only: ``samples`` [K, F, N, 3] (optional, diversity).

When the backmapped frames are as many as the reference and no
``traj_id``/``time_ps``, it inherits the reference's (paired frames).

Metric names (flat, MLflow-safe; non-finite values are left out):
``rmsd_cg_nm``; ``js_bonds``, ``js_angles``, ``js_dihedrals``, ``js_bond_<class>``,
``js_angle_<class>`` (with ``constraints``, constrained bonds are left out of
``js_bonds`` and its classes); ``mae_constrained_bond_nm`` and
``mae_constrained_bond_nm_ref`` (mean |d - r0| over frames and constrained
pairs, nm; only with ``constraints``); ``mean_bond_error_nm``, ``mae_bond_nm``;
``bond_score`` (FlowBack: fraction of bonds within 10 % of their mean reference
length); ``clash_fraction``, ``clash_fraction_ref``; ``clash_score`` (FlowBack:
% of residues with a heavy-atom contact < 0.12 nm); energies (see energy.py);
per declared feature set ``kl_fes_<set>``, ``js_fes_<set>`` (``cg_kl_fes_<set>``,
``cg_js_fes_<set>`` for sets the beads fix: a CG-consistency check), the
headline ``kl_fes``, ``js_fes`` and MSM on the first set the beads leave free
(see landscape.py): ``msm_lag_ps``, ``msm_n_states``, ``msm_mutual_states``,
``msm_resolved``, ``its_ref_ps_i``, ``its_bm_ps_i``, ``its_ratio_i``,
``evec_cos_i`` (i = 1..3); ``n_frames``, ``n_frames_bm``; velocities (see temporal.py);
``diversity_rmsd_nm``; ``diversity_score`` (FlowBack: 1 - mean sample-sample
RMSD / mean sample-reference RMSD, superposed; K >= 2 samples of paired frames).
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from finegrain.platform.science.errors import InputError
from finegrain.platform.science.frames import Frames
from finegrain.platform.science.metrics import plots
from finegrain.platform.science.metrics import energy as _energy
from finegrain.platform.science.metrics import forces as _forces
from finegrain.platform.science.metrics import kinetics as _kin
from finegrain.platform.science.metrics import landscape as _land
from finegrain.platform.science.metrics import rdf as _rdf
from finegrain.platform.science.metrics import structure as _st
from finegrain.platform.science.metrics import temporal as _tmp

__all__ = ["evaluate_frames", "infer_dt_ps"]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


def infer_dt_ps(time_ps, traj_id=None) -> float | None:
    """Median time between consecutive frames of a trajectory (ps), or None."""
    if time_ps is None:
        return None
    t = np.asarray(time_ps, np.float64)
    diffs = [np.diff(t[idx]) for idx in _kin.split_trajectories(t.size, traj_id) if idx.size > 1]
    diffs = np.concatenate(diffs) if diffs else np.zeros(0)
    diffs = diffs[diffs > 0]
    return float(np.median(diffs)) if diffs.size else None


def _energies(frames: Frames, xyz: np.ndarray, energy_fn) -> np.ndarray | None:
    e = frames.energy_kj_mol
    if e is not None:
        e = np.asarray(e, np.float64)
        if np.any(~np.isnan(e)):
            return e
    return None if energy_fn is None else np.asarray(energy_fn(xyz), np.float64).reshape(-1)


def _as_frames(frames: Frames | dict, argument: str) -> Frames:
    """``frames`` as Frames (a legacy dict converted); InputError prefixed with ``argument``."""
    if isinstance(frames, Frames):
        return frames
    try:
        return Frames.from_dict(frames)
    except InputError as exc:
        raise InputError(f"{argument}: {exc}") from exc


#: frames of each side the condensed-phase metrics use (RDFs of ~1e6 pairs per frame; forces need the
#: force field per frame)
CONDENSED_MAX_FRAMES = 100
#: kJ/mol/nm standing in for a non-finite force (atoms on top of each other)
_FORCE_CEILING = 1e9


def _evenly(n: int, most: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, most)).round().astype(int)) if n else np.zeros(0, int)


def _condensed_metrics(ref, box_ref, tid_ref, bm, box_bm, tid_bm, topology, mapping, forces_fn, most: int,
                       seed: int, make_figures: bool) -> tuple[dict[str, float], dict]:
    """RDF (atoms by element, beads by type; intermolecular) and CG-force metrics; see :func:`evaluate_frames`."""
    r, g = _evenly(len(ref), most), _evenly(len(bm), most)
    tr = None if tid_ref is None else np.asarray(tid_ref)[r]
    tg = None if tid_bm is None else np.asarray(tid_bm)[g]
    box_r, box_g = _rdf.check_box(box_ref, len(ref), "reference box_nm")[r], _rdf.check_box(box_bm, len(bm), "box_nm")[g]
    molecules = _rdf.molecule_ids(topology)
    out: dict[str, float] = {}
    figs: dict = {}
    for prefix, x_r, x_g, labels, mols in (
            ("aa_", ref[r], bm[g], _rdf.element_labels(topology), molecules),
            ("cg_", mapping.map(ref[r].astype(np.float64)), mapping.map(bm[g].astype(np.float64)),
             _rdf.bead_type_labels(mapping), _rdf.bead_molecule_ids(mapping, molecules))):
        met, curves = _rdf.rdf_metrics(x_r, box_r, x_g, box_g, labels, molecules=mols, traj_id_ref=tr,
                                       traj_id_gen=tg, seed=seed)
        out.update({prefix + k: v for k, v in met.items()})
        if make_figures and curves:
            figs[prefix + "rdf"] = plots.plot_rdfs(curves, metrics=met)
    if forces_fn is not None and (mapping.matrix != 0).sum(axis=0).max() <= 1:  # the force map needs disjoint beads
        f_r, f_g = forces_fn(ref[r].astype(np.float64), box_r), forces_fn(bm[g].astype(np.float64), box_g)
        out["cg_force_nonfinite_fraction"] = float(np.mean(~np.isfinite(f_g)))
        # overlapping atoms overflow the force field: they count as the largest forces (the histograms' last bins)
        f_g = np.nan_to_num(f_g, nan=_FORCE_CEILING, posinf=_FORCE_CEILING, neginf=-_FORCE_CEILING)
        met = _forces.force_metrics(f_r, f_g, mapping, bead_types=_rdf.bead_type_labels(mapping), traj_id_ref=tr,
                                    traj_id_gen=tg, seed=seed)
        out.update({"cg_" + k: v for k, v in met.items()})
    return out, figs


def evaluate_frames(reference: Frames | dict, backmapped: Frames | dict, topology=None, mapping=None, features=(), *,
                    lag_ps: float | None = None, n_centres: int | None = None, min_frames: int = 0, kinetics=None,
                    n_timescales: int = _kin.N_TIMESCALES, dt_ps: float | None = None,
                    energy_fn: Callable[[np.ndarray], np.ndarray] | None = None, seed: int = 0,
                    make_figures: bool = True, constraints=None,
                    forces_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                    condensed: bool = True, condensed_max_frames: int = CONDENSED_MAX_FRAMES
                    ) -> tuple[dict[str, float], dict]:
    """Compare backmapped with reference AA frames; returns (metrics, figures).

    reference, backmapped : :class:`~finegrain.platform.science.frames.Frames` (dicts with its keys are
    converted; other keys are ignored). topology : mdtraj.Topology of N atoms; mapping : CGMapping [n, N]
    (None: the reference's ``topology`` / ``mapping``);
    features : the system's evaluation feature sets (``ReferenceSystem.feature_sets``,
    declared in the systems YAML; empty: no FES/MSM). lag_ps / n_centres (the
    system's ``evaluation`` settings) default to
    :data:`~finegrain.platform.science.metrics.kinetics.DEFAULT_LAG_PS` /
    :data:`~finegrain.platform.science.metrics.kinetics.DEFAULT_N_CENTRES`; MSM metrics are skipped
    (with a warning) when no trajectory is longer than twice the lag. min_frames:
    fewer reference frames raise ValueError when there are features (the evaluation
    job uses :data:`~finegrain.platform.science.metrics.landscape.MIN_FES_FRAMES`). kinetics:
    feature-set names for the MSM in order of preference (default: ``features``' order). dt_ps:
    time between frames when ``time_ps`` is absent (default 1 ps).
    energy_fn : [F, N, 3] nm -> [F] kJ/mol, used where energies are missing.
    constraints : the reference's constrained distances, (pairs [C, 2] atom
    indices, r0 [C] nm) or rows [C, 3] (i, j, r0 nm) as in the shard manifest;
    None (unknown or none): every bond is scored by the JS.
    figures : {name: matplotlib Figure} (empty when ``make_figures`` is False).

    Periodic frames (the reference carries ``box_nm``; the backmapped frames their own or, paired, the
    reference's) add the condensed-phase metrics of Stieffenhofer, Wand and Bereau (2020, Adversarial
    reverse mapping of equilibrated condensed-phase molecular structures): intermolecular radial
    distribution functions per element pair (``aa_rdf_*``) and per bead type (``cg_rdf_*``) with their
    floors, and, given ``forces_fn`` ([F, N, 3] nm, box [F, 3, 3] nm -> [F, N, 3] kJ/mol/nm, the same
    force field for both), the distributions of CG-projected forces (``cg_force_*``), on at most
    ``condensed_max_frames`` evenly spaced frames of each side; they carry their own floors and intervals,
    so a caller that bootstraps this function passes ``condensed=False`` to its replicates.
    """
    reference, backmapped = _as_frames(reference, "reference"), _as_frames(backmapped, "backmapped")
    if reference.aa_xyz_nm is None:
        raise ValueError("reference: needs 'aa_xyz_nm' [F, N, 3]")
    if backmapped.aa_xyz_nm is None:
        raise ValueError("backmapped: needs 'aa_xyz_nm' [F, N, 3]")
    topology = reference.topology if topology is None else topology
    mapping = reference.mapping if mapping is None else mapping
    if topology is None or mapping is None:
        raise ValueError("topology, mapping: needed (as arguments or on the reference Frames)")
    n_atoms = topology.n_atoms
    if mapping.n_atoms != n_atoms:
        raise ValueError(f"mapping: has {mapping.n_atoms} atoms, topology has {n_atoms}")
    cons = _st.check_constraints(constraints, n_atoms)
    ref = _st.check_frames(reference.aa_xyz_nm, "reference['aa_xyz_nm']", n_atoms)
    bm = _st.check_frames(backmapped.aa_xyz_nm, "backmapped['aa_xyz_nm']", n_atoms)
    if isinstance(features, str):
        raise TypeError(f"features: expected feature sets (e.g. get_system({features!r}).feature_sets), "
                        f"got the string {features!r}")
    paired = ref.shape[0] == bm.shape[0]
    ref_tid, ref_time = reference.traj_id, reference.time_ps
    bm_tid = backmapped.traj_id if backmapped.traj_id is not None else (ref_tid if paired else None)
    bm_time = backmapped.time_ps if backmapped.time_ps is not None else (ref_time if paired else None)
    m: dict[str, float] = {"n_frames": float(ref.shape[0]), "n_frames_bm": float(bm.shape[0])}
    figs: dict = {}

    # CG consistency
    cg = backmapped.cg_xyz_nm
    if cg is None and paired:
        cg = reference.cg_xyz_nm
        cg = mapping.map(ref.astype(np.float64)) if cg is None else cg
    if cg is not None:
        m["rmsd_cg_nm"] = _st.cg_rmsd(bm, cg, mapping)

    # bonded geometry, clashes
    for kind, single in (("bonds", "bond"), ("angles", "angle"), ("dihedrals", "dihedral")):
        res = _st.internal_js(ref, bm, topology, kind, exclude=None if cons is None else cons[0])
        if not res["ref"]:
            continue
        m[f"js_{kind}"] = res["js"]
        if kind != "dihedrals":
            m.update({_safe(f"js_{single}_{c}"): v for c, v in res["per_class"].items()})
        if make_figures:
            figs[kind] = plots.plot_internal_distributions(res["ref"], res["bm"], res["edges"], kind)
    if cons is not None and cons[0].shape[0] > 0:
        m["mae_constrained_bond_nm"] = _st.constrained_bond_mae(bm, cons)
        m["mae_constrained_bond_nm_ref"] = _st.constrained_bond_mae(ref, cons)
    m.update(_st.bond_length_errors(ref, bm, topology))
    m["bond_score"] = _st.bond_score(ref, bm, topology)
    m["clash_fraction"] = _st.clash_fraction(bm, topology)
    m["clash_fraction_ref"] = _st.clash_fraction(ref, topology)
    m["clash_score"] = _st.clash_score(bm, topology)

    # condensed phase: RDFs and CG-projected forces under periodic boundaries
    box_bm = backmapped.box_nm if backmapped.box_nm is not None else (reference.box_nm if paired else None)
    if condensed and reference.box_nm is not None:
        if box_bm is None:
            raise InputError("backmapped: periodic reference frames, but the backmapped frames carry no box_nm "
                             "and are not paired with the reference")
        cond, cond_figs = _condensed_metrics(ref, reference.box_nm, ref_tid, bm, box_bm, bm_tid, topology, mapping,
                                             forces_fn, condensed_max_frames, seed, make_figures)
        m.update(cond)
        figs.update(cond_figs)

    # energies
    e_ref, e_bm = _energies(reference, ref, energy_fn), _energies(backmapped, bm, energy_fn)
    if e_ref is not None and e_bm is not None:
        m.update(_energy.energy_metrics(e_ref, e_bm))
        if make_figures:
            figs["energy"] = plots.plot_energy_histograms(e_ref, e_bm)

    # time step
    dt = infer_dt_ps(ref_time, ref_tid) or (float(dt_ps) if dt_ps else 1.0)
    dt_bm = infer_dt_ps(bm_time, bm_tid) or (float(dt_ps) if dt_ps else dt)

    # free energy surfaces and kinetics on the declared feature sets
    land, land_figs = _land.landscape_metrics(
        ref, bm, topology, mapping, list(features or ()), ref_tid=ref_tid, bm_tid=bm_tid, dt=dt, dt_bm=dt_bm,
        lag_ps=_kin.DEFAULT_LAG_PS if lag_ps is None else float(lag_ps),
        n_centres=n_centres or _kin.DEFAULT_N_CENTRES, n_timescales=n_timescales, seed=seed,
        make_figures=make_figures, min_frames=min_frames, kinetics=kinetics)
    m.update(land)
    figs.update(land_figs)

    # temporal coherence
    v_ref = _tmp.frame_velocities(ref, ref_tid, ref_time, dt_ps=dt, box_nm=reference.box_nm)
    v_bm = _tmp.frame_velocities(bm, bm_tid, bm_time, dt_ps=dt_bm, box_nm=box_bm)
    vel = _tmp.velocity_metrics(v_ref, v_bm)
    m.update(vel)
    if vel and make_figures:
        figs["velocities"] = plots.plot_velocity_distributions(v_ref, v_bm, _tmp.VELOCITY_EDGES_NM_PS,
                                                               vel.get("velocity_scale_factor"))

    # diversity
    samples = backmapped.samples
    if samples is not None and samples.shape[0] >= 2:  # Frames: [K, F_bm, N, 3]
        m["diversity_rmsd_nm"] = _st.diversity_rmsd(samples)
        if samples.shape[1] == ref.shape[0]:  # paired: sample f reconstructs reference frame f
            m["diversity_score"] = _st.diversity_score(samples, ref)

    metrics = {_safe(k): float(v) for k, v in m.items() if v is not None and np.isfinite(v)}
    return metrics, {_safe(k): f for k, f in figs.items()}
