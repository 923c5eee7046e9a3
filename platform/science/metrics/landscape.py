"""Free-energy surfaces and kinetics on the feature sets a system declares.

For each :class:`~finegrain.platform.science.metrics.features.FeatureSet`: a 2-D
surface (two dihedrals directly, on 10-degree bins; any other set on its two
slowest TICA components fitted on the reference, Shmilovich et al. (2022), sec. 3.2.2),
compared by KL(reference || backmapped) and JS. Sets the mapping's beads fix
are a CG-consistency check (prefix ``cg_``): a model on the fibre scores 0
there whatever it does with the other atoms. The first set the beads leave
free is the headline surface (``kl_fes``/``js_fes``); the MSM (Shmilovich et al. (2022), sec.
3.1.3: k-means on the reference, reversible MSMs at the system's lag, implied
timescales and eigenvectors compared) is built on the first free set of the
system's ``kinetics`` list (sets whose motion the lag resolves: methyl
rotations, not the sub-picosecond omega libration), or of ``features``.

Pseudo-counts scale with the data: :data:`PSEUDO_FRACTION` of the reference
frame count spread over the bins (a fixed 0.5 per bin added 648 counts to
1296 Ramachandran bins, more than a 100-frame reference holds).
"""

from __future__ import annotations

import warnings

import numpy as np

from finegrain.platform.science.metrics import plots
from finegrain.platform.science.metrics import fes as _fes
from finegrain.platform.science.metrics import kinetics as _kin
from finegrain.platform.science.metrics.features import FeatureSet, fixed_by_mapping

__all__ = ["PSEUDO_FRACTION", "MIN_FES_FRAMES", "pseudo_count", "surface", "landscape_metrics"]

#: Total pseudo-count mass as a fraction of the reference frames (spread evenly over the bins).
PSEUDO_FRACTION = 0.01
#: Fewest reference frames for a free-energy surface or an MSM (a 36 x 36 surface and 100 k-means states
#: need ~1000 frames to be more than noise); ``min_frames`` overrides.
MIN_FES_FRAMES = 1000


def pseudo_count(n_frames: int, n_bins: int) -> float:
    """Pseudo-count per bin: PSEUDO_FRACTION * n_frames / n_bins (> 0)."""
    return max(PSEUDO_FRACTION * float(n_frames), 1e-3) / float(n_bins)


def _parts(labels, n: int) -> list[np.ndarray]:
    return _kin.split_trajectories(n, labels)


def surface(feature: FeatureSet, ref_xyz, bm_xyz, topology, ref_parts, tica_lag: int):
    """(coordinates ref [F, 2|d], coordinates bm, counts ref [B, B], counts bm, edges x, edges y, axis labels,
    kinetic features ref, kinetic features bm) of one feature set."""
    if feature.is_angle_pair:
        v_ref, v_bm = feature.values(ref_xyz, topology), feature.values(bm_xyz, topology)
        edges = (_fes.RAMACHANDRAN_EDGES_RAD, _fes.RAMACHANDRAN_EDGES_RAD)
        labels = tuple(f"{name} (rad)" for name in feature.labels)
        k_ref, k_bm = feature.embedding(ref_xyz, topology), feature.embedding(bm_xyz, topology)
    else:
        e_ref, e_bm = feature.embedding(ref_xyz, topology), feature.embedding(bm_xyz, topology)
        model = _fes.fit_tica([e_ref[p] for p in ref_parts], tica_lag, dim=2)
        v_ref, v_bm = _fes.tica_project(model, e_ref), _fes.tica_project(model, e_bm)
        edges = _fes.tica_edges(v_ref)
        labels = (f"{feature.name} IC 1", f"{feature.name} IC 2")
        k_ref, k_bm = v_ref, v_bm
    h_ref = _fes.histogram_2d(v_ref[:, 0], v_ref[:, 1], *edges)
    h_bm = _fes.histogram_2d(v_bm[:, 0], v_bm[:, 1], *edges)
    return h_ref, h_bm, edges, labels, k_ref, k_bm


