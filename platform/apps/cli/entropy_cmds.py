"""``finegrain entropy compare``: mapping entropies of several CG mappings of the same AA data."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(help="Mapping entropies: how much atomistic information each CG mapping throws away.",
                  no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="entropy")


@app.command()
def compare(
    shards: Path = typer.Option(..., help="AA data: a shard folder (`finegrain ingest`); re-mapped per mapping."),
    system: str = typer.Option("adp", help="Reference system whose named mappings are compared."),
    mappings: str = typer.Option("backbone6,backbone5,ca,heavy", help="Comma-separated mapping names."),
    budget: int = typer.Option(2000, min=1, help="Training steps per flow."),
    config: Optional[Path] = typer.Option(None, help="Base flow training config YAML (default: built-in defaults)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a flow config key (repeatable)."),
    experiment: str = typer.Option("entropy-compare", help="MLflow experiment of the comparison."),
    eval_frames: int = typer.Option(256, min=2, help="Held-out frames scored by the flow."),
    divergence: str = typer.Option("hutchinson", help="Divergence for log q: exact or hutchinson."),
    probes: int = typer.Option(4, min=1, help="Hutchinson probes per frame."),
    clusters: int = typer.Option(20, min=1, help="First k of the k-means clusters of CG frames (energy-variance "
                                                 "estimator); doubled until its value moves by <= --cluster-tol."),
    cluster_tol: float = typer.Option(0.05, help="Convergence tolerance of the k-doubling check (relative change)."),
    temperature: float = typer.Option(300.0, help="Temperature of the AA ensemble, K."),
    reuse: bool = typer.Option(True, help="Reuse flows trained earlier on the same data with the same settings."),
    seed: int = typer.Option(0, help="Seed of frame selection and Hutchinson probes."),
) -> None:
    """Train (or reuse) one flow per mapping, compute all estimators, log to MLflow, print a ranked table.

    Refuses (exit 2) constrained data (simulate with --no-constraints) and a
    trajectory split with no held-out trajectory.
    """
    from rich.console import Console

    from finegrain.platform.apps.entropy_compare import CompareConfig, compare_mappings

    console = Console()
    try:
        names = tuple(m.strip() for m in mappings.split(",") if m.strip())
        cfg = CompareConfig(shards=shards, system=system, mappings=names, budget=budget, flow_config=config, overrides=tuple(set_ or ()), experiment=experiment,
                            eval_frames=eval_frames, divergence=divergence, n_probes=probes, n_clusters=clusters,
                            temperature_k=temperature, giulini_tol=cluster_tol, reuse=reuse, seed=seed)
        res = compare_mappings(cfg, echo=console.print)
    except (ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    console.print(ranking_table(res.rows, system, budget))
    console.print(f"MLflow parent run {res.parent_run_id} (experiment {experiment}); plot {res.plot}")


def ranking_table(rows: list[dict], system: str, budget: int):
    """A rich Table of ranked comparison rows (nats per atomistic dof; rank by the flow's S_map').

    S_map' (flow, Gauss): w.r.t. the maxent Gaussian fibre reference;
    S_map EV: Giulini's energy-variance estimate at the k the doubling check
    reached ("*": not converged, an upper bound); H(X|Y) flow with its 95 %
    block-bootstrap CI ("!": under-trained by the nested-mapping check).
    """
    from rich.table import Table

    table = Table(title=f"mapping entropy, {system} (flow budget {budget} steps; nats per atomistic dof)")
    for col in ("rank", "mapping", "beads", "fibre dim", "S_map' flow", "S_map' Gauss", "S_map EV (k)",
                "H(X|Y) flow [95% CI]", "H(X|Y) Gauss"):
        table.add_column(col, justify="left" if col == "mapping" else "right")
    for r in rows:
        ev = f"{r['smap_giulini_per_dof']:.4f}"
        if "giulini_k2" in r:
            ev += f" ({r['giulini_k2']:.0f}{'' if r.get('giulini_converged') == 1.0 else '*'})"
        h = (f"{r['h_cond_flow_per_dof']:.4f} [{r['h_cond_flow_ci_low_per_dof']:.4f}, "
             f"{r['h_cond_flow_ci_high_per_dof']:.4f}]{' !' if r.get('under_trained') else ''}")
        table.add_row(str(r["rank"]), r["mapping"], str(r["n_beads"]), f"{r['fibre_dim']:.0f}",
                      f"{r['smap_flow_per_dof']:.4f}", f"{r['smap_gauss_per_dof']:.4f}", ev, h,
                      f"{r['h_cond_gauss_per_dof']:.4f}")
    table.caption = ("S_map': vs the maxent Gaussian fibre reference; S_map EV: Giulini energy variance (another "
                     "quantity); *: k-doubling not converged; !: under-trained (nested-mapping check)")
    return table
