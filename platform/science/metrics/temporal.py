"""Temporal coherence (frame-to-frame velocities) and throughput.

Shmilovich et al., "Temporally coherent backmapping of molecular trajectories
from coarse-grained to atomistic resolution" (2022), figs. 6 and 10: per-atom speeds |x_i(t+1) - x_i(t)| / dt by a forward
finite difference between consecutive frames of one trajectory, pooled over
atoms and frames, compared as histograms by the JS divergence. For data
backmapped from CG simulations (accelerated dynamics) the backmapped speeds
may be rescaled by one constant so their mean matches the reference's.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from finegrain.platform.science.metrics.divergences import histogram_js
from finegrain.platform.science.metrics.kinetics import split_trajectories
from finegrain.platform.science.metrics.structure import check_frames

__all__ = [
    "VELOCITY_EDGES_NM_PS",
    "frame_velocities",
    "velocity_scale_factor",
    "velocity_metrics",
    "frames_per_second",
    "measure_throughput",
]

#: Speed bins: 0-3 nm/ps in 300 bins of 0.01 nm/ps (the thermal speed of H at
#: 300 K is ~2.7 nm/ps; finite differences over >= 0.1 ps are slower). Faster
#: values land in the last bin.
VELOCITY_EDGES_NM_PS = np.linspace(0.0, 3.0, 301)


def minimum_image(d, box_nm) -> np.ndarray:
    """Displacements d [F, M, 3] nm to their minimum image in boxes box_nm [F, 3, 3] nm (rows a, b, c).

    Reduced (fractional) coordinates rounded to the nearest lattice point; exact for any box when
    |d| is below half the shortest box height (a frame-to-frame step of a liquid)."""
    frac = np.einsum("fmj,fjk->fmk", d, np.linalg.inv(box_nm))
    return d - np.einsum("fmk,fkj->fmj", np.round(frac), box_nm)


def frame_velocities(xyz, traj_id=None, time_ps=None, dt_ps: float = 1.0, box_nm=None) -> np.ndarray:
    """Per-atom finite-difference speeds (nm/ps), pooled: [M] with M = sum_traj (T - 1) * N.

    xyz [F, N, 3] nm, frames of each trajectory consecutive and in time order;
    traj_id [F] separates trajectories (no difference across a boundary);
    time_ps [F] gives the time step per pair (else ``dt_ps`` for all);
    box_nm [F, 3, 3] nm (periodic frames): each displacement is taken to its minimum image in the later
    frame's box, so a molecule wrapped back into the box between frames does not jump by a box vector.
    """
    xyz = check_frames(xyz, "xyz").astype(np.float64)
    if time_ps is not None:
        time_ps = np.asarray(time_ps, dtype=np.float64)
        if time_ps.shape != (xyz.shape[0],):
            raise ValueError(f"time_ps: expected shape [{xyz.shape[0]}], got {time_ps.shape}")
    if not dt_ps > 0:
        raise ValueError(f"dt_ps: must be > 0, got {dt_ps}")
    out = []
    for idx in split_trajectories(xyz.shape[0], traj_id):
        if idx.size < 2:
            continue
        d = np.diff(xyz[idx], axis=0)  # [T-1, N, 3]
        if box_nm is not None:
            d = minimum_image(d, np.asarray(box_nm, np.float64)[idx][1:])
        step = np.linalg.norm(d, axis=-1)  # [T-1, N]
        dt = np.diff(time_ps[idx])[:, None] if time_ps is not None else dt_ps
        if np.any(np.asarray(dt) <= 0):
            raise ValueError("time_ps: must increase within each trajectory")
        out.append((step / dt).ravel())
    return np.concatenate(out) if out else np.zeros(0)


def velocity_scale_factor(ref_speeds, bm_speeds) -> float:
    """The constant s with mean(s * bm) = mean(ref) (Shmilovich et al. (2022): ~3.25 for ADP, ~17.8 for chignolin CG data)."""
    ref, bm = np.asarray(ref_speeds, np.float64), np.asarray(bm_speeds, np.float64)
    if ref.size == 0 or bm.size == 0 or bm.mean() <= 0:
        return float("nan")
    return float(ref.mean() / bm.mean())


def velocity_metrics(ref_speeds, bm_speeds) -> dict[str, float]:
    """``js_velocity``, ``velocity_scale_factor`` and ``js_velocity_rescaled`` (nats, on VELOCITY_EDGES_NM_PS)."""
    ref, bm = np.asarray(ref_speeds, np.float64), np.asarray(bm_speeds, np.float64)
    if ref.size == 0 or bm.size == 0:
        return {}
    scale = velocity_scale_factor(ref, bm)
    out = {"js_velocity": histogram_js(ref, bm, VELOCITY_EDGES_NM_PS), "velocity_scale_factor": scale,
           "velocity_mean_ratio": float(bm.mean() / ref.mean()) if ref.mean() > 0 else float("nan")}
    if np.isfinite(scale):
        out["js_velocity_rescaled"] = histogram_js(ref, scale * bm, VELOCITY_EDGES_NM_PS)
    return out


def frames_per_second(n_frames: int, seconds: float) -> float:
    """Throughput: backmapped frames per second of wall time."""
    if seconds <= 0:
        raise ValueError(f"seconds: must be > 0, got {seconds}")
    return float(n_frames) / float(seconds)


def measure_throughput(backmap_xyz: Callable[..., np.ndarray], cg_xyz, n_samples: int = 1, seed: int = 0) -> float:
    """Time one call ``backmap_xyz(cg_xyz, n_samples=n_samples, seed=seed)``; returns frames/s (T * K / s)."""
    cg = np.asarray(cg_xyz)
    t0 = time.perf_counter()
    out = backmap_xyz(cg, n_samples=n_samples, seed=seed)
    elapsed = time.perf_counter() - t0
    return frames_per_second(int(np.prod(np.asarray(out).shape[:2])), max(elapsed, 1e-9))
