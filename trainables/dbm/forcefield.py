"""The energy prior's parameters from a reference system's OpenMM force field (driver side; imports OpenMM).

Bonded terms come from :func:`~finegrain.platform.science.energies.parameters.extract_parameters`. The
Lennard-Jones part comes from the NonbondedForce (Amber-style force fields), or, when the force field keeps
it in a tabulated CustomNonbondedForce (``acoef``/``bcoef`` per atom type, as OpenMM builds CHARMM) plus a
CustomBondForce of 1-4 pairs, from the tables' diagonals, checked to follow Lorentz-Berthelot (an NBFIX
pair is refused, naming the types). Charges are not part of the prior (thesis section 4.5: bonds, angles,
dihedrals and Lennard-Jones).
"""

from __future__ import annotations

import numpy as np

from finegrain.platform.science.energies.parameters import extract_parameters
from finegrain.platform.science.errors import InputError

__all__ = ["prior_parameters"]


def _tabulated(force) -> tuple[np.ndarray, np.ndarray]:
    tables = {}
    for k in range(force.getNumTabulatedFunctions()):
        nx, ny, vals = force.getTabulatedFunction(k).getFunctionParameters()
        tables[force.getTabulatedFunctionName(k)] = np.asarray(vals).reshape(ny, nx)
    if not {"acoef", "bcoef"} <= set(tables):
        raise InputError(f"system: a CustomNonbondedForce without acoef/bcoef tables ({sorted(tables)}); the "
                         f"DeepBackmap energy prior reads Lennard-Jones parameters from a NonbondedForce or those tables")
    a, b = tables["acoef"], tables["bcoef"]
    da, db = np.diag(a), np.diag(b)
    sig = np.where(db > 0, (da / np.where(db > 0, db, 1)) ** (1 / 6), 0.0)
    eps = np.where(da > 0, db * db / (4 * np.where(da > 0, da, 1)), 0.0)
    s2, e2 = 0.5 * (sig[:, None] + sig[None]), np.sqrt(eps[:, None] * eps[None])
    off = ~(np.isclose(a, 4 * e2 * s2**12, rtol=1e-6) & np.isclose(b, 4 * e2 * s2**6, rtol=1e-6))
    if off.any():
        i, j = np.argwhere(off)[0]
        raise InputError(f"system: Lennard-Jones types {i} and {j} do not combine by Lorentz-Berthelot (NBFIX); "
                         f"the energy prior's per-atom parameters cannot express that pair")
    types = np.array([int(force.getParticleParameters(i)[0]) for i in range(force.getNumParticles())])
    return sig[types], eps[types]


def prior_parameters(system) -> dict[str, np.ndarray]:
    """The plain-array parameter set (:mod:`~finegrain.platform.science.energies.parameters` keys) of the
    bonds, angles, torsions and Lennard-Jones of ``system`` (an ``openmm.System``), charges zeroed."""
    params, _unsupported = extract_parameters(system)  # periodic/GB/custom forces are reported, handled here
    forces = {type(f).__name__: f for f in system.getForces()}
    if "CustomNonbondedForce" in forces and not np.any(np.asarray(params["nb_epsilon"]) > 0):
        sigma, epsilon = _tabulated(forces["CustomNonbondedForce"])
        exc: dict[tuple[int, int], tuple[float, float]] = {}
        cnb = forces["CustomNonbondedForce"]
        for k in range(cnb.getNumExclusions()):
            i, j = cnb.getExclusionParticles(k)
            exc[(min(i, j), max(i, j))] = (1.0, 0.0)
        bonds = forces.get("CustomBondForce")
        if bonds is not None:
            if bonds.getEnergyFunction().replace(" ", "") != "4*epsilon*((sigma/r)^12-(sigma/r)^6)":
                raise InputError(f"system: a CustomBondForce {bonds.getEnergyFunction()!r} is not the 1-4 "
                                 f"Lennard-Jones pairs the energy prior understands")
            for k in range(bonds.getNumBonds()):
                i, j, (s, e) = bonds.getBondParameters(k)
                exc[(min(i, j), max(i, j))] = (float(s), float(e))
        keys = sorted(exc)
        params.update(nb_sigma=sigma, nb_epsilon=epsilon, exc_idx=np.array(keys, dtype=np.int64).reshape(-1, 2),
                      exc_sigma=np.array([exc[k][0] for k in keys]), exc_epsilon=np.array([exc[k][1] for k in keys]),
                      exc_charge_prod=np.zeros(len(keys)))
    params["nb_charge"] = np.zeros_like(np.asarray(params["nb_charge"], dtype=np.float64))
    params["exc_charge_prod"] = np.zeros_like(np.asarray(params["exc_charge_prod"], dtype=np.float64))
    params["gb_present"] = np.asarray(0)
    return params