def landscape_metrics(ref_xyz, bm_xyz, topology, mapping, features: list[FeatureSet], *, ref_tid, bm_tid,
                      dt: float, dt_bm: float, lag_ps: float, n_centres: int, n_timescales: int, seed: int,
                      make_figures: bool, min_frames: int = MIN_FES_FRAMES,
                      kinetics: list[str] | tuple[str, ...] | None = None) -> tuple[dict[str, float], dict]:
    """FES per feature set and the MSM of the headline set (see the module docstring); (metrics, figures).

    ref_xyz / bm_xyz [F, N, 3] nm; dt / dt_bm ps between frames; lag_ps the MSM lag. Names carry
    the feature sets' names as declared (the caller makes them MLflow-safe).
    Raises ValueError naming ``min_frames`` when the reference has fewer frames than that.
    """
    m: dict[str, float] = {}
    figs: dict = {}
    if not features:
        return m, figs
    if ref_xyz.shape[0] < min_frames:
        raise ValueError(f"reference: {ref_xyz.shape[0]} frames; free-energy surfaces and MSMs need >= {min_frames} "
                         f"(evaluate on a longer held-out simulation, or lower min_frames / --min-frames)")
    ref_parts, bm_parts = _parts(ref_tid, ref_xyz.shape[0]), _parts(bm_tid, bm_xyz.shape[0])
    lag = max(1, int(round(lag_ps / dt)))
    feasible = any(p.size > 2 * lag for p in ref_parts)
    tica_lag = lag if feasible else 1
    names = [f.name for f in features]
    unknown = [k for k in kinetics or () if k not in names]
    if unknown:
        raise ValueError(f"kinetics: {unknown} are not among the feature sets {names}")
    order = list(kinetics) if kinetics else names
    kin_set = next((n for n in order if not fixed_by_mapping(features[names.index(n)], topology, mapping)), None)
    headline = kin_ref = kin_bm = None
    for f in features:
        fixed = fixed_by_mapping(f, topology, mapping)
        h_ref, h_bm, edges, labels, k_ref, k_bm = surface(f, ref_xyz, bm_xyz, topology, ref_parts, tica_lag)
        res = _fes.compare_fes(h_ref, h_bm, pseudo_count(ref_xyz.shape[0], h_ref.size))
        prefix = "cg_" if fixed else ""
        m[f"{prefix}kl_fes_{f.name}"], m[f"{prefix}js_fes_{f.name}"] = res["kl"], res["js"]
        if make_figures:
            title = f"{f.name} (CG-consistency check: fixed by the beads)" if fixed else f.name
            figs[f"fes_{f.name}"] = plots.plot_fes_pair(h_ref, h_bm, edges[0], edges[1], labels)
            figs[f"fes_{f.name}"].suptitle(title)
        if not fixed and headline is None:
            headline = f
            m["kl_fes"], m["js_fes"] = res["kl"], res["js"]
        if f.name == kin_set:
            kin_ref, kin_bm = k_ref, k_bm
            if not f.is_angle_pair:
                m["tica_lag_ps"] = tica_lag * dt
    if kin_set is None:
        return m, figs
    bm_lag = max(1, int(round(lag * dt / dt_bm)))
    if not (feasible and any(p.size > 2 * bm_lag for p in bm_parts)):
        warnings.warn(f"evaluate_frames: MSM skipped, no trajectory longer than twice the lag of {lag * dt:g} ps",
                      stacklevel=3)
        return m, figs
    kin = _kin.kinetics_from_features([kin_ref[p] for p in ref_parts], [kin_bm[p] for p in bm_parts], lag,
                                      n_centres, dt=dt, k=n_timescales, seed=seed, lag_bm=bm_lag, dt_bm=dt_bm)
    m["msm_lag_ps"] = lag * dt
    m["msm_n_states"] = float(kin["centres"].shape[0])
    m["msm_mutual_states"] = float(kin["n_mutual_states"])
    resolved = kin["its_ref"] > lag * dt
    m["msm_resolved"] = float(np.sum(resolved))
    if not np.all(resolved):
        warnings.warn(f"evaluate_frames: {int(np.sum(~resolved))} of {n_timescales} reference implied timescales "
                      f"are below the {lag * dt:g} ps lag (not resolved: noise); their ratios mean nothing",
                      stacklevel=3)
    for i in range(n_timescales):
        m[f"its_ref_ps_{i + 1}"] = kin["its_ref"][i]
        m[f"its_bm_ps_{i + 1}"] = kin["its_bm"][i]
        m[f"its_ratio_{i + 1}"] = kin["its_ratio"][i]
        m[f"evec_cos_{i + 1}"] = kin["evec_cos"][i]
    if make_figures:
        figs["implied_timescales"] = plots.plot_implied_timescales(kin["its_ref"], kin["its_bm"], lag=lag * dt)
    return m, figs
