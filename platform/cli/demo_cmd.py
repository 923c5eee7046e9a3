"""``finegrain demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    workdir: Optional[Path] = typer.Option(None, help="Output folder (default: $FINEGRAIN_HOME/demo)."),
    replicas: int = typer.Option(4, help="Training replicas to simulate."),
    ns: float = typer.Option(0.25, help="ns per training replica."),
) -> None:
    """Bring the stack up, simulate ADP, ingest it, and show what was made."""
    from finegrain.platform.demo import DemoConfig, run_demo
    from finegrain.platform.stack import stack_home

    run_demo(DemoConfig(workdir=(workdir or stack_home() / "demo").resolve(), replicas=replicas, ns=ns))
