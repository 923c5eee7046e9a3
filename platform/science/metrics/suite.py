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
from finegrain.platform.science.metrics import kinetics as _kin
from finegrain.platform.science.metrics import landscape as _land
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


def evaluate_frames(reference: Frames | dict, backmapped: Frames | dict, topology=None, mapping=None, features=(), *,
                    lag_ps: float | None = None, n_centres: int | None = None, min_frames: int = 0, kinetics=None,
                    n_timescales: int = _kin.N_TIMESCALES, dt_ps: float | None = None,
                    energy_fn: Callable[[np.ndarray], np.ndarray] | None = None, seed: int = 0,
                    make_figures: bool = True, constraints=None) -> tuple[dict[str, float], dict]:
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
    v_ref = _tmp.frame_velocities(ref, ref_tid, ref_time, dt_ps=dt)
    v_bm = _tmp.frame_velocities(bm, bm_tid, bm_time, dt_ps=dt_bm)
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
