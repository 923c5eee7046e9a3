"""``finegrain zoo``: list, show and rebuild the shipped pretrained models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(help="Shipped pretrained models (use them as --model zoo:NAME).", invoke_without_command=True,
                  no_args_is_help=False)


@app.callback()
def list_models(ctx: typer.Context) -> None:
    """List the shipped models with their held-out scores."""
    if ctx.invoked_subcommand is not None:
        return
    from finegrain.platform.apps import zoo

    for name in zoo.names():
        c = zoo.card(name)
        s = c.get("scores", {})
        brief = ", ".join(f"{k} {v['value']:.3g} (floor {v.get('floor', float('nan')):.3g})"
                          for k, v in s.items() if k in ("w1_energy_kj_mol", "js_angles", "kl_fes"))
        typer.echo(f"{name:16s} {c['family']:5s} {c['system']}/{c['mapping']:10s} {brief}")
        typer.echo(f"{'':16s} {c['description']}")


@app.command("show")
def show(name: str = typer.Argument(..., help="A zoo model name.")) -> None:
    """Print a model's card (recipe, data hash, split, scores with floors, how to reproduce)."""
    from finegrain.platform.apps import zoo

    typer.echo(json.dumps(zoo.card(name), indent=1))


@app.command("build")
def build(names: List[str] = typer.Argument(None, help="Recipes to build (default: all)."),
          out: Path = typer.Option(None, help="Where the model folders go (default: the package's zoo)."),
          workdir: Path = typer.Option(Path("pretrained-work"), help="Simulations, shards and evaluations."),
          compare_to: Optional[Path] = typer.Option(None, help="A zoo folder whose cards the new scores are "
                                                    "checked against (default: the package's zoo).")) -> None:
    """Simulate, train and evaluate zoo models from their recipes; check the scores against the shipped cards."""
    from rich.console import Console

    from finegrain.platform.apps import zoo
    from finegrain.platform.services.stack import connect_ray

    console = Console()
    connect_ray()
    todo = names or sorted(zoo.recipes())
    reference = Path(compare_to) if compare_to else zoo.ZOO
    shipped = {n: json.loads((reference / n / zoo.CARD).read_text()) for n in todo
               if (reference / n / zoo.CARD).is_file()}
    failed = []
    for name in todo:
        made = zoo.build(name, Path(out) if out else zoo.ZOO, workdir, console=console)
        if name not in shipped:
            continue
        for score, a, b, tol, ok in zoo.compare(shipped[name], made):
            console.print(f"{name:16s} {score:26s} shipped {a:10.4g} reproduced {b:10.4g} tolerance {tol:9.3g} "
                          f"{'ok' if ok else 'DIFFERS'}", soft_wrap=True)
            if not ok:
                failed.append(f"{name}:{score}")
    if failed:
        raise typer.Exit(f"reproduced scores outside the cards' intervals: {', '.join(failed)}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="zoo")
