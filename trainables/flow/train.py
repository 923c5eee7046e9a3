"""Training the conditional flow on Ray Train (same protocol as the cVAE's trainer).

:func:`train_loop_per_worker` is the per-worker loop of a
``ray.train.torch.TorchTrainer``; :func:`fit_detailed` (the driver) builds
the trainer from a :class:`~finegrain.trainables.flow.train_config.FlowTrainConfig`,
tracks one MLflow run and returns a
:class:`~finegrain.trainables.ray_run.FitResult` holding a
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

from pathlib import Path
from typing import Any

import numpy as np
import torch

from finegrain.datasets.shards import read_frames, unflatten_pair_batch
from finegrain.trainables.checkpoints import read_checkpoint, write_checkpoint
from finegrain.trainables.flow.backmapper import FlowBackmapper
from finegrain.trainables.flow.config import FlowConfig
from finegrain.trainables.flow.fit import flow_update
from finegrain.trainables.optim import make_optimizer
from finegrain.trainables.flow.geometry import bead_assignment
from finegrain.trainables.flow.model import ConditionalFlow
from finegrain.trainables.flow.train_config import FlowTrainConfig
from finegrain.trainables.ray_run import FitResult, TrainWorker, load_training_data, run_training, worker_seed
from finegrain.trainables.run_context import parse_loop_config


__all__ = ["fit", "fit_detailed", "FitResult", "train_loop_per_worker", "run_payload", "save_checkpoint_dir",
           "load_checkpoint_state"]

def save_checkpoint_dir(folder: str | Path, model: torch.nn.Module, optimizer, meta: dict[str, Any]) -> Path:
    return write_checkpoint(folder, model, optimizer, meta)


def load_checkpoint_state(folder: str | Path) -> dict[str, Any]:
    """{"meta", "model", "optimizer"?} of a flow checkpoint folder (weights_only loads)."""
    return read_checkpoint(folder, "flow", "flow")


class _Worker(TrainWorker):
    """State of one training worker; ``loop_config``: the config and run context (``run_context.loop_config``)."""

    def __init__(self, loop_config: dict[str, Any]):
        import ray.train

        super().__init__(*parse_loop_config(loop_config, FlowTrainConfig))
        payload = self.ctx.payload
        self.cfg: FlowConfig = self.config.flow()
        torch.manual_seed(worker_seed(self.seed, 0))
        self.raw = ConditionalFlow(self.cfg, np.asarray(payload["mapping_matrix"]), np.asarray(payload["assignment"]))
        self.raw.to(self.device)
        self.opt = make_optimizer(self.raw, self.cfg.learning_rate, self.cfg.weight_decay)
        self.restore(self.raw, self.opt, load_checkpoint_state)
        self.model = self.compiled(ray.train.torch.prepare_model(self.raw, move_to_device=False))
        self.reseed()

    def reseed(self) -> None:
        """The noise generator as a function of (seed, rank, step): after a checkpoint, a resumed run draws
        what the uninterrupted one draws."""
        self.gen = torch.Generator(self.device).manual_seed(worker_seed(self.seed, self.rank, self.step))

    def _pairs(self, batch: dict):
        prev, cg, aa = unflatten_pair_batch(batch, self.n_atoms, self.n_beads)
        return (prev if self.cfg.temporal else None), cg, aa

    def train_step(self, batch: dict) -> dict[str, float]:
        self.model.train()
        prev, cg, aa = self._pairs(batch)
        return {"train_total": flow_update(self.opt, self.model, self.raw, self.step, self.config.training.max_steps,
                                           aa, cg, prev, self.gen, self.autocast())}

    def validate(self) -> dict[str, float]:
        import ray.train

        self.raw.eval()
        t = self.config.training
        gen = torch.Generator(self.device).manual_seed(worker_seed(self.seed, 7, self.rank))
        sums = torch.zeros(4, dtype=torch.float64)  # loss * B, B, sum nll, n nll
        want = -(-t.val_nll_frames // self.world)
        for batch in ray.train.get_dataset_shard("validation").iter_torch_batches(
                batch_size=self.cfg.batch_size, dtypes=torch.float32, device=self.device):
            prev, cg, aa = self._pairs(batch)
            with torch.no_grad():
                sums[0] += float(self.raw.cfm_loss(aa, cg, prev, generator=gen)) * aa.shape[0]
            sums[1] += aa.shape[0]
            k = min(want - int(sums[3]), aa.shape[0])
            if k > 0:  # the frame-only density q(x | y), the one entropies use
                lp = self.raw.log_prob(aa[:k], cg[:k], None, divergence=t.val_divergence, generator=gen,
                                       method="rk4", steps=t.val_steps)
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
        return {"step": self.step, "epoch": self.epoch, "flow": self.cfg.to_dict(),
                "assignment": self.ctx.payload["assignment"], "n_atoms": self.n_atoms, "n_beads": self.n_beads,
                "mapping": self.ctx.mapping_name,
                "world_size": self.world, "final": final}

    def report(self, metrics: dict[str, float], checkpoint: bool = False, final: bool = False) -> None:
        def save(folder: Path) -> None:
            save_checkpoint_dir(folder, self.raw, self.opt, self._meta(final))

        self.publish(metrics, save if checkpoint else None)

    def step_metrics(self, means: dict[str, float], used: int) -> dict[str, float]:
        return dict(means)

    def run(self) -> None:
        self.train(self.config.training.max_steps, self.cfg.batch_size, "train flow", checkpoint_last=True)


def train_loop_per_worker(config: dict) -> None:
    """The Ray Train loop (``TorchTrainer(train_loop_per_worker, train_loop_config=config)``)."""
    _Worker(config).run()


def run_payload(mapping, assignment) -> dict[str, Any]:
    """The data the workers need (``RunContext.payload``): the mapping matrix and each atom's prior bead."""
    return {"mapping_matrix": np.asarray(mapping.matrix).tolist(), "assignment": [int(a) for a in assignment]}


def fit(config: "FlowTrainConfig"):
    """Train on Ray Train, track in MLflow; returns (FlowBackmapper, MLflow run id or None)."""
    r = fit_detailed(config)
    return r.backmapper, r.run_id


def training_assignment(shards: Path, manifest, mapping, train_ids: list[str], max_frames: int = 500) -> np.ndarray:
    """Bead of each atom's prior, from the mapping and (for atoms in no bead) training frames."""

    w = np.abs(np.asarray(mapping.matrix))
    if w.max(axis=0).min() > 0:
        return bead_assignment(mapping.matrix)
    fr = read_frames(shards, train_ids[:1])
    return bead_assignment(mapping.matrix, fr["aa_xyz_nm"][:max_frames], fr["cg_xyz_nm"][:max_frames])


def fit_detailed(config: "FlowTrainConfig") -> FitResult:
    """Train, log one MLflow run (params, step metrics, tags, final model); see :class:`FitResult`."""

    data = load_training_data(config)
    assignment = training_assignment(data.shards, data.manifest, data.mapping, data.splits["train"])
    return run_training(
        config, "flow", data, train_loop_per_worker,
        run_payload(data.mapping, assignment),
        lambda ck_dir, info: FlowBackmapper.from_checkpoint(ck_dir, data.topology, data.mapping, info=info),
        extra_params={"mapping.n_beads": data.mapping.n_beads})
