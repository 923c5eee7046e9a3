"""Noise floors and block-bootstrap confidence intervals for every score.

A divergence between two finite samples is never 0: two independent
reference runs of ADP (1000 frames each) differ by heavy-bond JS ~0.002. A
model's score means something only beside that **floor**: the same metric
computed between two disjoint halves of the reference (by whole
trajectories when there are two or more, else the first and second half of
each trajectory in time), or between the reference and an independent
second reference run when one is given.

Confidence intervals are a moving-block bootstrap (Kuensch, "The jackknife
and the bootstrap for general stationary observations", Ann. Stat. 1989):
frames are resampled in blocks of consecutive frames within each
trajectory, so autocorrelation inside a block is kept; each drawn block
becomes its own pseudo-trajectory, so velocities and MSM counts never
straddle two blocks. When the backmapped frames are paired with the
reference frames (same count: one backmap per reference frame), the same
blocks are drawn for both (a paired bootstrap); otherwise each is drawn on
its own. The interval is the 2.5-97.5 percentile range of the replicates,
re-centred on the full-sample value (``value + q - mean(replicates)``):
plug-in divergences grow when resampling repeats frames, so raw percentile
intervals of a JS or KL sit above the value they should bracket. The lower
end of a score that cannot be negative is clipped at 0.

Frames are :class:`~finegrain.platform.science.frames.Frames` or frames dicts (the keys of
``read_frames``); resamples keep the kind they were given, and ``score`` receives that kind.

Metric names: for a metric ``m`` the output adds ``m_ci_lo``, ``m_ci_hi``,
``m_floor``, ``m_floor_ci_lo``, ``m_floor_ci_hi`` and ``m_over_floor``
(m / floor, where the floor is > 0).

Note: the halves hold half the frames, and divergences of histograms shrink
as samples grow, so a halves floor is a little higher (conservative) than
the floor at the full frame count.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Callable

import numpy as np

from finegrain.platform.science.frames import Frames
from finegrain.platform.science.metrics.kinetics import split_trajectories

__all__ = ["reference_halves", "block_indices", "take_frames", "bootstrap_ci", "score_with_floor",
           "NOT_BOOTSTRAPPED", "N_BOOTSTRAP", "N_BLOCKS"]

#: Bootstrap replicates per interval (20 gives a usable 95 % range at tolerable cost; raise for papers).
N_BOOTSTRAP = 20
#: Blocks per trajectory set: block length = total frames // N_BLOCKS, at least MIN_BLOCK_FRAMES.
N_BLOCKS = 20
MIN_BLOCK_FRAMES = 5
#: Counters and settings, not scores: no interval, no floor.
NOT_BOOTSTRAPPED = ("n_frames", "n_frames_bm", "msm_lag_ps", "msm_n_states", "msm_mutual_states", "tica_lag_ps",
                    "frames_per_s", "clash_fraction_ref", "mae_constrained_bond_nm_ref")

_PER_FRAME = ("aa_xyz_nm", "cg_xyz_nm", "energy_kj_mol", "traj_id", "time_ps", "frame", "box_nm")


def _n(d: dict | Frames) -> int:
    return d.n_frames if isinstance(d, Frames) else int(np.asarray(d["aa_xyz_nm"]).shape[0])


def _traj_rows(d: dict | Frames) -> list[np.ndarray]:
    return split_trajectories(_n(d), d.traj_id if isinstance(d, Frames) else d.get("traj_id"))


def _without_samples(d: dict | Frames) -> dict | Frames:
    if isinstance(d, Frames):
        return replace(d, samples=None)
    return {k: v for k, v in d.items() if k != "samples"}


def take_frames(d: dict | Frames, rows: np.ndarray, traj_id: np.ndarray | None = None) -> dict | Frames:
    """The frames ``rows`` of a :class:`~finegrain.platform.science.frames.Frames` (``Frames.subset``) or of
    a frames dict (per-frame keys sliced; ``samples`` [K, F, ...] on axis 1); ``traj_id`` replaces the
    trajectory labels when given."""
    if isinstance(d, Frames):
        out = d.subset(rows)
        return out if traj_id is None else replace(out, traj_id=traj_id)
    out = {}
    for k, v in d.items():
        if k in _PER_FRAME and v is not None:
            out[k] = np.asarray(v)[rows]
        elif k == "samples" and v is not None:
            out[k] = np.asarray(v)[:, rows]
        else:
            out[k] = v
    if traj_id is not None:
        out["traj_id"] = traj_id
    return out


def reference_halves(reference: dict | Frames) -> tuple[dict | Frames, dict | Frames]:
    """Two disjoint halves of reference frames (Frames or a frames dict): whole trajectories dealt alternately (longest first,
    to the lighter half) when there are two or more, else the first and second half in time."""
    parts = _traj_rows(reference)
    if len(parts) >= 2:
        a, b = [], []
        for rows in sorted(parts, key=len, reverse=True):
            (a if sum(map(len, a)) <= sum(map(len, b)) else b).append(rows)
        ra, rb = np.concatenate(a), np.concatenate(b)
    else:
        rows = parts[0]
        half = rows.size // 2
        ra, rb = rows[:half], rows[half:]
    if ra.size == 0 or rb.size == 0:
        raise ValueError(f"reference: {_n(reference)} frame(s) cannot be split into two halves for a noise floor")
    return take_frames(reference, ra), take_frames(reference, rb)


def block_indices(d: dict | Frames, block: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One moving-block resample of a frames dict: rows [F'] and pseudo-trajectory labels [F'].

    Within each trajectory of T frames, ceil(T / block) blocks of ``block`` consecutive frames (the last
    one cut to length) start at uniformly drawn frames; F' equals the frame count.
    """
    rows, labels = [], []
    for t, idx in enumerate(_traj_rows(d)):
        size = max(1, min(block, idx.size))
        need = idx.size
        k = 0
        while need > 0:
            start = int(rng.integers(0, idx.size - size + 1))
            take = idx[start:start + min(size, need)]
            rows.append(take)
            labels.append(np.full(take.size, f"{t}.{k}"))
            need -= take.size
            k += 1
    return np.concatenate(rows), np.concatenate(labels)


