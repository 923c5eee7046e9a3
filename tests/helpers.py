"""Shared set-up for the test suite (import as ``finegrain.tests.helpers``): data made in-process and the
CLI driven the way a user drives it."""

from __future__ import annotations

from pathlib import Path

import mdtraj as md

from finegrain.datasets.ingest import ingest, sources_from_simulation
from finegrain.datasets.simulate import SimulationConfig, run_replica
from finegrain.datasets.systems import get_system

__all__ = ["CONFIGS", "replica_frames", "ingested", "train_with_cli"]

#: the shipped training configs
CONFIGS = Path(__file__).resolve().parents[1] / "trainables" / "configs"


def replica_frames(tmp_path_factory, tag: str, ns: float, seed: int, system: str = "adp") -> tuple:
    """One replica simulated in this process (OpenMM, frames 1 ps apart, 1 ps equilibration).

    Returns (reference system, mdtraj trajectory, output folder holding ``replica_000.{dcd,npz}``).
    """
    out = tmp_path_factory.mktemp(tag)
    run_replica(SimulationConfig(system, ns=ns, equilibration_ps=1.0, seed=seed), 0, out)
    ref = get_system(system)
    return ref, md.load(str(out / "replica_000.dcd"), top=ref.md_topology), out


def ingested(sim: Path, mapping: str, tmp_path_factory, tag: str, chunk_frames: int = 20) -> Path:
    """A simulation folder ingested into shards with the named mapping of its system."""
    top, system, sources = sources_from_simulation(sim)
    out = tmp_path_factory.mktemp(tag) / "shards"
    ingest(top, sources, get_system(system).mapping(mapping), out, system=system, chunk_frames=chunk_frames)
    return out


def train_with_cli(config: str, sets: list[str]) -> dict[str, str]:
    """``finegrain train CONFIG --set ...`` through the real CLI app (in-process); returns the ``key: value``
    lines it printed (run id, model uri, ...). Fails the test with the output when it exits non-zero."""
    from typer.testing import CliRunner

    from finegrain.platform.apps.cli import app

    out = CliRunner().invoke(app, ["train", str(CONFIGS / config)] + sum((["--set", x] for x in sets), []))
    assert out.exit_code == 0, out.output
    return dict(line.split(": ", 1) for line in out.output.splitlines() if ": " in line)
