"""OpenMM Langevin simulations of reference systems, replicas as Ray tasks.

Output folder (written to a temporary sibling and renamed when complete)::

    OUT/topology.pdb
    OUT/metadata.json            force field, T, dt, stride, seed, platform, versions,
                                 constrained_pairs: [[i, j, r0_nm], ...] of the OpenMM
                                 System ([] when no bond was constrained)
    OUT/replica_000.dcd          frames every ``stride_ps`` (mdtraj-readable)
    OUT/replica_000.npz          time_ps [F], potential_kj_mol [F],
                                 forces_kj_mol_nm [F, N, 3] float32, temperature_k [F]

Periodic systems (``ReferenceSystem.periodic``) run in NVT in the system's box
(PME or the declared method); frames keep molecules whole with their centres
wrapped into the box, each DCD frame carries its unit cell, and metadata.json
records ``periodic``, ``box_nm`` [3, 3] and ``nonbonded``. State points are
separate runs (``temperature_k``) in the same box.

Units: nm, ps, kJ/mol, K.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, field
from pathlib import Path
from typing import Annotated, Callable, Literal

import numpy as np
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from finegrain.datasets.folders import atomic_folder
from finegrain.datasets.systems import get_system

__all__ = ["SimulationConfig", "run_replica", "simulate", "choose_platform", "replica_seed", "constraint_record"]

#: Below this many atoms OpenMM's single-threaded Reference platform with its
#: native GBSAOBCForce beats the CPU platform (ADP, 22 atoms: ~16x faster here;
#: CLN025 chignolin, 166 atoms in GB-neck2: 8.7 ns/day Reference vs 8.2 CPU on one thread; auto picks CPU).
REFERENCE_PLATFORM_MAX_ATOMS = 150


Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid", strict=True))
class SimulationConfig:
    """A simulation job. ``system`` is a built-in name, a YAML path or a definition dict.

    Lengths of time: ``ns`` of production per replica after ``equilibration_ps``;
    a frame every ``stride_ps`` (a whole number of ``timestep_fs`` steps); Langevin
    friction in 1/ps; ``constraints``: "HBonds" or None (every bond free: mapping
    entropies need that; use <= 1 fs). Fields are validated by pydantic (a
    ``ValueError`` naming the field).
    """

    system: str | dict
    ns: Positive = 0.1
    replicas: Annotated[int, Field(ge=1)] = 1
    temperature_k: Positive = 300.0
    seed: Annotated[int, Field(ge=0)] = 0
    timestep_fs: Positive = 2.0
    stride_ps: Positive = 1.0
    friction_per_ps: Positive = 1.0
    equilibration_ps: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 10.0
    platform: Literal["auto", "Reference", "CPU", "CUDA", "OpenCL"] = "auto"
    constraints: Literal["HBonds"] | None = "HBonds"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        steps = self.stride_ps * 1000.0 / self.timestep_fs
        if abs(steps - round(steps)) > 1e-9:
            raise ValueError(f"stride_ps: {self.stride_ps} ps is not a whole number of {self.timestep_fs} fs steps")
        if self.constraints is None and self.timestep_fs > 1.0:
            raise ValueError(f"timestep_fs: {self.timestep_fs} fs is unstable with free X-H bonds (constraints=None); "
                             f"use <= 1 fs")

    @property
    def steps_per_frame(self) -> int:
        return int(round(self.stride_ps * 1000.0 / self.timestep_fs))

    @property
    def n_frames(self) -> int:
        return int(round(self.ns * 1000.0 / self.stride_ps))


def choose_platform(n_atoms: int, requested: str = "auto") -> str:
    """The OpenMM platform name for a system size (see REFERENCE_PLATFORM_MAX_ATOMS)."""
    if requested != "auto":
        return requested
    return "Reference" if n_atoms <= REFERENCE_PLATFORM_MAX_ATOMS else "CPU"


def replica_seed(seed: int, replica: int) -> int:
    """A nonzero 31-bit seed per replica (OpenMM treats 0 as 'pick one at random')."""
    return int(np.random.SeedSequence([seed, replica]).generate_state(1)[0] % (2**31 - 2)) + 1


def constraint_record(system) -> list[list]:
    """The distance constraints of an OpenMM ``System``: [[i, j, r0_nm], ...] (i < j), as OpenMM holds them.

    With ``constraints="HBonds"`` these are the X-H bonds at their force-field
    lengths; [] when nothing is constrained. JSON-ready (ints and floats).
    """
    import openmm.unit as u

    out = []
    for k in range(system.getNumConstraints()):
        i, j, r0 = system.getConstraintParameters(k)
        r0 = r0.value_in_unit(u.nanometer) if hasattr(r0, "value_in_unit") else float(r0)
        out.append([min(int(i), int(j)), max(int(i), int(j)), float(r0)])
    return out


def run_replica(cfg: SimulationConfig, replica: int, out_dir: str | Path, progress: Callable[[int], None] | None = None) -> dict:
    """Run one replica with OpenMM and write its DCD and NPZ into ``out_dir``.

    Minimisation, then ``equilibration_ps`` of unrecorded dynamics, then
    ``n_frames`` frames every ``stride_ps``. ``progress(n)`` is called with the
    number of frames written since the last call. Returns a summary dict.
    """
    import mdtraj as md
    import openmm as mm
    import openmm.unit as u

    ref = get_system(cfg.system)
    system = ref.create_system(constraints=cfg.constraints)
    platform_name = choose_platform(ref.n_atoms, cfg.platform)
    platform = mm.Platform.getPlatformByName(platform_name)
    props = {"Threads": "1"} if platform_name == "CPU" else {}
    seed = replica_seed(cfg.seed, replica)
    integrator = mm.LangevinMiddleIntegrator(
        cfg.temperature_k * u.kelvin, cfg.friction_per_ps / u.picosecond, cfg.timestep_fs * u.femtosecond
    )
    integrator.setRandomNumberSeed(seed)
    context = mm.Context(system, integrator, platform, props)
    start_nm, start_kind = ref.starting_positions(replica)  # per replica: e.g. chignolin folded / unfolded
    context.setPositions(start_nm * u.nanometer)
    if ref.periodic:  # NVT in the system's box (also the System's default box)
        context.setPeriodicBoxVectors(*(ref.box_nm * u.nanometer))
    mm.LocalEnergyMinimizer.minimize(context)
    context.setVelocitiesToTemperature(cfg.temperature_k * u.kelvin, seed)
    integrator.step(int(round(cfg.equilibration_ps * 1000.0 / cfg.timestep_fs)))

    dof = 3 * system.getNumParticles() - system.getNumConstraints()
    if any(isinstance(f, mm.CMMotionRemover) for f in system.getForces()):
        dof -= 3
    kb = u.MOLAR_GAS_CONSTANT_R.value_in_unit(u.kilojoule_per_mole / u.kelvin)
    n = cfg.n_frames
    energies = np.empty(n)
    temperatures = np.empty(n)
    forces = np.empty((n, ref.n_atoms, 3), dtype=np.float32)
    out_dir = Path(out_dir)
    dcd_path = out_dir / f"replica_{replica:03d}.dcd"
    if ref.periodic and not np.allclose(ref.box_nm, np.diag(np.diag(ref.box_nm))):
        raise ValueError(f"system '{ref.name}': a triclinic box; simulate writes rectangular unit cells only")
    cell_a = 10.0 * np.diag(ref.box_nm) if ref.periodic else None  # rectangular boxes (Angstrom)
    with md.formats.DCDTrajectoryFile(str(dcd_path), "w") as dcd:
        done = 0
        for i in range(n):
            integrator.step(cfg.steps_per_frame)
            # periodic: molecules kept whole, centres wrapped into the box
            state = context.getState(getPositions=True, getEnergy=True, getForces=True, enforcePeriodicBox=ref.periodic)
            xyz = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
            if not np.isfinite(xyz).all():
                raise FloatingPointError(f"replica {replica}: non-finite positions at frame {i}; simulation blew up")
            if ref.periodic:  # DCD files hold Angstrom; unit cell per frame
                dcd.write(10.0 * np.asarray(xyz, dtype=np.float32)[None], cell_lengths=cell_a[None],
                          cell_angles=np.full((1, 3), 90.0))
            else:
                dcd.write(10.0 * np.asarray(xyz, dtype=np.float32)[None])  # DCD files hold Angstrom
            energies[i] = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
            forces[i] = state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
            temperatures[i] = 2.0 * state.getKineticEnergy().value_in_unit(u.kilojoule_per_mole) / (dof * kb)
            done += 1
            if progress is not None and (done == 10 or i == n - 1):
                progress(done)
                done = 0
    time_ps = cfg.equilibration_ps + cfg.stride_ps * np.arange(1, n + 1)
    np.savez(
        out_dir / f"replica_{replica:03d}.npz",
        time_ps=time_ps,
        potential_kj_mol=energies,
        forces_kj_mol_nm=forces,
        temperature_k=temperatures,
    )
    return {
        "replica": replica,
        "seed": seed,
        "n_frames": n,
        "trajectory": dcd_path.name,
        "observables": f"replica_{replica:03d}.npz",
        "platform": platform_name,
        "mean_temperature_k": float(temperatures.mean()),
        "start": start_kind,
    }


def simulate(cfg: SimulationConfig, out: str | Path, overwrite: bool = False) -> Path:
    """Run ``cfg.replicas`` replicas as parallel Ray tasks and write ``out``.

    Needs a connected Ray (``ray.init`` or the finegrain stack). Nothing is
    left at ``out`` unless every replica succeeded.
    """
    import mdtraj as md
    import openmm
    import ray
    from ray.experimental import tqdm_ray

    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"out: {out} exists and is not empty (pass overwrite to replace it)")
    ref = get_system(cfg.system)  # fail fast on a bad system, before any task starts
    with atomic_folder(out) as tmp:
        cell = {"unitcell_lengths": np.diag(ref.box_nm)[None], "unitcell_angles": np.full((1, 3), 90.0)} \
            if ref.periodic else {}
        md.Trajectory(ref.positions_nm[None].astype(np.float32), ref.md_topology, **cell).save_pdb(
            str(tmp / "topology.pdb"))

        @ray.remote(num_cpus=1)
        def _task(replica: int) -> dict:
            bar = tqdm_ray.tqdm(total=cfg.n_frames, desc=f"replica {replica}")
            try:
                return run_replica(cfg, replica, tmp, progress=bar.update)
            finally:
                bar.close()

        t0 = time.perf_counter()
        results = ray.get([_task.remote(r) for r in range(cfg.replicas)])
        meta = {
            "system": ref.name,
            "system_definition": {k: v for k, v in ref.definition.items() if k != "mappings"},
            "mappings": sorted(ref.mapping_specs),
            "n_atoms": ref.n_atoms,
            "forcefield": ref.definition.get("forcefield"),
            "constraints": cfg.constraints,
            "periodic": ref.periodic,  # NVT in box_nm ([3, 3] nm, rows a, b, c); DCD frames carry unit cells
            "box_nm": None if ref.box_nm is None else ref.box_nm.tolist(),
            "nonbonded": ref.nonbonded,
            "constrained_pairs": constraint_record(ref.create_system(constraints=cfg.constraints)),
            "integrator": "LangevinMiddleIntegrator",
            "config": asdict(cfg),
            "platform": results[0]["platform"],
            "replicas": sorted(results, key=lambda r: r["replica"]),
            "wall_s": time.perf_counter() - t0,
            "versions": {"openmm": openmm.__version__, "mdtraj": md.__version__, "ray": ray.__version__},
        }
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
    return out