def bootstrap_ci(score: Callable, reference: dict | Frames, backmapped: dict | Frames, *,
                 n_boot: int = N_BOOTSTRAP, n_blocks: int = N_BLOCKS, seed: int = 0,
                 skip: tuple[str, ...] = NOT_BOOTSTRAPPED,
                 estimate: dict[str, float] | None = None) -> dict[str, tuple[float, float]]:
    """95 % block-bootstrap intervals {metric: (lo, hi)} of ``score(reference, backmapped)``.

    Paired frames (equal counts) share their blocks; otherwise each side is resampled on its own.
    A replicate ``score`` refuses (ValueError) is skipped; a metric with fewer than half the replicates
    gets no interval.
    estimate : the full-sample values (computed when None); the intervals are re-centred on them.
    """
    if estimate is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            estimate = score(reference, backmapped)
    rng = np.random.default_rng(seed)
    paired = _n(reference) == _n(backmapped)
    block_ref = max(MIN_BLOCK_FRAMES, _n(reference) // n_blocks)
    block_bm = max(MIN_BLOCK_FRAMES, _n(backmapped) // n_blocks)
    reps: dict[str, list[float]] = {}
    for _ in range(n_boot):
        rows, labels = block_indices(reference, block_ref, rng)
        ref = take_frames(reference, rows, labels)
        if paired:
            bm = take_frames(backmapped, rows, labels)
        else:
            rows_b, labels_b = block_indices(backmapped, block_bm, rng)
            bm = take_frames(backmapped, rows_b, labels_b)
        bm = _without_samples(bm)  # diversity needs every sample of a frame; it is not resampled
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                values = score(ref, bm)
            except ValueError:  # e.g. no block long enough for a TICA lag: this replicate counts for nothing
                continue
        for k, v in values.items():
            if k not in skip and np.isfinite(v):
                reps.setdefault(k, []).append(float(v))
    out = {}
    for k, v in reps.items():
        if len(v) < max(2, n_boot // 2) or not np.isfinite(estimate.get(k, np.nan)):
            continue
        shift = estimate[k] - float(np.mean(v))
        lo, hi = float(np.percentile(v, 2.5)) + shift, float(np.percentile(v, 97.5)) + shift
        if min(v) >= 0.0 and estimate[k] >= 0.0:  # a non-negative score (a divergence, a W1, a ratio)
            lo = max(lo, 0.0)
        out[k] = (lo, hi)
    return out


def score_with_floor(score: Callable, reference: dict | Frames, backmapped: dict | Frames, *,
                     second_reference: dict | Frames | None = None, n_boot: int = N_BOOTSTRAP, n_blocks: int = N_BLOCKS,
                     seed: int = 0, estimate: dict[str, float] | None = None) -> dict[str, float]:
    """``score(reference, backmapped)`` with, for each metric, its interval, its floor and the floor's interval.

    The floor is ``score`` between the two :func:`reference_halves` (or between ``reference`` and
    ``second_reference``); the "backmapped" side of the floor carries its own CG coordinates, so a
    CG-RMSD floor is the mapping's round-off. See the module docstring for the names.
    estimate : ``score(reference, backmapped)`` when the caller has it already.
    """
    out = dict(score(reference, backmapped) if estimate is None else estimate)
    if n_boot > 0:
        for k, (lo, hi) in bootstrap_ci(score, reference, backmapped, n_boot=n_boot, n_blocks=n_blocks,
                                        seed=seed, estimate=out).items():
            out[f"{k}_ci_lo"], out[f"{k}_ci_hi"] = lo, hi
    a, b = (reference, second_reference) if second_reference is not None else reference_halves(reference)
    b = _without_samples(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        floor = score(a, b)
    floor_ci = bootstrap_ci(score, a, b, n_boot=n_boot, n_blocks=n_blocks, seed=seed + 1,
                            estimate=floor) if n_boot > 0 else {}
    for k, v in floor.items():
        if k in NOT_BOOTSTRAPPED or k not in out:
            continue
        out[f"{k}_floor"] = v
        if k in floor_ci:
            out[f"{k}_floor_ci_lo"], out[f"{k}_floor_ci_hi"] = floor_ci[k]
        if v > 0 and np.isfinite(v):
            out[f"{k}_over_floor"] = out[k] / v
    return out
