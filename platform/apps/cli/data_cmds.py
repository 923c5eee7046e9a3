"""``finegrain systems | simulate | ingest``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from finegrain.datasets.simulate import SimulationConfig
from finegrain.platform.apps.defaults import defaults_of
from finegrain.platform.science.errors import InputError

SIM = defaults_of(SimulationConfig)


def register(app: typer.Typer) -> None:
    app.command()(systems)
    app.command()(simulate)
    app.command()(ingest)


def systems() -> None:
    """List the reference systems and their CG mappings."""
    from rich.console import Console
    from rich.table import Table

    from finegrain.datasets.systems import available_systems

    table = Table(title="reference systems")
    for col in ("system", "description", "mappings"):
        table.add_column(col)
    for name, d in available_systems().items():
        maps = "\n".join(f"{m}: {spec.get('description', '')}" for m, spec in d.get("mappings", {}).items())
        table.add_row(name, d.get("description", ""), maps)
    Console().print(table)


def simulate(
    system: str = typer.Argument(..., help="Built-in system name (see `finegrain systems`) or a system YAML file."),
    out: Path = typer.Option(..., help="Output folder (must not exist or be empty)."),
    ns: float = typer.Option(SIM["ns"], help="Recorded length per replica, ns."),
    replicas: int = typer.Option(SIM["replicas"], help="Independent replicas (parallel Ray tasks)."),
    temperature: float = typer.Option(SIM["temperature_k"], help="Temperature, K."),
    seed: int = typer.Option(SIM["seed"], help="Random seed; the same seed gives the same trajectories."),
    stride_ps: float = typer.Option(SIM["stride_ps"], help="Frame interval, ps."),
    timestep_fs: float = typer.Option(SIM["timestep_fs"], help="Integration step, fs (<= 1 with --no-constraints)."),
    constraints: bool = typer.Option(True, help="Constrain bonds to H (--no-constraints: all bonds free, as "
                                                "mapping-entropy estimates need)."),
    equilibration_ps: float = typer.Option(SIM["equilibration_ps"], help="Unrecorded equilibration after minimisation, ps."),
    platform: str = typer.Option(SIM["platform"], help="OpenMM platform: auto, Reference, CPU, CUDA, OpenCL."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty output folder."),
) -> None:
    """Run OpenMM Langevin dynamics (replicas as Ray tasks) and write trajectories, energies, forces."""
    from finegrain.datasets.simulate import SimulationConfig
    from finegrain.datasets.simulate import simulate as run
    from finegrain.platform.services.stack import connect_ray

    cfg = SimulationConfig(
        system=system, ns=ns, replicas=replicas, temperature_k=temperature, seed=seed, stride_ps=stride_ps,
        timestep_fs=timestep_fs, equilibration_ps=equilibration_ps, platform=platform,
        constraints="HBonds" if constraints else None,
    )
    connect_ray()
    path = run(cfg, out, overwrite=overwrite)
    typer.echo(f"wrote {replicas} replica(s) x {cfg.n_frames} frames to {path}")


def ingest(
    sim_dir: Optional[Path] = typer.Argument(None, help="A `finegrain simulate` output folder."),
    mapping: str = typer.Option(..., help="Mapping name of the system, or a mapping YAML file."),
    out: Path = typer.Option(..., help="Output shard folder."),
    top: Optional[Path] = typer.Option(None, help="Topology (PDB, prmtop, ...) for --traj files."),
    traj: Optional[List[Path]] = typer.Option(None, help="Trajectory files (any format mdtraj reads); repeatable."),
    system: Optional[str] = typer.Option(None, help="Reference system the mapping name belongs to (for --traj input)."),
    chunk_frames: int = typer.Option(1000, help="Frames per Parquet shard."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty output folder."),
) -> None:
    """Map trajectories to CG and shard them into Parquet with Ray Data (plus manifest.json)."""
    import mdtraj as md

    from finegrain.datasets.ingest import TrajectorySource, ingest as run, sources_from_simulation
    from finegrain.datasets.systems import get_system
    from finegrain.platform.science.mapping_formats import MAPPING_FILE_SUFFIXES, mapping_from_file
    from finegrain.platform.services.stack import connect_ray

    if sim_dir is not None:
        if top or traj:
            raise InputError("ingest: give either SIM_DIR or --top/--traj, not both")
        top_path, system_name, sources = sources_from_simulation(sim_dir)
        system = system or system_name
    else:
        if top is None or not traj:
            raise InputError("ingest: give SIM_DIR, or --top with one or more --traj")
        top_path = str(top)
        sources = [TrajectorySource(traj_id=f"{p.stem}-{i:03d}", path=str(Path(p).resolve())) for i, p in enumerate(traj)]
    if mapping.endswith(MAPPING_FILE_SUFFIXES):
        cg = mapping_from_file(mapping, md.load_topology(top_path))
    elif system is not None:
        cg = get_system(system).mapping(mapping)
    else:
        raise InputError(f"mapping: {mapping!r} is not a mapping file ({', '.join(MAPPING_FILE_SUFFIXES)}); "
                         f"name its system with --system")
    connect_ray()
    man = run(top_path, sources, cg, out, system=system or "custom", chunk_frames=chunk_frames, overwrite=overwrite)
    typer.echo(
        f"wrote {man.n_frames} frames of {man.n_trajectories} trajectories ({man.n_atoms} atoms -> "
        f"{man.n_beads} beads, mapping '{cg.name}') in {len(man.shards)} shards to {out}"
    )
