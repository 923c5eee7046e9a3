"""Fit a baseline backmapper from a shard folder and log it to MLflow like any trained model; baselines are
trainers too (:class:`BaselineTrainConfig`, :func:`fit_detailed`), so ``finegrain train`` and sweeps fit them."""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field

from finegrain.datasets.shards import DEFAULT_FRACTIONS, DEFAULT_SPLIT_SEED, Manifest, read_frames, split_trajectories
from finegrain.datasets.systems import get_system
from finegrain.platform.science.mapping import CGMapping
from finegrain.platform.services.stack import stack_home, tracking_uri
from finegrain.platform.services.tracking import Tracker
from finegrain.trainables.baselines import EnergyMinimisationBackmapper, fit_nullspace
from finegrain.trainables.persistence import log_backmapper
from finegrain.trainables.model_config import ModelConfig
from finegrain.trainables.protocol import check_family_handles, split_record
from finegrain.trainables.ray_run import FitResult
from finegrain.trainables.train_config import (
    DataSection,
    RunSection,
    TrackingSection,
    TrainingConfigBase,
    model_section,
)

__all__ = ["fit_baseline", "fit_detailed", "BaselineTrainConfig", "BASELINE_EXPERIMENT"]

BASELINE_EXPERIMENT = "finegrain-baselines"


def fit_baseline(family: str, shards: str | Path, *, experiment: str = BASELINE_EXPERIMENT,
                 fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, seed: int = DEFAULT_SPLIT_SEED,
                 registered_model_name: str | None = None, tracker: Tracker | None = None):
    """Fit ``family`` ("nullspace" or "em") on the training split of ``shards``.

    The energy-minimisation baseline places atoms with a null-space fit of the
    same data before its restrained minimisation. A topology of several molecules
    (a liquid) gets the molecule-wise null-space model (one molecule's model, fitted
    on every copy; every bead must lie inside one molecule). With a ``tracker`` the model is
    logged (and registered as ``registered_model_name``) in its own MLflow run.
    Returns (backmapper, model URI or None without a tracker).
    """
    import mdtraj as md

    if family not in ("nullspace", "em"):
        raise ValueError(f"family: expected 'nullspace' or 'em', got {family!r}")
    shards = Path(shards)
    man = Manifest.load(shards)
    check_family_handles(family, man.has_box, f"shards {shards}")
    mapping = CGMapping.from_dict(man.mapping)
    topology = md.load_topology(str(shards / man.topology_pdb))
    splits = split_trajectories(man, fractions, seed)
    train_ids = splits["train"]
    frames = read_frames(shards, train_ids)
    model = fit_nullspace(frames["aa_xyz_nm"], mapping, topology, molecule_wise=len(topology.find_molecules()) > 1)
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


# ----------------------------------------------------------------------------- baselines as trainers
@dataclass(frozen=True)
class BaselineConfig(ModelConfig):
    """Baselines have no hyper-parameters to set: the model section exists so their configs read like the
    others (``model.preset: default`` and nothing else)."""


BaselineModelSection = model_section(BaselineConfig)


class BaselineTrainConfig(TrainingConfigBase):
    """The configuration of fitting a baseline with ``finegrain train`` (``family: nullspace`` or ``em``).

    Only ``data`` (shards, split) and ``tracking`` matter; ``training.work_dir`` is where the model folder goes.
    """

    FAMILY: ClassVar[tuple[str, ...]] = ("nullspace", "em")
    PRESETS: ClassVar[dict[str, Any]] = {"default": BaselineConfig}
    data: DataSection
    model: BaselineModelSection = Field(default_factory=BaselineModelSection)
    training: RunSection = Field(default_factory=RunSection)
    tracking: TrackingSection = Field(default_factory=lambda: TrackingSection(experiment=BASELINE_EXPERIMENT))


def fit_detailed(config: BaselineTrainConfig) -> FitResult:
    """Fit the config's baseline on its training split, log it (when ``tracking.enabled``) and save its folder:
    the trainer protocol of :data:`finegrain.trainables.protocol.FAMILIES`, as the learned families have."""
    t = config.training
    tracker = Tracker.connect(tracking_uri()) if config.tracking.enabled else None
    model, uri = fit_baseline(config.family, config.data.shards, experiment=config.tracking.experiment,
                              fractions=tuple(config.data.fractions), seed=config.data.seed,
                              registered_model_name=config.tracking.register_as, tracker=tracker)
    run_id = uri.split("/")[1] if uri else None
    name = f"{config.family}-{run_id}" if run_id else f"{config.family}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(t.work_dir or stack_home() / "runs").resolve() / name
    folder = model.save(run_dir / "model")
    return FitResult(model, run_id, uri, folder, None, run_dir)
