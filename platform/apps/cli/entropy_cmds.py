"""``finegrain entropy compare``: mapping entropies of several CG mappings of the same AA data."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from finegrain.platform.apps.console import ranking_table
from finegrain.platform.apps.defaults import defaults_of
from finegrain.platform.apps.entropy_config import CompareConfig

CMP = defaults_of(CompareConfig)

app = typer.Typer(help="Mapping entropies: how much atomistic information each CG mapping throws away.",
                  no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="entropy")


@app.command()
def compare(
    shards: Path = typer.Option(..., help="AA data: a shard folder (`finegrain ingest`); re-mapped per mapping."),
    system: str = typer.Option(CMP["system"], help="Reference system whose named mappings are compared."),
    mappings: str = typer.Option(",".join(CMP["mappings"]), help="Comma-separated mapping names."),
    budget: int = typer.Option(CMP["budget"], min=1, help="Training steps per flow."),
    config: Optional[Path] = typer.Option(None, help="Base flow training config YAML (default: built-in defaults)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a flow config key (repeatable)."),
    experiment: str = typer.Option(CMP["experiment"], help="MLflow experiment of the comparison."),
    eval_frames: int = typer.Option(CMP["eval_frames"], min=2, help="Held-out frames scored by the flow."),
    divergence: str = typer.Option(CMP["divergence"], help="Divergence for log q: exact or hutchinson."),
    probes: int = typer.Option(CMP["n_probes"], min=1, help="Hutchinson probes per frame."),
    clusters: int = typer.Option(CMP["n_clusters"], min=1, help="First k of the k-means clusters of CG frames (energy-variance "
                                                 "estimator); doubled until its value moves by <= --cluster-tol."),
    cluster_tol: float = typer.Option(CMP["giulini_tol"], help="Convergence tolerance of the k-doubling check (relative change)."),
    temperature: float = typer.Option(CMP["temperature_k"], help="Temperature of the AA ensemble, K."),
    reuse: bool = typer.Option(CMP["reuse"], help="Reuse flows trained earlier on the same data with the same settings."),
    seed: int = typer.Option(CMP["seed"], help="Seed of frame selection and Hutchinson probes."),
) -> None:
    """Train (or reuse) one flow per mapping, compute all estimators, log to MLflow, print a ranked table.

    Refuses (exit 2) constrained data (simulate with --no-constraints) and a
    trajectory split with no held-out trajectory.
    """
    from rich.console import Console

    from finegrain.platform.apps.entropy_compare import compare_mappings
    from finegrain.platform.services.stack import tracking_uri
    from finegrain.platform.services.tracking import Tracker

    console = Console()
    names = tuple(m.strip() for m in mappings.split(",") if m.strip())
    cfg = CompareConfig(shards=shards, system=system, mappings=names, budget=budget, flow_config=config, overrides=tuple(set_ or ()), experiment=experiment,
                        eval_frames=eval_frames, divergence=divergence, n_probes=probes, n_clusters=clusters,
                        temperature_k=temperature, giulini_tol=cluster_tol, reuse=reuse, seed=seed)
    res = compare_mappings(cfg, Tracker.connect(tracking_uri()), echo=console.print)
    console.print(ranking_table(res.rows, system, budget))
    console.print(f"MLflow parent run {res.parent_run_id} (experiment {experiment}); plot {res.plot}")
