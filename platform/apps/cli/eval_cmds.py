"""``finegrain evaluate | leaderboard | baseline``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from finegrain.datasets.shards import DEFAULT_SPLIT_SEED
from finegrain.platform.apps.console import leaderboard_table
from finegrain.platform.science.metrics.floors import N_BOOTSTRAP
from finegrain.platform.science.metrics.landscape import MIN_FES_FRAMES


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
    app.command()(leaderboard)
    app.command()(baseline)


def evaluate(
    model: str = typer.Option(..., help="Model URI (runs:/..., models:/NAME@alias) or a saved model folder."),
    reference: Path = typer.Option(..., help="Reference: a shard folder, or an AA trajectory (with --top)."),
    top: Optional[Path] = typer.Option(None, help="AA topology for a trajectory reference."),
    cg: Optional[Path] = typer.Option(None, help="Separate CG trajectory (generalization test); default: mapped reference."),
    cg_top: Optional[Path] = typer.Option(None, help="CG topology for --cg."),
    samples: int = typer.Option(1, help="Samples per CG frame (diversity)."),
    seed: int = typer.Option(0, help="Random seed for sampling."),
    out: Path = typer.Option(Path("evaluation"), help="Folder for report.json and plots."),
    lag_ps: Optional[float] = typer.Option(None, help="MSM lag, ps (default: the system's, e.g. 5 ps ADP, 4 ns "
                                                      "chignolin)."),
    min_frames: int = typer.Option(MIN_FES_FRAMES, help="Fewest reference frames for free-energy surfaces and MSMs "
                                              "(fewer are refused)."),
    bootstrap: int = typer.Option(N_BOOTSTRAP, help="Block-bootstrap replicates for the 95 % intervals (0: none)."),
    floor_reference: Optional[Path] = typer.Option(None, help="An independent reference run (shard folder, or "
                                                              "trajectory with --top) for the noise floors; "
                                                              "default: the two halves of --reference."),
    split: str = typer.Option("all", help="Shard reference: all trajectories, or the model's own train/validation/"
                                          "test trajectories as recorded when it was trained (fractions, seed, ids)."),
    refine: int = typer.Option(0, min=0, help="Steps of restrained minimisation with the torch force field after "
                                              "backmapping; scored as its own leaderboard row (LABEL+refineN)."),
    onto: Optional[str] = typer.Option(None, help="SYSTEM:MAPPING: move the model onto another reference system "
                                                  "(transfer to another molecule or box; families that declare "
                                                  "it, e.g. dbm) before backmapping its reference."),
) -> None:
    """Backmap, compare with the reference (structure, energies, FES, kinetics, velocities), log to MLflow."""
    from rich.console import Console

    from finegrain.platform.apps.evaluation import evaluate as run
    from finegrain.platform.services.stack import tracking_uri
    from finegrain.platform.services.tracking import Tracker

    res = run(model, reference, top=top, cg=cg, cg_top=cg_top, samples=samples, seed=seed, out=out, lag_ps=lag_ps,
              split=split, min_frames=min_frames, bootstrap=bootstrap, floor_reference=floor_reference,
              refine=refine, onto=onto, tracker=Tracker.connect(tracking_uri()))
    console = Console()
    for k in sorted(res.metrics):
        console.print(f"{k:32s} {res.metrics[k]:.6g}")
    console.print(f"MLflow run {res.run_id}; report {res.report}")


def leaderboard(
    system: str = typer.Option(..., help="Reference system, e.g. adp."),
    data: Optional[str] = typer.Option(None, help="Data set hash (default: that of the latest evaluation)."),
    evaluation: Optional[str] = typer.Option(None, help="in-distribution or generalization (default: both)."),
    log: bool = typer.Option(True, "--log/--no-log", help="Also log it to MLflow (table, JSON and plot)."),
) -> None:
    """Latest evaluation of every model on the same data, ranked by the composite, each score beside its floor."""
    from rich.console import Console

    from finegrain.platform.apps.leaderboard import leaderboard as board
    from finegrain.platform.apps.leaderboard import log_leaderboard

    from finegrain.platform.services.stack import tracking_uri
    from finegrain.platform.services.tracking import Tracker

    tracker = Tracker.connect(tracking_uri())
    rows = board(system, tracker, data_hash=data, evaluation=evaluation)
    console = Console()
    console.print(leaderboard_table(rows, system))
    if log and rows:
        console.print(f"logged to MLflow run {log_leaderboard(rows, system, tracker)}")


def baseline(
    family: str = typer.Argument(..., help="nullspace (null-space fibre sampler) or em (placement + restrained minimisation)."),
    shards: Path = typer.Option(..., help="Training shard folder."),
    register_as: Optional[str] = typer.Option(None, help="Also register the model under this name."),
    seed: int = typer.Option(DEFAULT_SPLIT_SEED, help="Seed of the train/validation/test split."),
) -> None:
    """Fit a baseline on a shard folder and log it to MLflow; prints the model URI."""
    from finegrain.platform.services.stack import tracking_uri
    from finegrain.platform.services.tracking import Tracker
    from finegrain.trainables.baseline_fit import fit_baseline

    tracker = Tracker.connect(tracking_uri())  # fails clearly when the stack is not running
    _, uri = fit_baseline(family, shards, seed=seed, registered_model_name=register_as, tracker=tracker)
    typer.echo(f"model URI: {uri}")
