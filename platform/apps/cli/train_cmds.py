"""``finegrain train`` and ``finegrain backmap``.

Registered on the main app with ``train_cmds.register(app)``.  User errors
(bad config keys, a CG trajectory that does not fit the model's mapping, a
missing file) raise :class:`~finegrain.platform.science.errors.InputError` and
friends; the CLI's one handler (``finegrain.platform.apps.cli``) prints them
as one ``error: ...`` line and exits with code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from finegrain.platform.science.errors import InputError
from finegrain.trainables.protocol import FAMILIES


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(backmap)


def train(
    config: Path = typer.Argument(..., help="Training config YAML (see trainables/configs/)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a key: section.key=value (repeatable)."),
) -> None:
    """Train a backmapper on Ray Train (the config's `family`: cvae, flow, ic); prints the MLflow run id and model URI."""
    import yaml

    from finegrain.trainables.protocol import trainer_for

    data = yaml.safe_load(config.read_text()) if config.is_file() else None
    family = data.get("family") or "cvae" if isinstance(data, dict) else "cvae"
    config_cls, fit_detailed = trainer_for(family)
    cfg = config_cls.from_yaml(config, list(set_ or []))
    result = fit_detailed(cfg)
    typer.echo(f"run id: {result.run_id or '-'}")
    typer.echo(f"model uri: {result.model_uri or '-'}")
    typer.echo(f"model folder: {result.model_folder}")


def backmap(
    model: Optional[str] = typer.Option(None, help="Model URI (runs:/..., models:/NAME/V, models:/NAME@alias) or a "
                                                   "model folder (or --endpoint)."),
    top: Path = typer.Option(..., help="CG topology (PDB, ...; any format mdtraj reads); bead names as in the model."),
    traj: Path = typer.Option(..., help="CG trajectory (any format mdtraj reads), nm."),
    out: Path = typer.Option(..., help="AA trajectory to write (format from the extension); with --samples K > 1, "
                                       "one file per sample, NAME_k.EXT."),
    samples: int = typer.Option(1, min=1, help="Independent samples K (run as one batch)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (latent draws)."),
    prior: Optional[str] = typer.Option(None, help="Latent prior: gmm (default when fitted) or normal."),
    project_cg: bool = typer.Option(False, "--project-cg", help="Correct each frame by C+(CG - C AA) so it maps "
                                                                 "exactly onto its CG frame (not in the paper)."),
    endpoint: Optional[str] = typer.Option(None, help="URL of a running `finegrain serve` (http://127.0.0.1:8000): "
                                                      "backmap there instead of loading a model here."),
    refine: int = typer.Option(0, min=0, help="Then N steps of batched CG-restrained minimisation with the torch "
                                              "force field (all frames and samples together)."),
    system: Optional[str] = typer.Option(None, help="System whose force field --refine uses (default: the one "
                                                    "the model was trained on)."),
    onto: Optional[str] = typer.Option(None, help="SYSTEM:MAPPING: backmap onto another reference system's topology "
                                                  "(transfer to another molecule or box; families that declare it, "
                                                  "e.g. dbm); the CG file has that mapping's beads."),
) -> None:
    """Backmap a CG trajectory to all-atom with a trained model (here, or on a server: --endpoint)."""
    import mdtraj as md

    from finegrain.trainables.persistence import load_backmapper_any

    for p, what in ((top, "top"), (traj, "traj")):
        if not p.is_file():
            raise InputError(f"{what}: {p} does not exist")
    if (model is None) == (endpoint is None):
        raise InputError("model: give exactly one of --model or --endpoint")
    if endpoint is not None:
        _backmap_remote(endpoint, top, traj, out, samples, seed, prior, project_cg, refine)
        return
    cg = md.load(str(traj), top=str(top))
    bm = load_backmapper_any(model, _tracker_for(model))
    if onto is not None:
        from finegrain.platform.apps.evaluation import parse_onto

        bm = bm.for_system(*parse_onto(onto))
    if prior is not None:
        if prior not in ("gmm", "normal") or "prior" not in FAMILIES[bm.family].options:
            raise InputError(f"prior: expected 'gmm' or 'normal' (cVAE models only), got {prior!r}")
        bm.prior = prior
    if project_cg:
        if "project_cg" not in FAMILIES[bm.family].options:
            raise InputError(f"--project-cg: not supported by {bm.family} models")
        bm.project_cg = True
    trajs = bm.backmap(cg, n_samples=samples, seed=seed)
    if refine:
        import numpy as np

        from finegrain.trainables.refine import refine as refine_frames

        xyz = refine_frames(np.stack([t.xyz for t in trajs]), cg.xyz, bm.mapping, system or bm.system_name,
                            refine)
        for t, x in zip(trajs, xyz):
            t.xyz = x.astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(trajs) == 1 else [out.with_name(f"{out.stem}_{k}{out.suffix}") for k in range(len(trajs))]
    for t, p in zip(trajs, paths):
        t.save(str(p))
    typer.echo(f"wrote {len(paths)} file(s): {', '.join(str(p) for p in paths)} "
               f"({cg.n_frames} frames, {trajs[0].n_atoms} atoms)")


def _backmap_remote(endpoint: str, top: Path, traj: Path, out: Path, samples: int, seed: Optional[int],
                    prior: Optional[str], project_cg: bool, refine: int = 0) -> None:
    """``backmap --endpoint``: upload the CG files to a running server, write what it answers."""
    from finegrain.platform.apps.serving import backmap_file_remote

    for given, name in ((prior is not None, "--prior"), (project_cg, "--project-cg")):
        if given:
            raise InputError(f"{name}: not available with --endpoint (the server's model settings apply)")
    paths = backmap_file_remote(endpoint, traj, top, out, samples=samples, seed=seed, refine=refine)
    typer.echo(f"wrote {len(paths)} file(s): {', '.join(str(p) for p in paths)} (backmapped by {endpoint})")


def _tracker_for(model: str):
    """The command's tracker when ``model`` is an MLflow URI (None for folders and zoo:NAME: no server needed)."""
    if not model.startswith(("runs:/", "models:/")) and "://" not in model:
        return None
    from finegrain.platform.services.stack import tracking_uri
    from finegrain.platform.services.tracking import Tracker

    return Tracker.connect(tracking_uri())
