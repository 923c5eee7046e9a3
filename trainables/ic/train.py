"""Training the internal-coordinate model on Ray Train (the protocol every family's trainer shares).

The driver (:func:`fit_detailed`) builds the Z-matrix from the shard folder's
topology and mapping, fits the standardisation on up to
``training.statistics_frames`` training frames (evenly spaced over every
training trajectory) and hands it to the workers as plain lists. Per step: a
batch of (CG(t), AA(t)) [B, *, 3] nm from the worker's Ray Data shard; loss:
mean -log q(z(x) | y) per frame (nats); AdamW with warm-up + cosine decay
(the flow's schedule); gradient-norm clip 10. Validation: ``val_nll`` on
the validation split. Checkpoints: ``model.pt``, ``optimizer.pt``,
``state.json`` (config, Z-matrix; tensors only, ``weights_only`` loads).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from finegrain.datasets.shards import unflatten_pair_batch
from finegrain.trainables.flow.fit import lr_factor
from finegrain.trainables.ic.config import ICConfig
from finegrain.trainables.ic.model import ConditionalIC
from finegrain.trainables.ic.zmatrix import ZMatrix, build_zmatrix
from finegrain.trainables.ray_run import FitResult, TrainWorker, read_checkpoint, write_checkpoint

if TYPE_CHECKING:
    from finegrain.trainables.ic.train_config import ICTrainConfig

__all__ = ["fit_detailed", "train_loop_per_worker", "loop_config", "load_checkpoint_state", "fitted_statistics"]

def load_checkpoint_state(folder: str | Path) -> dict[str, Any]:
    """{"meta", "model", "optimizer"?} of an ic checkpoint folder (weights_only loads)."""
    return read_checkpoint(folder, "ic", "ic")


class _Worker(TrainWorker):
    """State of one training worker; ``config`` is the plain data of :func:`loop_config`."""

    def __init__(self, config: dict[str, Any]):
        import ray.train

        from finegrain.trainables.ray_run import worker_seed

        super().__init__(config)
        c = config
        self.cfg = ICConfig.from_dict(c["ic"])
        torch.manual_seed(worker_seed(c["seed"], 0))
        self.raw = ConditionalIC(self.cfg, ZMatrix.from_dict(c["zmatrix"]))
        self.raw.load_statistics(c["statistics"])
        self.raw.to(self.device)
        self.opt = torch.optim.AdamW(self.raw.parameters(), lr=self.cfg.learning_rate,
                                     weight_decay=self.cfg.weight_decay)
        self.restore(self.raw, self.opt, load_checkpoint_state)
        self.model = self.compiled(ray.train.torch.prepare_model(self.raw, move_to_device=False))

    def _reseed(self) -> None:
        from finegrain.trainables.ray_run import worker_seed

        torch.manual_seed(worker_seed(self.c["seed"], self.rank, self.step))

    def _train_step(self, batch: dict) -> dict[str, float]:
        self.model.train()
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.learning_rate * lr_factor(self.step, int(self.c["max_steps"]))
        _, cg, aa = unflatten_pair_batch(batch, self.n_atoms, self.n_beads)
        with self.autocast():
            loss = -self.model(aa, cg).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.raw.parameters(), 10.0)
        self.opt.step()
        return {"train_nll": float(loss.detach())}

    def _validate(self) -> dict[str, float]:
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

    def _report(self, metrics: dict[str, float], checkpoint: bool = False, final: bool = False) -> None:
        def save(folder: Path) -> None:
            write_checkpoint(folder, self.raw, self.opt, {
                "step": self.step, "epoch": self.epoch, "ic": self.cfg.to_dict(), "zmatrix": self.c["zmatrix"],
                "n_atoms": self.n_atoms, "n_beads": self.n_beads, "world_size": self.world, "final": final})

        self.report(metrics, save if checkpoint else None)

    def _step_metrics(self, means: dict[str, float], used: int) -> dict[str, float]:
        return dict(means)

    def run(self) -> None:
        self.train(int(self.c["max_steps"]), self.cfg.batch_size, "train ic", checkpoint_last=True)


def train_loop_per_worker(config: dict) -> None:
    """The Ray Train loop (``TorchTrainer(train_loop_per_worker, train_loop_config=config)``)."""
    _Worker(config).run()


def fitted_statistics(model: ConditionalIC, shards: Path, train_ids: list[str], max_frames: int) -> dict:
    """Fit ``model``'s standardisation on <= ``max_frames`` evenly spaced training frames; return it as lists."""
    from finegrain.datasets.shards import read_frames

    fr = read_frames(shards, train_ids)
    take = np.unique(np.linspace(0, len(fr["aa_xyz_nm"]) - 1, min(max_frames, len(fr["aa_xyz_nm"]))).astype(int))
    model.fit_statistics(torch.as_tensor(fr["aa_xyz_nm"][take], dtype=torch.float32),
                         torch.as_tensor(fr["cg_xyz_nm"][take], dtype=torch.float32))
    return model.statistics()


def loop_config(config: "ICTrainConfig", manifest, zm: ZMatrix, statistics: dict, *, local_mode: bool,
                storage_dir: Path, has_validation: bool, run_id: str | None, tracking_uri: str | None) -> dict:
    """The plain-data ``train_loop_config`` of :func:`train_loop_per_worker`."""
    t = config.training
    return {
        "ic": config.ic().to_dict(), "zmatrix": zm.to_dict(), "statistics": statistics,
        "n_atoms": manifest.n_atoms, "n_beads": manifest.n_beads, "system": manifest.system, "seed": t.seed,
        "max_steps": t.max_steps, "log_every": t.log_every, "eval_every": t.eval_every,
        "checkpoint_every": t.checkpoint_every, "has_validation": has_validation, "use_gpu": t.use_gpu,
        "cpus_per_worker": t.cpus_per_worker, "shuffle_buffer": config.data.shuffle_buffer,
        "precision": t.precision, "compile": t.compile,
        "resume_from": str(Path(t.resume_from).resolve()) if t.resume_from else None, "local_mode": local_mode,
        "storage_dir": str(storage_dir), "run_id": run_id, "tracking_uri": tracking_uri, "progress": t.progress,
    }


def fit_detailed(config: "ICTrainConfig") -> FitResult:
    """Train, log one MLflow run (params, step metrics, tags, final model); see :class:`FitResult`."""
    from finegrain.trainables.ic.backmapper import ICBackmapper
    from finegrain.trainables.ray_run import load_training_data, run_training

    data = load_training_data(config)
    zm = build_zmatrix(data.topology, data.mapping)
    stats = fitted_statistics(ConditionalIC(config.ic(), zm), data.shards, data.splits["train"],
                              config.training.statistics_frames)

    return run_training(
        config, "ic", data, train_loop_per_worker,
        lambda **kw: loop_config(config, data.manifest, zm, stats, **kw),
        lambda ck_dir, info: ICBackmapper.from_checkpoint(ck_dir, data.topology, data.mapping, info=info),
        extra_params={"mapping.n_beads": data.mapping.n_beads, "model.n_internal_coordinates": int(
            ConditionalIC(config.ic(), zm).n_ic)})
