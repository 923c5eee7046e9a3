"""Refinement: N steps of batched, CG-restrained energy minimisation with the torch force field.

Minimises, for every frame of a batch at once,

    U(x) + k/2 * sum_b |(C x)_b - y_b|^2

(U the system's force field, :func:`finegrain.platform.science.energies.energy_model`;
C the CG mapping, y the beads, k = ``k_restraint`` kJ/mol/nm^2, the EM
baseline's 1e5 by default) by steepest descent with a per-frame step: a step
that lowers a frame's objective is kept and its step grows by 1.2; one that
raises it is undone and its step halves. No atom moves more than
``max_move_nm`` in one step. The same objective as the EM baseline's OpenMM
minimiser, on any torch device, for all frames and samples together.

Refined structures are a different model: evaluation gives them their own
leaderboard row (``LABEL+refineN``) and never replaces the raw model's scores.
"""

from __future__ import annotations

import numpy as np
import torch

from finegrain.datasets.systems import UnknownSystemError, get_system
from finegrain.platform.science.energies import energy_model
from finegrain.platform.science.errors import InputError

__all__ = ["refine", "refined_label", "K_RESTRAINT"]

K_RESTRAINT = 1.0e5  # kJ/mol/nm^2, as the EM baseline


def refined_label(label: str, steps: int) -> str:
    """Leaderboard name of ``label``'s structures after ``steps`` refinement steps."""
    return f"{label}+refine{int(steps)}"


def _energy(system: str | None, device, dtype):
    if not system:
        raise InputError("--refine: the model does not name the system whose force field refines it; give --system")
    try:
        return energy_model(get_system(system), backend="torch", device=device, dtype=dtype, fallback=True)
    except (UnknownSystemError, ValueError, KeyError) as exc:
        raise InputError(f"--refine: no force field for system {system!r} ({exc})") from None


def refine(xyz: np.ndarray, cg_xyz: np.ndarray, mapping, system: str | None, steps: int, *,
           k_restraint: float = K_RESTRAINT, max_move_nm: float = 0.01, device: str | torch.device = "cpu",
           batch: int = 1024) -> np.ndarray:
    """Refined copies of AA frames.

    xyz : [..., T, N, 3] nm (any leading sample axes); cg_xyz : [T, n, 3] nm, the beads of each frame.
    system : the reference system whose force field is used (InputError naming ``--refine`` when unknown).
    steps : minimisation steps (0: unchanged). Returns an array of xyz's shape (float64).
    """
    if int(steps) != steps or steps < 0:
        raise InputError(f"--refine: expected a number of steps >= 0, got {steps}")
    x = np.asarray(xyz, dtype=np.float64)
    if steps == 0:
        return x.copy()
    y = np.asarray(cg_xyz, dtype=np.float64)
    lead = x.shape[:-3]
    t, n = x.shape[-3], x.shape[-2]
    if y.shape != (t, mapping.n_beads, 3):
        raise InputError(f"cg_xyz: expected [{t}, {mapping.n_beads}, 3] for {t} frames, got {list(y.shape)}")
    flat = x.reshape(-1, n, 3)
    beads = np.broadcast_to(y, (*lead, *y.shape)).reshape(-1, mapping.n_beads, 3)
    u = _energy(system, device, torch.float64)
    c = torch.as_tensor(np.array(mapping.matrix), dtype=torch.float64, device=device)
    out = np.empty_like(flat)
    for s in range(0, len(flat), batch):
        out[s:s + batch] = _minimise(u, c, torch.as_tensor(flat[s:s + batch], device=device),
                                     torch.as_tensor(beads[s:s + batch], device=device), int(steps),
                                     float(k_restraint), float(max_move_nm)).cpu().numpy()
    return out.reshape(x.shape)


def _minimise(u, c, x, y, steps: int, k: float, max_move: float) -> torch.Tensor:
    def objective(p):
        p = p.detach().requires_grad_(True)
        e = u(p) + 0.5 * k * ((torch.einsum("bn,fnk->fbk", c, p) - y) ** 2).sum((-1, -2))
        g, = torch.autograd.grad(e.sum(), p)
        return e.detach(), g

    e, g = objective(x)
    step = torch.full((x.shape[0],), 1e-4, dtype=x.dtype, device=x.device)  # nm^2 mol/kJ
    for _ in range(steps):
        move = step[:, None, None] * g
        scale = (max_move / move.norm(dim=-1).amax(-1).clamp_min(1e-12)).clamp(max=1.0)
        trial = x - move * scale[:, None, None]
        e_t, g_t = objective(trial)
        better = torch.isfinite(e_t) & (e_t <= e)
        x = torch.where(better[:, None, None], trial, x)
        e = torch.where(better, e_t, e)
        g = torch.where(better[:, None, None], g_t, g)
        step = torch.where(better, step * 1.2, step * 0.5)
    return x.detach()
