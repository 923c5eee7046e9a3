"""Batched, differentiable atomistic energies U(x) and forces -dU/dx.

Entry point::

    from finegrain.platform.science.energies import energy_model
    model = energy_model(get_system("adp"), backend="torch", dtype=torch.float64)  # finegrain.datasets.systems
    u = model(positions)                         # [B] kJ/mol, positions [B, N, 3] nm
    forces = -torch.autograd.grad(u.sum(), positions)[0]
    model.terms(positions)                       # {"bond", "angle", ..., "solvation"} -> [B]

Backends: "torch" (:class:`TorchForceField`, batched, CPU/GPU, float32/64,
exportable to a parameter file usable without OpenMM) and "openmm"
(:class:`OpenMMEnergy`, OpenMM itself behind an autograd function; any
System).  Nothing here imports OpenMM until a System is built or read.
"""

from __future__ import annotations

import torch

from finegrain.platform.science.energies.checks import check_positions
from finegrain.platform.science.energies.openmm_reference import ContextPool, OpenMMEnergy, openmm_energies_forces
from finegrain.platform.science.energies.parameters import (
    PARAMETER_KEYS,
    SUPPORTED_FORCES,
    UnsupportedForceError,
    load_parameters,
    save_parameters,
)
from finegrain.platform.science.energies.terms import soft_cap
from finegrain.platform.science.energies.torch_forcefield import TERM_NAMES, TorchForceField, _as_dtype

__all__ = [
    "energy_model",
    "TorchForceField",
    "OpenMMEnergy",
    "ContextPool",
    "UnsupportedForceError",
    "TERM_NAMES",
    "PARAMETER_KEYS",
    "SUPPORTED_FORCES",
    "check_positions",
    "load_parameters",
    "save_parameters",
    "openmm_energies_forces",
    "soft_cap",
]


def _resolve_system(system):
    if hasattr(system, "create_system"):  # a ReferenceSystem (duck-typed: the data layer sits above this one)
        return system.create_system(constraints=None)
    if hasattr(system, "getNumParticles") and hasattr(system, "getForces"):
        return system
    raise ValueError(
        f"system: expected an openmm.System or a ReferenceSystem (finegrain.datasets.systems.get_system), "
        f"got {type(system).__name__}"
    )


def energy_model(
    system,
    backend: str = "torch",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    u_max: float | None = None,
    fallback: bool = False,
    **kwargs,
) -> torch.nn.Module:
    """A module computing U(x) [B] (kJ/mol) from positions [B, N, 3] (nm); forces by autograd.

    system : openmm.System, or a ReferenceSystem (``get_system("adp")``), which is
        built with ``create_system(constraints=None)`` (constraints add no energy).
    backend : "torch" (:class:`TorchForceField`) or "openmm" (:class:`OpenMMEnergy`).
    device, dtype : where/in which precision energies are computed and returned;
        dtype None -> float32 for "torch" (training speed), float64 for "openmm".
    u_max : optional energy cap (kJ/mol) for training; see :func:`soft_cap`
        (kwarg ``cap="log"|"clamp"``). Off (None) for evaluation.
    fallback : torch backend only: evaluate forces without a torch
        implementation through OpenMM instead of raising UnsupportedForceError.
    kwargs : passed on (torch: cap, r_min; openmm: platform, n_workers).

    The returned module keeps the OpenMM System as ``.system``.
    """
    if backend not in ("torch", "openmm"):
        raise ValueError(f"backend: expected 'torch' or 'openmm', got {backend!r}")
    system = _resolve_system(system)
    if backend == "torch":
        return TorchForceField.from_system(
            system, fallback=fallback, device=device, dtype=torch.float32 if dtype is None else dtype,
            u_max=u_max, **kwargs,
        )  # fmt: skip
    cap = kwargs.pop("cap", "log")
    model = OpenMMEnergy(system, device=device, dtype=torch.float64 if dtype is None else _as_dtype(dtype), **kwargs)
    return model if u_max is None else _Capped(model, float(u_max), cap)


class _Capped(torch.nn.Module):
    """An energy module with :func:`soft_cap` applied to its output (keeps ``.system``)."""

    def __init__(self, inner: torch.nn.Module, u_max: float, cap: str):
        super().__init__()
        soft_cap(torch.zeros(1), u_max, cap)  # validates cap
        self.inner, self.u_max, self.cap = inner, u_max, cap
        self.system = inner.system

    def forward(self, positions) -> torch.Tensor:
        return soft_cap(self.inner(positions), self.u_max, self.cap)
