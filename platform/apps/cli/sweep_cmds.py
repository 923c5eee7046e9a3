"""``finegrain sweep SPEC [--resume] [--submit] [--set key=value ...]``."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

#: Seconds a stopped job's driver gets between SIGTERM and SIGKILL.
JOB_STOP_WAIT_S = 60


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
    from finegrain.sweeps.driver import SweepInterrupted, run_sweep

    try:
        res = run_sweep(parsed, resume=resume)
    except SweepInterrupted as exc:
        typer.secho(f"interrupted: {exc}", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
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


def submit_job(entrypoint: list[str], working_dir: str = ".", poll_s: float = 1.0) -> int:
    """Submit ``entrypoint`` to the local stack's job server with its auth token; stream logs; return 0 on success.

    The same as ``eval "$(finegrain stack env)"; ray job submit --address URL --working-dir . -- ...``.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    from finegrain.platform.services.stack import LocalStack, use_token

    st = LocalStack().require()
    use_token(st)
    client = JobSubmissionClient(st.dashboard_url)
    # `ray job stop` sends SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (Ray's default 3 s): give the
    # sweep time to stop its trials and free their resources (the supervisor reads it from the job's env)
    env = {"RAY_JOB_STOP_WAIT_TIME_S": str(JOB_STOP_WAIT_S)}
    job_id = client.submit_job(entrypoint=shlex.join(entrypoint), runtime_env={"working_dir": working_dir,
                                                                                "env_vars": env})
    typer.echo(f"submitted job {job_id} to {st.dashboard_url}")
    shown = 0
    try:
        while True:
            status = client.get_job_status(job_id)
            logs = client.get_job_logs(job_id)
            sys.stdout.write(logs[shown:])
            sys.stdout.flush()
            shown = len(logs)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                typer.echo(f"job {job_id}: {status.value}")
                return 0 if status == JobStatus.SUCCEEDED else 1
            time.sleep(poll_s)
    except KeyboardInterrupt:  # Ctrl-C here stops the job too (Tune saves its state: --resume continues)
        client.stop_job(job_id)
        typer.echo(f"stopped job {job_id}")
        return 130
