"""Kinetics: MSMs on shared k-means states, implied timescales, eigenvector similarity (deeptime).

Shmilovich et al., "Temporally coherent backmapping of molecular trajectories
from coarse-grained to atomistic resolution" (2022), sec. 3.1.3, 3.2.3 and SI: k-means centres are fitted on the *reference*
features only (100 for ADP in (phi, psi), 150 for chignolin in 2-D TICA) and
the same centres assign states to the reference and the backmapped data; one
reversible maximum-likelihood MSM is estimated for each (sliding-window counts
at the lag, restricted to its largest strongly connected set). Timescales are
compared by ratio (backmapped / reference), processes by the cosine similarity
of the left eigenvectors over the states active in both MSMs (absolute value:
eigenvectors have no sign). Lag times: ADP 5 ps, chignolin 4 ns (the seed's
choices, from its implied-timescale plots).

Units: timescales in the unit of ``dt`` (ps for frames ``dt`` ps apart).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "DEFAULT_N_CENTRES",
    "DEFAULT_LAG_PS",
    "N_TIMESCALES",
    "split_trajectories",
    "fit_kmeans",
    "assign_states",
    "estimate_msm",
    "implied_timescales",
    "left_eigenvectors",
    "compare_msms",
    "kinetics_from_features",
]

#: k-means centres when the system declares none (its YAML's ``evaluation.n_centres``; Shmilovich et al. (2022): ADP 100,
#: chignolin 150).
DEFAULT_N_CENTRES = 100
#: MSM lag time in ps when the system declares none (``evaluation.lag_ps``; Shmilovich et al. (2022), SI: ADP 5 ps,
#: chignolin 4 ns).
DEFAULT_LAG_PS = 5.0
#: Number of slowest processes compared (Shmilovich et al. (2022) resolve 3 for ADP at 5 ps).
N_TIMESCALES = 3
#: At most one centre per this many reference frames (keeps states populated on small data).
MIN_FRAMES_PER_CENTRE = 10


def split_trajectories(n_frames: int, traj_id=None) -> list[np.ndarray]:
    """Frame indices of each trajectory, in order of first appearance.

    traj_id : [n_frames] labels (None: one trajectory). Frames of a trajectory
    are taken in the given order (consecutive frames one time step apart).
    """
    if traj_id is None:
        return [np.arange(n_frames)]
    labels = np.asarray(traj_id)
    if labels.shape != (n_frames,):
        raise ValueError(f"traj_id: expected shape [{n_frames}], got {labels.shape}")
    _, first = np.unique(labels, return_index=True)
    return [np.flatnonzero(labels == labels[i]) for i in sorted(first)]


def _feature_list(features, argument: str) -> list[np.ndarray]:
    seq = [features] if isinstance(features, np.ndarray) else list(features)
    out = []
    for k, f in enumerate(seq):
        arr = np.asarray(f, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[0] == 0 or not np.all(np.isfinite(arr)):
            raise ValueError(f"{argument}[{k}]: expected finite features of shape [n_frames, n_features], got {arr.shape}")
        out.append(arr)
    if not out or len({a.shape[1] for a in out}) != 1:
        raise ValueError(f"{argument}: expected >= 1 trajectory, all with the same number of features")
    return out


def fit_kmeans(features, n_centres: int, seed: int = 0) -> np.ndarray:
    """k-means centres [k, d] fitted on ``features`` ([F, d] or a list of them).

    k = min(n_centres, max(2, F // MIN_FRAMES_PER_CENTRE)); deeptime KMeans,
    k-means++ initialisation, seeded.
    """
    from deeptime.clustering import KMeans

    data = np.concatenate(_feature_list(features, "features"))
    k = int(min(n_centres, max(2, data.shape[0] // MIN_FRAMES_PER_CENTRE)))
    km = KMeans(n_clusters=k, max_iter=500, init_strategy="kmeans++", fixed_seed=int(seed) % (2**31 - 3) + 2, n_jobs=1)
    return np.asarray(km.fit_fetch(data).cluster_centers, dtype=np.float64)


def assign_states(features, centres) -> list[np.ndarray]:
    """Nearest-centre state of every frame; a list of int arrays, one per trajectory."""
    from deeptime.clustering import ClusterModel

    model = ClusterModel(cluster_centers=np.asarray(centres, dtype=np.float64), metric="euclidean")
    return [np.asarray(model.transform(f), dtype=np.int32) for f in _feature_list(features, "features")]


def estimate_msm(dtrajs, lag: int, n_states: int | None = None):
    """Reversible maximum-likelihood MSM (deeptime) at ``lag`` frames.

    dtrajs : list of int state sequences. Counts are sliding-window; the MSM
    lives on the largest strongly connected set (``msm.count_model.state_symbols``
    maps its states back to the input labels). Returns None when no
    trajectory is longer than ``lag`` or the connected set has one state.
    """
    from deeptime.markov import TransitionCountEstimator
    from deeptime.markov.msm import MaximumLikelihoodMSM

    if lag < 1:
        raise ValueError(f"lag: must be >= 1 frame, got {lag}")
    dtrajs = [np.asarray(d, dtype=np.int32) for d in dtrajs]
    usable = [d for d in dtrajs if d.size > lag]
    if not usable:
        return None
    n = n_states if n_states is not None else int(max(d.max() for d in dtrajs)) + 1
    counts = TransitionCountEstimator(int(lag), "sliding", n_states=n).fit_fetch(usable).submodel_largest(directed=True)
    if counts.n_states < 2:
        return None
    return MaximumLikelihoodMSM(reversible=True).fit_fetch(counts)


def implied_timescales(msm, k: int = N_TIMESCALES, dt: float = 1.0) -> np.ndarray:
    """The k slowest implied timescales [k] in units of ``dt`` (NaN where the MSM has fewer processes)."""
    out = np.full(k, np.nan)
    if msm is None:
        return out
    m = min(k, msm.n_states - 1)
    if m > 0:
        out[:m] = np.asarray(msm.timescales(m), dtype=np.float64) * dt
    return out


def left_eigenvectors(msm, k: int, n_states: int) -> np.ndarray:
    """Left eigenvectors 0..k [k + 1, n_states] on the full state labels (0 off the active set; NaN rows if missing)."""
    out = np.full((k + 1, n_states), np.nan)
    if msm is None:
        return out
    m = min(k + 1, msm.n_states)
    full = np.zeros((m, n_states))
    full[:, msm.count_model.state_symbols] = np.real(msm.eigenvectors_left(m))
    out[:m] = full
    return out


def _active(msm, n_states: int) -> np.ndarray:
    mask = np.zeros(n_states, bool)
    if msm is not None:
        mask[msm.count_model.state_symbols] = True
    return mask


def compare_msms(ref_dtrajs, bm_dtrajs, lag: int, n_states: int, dt: float = 1.0, k: int = N_TIMESCALES,
                 lag_bm: int | None = None, dt_bm: float | None = None) -> dict:
    """Implied timescales and processes of two MSMs on the same states.

    ``lag`` frames of ``dt`` for the reference; the backmapped MSM uses
    ``lag_bm`` frames of ``dt_bm`` (default: the same), i.e. the same lag time
    when the backmapped frames are spaced differently.

    Returns arrays ``its_ref`` [k], ``its_bm`` [k] (units of dt), ``its_ratio``
    [k] (bm / ref), ``evec_cos`` [k] (|cosine| of left eigenvectors 1..k over
    mutually active states), and the two MSMs (``msm_ref``, ``msm_bm``, None if
    not estimable).
    """
    msm_ref = estimate_msm(ref_dtrajs, lag, n_states)
    msm_bm = estimate_msm(bm_dtrajs, lag if lag_bm is None else lag_bm, n_states)
    its_ref = implied_timescales(msm_ref, k, dt)
    its_bm = implied_timescales(msm_bm, k, dt if dt_bm is None else dt_bm)
    mutual = _active(msm_ref, n_states) & _active(msm_bm, n_states)
    l_ref = left_eigenvectors(msm_ref, k, n_states)[1:, mutual]
    l_bm = left_eigenvectors(msm_bm, k, n_states)[1:, mutual]
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.abs(np.sum(l_ref * l_bm, axis=1)) / (np.linalg.norm(l_ref, axis=1) * np.linalg.norm(l_bm, axis=1))
        ratio = its_bm / its_ref
    return {
        "its_ref": its_ref,
        "its_bm": its_bm,
        "its_ratio": ratio,
        "evec_cos": np.clip(cos, 0.0, 1.0),
        "msm_ref": msm_ref,
        "msm_bm": msm_bm,
        "n_mutual_states": int(mutual.sum()),
    }


def kinetics_from_features(ref_features, bm_features, lag: int, n_centres: int, dt: float = 1.0,
                           k: int = N_TIMESCALES, seed: int = 0, lag_bm: int | None = None,
                           dt_bm: float | None = None) -> dict:
    """The whole pipeline: k-means on the reference, shared assignment, two MSMs, comparison.

    ref_features / bm_features : [F, d] or lists of per-trajectory [T, d]
    (e.g. (cos, sin) of ADP's phi/psi, or TICA coordinates). lag in frames,
    dt the time between frames (``lag_bm``/``dt_bm`` for the backmapped data, see
    :func:`compare_msms`). Returns :func:`compare_msms`'s dict plus
    ``centres`` [k, d], ``dtrajs_ref``, ``dtrajs_bm``.
    """
    centres = fit_kmeans(ref_features, n_centres, seed)
    d_ref = assign_states(ref_features, centres)
    d_bm = assign_states(bm_features, centres)
    out = compare_msms(d_ref, d_bm, lag, centres.shape[0], dt, k, lag_bm, dt_bm)
    out.update(centres=centres, dtrajs_ref=d_ref, dtrajs_bm=d_bm)
    return out
