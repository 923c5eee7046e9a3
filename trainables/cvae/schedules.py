"""Loss-weight schedules as plain functions of the integer training step.

Shmilovich et al. (2022), SI 4.1: eq. 5 (exponential annealing of the energy prefactor
lambda) and eq. 6 (cyclic sigmoid annealing of the KL prefactor beta, after
Fu et al.), plus a constant schedule.  Shared by any model family.

Every schedule function accepts a Python int (returns a Python float) or an
integer numpy array (returns a float64 array of the same shape).  Steps count
from 0.

Short runs: :func:`compress_schedule` rescales breakpoints written for a run of
``reference_steps`` steps (e.g. Table 1's 14.8M ADP steps) to a run of
``max_steps < reference_steps`` steps by f = max_steps / reference_steps, so
every phase (lambda = 0 warm-up, lambda ramp, beta cycles) keeps its fraction
of the run; runs at least ``reference_steps`` long are left unchanged.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["lambda_schedule", "beta_schedule", "constant_schedule", "ScheduleBreakpoints", "compress_schedule"]


def _steps(step) -> tuple[np.ndarray, bool]:
    """Validate ``step``; return (int64 array, was_scalar)."""
    if isinstance(step, bool) or isinstance(step, np.bool_):
        raise ValueError(f"step must be a non-negative integer (or integer array), got {step!r}")
    arr = np.asarray(step)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.floor(arr)):
            raise ValueError("step must hold non-negative integers, got non-integral values")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"step must be a non-negative integer (or integer array), got dtype {arr.dtype}")
    if np.any(arr < 0):
        raise ValueError("step must be >= 0")
    return arr.astype(np.int64), arr.ndim == 0


def _out(values: np.ndarray, scalar: bool):
    return float(values) if scalar else values


def _nonneg_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    return int(v)


def _pos_int(v, name: str) -> int:
    if _nonneg_int(v, name) == 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def _finite(v, name: str, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v!r}")
    return float(v)


def lambda_schedule(step, t_lambda0: int, n_lambda: int, lambda_initial: float, lambda_final: float):
    """Energy-loss prefactor lambda(t), eq. 5 of Shmilovich et al. (2022) (SI 4.1).

    ::

        lambda(t) = 0                                                   t < t_lambda0
                  = lambda_initial * (lambda_final / lambda_initial) ** ((t - t_lambda0) / n_lambda)
                                                       t_lambda0 <= t < t_lambda0 + n_lambda
                  = lambda_final                                        t >= t_lambda0 + n_lambda

    Parameters
    ----------
    step : int or integer ndarray, >= 0
    t_lambda0 : int >= 0, steps with lambda = 0
    n_lambda : int > 0, length of the exponential ramp in steps
    lambda_initial, lambda_final : float > 0 (the ramp is geometric)
    """
    t, scalar = _steps(step)
    t0 = _nonneg_int(t_lambda0, "t_lambda0")
    n = _pos_int(n_lambda, "n_lambda")
    li = _finite(lambda_initial, "lambda_initial", positive=True)
    lf = _finite(lambda_final, "lambda_final", positive=True)
    frac = np.clip((t - t0) / n, 0.0, 1.0)
    ramp = li * (lf / li) ** frac
    values = np.where(t < t0, 0.0, np.where(t >= t0 + n, lf, ramp)).astype(np.float64)
    return _out(values, scalar)


def beta_schedule(step, n_cycles: int, cycle_length: int, k: float, tau: float):
    """KL prefactor beta(t), cyclic sigmoid annealing, eq. 6 of Shmilovich et al. (2022) (SI 4.1).

    ::

        beta(t) = 1 / (1 + exp(-k (mod(t, R) - tau)))    t < M R
                = 1                                      t >= M R

    Parameters
    ----------
    step : int or integer ndarray, >= 0
    n_cycles : int >= 0, number of cycles M (0 gives beta = 1 from the start)
    cycle_length : int > 0, cycle length R in steps
    k : float > 0, sigmoid steepness (1/steps)
    tau : float, sigmoid centre within a cycle (steps)
    """
    t, scalar = _steps(step)
    m = _nonneg_int(n_cycles, "n_cycles")
    r = _pos_int(cycle_length, "cycle_length")
    k = _finite(k, "k", positive=True)
    tau = _finite(tau, "tau")
    x = k * (np.mod(t, r).astype(np.float64) - tau)
    e = np.exp(-np.abs(x))  # in (0, 1]: no overflow, full relative precision in both tails
    sig = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))  # == 1 / (1 + exp(-x))
    values = np.where(t < m * r, sig, 1.0).astype(np.float64)
    return _out(values, scalar)


def constant_schedule(step, value: float = 1.0):
    """A constant weight (e.g. beta = 1 for the chignolin model), broadcast to ``step``."""
    t, scalar = _steps(step)
    v = _finite(value, "value")
    return _out(np.full(t.shape, v, dtype=np.float64), scalar)


class ScheduleBreakpoints(NamedTuple):
    """Breakpoints of eqs. 5 and 6 in steps: t_lambda0, n_lambda, cycle_length R, tau (steps), k (1/steps)."""

    t_lambda0: int
    n_lambda: int
    cycle_length: int
    tau: float
    k: float


def _round_ratio(a: int, m: int, r: int) -> int:
    """round(a * m / r), halves up, in exact integer arithmetic."""
    return (2 * a * m + r) // (2 * r)


def compress_schedule(max_steps: int, reference_steps: int | None, *, t_lambda0: int, n_lambda: int,
                      cycle_length: int, tau: float, k: float) -> ScheduleBreakpoints:
    """Breakpoints written for a ``reference_steps``-step run, scaled to a ``max_steps``-step run.

    With f = max_steps / reference_steps < 1 (a run shorter than the one the
    schedule was written for, e.g. 600 steps of Table 1's 14.8M-step ADP
    schedule) every breakpoint is scaled by f, so each phase keeps its
    fraction of the run:

    * t_lambda0' = ceil(f t_lambda0) steps of lambda = 0 (rounded up: the
      warm-up is never a smaller fraction than the paper's, and lambda(0) = 0
      whenever t_lambda0 > 0);
    * n_lambda' = max(1, round(f n_lambda)) steps of geometric ramp;
    * R' = max(1, round(f R)) steps per beta cycle (the number of cycles M is
      kept), with tau' = tau R' / R steps and k' = k R / R' per step, so the
      sigmoid has the same shape within a cycle.

    Runs with max_steps >= reference_steps, or ``reference_steps=None``
    (breakpoints in absolute steps), get the breakpoints back unchanged.
    All arguments in steps (k in 1/steps); integers are exact (no float rounding).
    """
    m = _pos_int(max_steps, "max_steps")
    t0 = _nonneg_int(t_lambda0, "t_lambda0")
    n = _pos_int(n_lambda, "n_lambda")
    r_len = _pos_int(cycle_length, "cycle_length")
    tau = _finite(tau, "tau")
    k = _finite(k, "k", positive=True)
    if reference_steps is None or m >= _pos_int(reference_steps, "reference_steps"):
        return ScheduleBreakpoints(t0, n, r_len, tau, k)
    ref = int(reference_steps)
    r_new = max(1, _round_ratio(r_len, m, ref))
    return ScheduleBreakpoints(-(-t0 * m // ref), max(1, _round_ratio(n, m, ref)), r_new,
                               tau * r_new / r_len, k * r_len / r_new)
