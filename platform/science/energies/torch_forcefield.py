"""Batched torch force field built from an OpenMM System (or a parameter file).

:class:`TorchForceField` evaluates HarmonicBondForce, HarmonicAngleForce,
PeriodicTorsionForce, NonbondedForce (NoCutoff) and GBSAOBCForce (OBC II) for
frames ``[B, N, 3]`` (nm) in torch, on CPU or GPU, in float32 or float64;
energies in kJ/mol.  It imports no OpenMM unless built with
:meth:`TorchForceField.from_system`; :meth:`from_parameters` loads a ``.npz``
written by :meth:`save_parameters` on machines without OpenMM.

Forces come from closed-form gradients (:mod:`.terms`, :mod:`.pairs`), not
from taping the energy expression: the forward pass computes each term's
energy and dE/dx together, and a custom autograd function hands dE/dx back,
so ``torch.autograd.grad(U.sum(), x)`` costs one matrix product instead of a
backward pass through a few hundred operations (and keeps no per-pair tensors
alive).  Second derivatives are not available (``once_differentiable``).
Pair terms run over dense ``[B, N, N]`` matrices (no cutoff); for thousands of
frames of a large system use :meth:`TorchForceField.energies_and_forces`,
which evaluates in chunks.  ``compile=True`` runs the evaluation through
``torch.compile`` (about 10-30 s to compile on two CPU cores, then about
3x faster on CPU: see ``tests/benchmarks/test_bench_energies.py``).
Bonded terms are evaluated frames-last (each term's coordinates are
``[M, B]`` rows, so the arithmetic vectorises along the frames, not along a
few dozen terms), and their per-atom gradients are rows added onto their
atoms with ``index_add``.  Like the ``[B, N, N]`` pair matrices this suits the
small systems backmapping works with (N up to a few hundred atoms).

Training safety (``u_max``): Shmilovich et al. (2022) (section 2.3, Table 1: U_max = 1e5
kJ/mol for chignolin, none for ADP) clamps the reconstructed energy,
``L_ENERGY(U_AA, min(U_hat, U_max))``.  A plain clamp has zero gradient above
the cap, and overlapping atoms still produce inf/NaN gradients *inside* the
sum (``r^-12`` overflows, ``0 * inf``).  With ``u_max`` set this module
therefore (1) smoothly floors every nonbonded/GB pair distance below
``r_min`` (default 0.01 nm, far below any physical contact, so normal frames
are unchanged; see :func:`~finegrain.platform.science.energies.pairs.pair_energies`)
and (2) caps the total with :func:`~finegrain.platform.science.energies.terms.soft_cap`:
``cap="log"`` (default) is the identity below ``u_max`` and
``u_max + log(1 + U - u_max)`` above (finite, non-zero, bounded gradients);
``cap="clamp"`` is the paper's hard ``min(U, u_max)``.  ``u_max=None``
(default, for evaluation) leaves energies exact.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from finegrain.platform.science.energies.checks import check_positions
from finegrain.platform.science.energies.parameters import (
    UnsupportedForceError,
    describe_unsupported,
    load_parameters,
    save_parameters,
    validate_parameters,
)
from finegrain.platform.science.energies.pairs import pair_energies, pair_tables
from finegrain.platform.science.energies.terms import angle_terms, bond_terms, soft_cap, torsion_terms

__all__ = ["TorchForceField", "TERM_NAMES"]

#: Keys of :meth:`TorchForceField.terms` (plus "other" for fallback forces).
TERM_NAMES = ("bond", "angle", "torsion", "lj", "coulomb", "solvation")
#: Bonded terms: (name, atoms per term, function, parameter buffers).
_BONDED = (
    ("bond", 2, bond_terms, ("bond_length", "bond_k")),
    ("angle", 3, angle_terms, ("angle_theta0", "angle_k")),
    ("torsion", 4, torsion_terms, ("torsion_periodicity", "torsion_phase", "torsion_k")),
)

#: Inductor options for the pair graph of compile=True: store every [B, N, N] intermediate that is read
#: twice instead of recomputing it in each consumer (about 1.5x faster on CPU; the bonded graph is
#: faster with inductor's defaults).
_PAIR_COMPILE_OPTIONS = {"realize_reads_threshold": 1}
_DTYPES = {"float32": torch.float32, "float64": torch.float64, torch.float32: torch.float32, torch.float64: torch.float64}


def _as_dtype(dtype) -> torch.dtype:
    key = dtype.removeprefix("torch.") if isinstance(dtype, str) else dtype
    if key not in _DTYPES:
        raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype!r}")
    return _DTYPES[key]


class _Energies(torch.autograd.Function):
    """Energies of evaluate(pos) whose backward is the closed-form dE/dx.

    per_term: the output is [B, 6] (TERM_NAMES order), else the total [B].
    """

    @staticmethod
    def forward(ctx, pos, evaluate, per_term: bool):
        energies, grads = evaluate(pos, "terms" if per_term else "total")
        ctx.save_for_backward(grads)
        return energies if per_term else energies.sum(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_energies):
        (grads,) = ctx.saved_tensors
        weights = grad_energies.reshape(grads.shape[0], grads.shape[1])
        return torch.einsum("bt,btnc->bnc", weights, grads), None, None


class TorchForceField(torch.nn.Module):
    """U(x) of a fixed-charge force field with OBC implicit solvent, in torch.

    parameters : dict of arrays (see :mod:`~finegrain.platform.science.energies.parameters`)
    dtype, device : compute dtype (float32/float64) and device; positions are cast.
    u_max : None (exact energies) or the training cap in kJ/mol (see module doc).
    cap : "log" (smooth, default) or "clamp" (Shmilovich et al. (2022)); used only with u_max.
    r_min : pair-distance floor (nm) applied only when u_max is set.
    fallback : optional module (e.g. :class:`OpenMMEnergy` of a reduced System)
        whose energy is added as the term "other".
    system : the OpenMM System it was built from (kept as ``.system``), or None.
    compile : evaluate through ``torch.compile`` (compiles on the first call
        and again for a new batch size, then batch sizes are dynamic).

    forward(positions [B, N, 3] nm) -> energies [B] kJ/mol.
    """

    def __init__(self, parameters: dict, *, dtype=torch.float32, device="cpu", u_max: float | None = None,
                 cap: str = "log", r_min: float = 0.01, fallback: torch.nn.Module | None = None, system=None,
                 compile: bool = False):  # fmt: skip
        super().__init__()
        p = validate_parameters(parameters)
        dtype = _as_dtype(dtype)
        if u_max is not None:
            if isinstance(u_max, bool) or not isinstance(u_max, (int, float)) or not math.isfinite(u_max):
                raise ValueError(f"u_max: expected a finite number (kJ/mol) or None, got {u_max!r}")
            u_max = float(u_max)
        if cap not in ("log", "clamp"):
            raise ValueError(f"cap: expected 'log' or 'clamp', got {cap!r}")
        if not (isinstance(r_min, (int, float)) and 0.0 < r_min < 0.1):
            raise ValueError(f"r_min: expected a distance in (0, 0.1) nm, got {r_min!r}")
        self.ff_parameters = p
        self.n_atoms = int(p["n_atoms"])
        self.u_max, self.cap, self.r_min = u_max, cap, float(r_min)
        self.system = system
        self.fallback = fallback
        self.has_nonbonded, self.has_gb = bool(int(p["nb_present"])), bool(int(p["gb_present"]))

        def buf(name, value, integer=False):
            t = torch.as_tensor(np.asarray(value), dtype=torch.int64 if integer else torch.float64)
            self.register_buffer(name, t, persistent=False)

        for term, k, _, _ in _BONDED:
            idx = p[f"{term}_idx"].reshape(-1, k)
            slots = np.ascontiguousarray(idx.T).ravel()  # slot-major: atom c of every term, c = 0..k-1
            buf(f"{term}_slots", slots, integer=True)
        for key in ("bond_length", "bond_k", "angle_theta0", "angle_k", "torsion_periodicity", "torsion_phase",
                    "torsion_k"):  # fmt: skip
            buf(key, p[key])
        tables = pair_tables(p) if self.has_nonbonded or self.has_gb else {}
        self.pair_keys = tuple(tables)
        for key, value in tables.items():
            buf(f"pair_{key}", value)
        self.compiled = bool(compile)
        self._bonded_fn, self._pairs_fn = self._bonded, self._pairs
        if compile:  # two graphs: compiled together, inductor fuses them worse than apart
            self._bonded_fn = torch.compile(self._bonded)
            self._pairs_fn = torch.compile(self._pairs, options=_PAIR_COMPILE_OPTIONS)
        self.to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_system(cls, system, *, fallback: bool = False, **kwargs) -> "TorchForceField":
        """Build from an OpenMM ``System`` (imports openmm).

        Forces without a torch implementation raise UnsupportedForceError
        naming them, unless ``fallback=True``: then a reduced System holding
        only those forces is evaluated by OpenMM (:class:`OpenMMEnergy`) and
        added as the term "other".
        """
        # OpenMM is imported here, not at module top: the torch force field runs from a parameter file on
        # machines with torch and numpy only (the GPU benchmarks)
        from finegrain.platform.science.energies.parameters import extract_parameters, reduced_system

        params, unsupported = extract_parameters(system)
        extra = None
        if unsupported:
            if not fallback:
                raise UnsupportedForceError(
                    f"system: the torch force field cannot evaluate {describe_unsupported(unsupported)}; "
                    "use fallback=True to evaluate them with OpenMM, or backend='openmm'"
                )
            from finegrain.platform.science.energies.openmm_reference import OpenMMEnergy

            extra = OpenMMEnergy(reduced_system(system, [fi for fi, *_ in unsupported]))
            extra.fallback_forces = [name for _, name, _ in unsupported]
        return cls(params, fallback=extra, system=system, **kwargs)

    @classmethod
    def from_parameters(cls, path: str | Path, **kwargs) -> "TorchForceField":
        """Build from a ``.npz`` written by :meth:`save_parameters` (no OpenMM needed)."""
        return cls(load_parameters(path), **kwargs)

    def save_parameters(self, path: str | Path) -> Path:
        """Write the force-field parameters as a ``.npz`` of plain arrays; returns the path."""
        if self.fallback is not None:
            raise ValueError(
                f"save_parameters: forces {getattr(self.fallback, 'fallback_forces', '?')} are evaluated "
                "through OpenMM and cannot be exported"
            )
        return save_parameters(self.ff_parameters, path)

    # ------------------------------------------------------------------ evaluation
    @property
    def dtype(self) -> torch.dtype:
        return self.bond_k.dtype

    @property
    def device(self) -> torch.device:
        return self.bond_k.device

    def _prepare(self, positions) -> torch.Tensor:
        return check_positions(positions, self.n_atoms).to(device=self.device, dtype=self.dtype)

    def _bonded(self, pos: torch.Tensor, grad: str | None):
        """Bond, angle, torsion energies [B, 3] and their gradients [B, 3 or 1, N, 3] (or None)."""
        n_frames = pos.shape[0]
        frames = pos.permute(1, 2, 0)  # [N, 3, B]: each term's arithmetic runs along the frames
        atom_zeros = frames.new_zeros(self.n_atoms, 3 * n_frames)
        energies, grads = [], []
        for term, k, fn, names in _BONDED:
            slots = getattr(self, f"{term}_slots")
            if not len(slots):
                energies.append(pos.new_zeros(n_frames))
                grads.append(atom_zeros)
                continue
            atoms = [tuple(c.unbind(1)) for c in frames.index_select(0, slots).chunk(k, 0)]  # (x, y, z) [M, B]
            params = (getattr(self, name)[:, None] for name in names)
            energy, slot_grads = fn(*atoms, *params, want_grad=grad is not None)
            energies.append(energy.sum(0))
            if grad is not None:  # rows of k M slot gradients [3 B] added onto their atoms
                flat = torch.cat([torch.stack(g, 1) for g in slot_grads]).flatten(1)
                grads.append(atom_zeros.index_add(0, slots, flat))
        energies = torch.stack(energies, -1)
        if grad is None:
            return energies, None
        grads = sum(grads)[None] if grad == "total" else torch.stack(grads)  # [T, N, 3 B]
        return energies, grads.unflatten(-1, (3, n_frames)).permute(3, 0, 1, 2)

    def _pairs(self, pos: torch.Tensor, grad: str | None):
        """Lennard-Jones, Coulomb, solvation energies [B, 3] and gradients [B, 3 or 1, N, 3] (or None)."""
        if not self.pair_keys:
            grads = None if grad is None else pos.new_zeros(pos.shape[0], 1 if grad == "total" else 3, *pos.shape[1:])
            return pos.new_zeros(pos.shape[0], 3), grads
        tables = {key: getattr(self, f"pair_{key}") for key in self.pair_keys}
        r_min = self.r_min if self.u_max is not None else None
        return pair_energies(pos, tables, nonbonded=self.has_nonbonded, gbsa=self.has_gb, r_min=r_min, grad=grad)

    def _evaluate(self, pos: torch.Tensor, grad: str | None):
        """(energies [B, 6] kJ/mol in TERM_NAMES order, gradients kJ/mol/nm or None).

        grad: None, "terms" (dE_t/dx [B, 6, N, 3]) or "total" (dU/dx [B, 1, N, 3]).
        """
        bonded_e, bonded_g = self._bonded_fn(pos, grad)
        pair_e, pair_g = self._pairs_fn(pos, grad)
        energies = torch.cat([bonded_e, pair_e], -1)
        if grad is None:
            return energies, None
        return energies, (bonded_g + pair_g if grad == "total" else torch.cat([bonded_g, pair_g], 1))

    def _energies(self, pos: torch.Tensor, per_term: bool) -> torch.Tensor:
        """Energies [B, 6] (per_term) or [B] of the torch terms (no fallback, no cap)."""
        if torch.is_grad_enabled() and pos.requires_grad:
            return _Energies.apply(pos, self._evaluate, per_term)
        energies = self._evaluate(pos, None)[0]
        return energies if per_term else energies.sum(-1)

    def _other(self, pos: torch.Tensor) -> torch.Tensor:
        return self.fallback(pos).to(device=self.device, dtype=self.dtype)

    def terms(self, positions) -> dict[str, torch.Tensor]:
        """Per-term energies {bond, angle, torsion, lj, coulomb, solvation[, other]} -> [B] kJ/mol each.

        lj/coulomb include the exception (1-4) pairs; solvation is the OBC
        polar plus ACE non-polar energy; "other" is the OpenMM fallback.
        Never capped (the r_min floor applies when u_max is set).
        """
        pos = self._prepare(positions)
        out = dict(zip(TERM_NAMES, self._energies(pos, per_term=True).unbind(-1)))
        if self.fallback is not None:
            out["other"] = self._other(pos)
        return out

    def forward(self, positions) -> torch.Tensor:
        """Total potential energy [B] kJ/mol of positions [B, N, 3] nm (capped if u_max is set)."""
        pos = self._prepare(positions)
        total = self._energies(pos, per_term=False)
        if self.fallback is not None:
            total = total + self._other(pos)
        if self.u_max is not None:
            total = soft_cap(total, self.u_max, self.cap)
        return total

    def energies_and_forces(self, positions, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """(energies [B] kJ/mol, forces [B, N, 3] kJ/mol/nm), detached; forces = -dU/dx.

        Frames are evaluated ``chunk_size`` at a time, so any number of
        frames fits in memory (e.g. energy distributions of a trajectory).
        """
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
        pos = self._prepare(positions).detach()
        energies, forces = [], []
        for chunk in pos.split(chunk_size):
            x = chunk.clone().requires_grad_(True)
            with torch.enable_grad():
                u = self.forward(x)
                (grad,) = torch.autograd.grad(u.sum(), x)
            energies.append(u.detach())
            forces.append(-grad)
        return torch.cat(energies), torch.cat(forces)

    def extra_repr(self) -> str:
        n = {k: len(getattr(self, f"{k}_k")) for k in ("bond", "angle", "torsion")}
        return (
            f"n_atoms={self.n_atoms}, bonds={n['bond']}, angles={n['angle']}, torsions={n['torsion']}, "
            f"nonbonded={self.has_nonbonded}, gbsa={self.has_gb}, u_max={self.u_max}, dtype={self.dtype}, "
            f"compiled={self.compiled}"
        )
