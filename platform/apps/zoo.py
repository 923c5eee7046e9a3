"""Shipped pretrained backmappers (``zoo:NAME``) and the recipes that reproduce them.

Each model is a ``Backmapper.save`` folder inside the package plus its model
card (:mod:`finegrain.trainables.shipped`): the recipe, the data hash and
split, the held-out scores with their floors and 95 % intervals, the
training wall-clock and the command that reproduces it. ``zoo:NAME`` works
wherever a model is asked for (``finegrain backmap``, ``evaluate``,
``serve``), offline.

A recipe (``trainables/zoo/recipes.yaml``) says how a model is made from
nothing: simulate training replicas and a separate held-out replica (new
seed) with OpenMM, ingest both with the mapping, train the shipped config
with ``finegrain train``, evaluate on the held-out replica. :func:`build`
runs it (``make pretrained``, ``finegrain zoo build``) and :func:`compare`
checks reproduced scores against a card's intervals.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from finegrain.datasets.ingest import ingest, sources_from_simulation
from finegrain.datasets.simulate import SimulationConfig, simulate
from finegrain.datasets.systems import get_system
from finegrain.platform.apps.evaluation import evaluate
from finegrain.platform.science.errors import InputError
from finegrain.trainables.protocol import trainer_for
from finegrain.trainables.shipped import CARD, PREFIX, ZOO, card, folder, names

__all__ = ["ZOO", "PREFIX", "Recipe", "names", "folder", "card", "recipes", "build", "compare", "HEADLINE"]

RECIPES = "recipes.yaml"
#: the scores a card lists (value, floor, 95 % interval) and ``compare`` checks
HEADLINE = ("rmsd_cg_nm", "js_bonds", "js_angles", "clash_fraction", "w1_energy_kj_mol", "energy_p99_excess_kj_mol",
            "kl_fes", "js_fes", "mae_constrained_bond_nm")


class Simulation(BaseModel):
    """One ``finegrain simulate`` call."""

    model_config = ConfigDict(extra="forbid")
    ns: float = Field(gt=0)
    replicas: int = Field(ge=1)
    seed: int
    temperature_k: float = 300.0


class Recipe(BaseModel):
    """How one zoo model is made (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    description: str
    system: str
    mapping: str
    config: str = Field(description="a config in trainables/configs/")
    overrides: list[str] = Field(default_factory=list)
    train: Simulation
    heldout: Simulation


def recipes(path: Path | None = None) -> dict[str, Recipe]:
    """The recipes of ``trainables/zoo/recipes.yaml`` (validated)."""
    import yaml

    path = path or ZOO / RECIPES
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        return {name: Recipe.model_validate(spec) for name, spec in raw.items()}
    except Exception as exc:  # pydantic ValidationError: name the file
        raise ValueError(f"{path}: {exc}") from None


def build(name: str, out: Path, workdir: Path, console=None) -> dict[str, Any]:
    """Make zoo model ``name`` from its recipe: simulate, ingest, train, evaluate; write it and its card to
    ``out/NAME``. Needs the local stack (``finegrain stack up``). Returns the card."""
    import shutil

    def say(text: str) -> None:
        if console is None:
            print(text, flush=True)
        else:
            console.print(text, markup=False, highlight=False)

    all_recipes = recipes()
    if name not in all_recipes:
        raise InputError(f"name: no recipe {name!r} (known: {', '.join(sorted(all_recipes))})")
    r = all_recipes[name]
    workdir = Path(workdir).resolve() / name
    mapping = get_system(r.system).mapping(r.mapping)
    shards = {}
    for part, sim in (("train", r.train), ("heldout", r.heldout)):
        # simulations are shared between recipes (and reruns) with the same settings
        sim_dir = workdir.parent / f"sim-{r.system}-{sim.ns:g}ns-{sim.replicas}x-s{sim.seed}-{sim.temperature_k:g}K"
        if (sim_dir / "metadata.json").is_file():
            say(f"[{name}] {part}: reusing {sim_dir}")
        else:
            say(f"[{name}] simulate {part}: {sim.replicas} x {sim.ns} ns, seed {sim.seed}, {sim.temperature_k} K")
            simulate(SimulationConfig(r.system, ns=sim.ns, replicas=sim.replicas, seed=sim.seed,
                                      temperature_k=sim.temperature_k), sim_dir, overwrite=True)
        top, system, sources = sources_from_simulation(sim_dir)
        shards[part] = workdir / f"shards-{part}"
        ingest(top, sources, mapping, shards[part], system=system, overwrite=True)
    config_path = Path(__file__).resolve().parents[2] / "trainables" / "configs" / r.config
    import yaml

    family = (yaml.safe_load(config_path.read_text()) or {}).get("family")
    config_cls, fit = trainer_for(family)
    sets = [f"data.shards={shards['train']}", *r.overrides]
    config = config_cls.from_yaml(config_path, sets)
    say(f"[{name}] train {r.config} ({family})")
    t0 = time.perf_counter()
    result = fit(config)
    train_s = time.perf_counter() - t0
    say(f"[{name}] evaluate on the held-out replica")
    ev = evaluate(str(result.model_folder), shards["heldout"], out=workdir / "evaluation")
    dest = Path(out) / name
    if dest.exists():
        shutil.rmtree(dest)
    result.backmapper.save(dest)
    made = {
        "name": name, "description": r.description, "family": result.backmapper.family,
        "label": result.backmapper.label, "system": r.system, "mapping": r.mapping,
        "recipe": r.model_dump(),
        "config": {**config.model_dump(mode="json", exclude={"training": {"work_dir"}}),
                   "data": {**config.data.model_dump(mode="json"), "shards": "<the recipe's training simulation>"}},
        "train_command": f"finegrain train trainables/configs/{r.config} --set data.shards=SHARDS "
                         + " ".join(f"--set {o}" for o in r.overrides),
        "dataset_digest": result.backmapper.info.get("dataset_digest"),
        "training_split": result.backmapper.recorded_split(),
        "train_wall_s": round(train_s, 1), "mlflow_run_id": result.run_id,
        "scores": _scores(ev.metrics), "heldout": r.heldout.model_dump(),
        "reproduce": f"make pretrained  # or: finegrain zoo build {name}",
        "made": time.strftime("%Y-%m-%d"),
    }
    (dest / CARD).write_text(json.dumps(made, indent=1))
    say(f"[{name}] written to {dest}")
    return made


def _scores(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    out = {}
    for m in HEADLINE:
        if m in metrics:
            out[m] = {k: float(metrics[f"{m}{s}"]) for k, s in (
                ("value", ""), ("ci_lo", "_ci_lo"), ("ci_hi", "_ci_hi"), ("floor", "_floor")) if f"{m}{s}" in metrics}
    return out


def compare(shipped: dict[str, Any], reproduced: dict[str, Any]) -> list[tuple[str, float, float, float, bool]]:
    """(score, shipped value, reproduced value, tolerance, agrees) per headline score.

    Two runs agree on a score when their values differ by less than the sum of
    their 95 % half-widths, with a floor of the reference-vs-reference noise
    floor (two independent runs of the same recipe differ by about that much).
    """
    rows = []
    for m, a in shipped.get("scores", {}).items():
        b = reproduced.get("scores", {}).get(m)
        if b is None:
            continue
        half = sum(max(0.0, (s.get("ci_hi", s["value"]) - s.get("ci_lo", s["value"])) / 2) for s in (a, b))
        tol = max(half, a.get("floor", 0.0), 1e-9)
        rows.append((m, a["value"], b["value"], tol, abs(a["value"] - b["value"]) <= tol))
    return rows
