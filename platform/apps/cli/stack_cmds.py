"""``finegrain stack up | status | down | env``."""

from __future__ import annotations

import sys

import typer

from finegrain.platform.apps.defaults import defaults_of
from finegrain.platform.services.stack import LocalStack

UP = defaults_of(LocalStack.up)

app = typer.Typer(help="The local stack: a Ray head and an MLflow server on 127.0.0.1.", no_args_is_help=True)


@app.command()
def up(
    dashboard_port: int = typer.Option(UP["dashboard_port"], help="Ray dashboard / job submission port (next free port if taken)."),
    mlflow_port: int = typer.Option(UP["mlflow_port"], help="MLflow server port (next free port if taken)."),
    num_cpus: int = typer.Option(None, help="CPUs Ray may schedule (default: all)."),
) -> None:
    """Start Ray and MLflow (idempotent); state goes to $FINEGRAIN_HOME or ./.finegrain."""

    stack = LocalStack()
    st = stack.up(dashboard_port=dashboard_port, mlflow_port=mlflow_port, num_cpus=num_cpus)
    _print_state(st)


@app.command()
def status() -> None:
    """Print the MLflow URI and Ray addresses; exit 1 when the stack is not running."""

    stack = LocalStack()
    st, running = stack.state(), stack.status()
    if st is None or not all(running.values()):
        typer.echo(f"stack ({stack.home}) is not running: " + ", ".join(f"{k}={'up' if v else 'down'}" for k, v in running.items()))
        sys.exit(1)
    _print_state(st)


@app.command()
def down() -> None:
    """Stop the processes `stack up` started from this state folder (and nothing else)."""

    stopped = LocalStack().down()
    typer.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command()
def env() -> None:
    """Print shell exports for clients: `eval "$(finegrain stack env)"` then `ray job submit ...`."""

    for k, v in LocalStack().require().client_env().items():
        typer.echo(f"export {k}={v}")


def _print_state(st) -> None:
    typer.echo(f"MLflow tracking URI : {st.mlflow_uri}")
    typer.echo(f"Ray dashboard / jobs: {st.dashboard_url}")
    typer.echo(f"Ray address         : {st.ray_address}")
    typer.echo(f"Ray auth token file : {st.token_path}")
    typer.echo(f"state folder        : {st.home}")
