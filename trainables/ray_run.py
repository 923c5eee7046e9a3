"""The Ray Train driver and worker plumbing every trainable family shares.

A family supplies its per-worker loop, its fitted data (the ``payload`` of the
run's :class:`~finegrain.trainables.run_context.RunContext`) and how a final
checkpoint becomes a :class:`~finegrain.trainables.protocol.Backmapper`;
:func:`run_training` does the rest, the same way for all: read the shard
manifest and split it by trajectory, build the (AA(t-lag), CG(t), AA(t)) pair
data sets with Ray Data, open the MLflow run (flattened config as params;
family, data digest, mapping, system and the sweep parent as tags), run a
``TorchTrainer`` (``num_workers=0``: in-process) with retries, checkpoints and
the Tune callback, save and log the final model, close the run. What crosses
the Ray boundary is the validated config and the run context, each dumped as
JSON data (:func:`~finegrain.trainables.run_context.loop_config`).

On the worker side, :class:`TrainWorker` holds what every worker shares
(the config and context validated again, rank, device, counters, restore)
and declares the hooks a family implements (:meth:`TrainWorker.train_step`,
``validate``, ``step_metrics``, ``report``, ``reseed``).
:meth:`TrainWorker.train` feeds the worker's Ray Data shard to the step loop
every family shares, :func:`finegrain.trainables.loop.run_steps` (torch-only;
the in-memory :func:`~finegrain.trainables.flow.fit.fit_arrays` drives the
same loop), with rank 0's progress bar as an observer
(:class:`~finegrain.trainables.loop.ProgressObserver`). Reports go to the
worker's observers (:class:`~finegrain.trainables.loop.StepObserver`: the
MLflow metric logger on rank 0, as OpenMM's reporters watch a simulation) and
to Ray Train (:func:`report_step`), whose driver-side callbacks report to Tune.
"""

from __future__ import annotations

import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from finegrain.datasets.shards import Manifest, pair_dataset, split_trajectories
from finegrain.platform.science.mapping import CGMapping
from finegrain.platform.services.cpu_memory import retain_freed_memory
from finegrain.platform.services.stack import connect_ray, stack_home, tracking_uri
from finegrain.platform.services.tracking import Tracker
from finegrain.trainables.loop import Cadence, ProgressObserver, StepHooks, StepObserver, notify, run_steps
from finegrain.trainables.persistence import log_backmapper
from finegrain.trainables.protocol import check_family_handles
from finegrain.trainables.run_context import RunContext, loop_config
from finegrain.trainables.tune_hooks import tune_callbacks

__all__ = ["FitResult", "TrainingData", "load_training_data", "run_training", "report_step", "checkpoint_name",
           "TrainWorker", "StepObserver"]


@dataclass
class FitResult:
    """What a family's ``fit_detailed`` made: the backmapper, its MLflow run/model, its folders."""

    backmapper: Any
    run_id: str | None
    model_uri: str | None
    model_folder: Path
    checkpoint: Path
    run_dir: Path


@dataclass
class TrainingData:
    """A shard folder read for training: manifest, mapping, topology, splits and the Ray data sets."""

    shards: Path
    manifest: Any
    mapping: Any
    topology: Any
    splits: dict[str, list[str]]
    datasets: dict[str, Any]


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:09d}"


