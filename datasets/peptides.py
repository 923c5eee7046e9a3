"""Chignolin (CLN025, YYDPETGTWY): folded / unfolded starting states and the folded fraction.

The folded state is the 5AWL structure shipped as ``data/cln025_5awl.pdb``
(see its REMARKs). Unfolded states are made from it deterministically: a
Langevin run at ``temperature_k`` (800 K) on OpenMM's Reference platform
(double precision, single thread: the same numbers in every process) with a
seed fixed by (``seed``, index), in chunks until the C-alpha RMSD to 5AWL
reaches ``min_ca_rmsd_nm``, then a local energy minimisation.
Replicas alternate folded (even) / unfolded (odd); unfolded replica ``r``
starts from unfolded state ``r // 2``.

A state costs 10-70 ms per step on the Reference platform (GB-neck2 is a
CustomGBForce; the range is 2 idle to 2 busy cores), minutes per state, so built states are cached as
``.npy`` under ``$FINEGRAIN_CACHE`` (default ``~/.cache/finegrain``)
``/starting_states/<sha256 of every input>.npy``.

Units: nm, ps, K.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
from pathlib import Path

import numpy as np

from finegrain.platform.science.errors import FinegrainError

__all__ = [
    "FOLDED_CA_RMSD_NM",
    "CLN025_PDB",
    "reference_structure",
    "ca_rmsd_nm",
    "folded_fraction",
    "start_kind",
    "unfolded_positions",
    "starting_positions",
]

#: Frames with a C-alpha RMSD to 5AWL below this (nm) count as folded.
FOLDED_CA_RMSD_NM = 0.2
#: The shipped 5AWL structure with hydrogens (package data of finegrain.datasets).
CLN025_PDB = "data/cln025_5awl.pdb"
_KINDS = ("folded", "unfolded")


class StartingStateError(FinegrainError, ValueError):
    """A starting-state request that cannot be met."""


def _pdb_path() -> Path:
    return Path(str(importlib.resources.files("finegrain.datasets").joinpath(CLN025_PDB)))


def reference_structure():
    """The folded CLN025 (5AWL + hydrogens) as a one-frame ``mdtraj.Trajectory`` (166 atoms, nm)."""
    import mdtraj as md

    return md.load_pdb(str(_pdb_path()), standard_names=False)


def ca_rmsd_nm(traj, reference=None) -> np.ndarray:
    """C-alpha RMSD (nm) [F] of every frame of ``traj`` to ``reference`` after optimal superposition.

    traj : mdtraj.Trajectory of chignolin (any hydrogens / atom order: the C-alphas
        are matched in residue order). reference : one-frame Trajectory, default
        :func:`reference_structure`. Raises ValueError when the C-alpha counts differ.
    """
    import mdtraj as md

    reference = reference_structure() if reference is None else reference
    ca, ca_ref = traj.topology.select("name CA"), reference.topology.select("name CA")
    if len(ca) != len(ca_ref) or len(ca) == 0:
        raise ValueError(f"traj: {len(ca)} C-alphas, reference: {len(ca_ref)}; expected the same nonzero number")
    return md.rmsd(traj.atom_slice(ca), reference.atom_slice(ca_ref), 0).astype(np.float64)


def folded_fraction(traj, reference=None, cutoff_nm: float = FOLDED_CA_RMSD_NM) -> float:
    """Fraction of frames of ``traj`` with C-alpha RMSD to 5AWL below ``cutoff_nm`` (see :func:`ca_rmsd_nm`)."""
    if traj.n_frames == 0:
        raise ValueError("traj: no frames")
    return float(np.mean(ca_rmsd_nm(traj, reference) < cutoff_nm))


def start_kind(replica: int, alternate: tuple[str, ...] | list[str] = _KINDS) -> str:
    """"folded" or "unfolded": the kind of start of ``replica`` (``alternate`` cycles with the replica index)."""
    if replica < 0:
        raise StartingStateError(f"replica: expected >= 0, got {replica}")
    kinds = tuple(alternate)
    if not kinds or any(k not in _KINDS for k in kinds):
        raise StartingStateError(f"starting_states.alternate: expected kinds from {_KINDS}, got {list(kinds)}")
    return kinds[replica % len(kinds)]


def _kabsch_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD (nm) of point sets a, b [n, 3] after optimal superposition (float64, deterministic)."""
    a, b = a - a.mean(0), b - b.mean(0)
    u, s, vt = np.linalg.svd(a.T @ b)
    s[-1] *= np.sign(np.linalg.det(u @ vt))
    return float(np.sqrt(max((a**2).sum() + (b**2).sum() - 2.0 * s.sum(), 0.0) / len(a)))


def _cache_root() -> Path:
    return Path(os.environ.get("FINEGRAIN_CACHE") or Path.home() / ".cache" / "finegrain") / "starting_states"


