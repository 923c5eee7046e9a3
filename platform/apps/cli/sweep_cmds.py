"""``finegrain sweep SPEC [--resume] [--submit] [--set key=value ...]``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from finegrain.platform.apps.console import submit_job



def register(app: typer.Typer) -> None:
    app.command()(sweep)


def sweep(
    spec: Path = typer.Argument(..., help="Sweep spec YAML (see sweeps/*.yaml)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a base-config key, e.g. "
                                                                 "data.shards=PATH (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the latest interrupted sweep of this spec."),
    submit: bool = typer.Option(False, "--submit", help="Run as a Ray job on the stack (ray job submit "
                                                        "--working-dir .), streaming its logs."),
) -> None:
    """Tune + Optuna + ASHA over a training config; registers the best model (champion only on improvement)."""
    from finegrain.sweeps.spec import SweepSpec

    overrides = list(set_ or [])
    parsed = SweepSpec.load(spec, overrides)  # refuse a bad spec before anything starts
    if submit:
        import ray

        from finegrain.platform.services.stack import connect_ray

        connect_ray()
        parsed.check_resources(ray.cluster_resources())  # refused here, before a job starts
        args = [str(spec)] + sum((["--set", s] for s in overrides), []) + (["--resume"] if resume else [])
        sys.exit(submit_job(["finegrain", "sweep", *args]))
    from finegrain.sweeps.driver import run_sweep

    res = run_sweep(parsed, resume=resume)  # SweepInterrupted: the CLI prints "interrupted: ..." and exits 130
    typer.echo(f"sweep {parsed.name}: {res.n_trials} trials; MLflow parent run {res.parent_run_id}")
    if not res.best:
        typer.secho(f"error: no trial of sweep {parsed.name} finished with a finite {parsed.metric}; see the trial "
                    f"errors above and in {res.experiment_path}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"best: {parsed.metric} = {res.best[parsed.metric]:.6g}  model {res.best['model_uri']}")
    if res.promotion:
        p = res.promotion
        was = "none" if p["champion_value"] is None else f"{p['champion_value']:.6g} (v{p['champion_version']})"
        typer.echo(f"registry: {p['name']} v{p['version']} -> {p['alias']} ({p['metric']} {p['value']:.6g}; "
                   f"champion before: {was})")
