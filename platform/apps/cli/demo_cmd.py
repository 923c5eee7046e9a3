"""``finegrain demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from finegrain.platform.apps.defaults import defaults_of
from finegrain.platform.apps.demo_config import DemoConfig

DEMO = defaults_of(DemoConfig)


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    workdir: Optional[Path] = typer.Option(None, help="Output folder (default: $FINEGRAIN_HOME/demo)."),
    replicas: int = typer.Option(DEMO["replicas"], help="Training replicas to simulate."),
    ns: float = typer.Option(DEMO["ns"], help="ns per training replica."),
    train_steps: int = typer.Option(DEMO["train_steps"], help="cVAE training steps (the smoke model)."),
    serve_port: int = typer.Option(DEMO["serve_port"], help="Port of the Serve application (127.0.0.1)."),
) -> None:
    """Simulate ADP, train and evaluate backmappers, sweep, serve the champion, compare mappings' entropies."""
    from finegrain.platform.apps.demo import run_demo
    from finegrain.platform.services.stack import stack_home

    run_demo(DemoConfig(workdir=(workdir or stack_home() / "demo").resolve(), replicas=replicas, ns=ns,
                        train_steps=train_steps, serve_port=serve_port))