def unfolded_positions(
    topology,
    positions_nm: np.ndarray,
    forcefield: list[str],
    index: int,
    *,
    temperature_k: float = 800.0,
    ps: float = 20.0,
    timestep_fs: float = 2.0,
    friction_per_ps: float = 1.0,
    seed: int = 2011,
    min_ca_rmsd_nm: float = 0.0,
    max_ps: float = 200.0,
    max_iterations: int = 0,
    cache: bool = True,
) -> np.ndarray:
    """Unfolded state ``index`` [n_atoms, 3] (nm): ``ps`` of Langevin dynamics at ``temperature_k`` from
    ``positions_nm`` (X-H bonds constrained to their force-field lengths, Reference platform, seed from
    (``seed``, ``index``)), continued in ``ps`` chunks while the C-alpha RMSD to ``positions_nm`` is below
    ``min_ca_rmsd_nm`` (at most ``max_ps`` in all: then StartingStateError), then minimised (L-BFGS to
    OpenMM's default tolerance, or ``max_iterations`` steps when > 0).

    Deterministic: the same inputs give the same coordinates in any process. Cached on disk (see the
    module docstring) when ``cache``; the key hashes every input and the OpenMM version.
    """
    import openmm as mm
    import openmm.app as app
    import openmm.unit as u

    if index < 0:
        raise StartingStateError(f"index: expected >= 0, got {index}")
    pos = np.ascontiguousarray(positions_nm, dtype=np.float64)
    key = hashlib.sha256()
    key.update(pos.tobytes())
    key.update("|".join(f"{a.residue.name}{a.residue.index}:{a.name}" for a in topology.atoms()).encode())
    key.update(json.dumps([list(forcefield), int(index), float(temperature_k), float(ps), float(timestep_fs),
                           float(friction_per_ps), int(seed), float(min_ca_rmsd_nm), float(max_ps),
                           int(max_iterations), mm.__version__]).encode())
    path = _cache_root() / f"{key.hexdigest()}.npy"
    if cache and path.is_file():
        cached = np.load(path)
        if cached.shape == pos.shape:
            return cached

    system = app.ForceField(*forcefield).createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    run_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0] % (2**31 - 2)) + 1
    integrator = mm.LangevinMiddleIntegrator(temperature_k * u.kelvin, friction_per_ps / u.picosecond,
                                             timestep_fs * u.femtosecond)
    integrator.setRandomNumberSeed(run_seed)
    context = mm.Context(system, integrator, mm.Platform.getPlatformByName("Reference"))
    context.setPositions(pos * u.nanometer)
    context.applyConstraints(1e-8)
    context.setVelocitiesToTemperature(temperature_k * u.kelvin, run_seed)
    ca = [a.index for a in topology.atoms() if a.name == "CA"]
    done_ps = 0.0
    while True:
        integrator.step(int(round(ps * 1000.0 / timestep_fs)))
        done_ps += ps
        hot = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
        rmsd = _kabsch_rmsd(np.asarray(hot)[ca], pos[ca])
        if rmsd >= min_ca_rmsd_nm:
            break
        if done_ps + ps > max_ps + 1e-9:
            raise StartingStateError(f"unfolded state {index}: C-alpha RMSD {rmsd:.3f} nm < {min_ca_rmsd_nm} nm "
                                     f"after {done_ps:g} ps at {temperature_k} K (max_ps {max_ps})")
    mm.LocalEnergyMinimizer.minimize(context, maxIterations=int(max_iterations))
    out = np.asarray(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer),
                     dtype=np.float64)
    if not np.isfinite(out).all():
        raise FloatingPointError(f"unfolded state {index}: non-finite positions after {ps} ps at {temperature_k} K")
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, out)
        os.replace(tmp, path)
    return out


def starting_positions(system, replica: int, spec: dict | None) -> tuple[np.ndarray, str]:
    """(positions [n_atoms, 3] nm, kind) of ``replica`` of a ReferenceSystem under its ``starting_states`` spec.

    spec : None (every replica starts from ``system.positions_nm``: kind "folded" is not claimed, "given"),
        or a dict with ``alternate`` (default [folded, unfolded]) and ``unfold`` (keyword arguments of
        :func:`unfolded_positions`: temperature_k, ps, timestep_fs, friction_per_ps, seed, min_ca_rmsd_nm,
        max_ps, max_iterations).
    """
    if not spec:
        return system.positions_nm, "given"
    unknown = set(spec) - {"alternate", "unfold"}
    if unknown:
        raise StartingStateError(f"starting_states: unknown keys {sorted(unknown)} (known: alternate, unfold)")
    alternate = tuple(spec.get("alternate") or _KINDS)
    kind = start_kind(replica, alternate)
    if kind == "folded":
        return system.positions_nm, kind
    index = sum(1 for r in range(replica) if start_kind(r, alternate) == "unfolded")
    return unfolded_positions(system.topology, system.positions_nm, list(system.definition["forcefield"]), index,
                              **dict(spec.get("unfold") or {})), kind
