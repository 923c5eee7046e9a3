"""The ``finegrain`` command line. Each area registers its commands here.

Errors have one handler, :class:`FinegrainGroup`, the root command group: a
user error (:data:`USER_ERRORS`) raised by any command ends it with one line,
``error: <message>`` on stderr, and exit code 2 (a
:class:`~finegrain.platform.science.errors.FinegrainError` may set its own
label and code: an interrupted sweep prints ``interrupted: ...`` and exits
130); no traceback.  Every other exception propagates with its traceback.
Commands raise; they do not catch errors to print them.

Imports: the command modules import the jobs they run (evaluation, training,
serving, ...) inside each command, the one place in the tree that does so on
purpose: those pull in torch, MLflow, Ray and OpenMM (about 4 s measured on
the CI machine), which ``finegrain --help`` and a mistyped option should not
wait for (about 0.5 s as it is). Everywhere else, imports sit at module top.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from finegrain.platform.apps.cli import data_cmds, demo_cmd, eval_cmds, stack_cmds, sweep_cmds, train_cmds
from finegrain.platform.apps.cli import serve_cmds
from finegrain.platform.apps.cli import entropy_cmds, zoo_cmds
from finegrain.platform.science.errors import FinegrainError

#: What the one handler prints as a one-line error: every deliberate error (``FinegrainError``), and the
#: builtin errors that checks not yet raised as a ``FinegrainError`` use for bad input: ``ValueError`` (also
#: pydantic's ``ValidationError``), a missing input file, an output folder that is not empty.
USER_ERRORS: tuple[type[BaseException], ...] = (FinegrainError, ValueError, FileNotFoundError, FileExistsError)


class FinegrainGroup(TyperGroup):
    """The root command group; its ``invoke`` (which runs every subcommand) is the CLI's one error handler."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            label, code = (exc.label, exc.exit_code) if isinstance(exc, FinegrainError) else ("error", 2)
            typer.secho(f"{label}: {exc}", fg=typer.colors.RED if code == 2 else typer.colors.YELLOW, err=True)
            raise typer.Exit(code) from None


app = typer.Typer(
    cls=FinegrainGroup,
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


def main() -> None:
    """Entry point of the ``finegrain`` script (errors: see :class:`FinegrainGroup`)."""
    from finegrain.platform.services.cpu_memory import retain_freed_memory

    retain_freed_memory()  # batched CPU tensors reuse freed memory instead of page-faulting fresh maps
    app()
