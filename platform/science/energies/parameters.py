"""Force-field parameters as plain arrays: extraction from an OpenMM System and file I/O.

A parameter set is a ``dict[str, numpy.ndarray]`` with the keys of
:data:`PARAMETER_KEYS` (units: nm, rad, kJ/mol, elementary charges).  It is
what :class:`~finegrain.platform.science.energies.torch_forcefield.TorchForceField`
is built from and what ``save_parameters`` writes (a ``.npz`` of plain
arrays), so the torch energy runs where OpenMM is not installed.  Only
:func:`extract_parameters` and :func:`reduced_system` import OpenMM (lazily).

Keys (M = number of terms, N = number of atoms, E = number of exceptions):

=====================  ==========  ==========================================
key                    shape       meaning
=====================  ==========  ==========================================
format_version         []          int, :data:`FORMAT_VERSION`
n_atoms                []          int
bond_idx               [M, 2]      int64 atom indices
bond_length, bond_k    [M]         nm, kJ/mol/nm^2  (E = k/2 (r - r0)^2)
angle_idx              [M, 3]      int64, middle atom in column 1
angle_theta0, angle_k  [M]         rad, kJ/mol/rad^2
torsion_idx            [M, 4]      int64
torsion_periodicity    [M]         float (integer-valued)
torsion_phase          [M]         rad
torsion_k              [M]         kJ/mol
nb_present             []          1 if a NonbondedForce was found
nb_charge              [N]         e
nb_sigma, nb_epsilon   [N]         nm, kJ/mol
exc_idx                [E, 2]      int64 pairs replacing the normal pair
exc_charge_prod        [E]         e^2
exc_sigma, exc_epsilon [E]         nm, kJ/mol
gb_present             []          1 if a GBSAOBCForce was found
gb_charge              [N]         e
gb_radius, gb_scale    [N]         nm, dimensionless
gb_dielectrics         [2]         solute, solvent
gb_surface_area_energy []          kJ/mol/nm^2
=====================  ==========  ==========================================
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finegrain.platform.science.errors import FinegrainError

__all__ = [
    "FORMAT_VERSION",
    "PARAMETER_KEYS",
    "SUPPORTED_FORCES",
    "IGNORED_FORCES",
    "UnsupportedForceError",
    "empty_parameters",
    "extract_parameters",
    "reduced_system",
    "save_parameters",
    "load_parameters",
]

FORMAT_VERSION = 1
SUPPORTED_FORCES = (
    "HarmonicBondForce",
    "HarmonicAngleForce",
    "PeriodicTorsionForce",
    "NonbondedForce",
    "GBSAOBCForce",
)
#: Forces that add no potential energy.
IGNORED_FORCES = ("CMMotionRemover",)

_SHAPES = {
    "format_version": (),
    "n_atoms": (),
    "bond_idx": ("M", 2),
    "bond_length": ("M",),
    "bond_k": ("M",),
    "angle_idx": ("M", 3),
    "angle_theta0": ("M",),
    "angle_k": ("M",),
    "torsion_idx": ("M", 4),
    "torsion_periodicity": ("M",),
    "torsion_phase": ("M",),
    "torsion_k": ("M",),
    "nb_present": (),
    "nb_charge": ("N",),
    "nb_sigma": ("N",),
    "nb_epsilon": ("N",),
    "exc_idx": ("E", 2),
    "exc_charge_prod": ("E",),
    "exc_sigma": ("E",),
    "exc_epsilon": ("E",),
    "gb_present": (),
    "gb_charge": ("N",),
    "gb_radius": ("N",),
    "gb_scale": ("N",),
    "gb_dielectrics": (2,),
    "gb_surface_area_energy": (),
}
PARAMETER_KEYS = tuple(_SHAPES)


class UnsupportedForceError(FinegrainError, ValueError):
    """A System holds forces the torch force field cannot evaluate."""


def empty_parameters(n_atoms: int) -> dict[str, np.ndarray]:
    """A parameter set with no terms for ``n_atoms`` atoms."""
    f, i = np.float64, np.int64
    z = np.zeros
    return {
        "format_version": np.array(FORMAT_VERSION, dtype=i),
        "n_atoms": np.array(n_atoms, dtype=i),
        "bond_idx": z((0, 2), i), "bond_length": z(0, f), "bond_k": z(0, f),
        "angle_idx": z((0, 3), i), "angle_theta0": z(0, f), "angle_k": z(0, f),
        "torsion_idx": z((0, 4), i), "torsion_periodicity": z(0, f), "torsion_phase": z(0, f),
        "torsion_k": z(0, f),
        "nb_present": np.array(0, dtype=i),
        "nb_charge": z(n_atoms, f), "nb_sigma": z(n_atoms, f), "nb_epsilon": z(n_atoms, f),
        "exc_idx": z((0, 2), i), "exc_charge_prod": z(0, f), "exc_sigma": z(0, f), "exc_epsilon": z(0, f),
        "gb_present": np.array(0, dtype=i),
        "gb_charge": z(n_atoms, f), "gb_radius": z(n_atoms, f), "gb_scale": z(n_atoms, f),
        "gb_dielectrics": np.array([1.0, 78.5]), "gb_surface_area_energy": np.array(0.0),
    }  # fmt: skip


def _v(q, unit) -> float:
    """Plain float of an OpenMM Quantity (or number) in ``unit``."""
    return float(q.value_in_unit(unit)) if hasattr(q, "value_in_unit") else float(q)


def _unsupported_reason(force, name: str, seen: set[str]) -> str | None:
    """Why the torch path cannot evaluate ``force`` (None if it can)."""
    import openmm as mm

    if name not in SUPPORTED_FORCES:
        return "no torch implementation"
    if force.usesPeriodicBoundaryConditions():
        return "periodic boundary conditions are not supported"
    if name in ("NonbondedForce", "GBSAOBCForce"):
        if name in seen:
            return f"only one {name} per System is supported"
        if force.getNonbondedMethod() != getattr(mm, name).NoCutoff:
            return "only nonbondedMethod=NoCutoff is supported"
    if name == "NonbondedForce" and (
        force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets()
    ):
        return "parameter offsets (global parameters) are not supported"
    return None


def extract_parameters(system) -> tuple[dict[str, np.ndarray], list[tuple[int, str, str]]]:
    """Read the supported forces of an OpenMM ``System`` into a parameter set.

    Returns (parameters, unsupported) where unsupported lists
    ``(force_index, class_name, reason)`` for every force that contributes
    energy but has no torch implementation (CMMotionRemover is ignored: it
    adds no energy).  Raises UnsupportedForceError if the System has virtual
    sites (their positions are not free coordinates).
    """
    import openmm.unit as u

    n = system.getNumParticles()
    vsites = [i for i in range(n) if system.isVirtualSite(i)]
    if vsites:
        raise UnsupportedForceError(f"system: virtual sites are not supported (particles {vsites[:5]}...)")
    p = empty_parameters(n)
    bonds, angles, torsions = [], [], []
    unsupported: list[tuple[int, str, str]] = []
    seen: set[str] = set()
    nm, rad, kj = u.nanometer, u.radian, u.kilojoule_per_mole
    for fi, force in enumerate(system.getForces()):
        name = type(force).__name__
        if name in IGNORED_FORCES:
            continue
        reason = _unsupported_reason(force, name, seen)
        if reason is not None:
            unsupported.append((fi, name, reason))
            continue
        seen.add(name)
        if name == "HarmonicBondForce":
            for k in range(force.getNumBonds()):
                i, j, r0, kb = force.getBondParameters(k)
                bonds.append((i, j, _v(r0, nm), _v(kb, kj / nm**2)))
        elif name == "HarmonicAngleForce":
            for k in range(force.getNumAngles()):
                i, j, l_, t0, ka = force.getAngleParameters(k)
                angles.append((i, j, l_, _v(t0, rad), _v(ka, kj / rad**2)))
        elif name == "PeriodicTorsionForce":
            for k in range(force.getNumTorsions()):
                i, j, l_, m, per, ph, kt = force.getTorsionParameters(k)
                torsions.append((i, j, l_, m, float(per), _v(ph, rad), _v(kt, kj)))
        elif name == "NonbondedForce":
            p["nb_present"] = np.array(1, dtype=np.int64)
            for i in range(n):
                q, s, e = force.getParticleParameters(i)
                p["nb_charge"][i], p["nb_sigma"][i], p["nb_epsilon"][i] = _v(q, u.elementary_charge), _v(s, nm), _v(e, kj)
            exc = [force.getExceptionParameters(k) for k in range(force.getNumExceptions())]
            p["exc_idx"] = np.array([(i, j) for i, j, *_ in exc], dtype=np.int64).reshape(-1, 2)
            p["exc_charge_prod"] = np.array([_v(q, u.elementary_charge**2) for *_, q, s, e in exc], dtype=np.float64)
            p["exc_sigma"] = np.array([_v(s, nm) for *_, s, e in exc], dtype=np.float64)
            p["exc_epsilon"] = np.array([_v(e, kj) for *_, e in exc], dtype=np.float64)
        elif name == "GBSAOBCForce":
            p["gb_present"] = np.array(1, dtype=np.int64)
            for i in range(n):
                q, r, s = force.getParticleParameters(i)
                p["gb_charge"][i], p["gb_radius"][i], p["gb_scale"][i] = _v(q, u.elementary_charge), _v(r, nm), float(s)
            p["gb_dielectrics"] = np.array([force.getSoluteDielectric(), force.getSolventDielectric()], dtype=np.float64)
            p["gb_surface_area_energy"] = np.array(_v(force.getSurfaceAreaEnergy(), kj / nm**2))
    if bonds:
        a = np.array(bonds)
        p["bond_idx"], p["bond_length"], p["bond_k"] = a[:, :2].astype(np.int64), a[:, 2], a[:, 3]
    if angles:
        a = np.array(angles)
        p["angle_idx"], p["angle_theta0"], p["angle_k"] = a[:, :3].astype(np.int64), a[:, 3], a[:, 4]
    if torsions:
        a = np.array(torsions)
        p["torsion_idx"], p["torsion_periodicity"] = a[:, :4].astype(np.int64), a[:, 4]
        p["torsion_phase"], p["torsion_k"] = a[:, 5], a[:, 6]
    return p, unsupported


def describe_unsupported(unsupported: list[tuple[int, str, str]]) -> str:
    """One line naming every unsupported force, e.g. 'CustomExternalForce (force 6: no torch implementation)'."""
    return ", ".join(f"{name} (force {fi}: {why})" for fi, name, why in unsupported)


def reduced_system(system, force_indices: list[int]):
    """A copy of ``system``'s particles (masses), box and the listed forces only.

    Used to evaluate forces the torch path lacks through OpenMM.  No
    constraints (they add no energy).
    """
    import copy

    import openmm as mm

    out = mm.System()
    for i in range(system.getNumParticles()):
        out.addParticle(system.getParticleMass(i))
    out.setDefaultPeriodicBoxVectors(*system.getDefaultPeriodicBoxVectors())
    for fi in force_indices:
        out.addForce(copy.deepcopy(system.getForce(fi)))
    return out


def validate_parameters(params: dict[str, np.ndarray], source: str = "parameters") -> dict[str, np.ndarray]:
    """Check keys, shapes, dtypes and index ranges; returns a dict of numpy arrays."""
    missing = [k for k in PARAMETER_KEYS if k not in params]
    if missing:
        raise ValueError(f"{source}: missing keys {missing}")
    out = {k: np.asarray(params[k]) for k in PARAMETER_KEYS}
    if int(out["format_version"]) != FORMAT_VERSION:
        raise ValueError(f"{source}: format_version {int(out['format_version'])}, expected {FORMAT_VERSION}")
    dims = {"N": int(out["n_atoms"])}
    for key, shape in _SHAPES.items():
        arr = out[key]
        if len(arr.shape) != len(shape):
            raise ValueError(f"{source}: {key} has shape {arr.shape}, expected {shape}")
        for d, s in zip(arr.shape, shape):
            if isinstance(s, str):
                s = dims.setdefault(f"{s}:{key.split('_')[0]}", d) if s != "N" else dims["N"]
            if d != s:
                raise ValueError(f"{source}: {key} has shape {arr.shape}, expected {shape} (N={dims['N']})")
        if key.endswith("_idx") and arr.size and (arr.min() < 0 or arr.max() >= dims["N"]):
            raise ValueError(f"{source}: {key} holds atom indices outside [0, {dims['N']})")
    return out


def save_parameters(params: dict[str, np.ndarray], path: str | Path) -> Path:
    """Write a parameter set to ``path`` (.npz of plain arrays; no pickles)."""
    path = Path(path)
    np.savez(path, **validate_parameters(params))
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def load_parameters(path: str | Path) -> dict[str, np.ndarray]:
    """Read a parameter set written by :func:`save_parameters` (no OpenMM needed)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            params = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"parameters file {path}: cannot read ({exc})") from exc
    return validate_parameters(params, source=f"parameters file {path}")
