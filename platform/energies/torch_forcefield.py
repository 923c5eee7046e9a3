"""Batched torch force field built from an OpenMM System (or a parameter file).

:class:`TorchForceField` evaluates HarmonicBondForce, HarmonicAngleForce,
PeriodicTorsionForce, NonbondedForce (NoCutoff) and GBSAOBCForce (OBC II) for
frames ``[B, N, 3]`` (nm) in torch, on CPU or GPU, in float32 or float64;
energies in kJ/mol, forces by autograd.  It imports no OpenMM unless built
with :meth:`TorchForceField.from_system`; :meth:`from_parameters` loads a
``.npz`` written by :meth:`save_parameters` on machines without OpenMM.

Pair terms run over an explicit list of all pairs i < j (no cutoff; for
N = 138 that is ~9.5k pairs), the nonbonded interacting pairs first so the
Lennard-Jones/Coulomb sums take a slice; exclusions and exceptions are folded
into the per-pair parameters.  Autograd keeps a few tens of ``[B, P]``
tensors, so evaluate thousands of frames of a large system in chunks
(:meth:`TorchForceField.energies_and_forces` does).

Training safety (``u_max``): paper 001 (section 2.3, Table 1: U_max = 1e5
kJ/mol for chignolin, none for ADP) clamps the reconstructed energy,
``L_ENERGY(U_AA, min(U_hat, U_max))``.  A plain clamp has zero gradient above
the cap, and overlapping atoms still produce inf/NaN gradients *inside* the
sum (``r^-12`` overflows, ``0 * inf``).  With ``u_max`` set this module
therefore (1) smoothly floors every nonbonded/GB pair distance below
``r_min`` (default 0.01 nm, far below any physical contact, so normal frames
are unchanged; see :func:`~finegrain.platform.energies.terms.pair_geometry`) and
(2) caps the total with :func:`~finegrain.platform.energies.terms.soft_cap`:
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

from finegrain.platform.energies.checks import check_positions
from finegrain.platform.energies.parameters import (
    UnsupportedForceError,
    describe_unsupported,
    load_parameters,
    save_parameters,
    validate_parameters,
)
from finegrain.platform.energies.terms import (
    ONE_4PI_EPS0,
    angle_energy,
    bond_energy,
    nonbonded_energy,
    obc_energy,
    obc_prefactor,
    pair_geometry,
    soft_cap,
    torsion_energy,
)

__all__ = ["TorchForceField", "TERM_NAMES", "pair_list"]

#: Keys of :meth:`TorchForceField.terms` (plus "other" for fallback forces).
TERM_NAMES = ("bond", "angle", "torsion", "lj", "coulomb", "solvation")

_DTYPES = {"float32": torch.float32, "float64": torch.float64, torch.float32: torch.float32, torch.float64: torch.float64}


def _as_dtype(dtype) -> torch.dtype:
    key = dtype.removeprefix("torch.") if isinstance(dtype, str) else dtype
    if key not in _DTYPES:
        raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype!r}")
    return _DTYPES[key]


def pair_list(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The atom pairs i < j the pair terms run over, with per-pair nonbonded parameters.

    Pairs with a non-zero nonbonded interaction come first (``n_nb`` of them,
    so the nonbonded terms take a slice, not a gather); the rest (excluded
    pairs) follow only if a GBSAOBCForce needs all pairs.  Nonbonded
    parameters: Lorentz-Berthelot combination of the particle parameters,
    exception pairs replaced by their own (chargeProd, sigma, epsilon).
    Returns {"pair_i", "pair_j" [P] int64, "sig6" [n_nb] nm^6,
    "eps4" [n_nb] kJ/mol (4 epsilon), "qq" [n_nb] kJ/mol nm (C q_i q_j)}.
    """
    n = int(p["n_atoms"])
    i, j = np.triu_indices(n, k=1)
    if int(p["nb_present"]):
        q, s, e = p["nb_charge"], p["nb_sigma"], p["nb_epsilon"]
        sig = 0.5 * (s[:, None] + s[None, :])
        eps = np.sqrt(e[:, None] * e[None, :])
        qq = ONE_4PI_EPS0 * q[:, None] * q[None, :]
        if len(p["exc_idx"]):
            a, b = p["exc_idx"].min(axis=1), p["exc_idx"].max(axis=1)
            sig[a, b], eps[a, b] = p["exc_sigma"], p["exc_epsilon"]
            qq[a, b] = ONE_4PI_EPS0 * p["exc_charge_prod"]
        sig6, eps4, qq = sig[i, j] ** 6, 4.0 * eps[i, j], qq[i, j]
        nb = (eps4 != 0) | (qq != 0)
    else:
        sig6 = eps4 = qq = np.zeros(len(i))
        nb = np.zeros(len(i), dtype=bool)
    order = np.argsort(~nb, kind="stable")  # interacting pairs first
    keep = order if int(p["gb_present"]) else order[: int(nb.sum())]
    n_nb = int(nb.sum())
    return {
        "pair_i": i[keep].astype(np.int64),
        "pair_j": j[keep].astype(np.int64),
        "sig6": sig6[order[:n_nb]],
        "eps4": eps4[order[:n_nb]],
        "qq": qq[order[:n_nb]],
    }


