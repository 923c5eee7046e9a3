"""Training the internal-coordinate model on Ray Train (the protocol every family's trainer shares).

The driver (:func:`fit_detailed`) builds the Z-matrix from the shard folder's
topology and mapping, fits the standardisation on up to
``training.statistics_frames`` training frames (evenly spaced over every
training trajectory) and hands both to the workers as plain lists (the
``payload`` of the run's :class:`~finegrain.trainables.run_context.RunContext`). Per step: a
batch of (CG(t), AA(t)) [B, *, 3] nm from the worker's Ray Data shard; loss:
mean -log q(z(x) | y) per frame (nats); AdamW with warm-up + cosine decay
(the flow's schedule); gradient-norm clip 10. Validation: ``val_nll`` on
the validation split. Checkpoints: ``model.pt``, ``optimizer.pt``,
``state.json`` (config, Z-matrix; tensors only, ``weights_only`` loads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from finegrain.datasets.shards import read_frames, unflatten_pair_batch
from finegrain.trainables.checkpoints import read_checkpoint, write_checkpoint
from finegrain.trainables.optim import make_optimizer, optimizer_step, set_learning_rate
from finegrain.trainables.ic.backmapper import ICBackmapper
from finegrain.trainables.ic.config import ICConfig
from finegrain.trainables.ic.model import ConditionalIC
from finegrain.trainables.ic.train_config import ICTrainConfig
from finegrain.trainables.ic.zmatrix import ZMatrix, build_zmatrix
from finegrain.trainables.ray_run import FitResult, TrainWorker, load_training_data, run_training, worker_seed
from finegrain.trainables.run_context import parse_loop_config


__all__ = ["fit_detailed", "train_loop_per_worker", "run_payload", "load_checkpoint_state", "fitted_statistics"]

def load_checkpoint_state(folder: str | Path) -> dict[str, Any]:
    """{"meta", "model", "optimizer"?} of a ic checkpoint folder (weights_only loads)."""
    return read_checkpoint(folder, "ic", "ic")


class _Worker(TrainWorker):
    """State of one training worker; ``loop_config``: the config and run context (``run_context.loop_config``)."""

    def __init__(self, loop_config: dict[str, Any]):
        import ray.train

        super().__init__(*parse_loop_config(loop_config, ICTrainConfig))
        payload = self.ctx.payload
        self.cfg: ICConfig = self.config.ic()
        torch.manual_seed(worker_seed(self.seed, 0))
        self.raw = ConditionalIC(self.cfg, ZMatrix.from_dict(payload["zmatrix"]))
        self.raw.load_statistics(payload["statistics"])
        self.raw.to(self.device)
        self.opt = make_optimizer(self.raw, self.cfg.learning_rate, self.cfg.weight_decay)
        self.restore(self.raw, self.opt, load_checkpoint_state)
        self.model = self.compiled(ray.train.torch.prepare_model(self.raw, move_to_device=False))

    def reseed(self) -> None:
        torch.manual_seed(worker_seed(self.seed, self.rank, self.step))

    def train_step(self, batch: dict) -> dict[str, float]:
        self.model.train()
        set_learning_rate(self.opt, self.cfg.learning_rate, self.step, self.config.training.max_steps)
        _, cg, aa = unflatten_pair_batch(batch, self.n_atoms, self.n_beads)
        with self.autocast():
            loss = -self.model(aa, cg).mean()
        return {"train_nll": optimizer_step(self.opt, self.raw, loss)}

    def validate(self) -> dict[str, float]:
        import ray.train

        self.raw.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        for batch in ray.train.get_dataset_shard("validation").iter_torch_batches(
                batch_size=1024, dtypes=torch.float32, device=self.device):
            _, cg, aa = unflatten_pair_batch(batch, self.n_atoms, self.n_beads)
            with torch.no_grad():
                sums[0] += -self.raw.log_prob(aa, cg).double().sum()
            sums[1] += aa.shape[0]
        if self.world > 1:
            torch.distributed.all_reduce(sums)
        return {"val_nll": float(sums[0] / sums[1])} if sums[1] > 0 else {}

    def report(self, metrics: dict[str, float], checkpoint: bool = False, final: bool = False) -> None:
        def save(folder: Path) -> None:
            write_checkpoint(folder, self.raw, self.opt, {
                "step": self.step, "epoch": self.epoch, "ic": self.cfg.to_dict(),
                "zmatrix": self.ctx.payload["zmatrix"], "n_atoms": self.n_atoms, "n_beads": self.n_beads,
                "world_size": self.world, "final": final})

        self.publish(metrics, save if checkpoint else None)

    def step_metrics(self, means: dict[str, float], used: int) -> dict[str, float]:
        return dict(means)

    def run(self) -> None:
        self.train(self.config.training.max_steps, self.cfg.batch_size, "train ic", checkpoint_last=True)


def train_loop_per_worker(config: dict) -> None:
    """The Ray Train loop (``TorchTrainer(train_loop_per_worker, train_loop_config=config)``)."""
    _Worker(config).run()


def fitted_statistics(model: ConditionalIC, shards: Path, train_ids: list[str], max_frames: int) -> dict:
    """Fit ``model``'s standardisation on <= ``max_frames`` evenly spaced training frames; return it as lists."""

    fr = read_frames(shards, train_ids)
    take = np.unique(np.linspace(0, len(fr["aa_xyz_nm"]) - 1, min(max_frames, len(fr["aa_xyz_nm"]))).astype(int))
    model.fit_statistics(torch.as_tensor(fr["aa_xyz_nm"][take], dtype=torch.float32),
                         torch.as_tensor(fr["cg_xyz_nm"][take], dtype=torch.float32))
    return model.statistics()


def run_payload(zm: ZMatrix, statistics: dict) -> dict[str, Any]:
    """The fitted data the workers need (``RunContext.payload``): the Z-matrix and the standardisation."""
    return {"zmatrix": zm.to_dict(), "statistics": statistics}


def fit_detailed(config: "ICTrainConfig") -> FitResult:
    """Train, log one MLflow run (params, step metrics, tags, final model); see :class:`FitResult`."""

    data = load_training_data(config)
    zm = build_zmatrix(data.topology, data.mapping)
    stats = fitted_statistics(ConditionalIC(config.ic(), zm), data.shards, data.splits["train"],
                              config.training.statistics_frames)

    return run_training(
        config, "ic", data, train_loop_per_worker,
        run_payload(zm, stats),
        lambda ck_dir, info: ICBackmapper.from_checkpoint(ck_dir, data.topology, data.mapping, info=info),
        extra_params={"mapping.n_beads": data.mapping.n_beads, "model.n_internal_coordinates": int(
            ConditionalIC(config.ic(), zm).n_ic)})