def load_training_data(config) -> TrainingData:
    """Manifest, mapping, trajectory splits and materialised pair data sets of ``config.data``.

    Connects to Ray when not connected; refuses ``training.use_gpu`` on a
    cluster without enough GPUs.
    """
    import mdtraj as md
    import ray
    import ray.data

    t, d = config.training, config.data
    shards = Path(d.shards).resolve()
    man = Manifest.load(shards)
    check_family_handles(config.family or config.FAMILY, man.has_box, f"data.shards {shards}")
    mapping = CGMapping.from_dict(man.mapping)
    topology = md.load_topology(str(shards / man.topology_pdb))
    splits = split_trajectories(man, tuple(d.fractions), d.seed)
    if not ray.is_initialized():
        connect_ray()
    gpus = ray.cluster_resources().get("GPU", 0)
    if t.use_gpu and t.num_workers > 0 and gpus < t.num_workers:
        raise ValueError(f"training.use_gpu: {t.num_workers} worker(s) need a GPU each, the Ray cluster has "
                         f"{gpus:g}; set training.use_gpu=false")

    def pairs(split: str):
        shuffle = d.seed if split == "train" and d.global_shuffle else None
        ds = pair_dataset(shards, split, lag=d.lag, seed=d.seed, fractions=tuple(d.fractions), shuffle_seed=shuffle)
        ds = ds.select_columns(["aa_prev", "cg", "aa"] + (["box"] if man.has_box else []))
        return ds.materialize() if d.materialize else ds

    data_ctx = ray.data.DataContext.get_current()
    bars = data_ctx.enable_progress_bars
    data_ctx.enable_progress_bars = bars and t.progress
    try:
        datasets = {"train": pairs("train")}
        if splits["validation"]:
            datasets["validation"] = pairs("validation")
    finally:
        data_ctx.enable_progress_bars = bars
    return TrainingData(shards, man, mapping, topology, splits, datasets)


def run_training(config, family: str, data: TrainingData, loop: Callable[[dict], None],
                 payload: dict[str, Any], to_backmapper: Callable[[str, dict], Any],
                 extra_params: dict[str, Any] | None = None) -> FitResult:
    """Train ``family`` on ``data`` with Ray Train and track it in MLflow (see the module docstring).

    loop : the per-worker training function (``train_loop_per_worker``); its ``train_loop_config``
        is :func:`~finegrain.trainables.run_context.loop_config` of ``config`` and the run's context.
    payload : the family's fitted data for the workers (plain JSON; ``RunContext.payload``).
    to_backmapper : ``(checkpoint folder, info dict) -> Backmapper`` for the final checkpoint.
    """
    import uuid

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t, man, mapping, splits = config.training, data.manifest, data.mapping, data.splits
    uri = run_id = tracker = None
    if config.tracking.enabled:
        uri = tracking_uri()
        tracker = Tracker(uri)
        tags = {"family": family, "dataset_digest": man.digest, "mapping": mapping.name, "system": man.system,
                "data.shards": str(data.shards), "resumed_from": str(t.resume_from or "")}
        if config.tracking.parent_run_id:
            tags["mlflow.parentRunId"] = config.tracking.parent_run_id
        params = {**config.flat(), "data.n_train_trajectories": len(splits["train"]),
                  "data.n_validation_trajectories": len(splits["validation"]), "data.n_frames": man.n_frames,
                  **(extra_params or {})}
        run_id = tracker.start_run(config.tracking.experiment, params, tags, run_name=config.tracking.run_name)
    try:
        work = Path(t.work_dir or stack_home() / "runs").resolve()
        name = f"{family}-{run_id}" if run_id else f"{family}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        local = t.num_workers == 0
        resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
        ctx = RunContext(run_id=run_id, tracking_uri=uri, storage_dir=work / name, local_mode=local,
                         has_validation="validation" in data.datasets,
                         resume_from=Path(t.resume_from).resolve() if t.resume_from else None,
                         n_atoms=man.n_atoms, n_beads=man.n_beads, system=man.system, mapping_name=mapping.name,
                         payload=payload)
        trainer = TorchTrainer(
            loop,
            train_loop_config=loop_config(config, ctx),
            scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                         resources_per_worker=None if local else resources),
            run_config=RunConfig(name=name, storage_path=str(work), callbacks=tune_callbacks(),
                                 failure_config=FailureConfig(max_failures=t.max_failures,
                                                               controller_failure_limit=t.startup_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints)),
            datasets=data.datasets,
        )
        result = trainer.fit()
        from finegrain.trainables.protocol import split_record

        info = {"run_id": run_id, "dataset_digest": man.digest, "system": man.system,
                "training_split": split_record(config.data.fractions, config.data.seed, splits, man.digest)}
        with result.checkpoint.as_directory() as ck_dir:
            ck_path = Path(result.checkpoint.path)
            bm = to_backmapper(ck_dir, info)
        folder = bm.save(work / name / "model")
        model_uri = None
        if run_id:
            model_uri = log_backmapper(bm, tracker, run_id, name=config.tracking.model_name,
                                       registered_model_name=config.tracking.register_as)
            tracker.end_run(run_id)
    except BaseException:
        if run_id:
            tracker.end_run(run_id, failed=True)
        raise
    return FitResult(bm, run_id, model_uri, folder, ck_path, work / name)