class TorchForceField(torch.nn.Module):
    """U(x) of a fixed-charge force field with OBC implicit solvent, in torch.

    parameters : dict of arrays (see :mod:`~finegrain.platform.energies.parameters`)
    dtype, device : compute dtype (float32/float64) and device; positions are cast.
    u_max : None (exact energies) or the training cap in kJ/mol (see module doc).
    cap : "log" (smooth, default) or "clamp" (paper 001); used only with u_max.
    r_min : pair-distance floor (nm) applied only when u_max is set.
    fallback : optional module (e.g. :class:`OpenMMEnergy` of a reduced System)
        whose energy is added as the term "other".
    system : the OpenMM System it was built from (kept as ``.system``), or None.

    forward(positions [B, N, 3] nm) -> energies [B] kJ/mol.
    """

    def __init__(self, parameters: dict, *, dtype=torch.float32, device="cpu", u_max: float | None = None,
                 cap: str = "log", r_min: float = 0.01, fallback: torch.nn.Module | None = None, system=None):  # fmt: skip
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

        for term, k in (("bond", 2), ("angle", 3), ("torsion", 4)):
            buf(f"{term}_idx", p[f"{term}_idx"].reshape(-1, k), integer=True)
        buf("bond_length", p["bond_length"])
        buf("bond_k", p["bond_k"])
        buf("angle_theta0", p["angle_theta0"])
        buf("angle_k", p["angle_k"])
        buf("torsion_periodicity", p["torsion_periodicity"])
        buf("torsion_phase", p["torsion_phase"])
        buf("torsion_k", p["torsion_k"])
        pairs = pair_list(p)
        self.n_nb_pairs = len(pairs["sig6"])
        for key in ("pair_i", "pair_j"):
            buf(key, pairs[key], integer=True)
        for key in ("sig6", "eps4", "qq"):
            buf(key, pairs[key])
        buf("gb_charge", p["gb_charge"])
        buf("gb_radius", p["gb_radius"])
        buf("gb_scale", p["gb_scale"])
        self.gb_prefactor = obc_prefactor(*(float(v) for v in p["gb_dielectrics"]))
        self.gb_sa_factor = 4.0 * math.pi * float(p["gb_surface_area_energy"])
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
        from finegrain.platform.energies.parameters import extract_parameters, reduced_system

        params, unsupported = extract_parameters(system)
        extra = None
        if unsupported:
            if not fallback:
                raise UnsupportedForceError(
                    f"system: the torch force field cannot evaluate {describe_unsupported(unsupported)}; "
                    "use fallback=True to evaluate them with OpenMM, or backend='openmm'"
                )
            from finegrain.platform.energies.openmm_reference import OpenMMEnergy

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

    def _terms(self, pos: torch.Tensor) -> dict[str, torch.Tensor]:
        zero = pos.new_zeros(pos.shape[0])
        out = {name: zero for name in TERM_NAMES}
        if len(self.bond_k):
            out["bond"] = bond_energy(pos, self.bond_idx, self.bond_length, self.bond_k).sum(-1)
        if len(self.angle_k):
            out["angle"] = angle_energy(pos, self.angle_idx, self.angle_theta0, self.angle_k).sum(-1)
        if len(self.torsion_k):
            out["torsion"] = torsion_energy(
                pos, self.torsion_idx, self.torsion_periodicity, self.torsion_phase, self.torsion_k
            ).sum(-1)
        if len(self.pair_i):
            r_min = self.r_min if self.u_max is not None else None
            r2, r, inv_r = pair_geometry(pos, self.pair_i, self.pair_j, r_min)
            if self.n_nb_pairs:
                k = self.n_nb_pairs
                out["lj"], out["coulomb"] = nonbonded_energy(inv_r[:, :k], self.sig6, self.eps4, self.qq)
            if self.has_gb:
                polar, nonpolar = obc_energy(
                    r2, r, inv_r, self.pair_i, self.pair_j, self.gb_charge, self.gb_radius, self.gb_scale,
                    self.gb_prefactor, self.gb_sa_factor,
                )  # fmt: skip
                out["solvation"] = polar + nonpolar
        if self.fallback is not None:
            out["other"] = self.fallback(pos).to(device=self.device, dtype=self.dtype)
        return out

    def terms(self, positions) -> dict[str, torch.Tensor]:
        """Per-term energies {bond, angle, torsion, lj, coulomb, solvation[, other]} -> [B] kJ/mol each.

        lj/coulomb include the exception (1-4) pairs; solvation is the OBC
        polar plus ACE non-polar energy; "other" is the OpenMM fallback.
        Never capped (the r_min floor applies when u_max is set).
        """
        return self._terms(self._prepare(positions))

    def forward(self, positions) -> torch.Tensor:
        """Total potential energy [B] kJ/mol of positions [B, N, 3] nm (capped if u_max is set)."""
        terms = self._terms(self._prepare(positions))
        total = torch.stack(list(terms.values()), 0).sum(0)
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
            f"nonbonded={self.has_nonbonded}, gbsa={self.has_gb}, u_max={self.u_max}, dtype={self.dtype}"
        )
