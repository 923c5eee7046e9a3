"""Fit a baseline backmapper from a shard folder and log it to MLflow like any trained model."""

from __future__ import annotations

from pathlib import Path

from finegrain.datasets.shards import DEFAULT_FRACTIONS, DEFAULT_SPLIT_SEED, Manifest, read_frames, split_trajectories
from finegrain.datasets.systems import get_system
from finegrain.platform.science.mapping import CGMapping
from finegrain.platform.services.tracking import Tracker
from finegrain.trainables.baselines import EnergyMinimisationBackmapper, fit_nullspace
from finegrain.trainables.persistence import log_backmapper
from finegrain.trainables.protocol import split_record

__all__ = ["fit_baseline", "BASELINE_EXPERIMENT"]

BASELINE_EXPERIMENT = "finegrain-baselines"


def fit_baseline(family: str, shards: str | Path, *, experiment: str = BASELINE_EXPERIMENT,
                 fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, seed: int = DEFAULT_SPLIT_SEED,
                 registered_model_name: str | None = None, tracker: Tracker | None = None):
    """Fit ``family`` ("nullspace" or "em") on the training split of ``shards``.

    The energy-minimisation baseline places atoms with a null-space fit of the
    same data before its restrained minimisation. With a ``tracker`` the model is
    logged (and registered as ``registered_model_name``) in its own MLflow run.
    Returns (backmapper, model URI or None without a tracker).
    """
    import mdtraj as md

    if family not in ("nullspace", "em"):
        raise ValueError(f"family: expected 'nullspace' or 'em', got {family!r}")
    shards = Path(shards)
    man = Manifest.load(shards)
    mapping = CGMapping.from_dict(man.mapping)
    topology = md.load_topology(str(shards / man.topology_pdb))
    splits = split_trajectories(man, fractions, seed)
    train_ids = splits["train"]
    frames = read_frames(shards, train_ids)
    model = fit_nullspace(frames["aa_xyz_nm"], mapping, topology)
    if family == "em":
        model = EnergyMinimisationBackmapper(topology, mapping, get_system(man.system).definition, placement=model)
    model.training_split = split_record(fractions, seed, splits, man.digest)  # for ``evaluate --split``
    if tracker is None:
        return model, None
    params = {"family": family, "shards": str(shards.resolve()), "train_trajectories": ",".join(train_ids),
              "n_train_frames": len(frames["frame"]), "seed": seed}
    tags = {"family": family, "system": man.system, "mapping": mapping.name, "data_hash": man.digest}
    run_id = tracker.start_run(experiment, params=params, tags=tags, run_name=f"{family}-{man.system}-{mapping.name}")
    try:
        uri = log_backmapper(model, tracker, run_id, registered_model_name=registered_model_name)
    except BaseException:
        tracker.end_run(run_id, failed=True)
        raise
    tracker.end_run(run_id)
    return model, uri
