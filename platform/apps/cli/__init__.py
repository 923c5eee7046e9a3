"""The ``finegrain`` command line. Each area registers its commands here."""

from __future__ import annotations

import sys

import typer

from finegrain.platform.apps.cli import data_cmds, demo_cmd, eval_cmds, stack_cmds, sweep_cmds, train_cmds
from finegrain.platform.apps.cli import serve_cmds
from finegrain.platform.apps.cli import entropy_cmds, zoo_cmds

app = typer.Typer(
    name="finegrain",
    help="Machine-learned backmapping of molecular simulations on Ray, tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(stack_cmds.app, name="stack")
data_cmds.register(app)
train_cmds.register(app)
eval_cmds.register(app)
sweep_cmds.register(app)
serve_cmds.register(app)
entropy_cmds.register(app)
demo_cmd.register(app)
zoo_cmds.register(app)


def _user_errors() -> tuple[type[BaseException], ...]:
    from finegrain.datasets.systems import SystemError_
    from finegrain.platform.science.mapping import MappingError
    from finegrain.platform.services.stack import StackNotRunning
    from finegrain.platform.science.validation import InputError

    return (InputError, MappingError, SystemError_, StackNotRunning, FileExistsError, FileNotFoundError, ValueError)


def main() -> None:
    """Entry point: user errors print one clear line and exit 2 (no traceback)."""
    from finegrain.platform.services.cpu_memory import retain_freed_memory

    retain_freed_memory()  # batched CPU tensors reuse freed memory instead of page-faulting fresh maps
    try:
        app()
    except _user_errors() as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