def report_step(step: int, metrics: dict[str, float], observers: list[StepObserver], ctx: RunContext, rank: int,
                save_checkpoint: Callable[[Path], Any] | None = None) -> None:
    """Worker side: hand ``metrics`` at ``step`` to the ``observers`` and report them to Ray Train.

    With ``save_checkpoint`` (writes a checkpoint into the folder it is
    given), rank 0 writes one and reports it. In-process runs
    (``ctx.local_mode``) have no controller to persist it, so it is written
    straight into the run folder (``ctx.storage_dir``).
    """
    import ray.train

    notify(observers, step, metrics)
    metrics = {**metrics, "step": step}
    if save_checkpoint is None:
        ray.train.report(metrics)
        return
    name = checkpoint_name(step)
    if ctx.local_mode:
        folder = Path(ctx.storage_dir) / name
        save_checkpoint(folder)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        ck = None
        if rank == 0:
            save_checkpoint(Path(tmp))
            ck = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ck, checkpoint_dir_name=name)


def worker_seed(*parts: int) -> int:
    """A 32-bit seed that is a function of integers (seed, rank, step, epoch, ...)."""
    import numpy as np

    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class TrainWorker(StepHooks, ABC):
    """What every family's Ray Train worker shares: rank and world size, CPU threads, device,
    the step/epoch counters, restoring from a checkpoint, and reporting (MLflow on rank 0).

    ``config`` is the family's training config and ``ctx`` the run's
    :class:`~finegrain.trainables.run_context.RunContext`, both validated
    again from the ``train_loop_config`` (``parse_loop_config``). A family
    builds its model and optimizer, then calls :meth:`restore`.
    """

    #: ``training.precision`` (set from the config; the class value serves a worker built without one)
    precision: str = "32"

    def __init__(self, config, ctx: RunContext):
        import ray.train
        import torch

        self.config, self.ctx = config, ctx
        t = config.training
        self.precision = t.precision
        train_ctx = ray.train.get_context()
        self.rank, self.world = train_ctx.get_world_rank(), train_ctx.get_world_size()
        self.n_atoms, self.n_beads = ctx.n_atoms, ctx.n_beads
        if t.cpus_per_worker:
            torch.set_num_threads(max(1, int(t.cpus_per_worker)))
        retain_freed_memory()  # batched CPU tensors reuse freed memory instead of page-faulting fresh maps
        self.device = torch.device("cpu")
        if t.use_gpu and torch.cuda.is_available():
            self.device = ray.train.torch.get_device()
        self.step, self.epoch = 0, 0
        self.observers: list[StepObserver] = []
        if self.rank == 0 and ctx.run_id:  # this worker's tracker: MLflow watches rank 0's steps
            self.observers.append(Tracker(ctx.tracking_uri).metric_logger(ctx.run_id))

    @property
    def seed(self) -> int:
        """``training.seed``: the root of every worker's random streams."""
        return self.config.training.seed

    def restore(self, model, optimizer, load_state: Callable[[Any], dict]) -> None:
        """Continue from Ray Train's checkpoint (a restarted group) or ``resume_from``; else start at 0.

        load_state : folder -> {"meta" (step, epoch, n_atoms, n_beads), "model", "optimizer"?}.
        """
        import ray.train

        checkpoint, resume_from = ray.train.get_checkpoint(), self.ctx.resume_from
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                ck = load_state(d)
        elif resume_from:
            ck = load_state(resume_from)
        else:
            return
        meta = ck["meta"]
        if (meta["n_atoms"], meta["n_beads"]) != (self.n_atoms, self.n_beads):
            raise ValueError(f"checkpoint is for {meta['n_atoms']} atoms / {meta['n_beads']} beads, the data has "
                             f"{self.n_atoms} / {self.n_beads}")
        try:
            model.load_state_dict(ck["model"])
        except RuntimeError as exc:
            raise ValueError(f"checkpoint weights do not fit the configured model (architecture changed?): "
                             f"{exc}") from None
        if "optimizer" in ck:
            optimizer.load_state_dict(ck["optimizer"])
        self.step, self.epoch = int(meta["step"]), int(meta["epoch"])

    def autocast(self):
        """The forward-pass precision context of ``training.precision`` (bfloat16 autocast or a no-op)."""
        import contextlib

        import torch

        if self.precision != "bf16-mixed":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def compiled(self, model):
        """``model`` through ``torch.compile`` when ``training.compile`` (the step function, not the saved one)."""
        import torch

        return torch.compile(model) if self.config.training.compile else model

    def publish(self, metrics: dict[str, float], save_checkpoint: Callable[[Path], Any] | None = None) -> None:
        """:func:`report_step` at the current step."""
        report_step(self.step, metrics, self.observers, self.ctx, self.rank, save_checkpoint)

    # ------------------------------------------------------------------ the hooks a family implements
    @abstractmethod
    def train_step(self, batch: dict) -> dict[str, float]:
        """One optimiser step on a batch of pairs (``aa_prev``, ``cg``, ``aa`` tensors); its loss terms."""

    @abstractmethod
    def validate(self) -> dict[str, float]:
        """Validation metrics (``val_*``) on the "validation" shard, at the current step."""

    @abstractmethod
    def step_metrics(self, means: dict[str, float], used: int) -> dict[str, float]:
        """The metrics to report from the running means of ``train_step``'s terms (``used``: the step whose
        schedule values apply)."""

    @abstractmethod
    def report(self, metrics: dict[str, float], checkpoint: bool = False, final: bool = False) -> None:
        """Report ``metrics`` (:meth:`publish`), with the family's checkpoint state when ``checkpoint``."""

    @abstractmethod
    def reseed(self) -> None:
        """Restart the family's random streams from (seed, rank, step): what a resumed run draws next."""

    def train(self, max_steps: int, batch_size: int, desc: str, *, checkpoint_last: bool) -> None:
        """Epochs over the "train" shard until ``max_steps``: :func:`~finegrain.trainables.loop.run_steps`
        with this worker's hooks (``train_step``, ``step_metrics``, ``validate``, ``report``,
        ``reseed``; the family sets ``self.opt``).

        Batches: ``batch_size`` pairs per worker (float32 on the worker's device, full batches only),
        shuffled in a ``data.shuffle_buffer`` window seeded by (seed, rank, epoch). Cadence:
        ``training.log_every`` / ``eval_every`` (when there is validation data) / ``checkpoint_every``;
        ``checkpoint_last``: also checkpoint at the last step (families that write their final
        checkpoint themselves pass False). Rank 0 shows a progress bar (:meth:`progress`).
        """
        import ray.train
        import torch

        t = self.config.training
        shard = ray.train.get_dataset_shard("train")

        def epoch_batches(epoch: int):
            return shard.iter_torch_batches(
                batch_size=batch_size, dtypes=torch.float32, device=self.device, drop_last=True,
                local_shuffle_buffer_size=self.config.data.shuffle_buffer or None,
                local_shuffle_seed=worker_seed(self.seed, self.rank, epoch))

        cadence = Cadence(t.log_every, t.eval_every if self.ctx.has_validation else None, t.checkpoint_every,
                          checkpoint_last=checkpoint_last)
        bar = self.progress(max_steps, desc)
        run_steps(self, epoch_batches, max_steps, batch_size, cadence,
                  observers=[] if bar is None else [ProgressObserver(bar)], world=self.world)

    def progress(self, total: int, desc: str):
        """Rank 0's progress bar from the current step (tqdm in-process, Ray's tqdm in a worker group)."""
        if self.rank != 0 or not self.config.training.progress:
            return None
        if self.ctx.local_mode:
            from tqdm.auto import tqdm

            return tqdm(total=total, initial=self.step, desc=desc, unit="step")
        from ray.experimental.tqdm_ray import tqdm

        bar = tqdm(total=total, desc=desc)
        bar.update(self.step)
        return bar
