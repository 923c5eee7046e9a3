"""One entry point: every applicable metric and figure for reference vs backmapped frames.

``evaluate_frames(reference, backmapped, topology, mapping, system)`` where
each dict holds (the keys of ``finegrain.platform.shards.read_frames``):

- ``aa_xyz_nm`` [F, N, 3] (required),
- ``energy_kj_mol`` [F] (optional; NaN = unknown; or pass ``energy_fn``),
- ``traj_id`` [F], ``time_ps`` [F] (optional; MSMs and velocities use them to
  split trajectories and get the time step),
- ``cg_xyz_nm`` [F, n, 3] (optional: the CG input; else the reference's CG
  when frames are paired),
- backmapped only: ``samples`` [K, F, N, 3] (optional, diversity).

When the backmapped dict has as many frames as the reference and no
``traj_id``/``time_ps``, it inherits the reference's (paired frames).

Metric names (flat, MLflow-safe; non-finite values are left out):
``rmsd_cg_nm``; ``js_bonds``, ``js_angles``, ``js_dihedrals``, ``js_bond_<class>``,
``js_angle_<class>`` (with ``constraints``, constrained bonds are left out of
``js_bonds`` and its classes); ``mae_constrained_bond_nm`` and
``mae_constrained_bond_nm_ref`` (mean |d - r0| over frames and constrained
pairs, nm; only with ``constraints``); ``mean_bond_error_nm``, ``mae_bond_nm``;
``bond_score`` (FlowBack: fraction of bonds within 10 % of their mean reference
length); ``clash_fraction``, ``clash_fraction_ref``; ``clash_score`` (FlowBack:
% of residues with a heavy-atom contact < 0.12 nm); energies (see energy.py); ``kl_fes``, ``js_fes`` (ADP:
Ramachandran; chignolin: 2-D TICA of the 45 CA-CA distances); ``msm_lag_ps``,
``msm_n_states``, ``msm_mutual_states``, ``its_ref_ps_i``, ``its_bm_ps_i``,
``its_ratio_i``, ``evec_cos_i`` (i = 1..3); velocities (see temporal.py);
``diversity_rmsd_nm``; ``diversity_score`` (FlowBack: 1 - mean sample-sample
RMSD / mean sample-reference RMSD, superposed; K >= 2 samples of paired frames).
"""

from __future__ import annotations

import re
import warnings
from typing import Callable

import numpy as np

from finegrain.platform import plots
from finegrain.platform.metrics import energy as _energy
from finegrain.platform.metrics import fes as _fes
from finegrain.platform.metrics import kinetics as _kin
from finegrain.platform.metrics import structure as _st
from finegrain.platform.metrics import temporal as _tmp

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


def _energies(d: dict, xyz: np.ndarray, energy_fn) -> np.ndarray | None:
    e = d.get("energy_kj_mol")
    if e is not None:
        e = np.asarray(e, np.float64)
        if e.shape != (xyz.shape[0],):
            raise ValueError(f"energy_kj_mol: expected shape [{xyz.shape[0]}], got {e.shape}")
        if np.any(~np.isnan(e)):
            return e
    return None if energy_fn is None else np.asarray(energy_fn(xyz), np.float64).reshape(-1)


def _feasible(lengths: list[int], lag: int) -> bool:
    return any(n > 2 * lag for n in lengths)


