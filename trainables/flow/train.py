"""Training the conditional flow on Ray Train (same protocol as the cVAE's trainer).

:func:`train_loop_per_worker` is the per-worker loop of a
``ray.train.torch.TorchTrainer``; :func:`fit_detailed` (the driver) builds
the trainer from a :class:`~finegrain.trainables.flow.train_config.FlowTrainConfig`,
tracks one MLflow run and returns a
:class:`~finegrain.trainables.cvae.train.FitResult` holding a
:class:`~finegrain.trainables.flow.backmapper.FlowBackmapper`.

Per step: a batch of pairs (AA(t-1), CG(t), AA(t)) [B, *, 3] nm from the
worker's Ray Data shard; the flow-matching loss
(:meth:`ConditionalFlow.cfm_loss`, frames centred on the CG centroid, no
rotation augmentation: the velocity field is rotation-equivariant and the
prior isotropic); AdamW with warm-up + cosine decay; gradient-norm clip 10.
Validation (every ``eval_every`` steps): ``val_total`` (the loss on the
validation split, fixed noise) and ``val_nll`` (held-out mean -log q(x | y)
per frame, nats on the fibre measure in nm, on ``val_nll_frames`` frames;
``val_nll_per_dof`` divides by 3N).  Checkpoints: ``model.pt``,
``optimizer.pt``, ``state.json`` (tensors only, ``weights_only`` loads).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from finegrain.platform.shards import unflatten_pair_batch
from finegrain.trainables.cvae.train import FitResult
from finegrain.trainables.flow.config import FlowConfig
from finegrain.trainables.flow.fit import lr_factor, make_optimizer
from finegrain.trainables.flow.model import ConditionalFlow
from finegrain.trainables.tune_hooks import tune_callbacks

if TYPE_CHECKING:
    from finegrain.trainables.flow.train_config import FlowTrainConfig

__all__ = ["fit", "fit_detailed", "FitResult", "train_loop_per_worker", "loop_config", "save_checkpoint_dir",
           "load_checkpoint_state"]

CKPT_MODEL, CKPT_OPTIM, CKPT_META = "model.pt", "optimizer.pt", "state.json"


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def save_checkpoint_dir(folder: str | Path, model: torch.nn.Module, optimizer, meta: dict[str, Any]) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / CKPT_MODEL)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), folder / CKPT_OPTIM)
    (folder / CKPT_META).write_text(json.dumps(meta, indent=1))
    return folder


def load_checkpoint_state(folder: str | Path) -> dict[str, Any]:
    """{"meta", "model", "optimizer"?} of a flow checkpoint folder (weights_only loads)."""
    folder = Path(folder)
    if not (folder / CKPT_META).is_file():
        raise FileNotFoundError(f"checkpoint {folder}: no {CKPT_META} (not a flow checkpoint)")
    meta = json.loads((folder / CKPT_META).read_text())
    if "flow" not in meta:
        raise ValueError(f"checkpoint {folder}: not a flow checkpoint (no 'flow' config in {CKPT_META})")
    out: dict[str, Any] = {"meta": meta}
    for key, name in (("model", CKPT_MODEL), ("optimizer", CKPT_OPTIM)):
        if (folder / name).is_file():
            out[key] = torch.load(folder / name, map_location="cpu", weights_only=True)
    return out


class _Worker:
    """State of one training worker; ``config`` is the plain data of :func:`loop_config`."""

    def __init__(self, config: dict[str, Any]):
        import ray.train

        self.c = c = config
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.cfg = FlowConfig.from_dict(c["flow"])
        self.n_atoms, self.n_beads = int(c["n_atoms"]), int(c["n_beads"])
        if c.get("cpus_per_worker"):
            torch.set_num_threads(max(1, int(c["cpus_per_worker"])))
        self.device = torch.device("cpu")
        if c.get("use_gpu") and torch.cuda.is_available():
            self.device = ray.train.torch.get_device()
        torch.manual_seed(_seed(c["seed"], 0))
        self.raw = ConditionalFlow(self.cfg, np.asarray(c["mapping_matrix"]), np.asarray(c["assignment"]))
        self.raw.to(self.device)
        self.opt = make_optimizer(self.raw)
        self.step, self.epoch = 0, 0
        self._restore(ray.train.get_checkpoint(), c.get("resume_from"))
        self.model = ray.train.torch.prepare_model(self.raw, move_to_device=False)
        self.gen = torch.Generator(self.device).manual_seed(_seed(c["seed"], self.rank, self.step))
        self.logger = None
        if self.rank == 0 and c.get("run_id"):
            from finegrain.platform.tracking import MetricLogger

            self.logger = MetricLogger(c["run_id"], c.get("tracking_uri"))

    def _restore(self, checkpoint, resume_from: str | None) -> None:
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                ck = load_checkpoint_state(d)
        elif resume_from:
            ck = load_checkpoint_state(resume_from)
        else:
            return
        meta = ck["meta"]
        if (meta["n_atoms"], meta["n_beads"]) != (self.n_atoms, self.n_beads):
            raise ValueError(f"checkpoint is for {meta['n_atoms']} atoms / {meta['n_beads']} beads, the data has "
                             f"{self.n_atoms} / {self.n_beads}")
        self.raw.load_state_dict(ck["model"])
        if "optimizer" in ck:
            self.opt.load_state_dict(ck["optimizer"])
        self.step, self.epoch = int(meta["step"]), int(meta["epoch"])

    def _pairs(self, batch: dict):
        prev, cg, aa = unflatten_pair_batch(batch, self.n_atoms, self.n_beads)
        return (prev if self.cfg.temporal else None), cg, aa

    def _train_step(self, batch: dict) -> float:
        self.model.train()
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.learning_rate * lr_factor(self.step, int(self.c["max_steps"]))
        prev, cg, aa = self._pairs(batch)
        loss = self.model(aa, cg, prev, generator=self.gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.raw.parameters(), 10.0)
        self.opt.step()
        return float(loss.detach())

    def _validate(self) -> dict[str, float]:
        import ray.train

        self.raw.eval()
        gen = torch.Generator(self.device).manual_seed(_seed(self.c["seed"], 7, self.rank))
        sums = torch.zeros(4, dtype=torch.float64)  # loss * B, B, sum nll, n nll
        want = -(-int(self.c["val_nll_frames"]) // self.world)
        for batch in ray.train.get_dataset_shard("validation").iter_torch_batches(
                batch_size=self.cfg.batch_size, dtypes=torch.float32, device=self.device):
            prev, cg, aa = self._pairs(batch)
            with torch.no_grad():
                sums[0] += float(self.raw.cfm_loss(aa, cg, prev, generator=gen)) * aa.shape[0]
            sums[1] += aa.shape[0]
            k = min(want - int(sums[3]), aa.shape[0])
            if k > 0:  # the frame-only density q(x | y), the one entropies use
                lp = self.raw.log_prob(aa[:k], cg[:k], None, divergence=self.c["val_divergence"], generator=gen,
                                       method="rk4", steps=int(self.c["val_steps"]))
                sums[2] += float(-lp.double().sum())
                sums[3] += k
        if self.world > 1:
            torch.distributed.all_reduce(sums)
        out = {"val_total": float(sums[0] / sums[1])} if sums[1] > 0 else {}
        if sums[3] > 0:
            out["val_nll"] = float(sums[2] / sums[3])
            out["val_nll_per_dof"] = out["val_nll"] / (3 * self.n_atoms)
        return out

    def _meta(self, final: bool) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "flow": self.cfg.to_dict(), "assignment": self.c["assignment"],
                "n_atoms": self.n_atoms, "n_beads": self.n_beads, "mapping": self.c.get("mapping_name"),
                "world_size": self.world, "final": final}

    def _report(self, metrics: dict[str, float], checkpoint: bool = False, final: bool = False) -> None:
        import ray.train

        if self.logger is not None:
            self.logger.log(self.step, metrics)
            self.logger.flush()
        metrics = {**metrics, "step": self.step}
        if not checkpoint:
            ray.train.report(metrics)
            return
        name = f"checkpoint_{self.step:09d}"
        if self.c.get("local_mode"):  # no controller persists it: write straight into the run folder
            folder = Path(self.c["storage_dir"]) / name
            save_checkpoint_dir(folder, self.raw, self.opt, self._meta(final))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))
            return
        with tempfile.TemporaryDirectory() as tmp:
            ck = None
            if self.rank == 0:
                save_checkpoint_dir(tmp, self.raw, self.opt, self._meta(final))
                ck = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ck, checkpoint_dir_name=name)

    def run(self) -> None:
        import ray.train

        c = self.c
        max_steps = int(c["max_steps"])
        shard = ray.train.get_dataset_shard("train")
        acc, n_acc, t_busy = 0.0, 0, 0.0
        bar = self._progress(max_steps)
        while self.step < max_steps:
            n_batches = 0
            t0 = time.perf_counter()
            for batch in shard.iter_torch_batches(
                    batch_size=self.cfg.batch_size, dtypes=torch.float32, device=self.device, drop_last=True,
                    local_shuffle_buffer_size=c.get("shuffle_buffer") or None,
                    local_shuffle_seed=_seed(c["seed"], self.rank, self.epoch)):
                n_batches += 1
                acc += self._train_step(batch)
                self.step += 1
                n_acc += 1
                t_busy += time.perf_counter() - t0
                if bar is not None:
                    bar.update(1)
                log_now = self.step % c["log_every"] == 0 or self.step == max_steps
                eval_now = c["has_validation"] and (self.step % c["eval_every"] == 0 or self.step == max_steps)
                ckpt_now = self.step % c["checkpoint_every"] == 0 or self.step == max_steps
                if log_now or eval_now or ckpt_now:
                    metrics = {"train_total": acc / n_acc, "lr": self.opt.param_groups[0]["lr"],
                               "epoch": float(self.epoch),
                               "samples_per_s": n_acc * self.cfg.batch_size * self.world / max(t_busy, 1e-9)}
                    if eval_now:
                        metrics.update(self._validate())
                    self._report(metrics, checkpoint=ckpt_now, final=self.step == max_steps)
                    acc, n_acc, t_busy = 0.0, 0, 0.0
                if self.step >= max_steps:
                    break
                t0 = time.perf_counter()
            if n_batches == 0:
                raise ValueError(f"data: the training split gives no full batch of {self.cfg.batch_size} pairs per "
                                 f"worker ({self.world} workers); use more data or a smaller model.batch_size")
            if self.step < max_steps:
                self.epoch += 1
        if bar is not None:
            bar.close()

    def _progress(self, total: int):
        if self.rank != 0 or not self.c.get("progress"):
            return None
        if self.c.get("local_mode"):
            from tqdm.auto import tqdm

            return tqdm(total=total, initial=self.step, desc="train flow", unit="step")
        from ray.experimental.tqdm_ray import tqdm

        bar = tqdm(total=total, desc="train flow")
        bar.update(self.step)
        return bar


def train_loop_per_worker(config: dict) -> None:
    """The Ray Train loop (``TorchTrainer(train_loop_per_worker, train_loop_config=config)``)."""
    _Worker(config).run()


def loop_config(config: "FlowTrainConfig", manifest, mapping, assignment, *, local_mode: bool, storage_dir: Path,
                has_validation: bool, run_id: str | None, tracking_uri: str | None) -> dict[str, Any]:
    """The plain-data ``train_loop_config`` of :func:`train_loop_per_worker`."""
    t = config.training
    return {
        "flow": config.flow().to_dict(), "n_atoms": manifest.n_atoms, "n_beads": manifest.n_beads,
        "mapping_matrix": np.asarray(mapping.matrix).tolist(), "mapping_name": mapping.name,
        "assignment": [int(a) for a in assignment], "system": manifest.system, "seed": t.seed,
        "max_steps": t.max_steps, "log_every": t.log_every, "eval_every": t.eval_every,
        "checkpoint_every": t.checkpoint_every, "has_validation": has_validation, "use_gpu": t.use_gpu,
        "cpus_per_worker": t.cpus_per_worker, "val_nll_frames": t.val_nll_frames,
        "val_divergence": t.val_divergence, "val_steps": t.val_steps, "shuffle_buffer": config.data.shuffle_buffer,
        "resume_from": str(Path(t.resume_from).resolve()) if t.resume_from else None, "local_mode": local_mode,
        "storage_dir": str(storage_dir), "run_id": run_id, "tracking_uri": tracking_uri, "progress": t.progress,
    }


def fit(config: "FlowTrainConfig"):
    """Train on Ray Train, track in MLflow; returns (FlowBackmapper, MLflow run id or None)."""
    r = fit_detailed(config)
    return r.backmapper, r.run_id


def training_assignment(shards: Path, manifest, mapping, train_ids: list[str], max_frames: int = 500) -> np.ndarray:
    """Bead of each atom's prior, from the mapping and (for atoms in no bead) training frames."""
    from finegrain.platform.shards import read_frames
    from finegrain.trainables.flow.geometry import bead_assignment

    w = np.abs(np.asarray(mapping.matrix))
    if w.max(axis=0).min() > 0:
        return bead_assignment(mapping.matrix)
    fr = read_frames(shards, train_ids[:1])
    return bead_assignment(mapping.matrix, fr["aa_xyz_nm"][:max_frames], fr["cg_xyz_nm"][:max_frames])


