"""ODE integration (fixed-step Euler / RK4, adaptive Dormand-Prince 5(4)) and divergences.

State tensors are [B, D] (any float dtype/device); ``f(t, state)`` returns
d state / dt with the same shape, t a Python float.  Integration may run
forwards (t1 > t0, sampling) or backwards (t1 < t0, likelihood).

Divergences of a vector field ``v(x)`` at x [B, N, 3] along given tangent
vectors U [K, N, 3] (or per-sample [K, B, N, 3]): sum_k u_k^T J_v(x) u_k,
by one vector-Jacobian product per k.  With an orthonormal basis of the
fibre this is the exact trace over the fibre; with K Gaussian probes
u = P eps it is Hutchinson's unbiased estimator (divided by K).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

__all__ = ["odeint", "trace_along", "DOPRI5_MAX_STEPS"]

Field = Callable[[float, torch.Tensor], torch.Tensor]

#: step budget of the adaptive solver before it gives up (raises RuntimeError).
DOPRI5_MAX_STEPS = 10_000

# Dormand-Prince 5(4) tableau (FSAL).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


def odeint(f: Field, y0: torch.Tensor, t0: float, t1: float, method: str = "rk4", steps: int = 20,
           rtol: float = 1e-4, atol: float = 1e-5,
           error_groups: Sequence[slice] | None = None) -> tuple[torch.Tensor, int]:
    """Integrate dy/dt = f(t, y) from t0 to t1; returns (y(t1), number of f evaluations).

    method: ``euler`` / ``rk4`` with ``steps`` equal steps, or ``dopri5``
    (adaptive; per-element tolerance atol + rtol |y| in the state's units,
    RMS norm per sample and per error group, the worst sample and group
    control the shared step).  ``error_groups``: slices of the D columns
    whose errors are normed separately (default: all D together); e.g. an
    augmented state [x, log-det] gives the log-det its own group, so its
    error is not diluted by the RMS over the many x columns.
    """
    if y0.ndim != 2:
        raise ValueError(f"y0: expected shape [B, D], got {tuple(y0.shape)}")
    if method == "dopri5":
        groups = tuple(error_groups) if error_groups else (slice(None),)
        if any(len(range(y0.shape[1])[g]) == 0 for g in groups):
            raise ValueError(f"error_groups: every group must select at least one of the {y0.shape[1]} columns")
        return _dopri5(f, y0, float(t0), float(t1), rtol, atol, groups)
    if method not in ("euler", "rk4"):
        raise ValueError(f"method: expected euler, rk4 or dopri5, got {method!r}")
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    h = (t1 - t0) / steps
    y, nfe = y0, 0
    for i in range(steps):
        t = t0 + i * h
        if method == "euler":
            y = y + h * f(t, y)
            nfe += 1
        else:
            k1 = f(t, y)
            k2 = f(t + h / 2, y + h / 2 * k1)
            k3 = f(t + h / 2, y + h / 2 * k2)
            k4 = f(t + h, y + h * k3)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            nfe += 4
    return y, nfe


def _dopri5(f: Field, y: torch.Tensor, t0: float, t1: float, rtol: float, atol: float,
            groups: tuple[slice, ...] = (slice(None),)):
    direction = 1.0 if t1 >= t0 else -1.0
    span = abs(t1 - t0)
    if span == 0:
        return y, 0
    t, h = t0, direction * min(0.1, span)
    k1 = f(t, y)
    nfe = 1
    for _ in range(DOPRI5_MAX_STEPS):
        if direction * (t + h - t1) > 0:
            h = t1 - t
        ks = [k1]
        for i in range(1, 6):
            yi = y + h * sum(a * k for a, k in zip(_A[i], ks))
            ks.append(f(t + _C[i] * h, yi))
        y5 = y + h * sum(b * k for b, k in zip(_B5, ks))
        k7 = f(t + h, y5)
        ks.append(k7)
        nfe += 6
        err = h * sum((b5 - b4) * k for b5, b4, k in zip(_B5, _B4, ks))
        scale = atol + rtol * torch.maximum(y.abs(), y5.abs())
        rel = (err / scale).pow(2)
        ratio = max(float(rel[:, g].mean(dim=1).sqrt().max()) for g in groups)
        if ratio <= 1.0:
            t, y, k1 = t + h, y5, k7
            if direction * (t - t1) >= -1e-12:
                return y, nfe
        factor = 5.0 if ratio == 0 else min(5.0, max(0.2, 0.9 * ratio ** -0.2))
        h = h * factor
        if abs(h) < 1e-10:
            raise RuntimeError(f"dopri5: step size underflow at t={t:.6g} (rtol={rtol}, atol={atol})")
    raise RuntimeError(f"dopri5: more than {DOPRI5_MAX_STEPS} steps (rtol={rtol}, atol={atol})")


def trace_along(v_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, vectors: torch.Tensor,
                chunk_rows: int = 8192, create_graph: bool = False) -> torch.Tensor:
    """sum_k u_k^T J_v(x) u_k for each sample, [B].

    v_fn: x [M, N, 3] -> v [M, N, 3], acting on each row independently (the
    network never mixes samples); x [B, N, 3]; vectors: [K, N, 3] (shared by
    every sample) or [K, B, N, 3] (per sample).  The K copies of the batch
    are evaluated together, ``chunk_rows`` rows at a time.
    """
    if x.ndim != 3:
        raise ValueError(f"x: expected shape [B, N, 3], got {tuple(x.shape)}")
    b = x.shape[0]
    if vectors.ndim == 3:
        vectors = vectors[:, None].expand(-1, b, -1, -1)
    if vectors.ndim != 4 or vectors.shape[1:] != x.shape:
        raise ValueError(f"vectors: expected [K, N, 3] or [K, {b}, N, 3] matching x {tuple(x.shape)}, "
                         f"got {tuple(vectors.shape)}")
    k_total = vectors.shape[0]
    per = max(1, chunk_rows // max(b, 1))
    total = x.new_zeros(b)
    for start in range(0, k_total, per):
        u = vectors[start:start + per]
        k = u.shape[0]
        with torch.enable_grad():
            xr = x.detach()[None].expand(k, -1, -1, -1).reshape(k * b, *x.shape[1:]).requires_grad_(True)
            v = v_fn(xr).reshape(k, b, *x.shape[1:])
            (g,) = torch.autograd.grad((v * u).sum(), xr, create_graph=create_graph)
        total = total + (g.reshape(k, b, *x.shape[1:]) * u).sum(dim=(0, 2, 3))
    return total