def evaluate_frames(reference: dict, backmapped: dict, topology, mapping, system: str, *,
                    lag_ps: float | None = None, n_centres: int | None = None,
                    n_timescales: int = _kin.N_TIMESCALES, dt_ps: float | None = None,
                    energy_fn: Callable[[np.ndarray], np.ndarray] | None = None, seed: int = 0,
                    make_figures: bool = True, constraints=None) -> tuple[dict[str, float], dict]:
    """Compare backmapped with reference AA frames; returns (metrics, figures).

    topology : mdtraj.Topology of N atoms; mapping : CGMapping [n, N];
    system : "adp" (Ramachandran FES and MSM on (cos, sin) of phi/psi),
    "chignolin" (TICA FES and MSM on the 45 CA-CA distances) or any other name
    (generic: no FES/MSM). lag_ps / n_centres default to
    :data:`~finegrain.platform.metrics.kinetics.LAG_PS` /
    :data:`~finegrain.platform.metrics.kinetics.N_CENTRES`; MSM metrics are skipped
    (with a warning) when no trajectory is longer than twice the lag. dt_ps:
    time between frames when ``time_ps`` is absent (default 1 ps).
    energy_fn : [F, N, 3] nm -> [F] kJ/mol, used where energies are missing.
    constraints : the reference's constrained distances, (pairs [C, 2] atom
    indices, r0 [C] nm) or rows [C, 3] (i, j, r0 nm) as in the shard manifest;
    None (unknown or none): every bond is scored by the JS.
    figures : {name: matplotlib Figure} (empty when ``make_figures`` is False).
    """
    if "aa_xyz_nm" not in reference:
        raise ValueError("reference: needs 'aa_xyz_nm' [F, N, 3]")
    if "aa_xyz_nm" not in backmapped:
        raise ValueError("backmapped: needs 'aa_xyz_nm' [F, N, 3]")
    n_atoms = topology.n_atoms
    if mapping.n_atoms != n_atoms:
        raise ValueError(f"mapping: has {mapping.n_atoms} atoms, topology has {n_atoms}")
    cons = _st.check_constraints(constraints, n_atoms)
    ref = _st.check_frames(reference["aa_xyz_nm"], "reference['aa_xyz_nm']", n_atoms)
    bm = _st.check_frames(backmapped["aa_xyz_nm"], "backmapped['aa_xyz_nm']", n_atoms)
    paired = ref.shape[0] == bm.shape[0]
    ref_tid, ref_time = reference.get("traj_id"), reference.get("time_ps")
    bm_tid = backmapped.get("traj_id", ref_tid if paired else None)
    bm_time = backmapped.get("time_ps", ref_time if paired else None)
    m: dict[str, float] = {}
    figs: dict = {}

    # CG consistency
    cg = backmapped.get("cg_xyz_nm")
    if cg is None and paired:
        cg = reference.get("cg_xyz_nm")
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

    # free energy surfaces and kinetics
    key = system if system in ("adp", "chignolin") else None
    if key is not None:
        ref_parts = _kin.split_trajectories(ref.shape[0], ref_tid)
        bm_parts = _kin.split_trajectories(bm.shape[0], bm_tid)
        lag = max(1, int(round((lag_ps if lag_ps is not None else _kin.LAG_PS[key]) / dt)))
        feat_ref = feat_bm = None
        if key == "adp":
            phi_r, psi_r = _fes.ramachandran(ref, topology)
            phi_b, psi_b = _fes.ramachandran(bm, topology)
            edges = (_fes.RAMACHANDRAN_EDGES_RAD, _fes.RAMACHANDRAN_EDGES_RAD)
            h_ref = _fes.histogram_2d(phi_r[:, 0], psi_r[:, 0], *edges)
            h_bm = _fes.histogram_2d(phi_b[:, 0], psi_b[:, 0], *edges)
            labels = ("phi (rad)", "psi (rad)")

            def angles(phi, psi):
                return np.stack([np.cos(phi[:, 0]), np.sin(phi[:, 0]), np.cos(psi[:, 0]), np.sin(psi[:, 0])], 1)

            feat_ref, feat_bm = angles(phi_r, psi_r), angles(phi_b, psi_b)
        else:
            d_ref, d_bm = _fes.ca_distances(ref, topology), _fes.ca_distances(bm, topology)
            tica_lag = lag if _feasible([p.size for p in ref_parts], lag) else 1
            model = _fes.fit_tica([d_ref[p] for p in ref_parts], tica_lag, dim=2)
            feat_ref, feat_bm = _fes.tica_project(model, d_ref), _fes.tica_project(model, d_bm)
            edges = _fes.tica_edges(feat_ref)
            h_ref = _fes.histogram_2d(feat_ref[:, 0], feat_ref[:, 1], *edges)
            h_bm = _fes.histogram_2d(feat_bm[:, 0], feat_bm[:, 1], *edges)
            labels = ("IC 1", "IC 2")
            m["tica_lag_ps"] = tica_lag * dt
        fes = _fes.compare_fes(h_ref, h_bm)
        m["kl_fes"], m["js_fes"] = fes["kl"], fes["js"]
        if make_figures:
            figs["fes"] = plots.plot_fes_pair(h_ref, h_bm, edges[0], edges[1], labels)
        bm_lag = max(1, int(round(lag * dt / dt_bm)))
        if _feasible([p.size for p in ref_parts], lag) and _feasible([p.size for p in bm_parts], bm_lag):
            kin = _kin.kinetics_from_features(
                [feat_ref[p] for p in ref_parts], [feat_bm[p] for p in bm_parts], lag,
                n_centres or _kin.N_CENTRES[key], dt=dt, k=n_timescales, seed=seed, lag_bm=bm_lag, dt_bm=dt_bm)
            m["msm_lag_ps"] = lag * dt
            m["msm_n_states"] = float(kin["centres"].shape[0])
            m["msm_mutual_states"] = float(kin["n_mutual_states"])
            for i in range(n_timescales):
                m[f"its_ref_ps_{i + 1}"] = kin["its_ref"][i]
                m[f"its_bm_ps_{i + 1}"] = kin["its_bm"][i]
                m[f"its_ratio_{i + 1}"] = kin["its_ratio"][i]
                m[f"evec_cos_{i + 1}"] = kin["evec_cos"][i]
            if make_figures:
                figs["implied_timescales"] = plots.plot_implied_timescales(kin["its_ref"], kin["its_bm"], lag=lag * dt)
        else:
            warnings.warn(f"evaluate_frames: MSM skipped, no trajectory longer than twice the lag of {lag * dt:g} ps",
                          stacklevel=2)

    # temporal coherence
    v_ref = _tmp.frame_velocities(ref, ref_tid, ref_time, dt_ps=dt)
    v_bm = _tmp.frame_velocities(bm, bm_tid, bm_time, dt_ps=dt_bm)
    vel = _tmp.velocity_metrics(v_ref, v_bm)
    m.update(vel)
    if vel and make_figures:
        figs["velocities"] = plots.plot_velocity_distributions(v_ref, v_bm, _tmp.VELOCITY_EDGES_NM_PS,
                                                               vel.get("velocity_scale_factor"))

    # diversity
    samples = backmapped.get("samples")
    if samples is not None and np.asarray(samples).ndim == 4 and np.asarray(samples).shape[0] >= 2:
        m["diversity_rmsd_nm"] = _st.diversity_rmsd(samples)
        if np.asarray(samples).shape[1] == ref.shape[0]:  # paired: sample f reconstructs reference frame f
            m["diversity_score"] = _st.diversity_score(samples, ref)

    metrics = {_safe(k): float(v) for k, v in m.items() if v is not None and np.isfinite(v)}
    return metrics, figs