def fit_detailed(config: "FlowTrainConfig") -> FitResult:
    """Train, log one MLflow run (params, step metrics, tags, final model); see :class:`FitResult`."""
    import uuid

    import mdtraj as md
    import ray
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from finegrain.platform import tracking
    from finegrain.platform.mapping import CGMapping
    from finegrain.platform.shards import Manifest, pair_dataset, split_trajectories
    from finegrain.platform.stack import connect_ray, stack_home, tracking_uri
    from finegrain.trainables.flow.backmapper import FlowBackmapper

    t, d = config.training, config.data
    shards = Path(d.shards).resolve()
    man = Manifest.load(shards)
    mapping = CGMapping.from_dict(man.mapping)
    topology = md.load_topology(str(shards / man.topology_pdb))
    splits = split_trajectories(man, tuple(d.fractions), d.seed)
    assignment = training_assignment(shards, man, mapping, splits["train"])
    if not ray.is_initialized():
        connect_ray()
    if t.use_gpu and t.num_workers > 0 and ray.cluster_resources().get("GPU", 0) < t.num_workers:
        raise ValueError(f"training.use_gpu: {t.num_workers} worker(s) need a GPU each, the Ray cluster has "
                         f"{ray.cluster_resources().get('GPU', 0):g}; set training.use_gpu=false")

    def pairs(split):
        ds = pair_dataset(shards, split, lag=d.lag, seed=d.seed, fractions=tuple(d.fractions))
        ds = ds.select_columns(["aa_prev", "cg", "aa"])
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
    uri = run_id = None
    if config.tracking.enabled:
        uri = tracking_uri()
        tags = {"family": "flow", "dataset_digest": man.digest, "mapping": mapping.name, "system": man.system,
                "data.shards": str(shards), "resumed_from": str(t.resume_from or "")}
        parent = getattr(config.tracking, "parent_run_id", None)
        if parent:
            tags["mlflow.parentRunId"] = parent
        params = {**config.flat(), "data.n_train_trajectories": len(splits["train"]),
                  "data.n_validation_trajectories": len(splits["validation"]), "data.n_frames": man.n_frames,
                  "mapping.n_beads": mapping.n_beads}
        run_id = tracking.start_run(config.tracking.experiment, params, tags, run_name=config.tracking.run_name,
                                    uri=uri)
    try:
        work = Path(t.work_dir or stack_home() / "runs").resolve()
        name = f"flow-{run_id}" if run_id else f"flow-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        local = t.num_workers == 0
        resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config(config, man, mapping, assignment, local_mode=local, storage_dir=work / name,
                                          has_validation="validation" in datasets, run_id=run_id, tracking_uri=uri),
            scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                         resources_per_worker=None if local else resources),
            run_config=RunConfig(name=name, storage_path=str(work), callbacks=tune_callbacks(),
                                 failure_config=FailureConfig(max_failures=t.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints)),
            datasets=datasets,
        )
        result = trainer.fit()
        info = {"run_id": run_id, "dataset_digest": man.digest, "system": man.system}
        with result.checkpoint.as_directory() as ck_dir:
            ck_path = Path(result.checkpoint.path)
            bm = FlowBackmapper.from_checkpoint(ck_dir, topology, mapping, info=info)
        folder = bm.save(work / name / "model")
        model_uri = None
        if run_id:
            model_uri = tracking.log_backmapper(bm, name=config.tracking.model_name,
                                                registered_model_name=config.tracking.register_as,
                                                run_id=run_id, uri=uri)
            tracking.end_run(run_id, uri=uri)
    except BaseException:
        if run_id:
            tracking.end_run(run_id, failed=True, uri=uri)
        raise
    return FitResult(bm, run_id, model_uri, folder, ck_path, work / name)
