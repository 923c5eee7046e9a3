"""Training DeepBackmap on Ray Train (the protocol every family's trainer shares).

The driver (:func:`fit_detailed`) builds the topology's recipe (placement order, atom and bead types) and the
energy prior's parameters from the reference system's force field, and hands both to the workers (the
``payload`` of the run's :class:`~finegrain.trainables.run_context.RunContext`). Per step each worker takes a
batch of ``model.batch_size`` frames (CG, AA and, for a periodic box, the box) from its Ray Data shard and
makes one :meth:`~finegrain.trainables.dbm.objective.DBMObjective.update` (a critic step; a generator step
every ``model.n_critic``-th). Data parallel: every worker's gradients are averaged (all-reduce) before each
optimiser step. Validation on the validation split (both views): ``val_bond_error_nm``, the mean error of
the bond lengths the generated atoms make, and ``val_placement_error_nm``, the mean distance between each
generated atom and the reference. Checkpoints: ``model.pt`` (both networks),
``optimizer.pt`` (both optimisers), ``energy.pt`` (the prior's parameters) and ``state.json`` (config,
vocabularies, recipe); tensors only, ``weights_only`` loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from finegrain.datasets.shards import unflatten_pair_batch
from finegrain.trainables.checkpoints import read_checkpoint, write_checkpoint
from finegrain.trainables.dbm.backmapper import DBMBackmapper, orthorhombic_edges
from finegrain.trainables.dbm.config import DBMConfig
from finegrain.trainables.dbm.energy import LocalEnergy
from finegrain.trainables.dbm.model import DBMNetworks
from finegrain.trainables.dbm.objective import DBMObjective
from finegrain.trainables.dbm.recipe import DBMRecipe
from finegrain.trainables.dbm.sampler import Placer
from finegrain.trainables.dbm.train_config import DBMTrainConfig
from finegrain.trainables.ray_run import FitResult, TrainWorker, load_training_data, run_training, worker_seed
from finegrain.trainables.run_context import parse_loop_config

__all__ = ["fit_detailed", "train_loop_per_worker", "load_checkpoint_state", "run_payload"]


def load_checkpoint_state(folder: str | Path) -> dict[str, Any]:
    """{"meta", "model", "optimizer"?, "energy"} of a dbm checkpoint folder (weights_only loads)."""
    return read_checkpoint(folder, "dbm", "dbm", extra=("energy",))


class _Optimisers:
    """The generator's and the critic's Adam as one state dict (what a checkpoint keeps)."""

    def __init__(self, objective: DBMObjective):
        self.objective = objective

    @property
    def param_groups(self) -> list[dict]:
        """The generator's (both share ``model.learning_rate``): what the loop reports as the learning rate."""
        return self.objective.opt_g.param_groups

    def state_dict(self) -> dict:
        return {"generator": self.objective.opt_g.state_dict(), "critic": self.objective.opt_c.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.objective.opt_g.load_state_dict(state["generator"])
        self.objective.opt_c.load_state_dict(state["critic"])


def _arrays(payload_params: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in payload_params.items()}


def _batch(batch: dict, n_atoms: int, n_beads: int):
    _, cg, aa = unflatten_pair_batch(batch, n_atoms, n_beads)
    box = None
    if "box" in batch:
        edges = orthorhombic_edges(batch["box"].reshape(-1, 3, 3).cpu().numpy(), aa.shape[0], "data.shards box")
        box = torch.as_tensor(edges, dtype=aa.dtype, device=aa.device)
    return aa, cg, box


class _Worker(TrainWorker):
    """State of one training worker; ``loop_config``: the config and run context (``run_context.loop_config``)."""

    def __init__(self, loop_config: dict[str, Any]):
        super().__init__(*parse_loop_config(loop_config, DBMTrainConfig))
        payload = self.ctx.payload
        self.cfg: DBMConfig = self.config.dbm()
        torch.manual_seed(worker_seed(self.seed, 0))
        self.recipe = DBMRecipe.from_dict(payload["recipe"])
        self.nets = DBMNetworks(self.cfg, tuple(payload["atom_types"]), tuple(payload["bead_types"])).to(self.device)
        atom_t, bead_t = self.recipe.require_types(self.nets.atom_types, self.nets.bead_types, "training data")
        self.params = _arrays(payload["energy"])
        self.placer = Placer(self.nets, self.recipe, atom_t, bead_t)
        energy = LocalEnergy(self.params, self.recipe.bead_atoms).to(self.device)
        self.objective = DBMObjective(self.nets, self.placer, energy)
        if self.world > 1:
            self.objective.sync = self._all_reduce
        self.opt = _Optimisers(self.objective)
        self.restore(self.nets, self.opt, load_checkpoint_state)
        self.reseed()

    def _all_reduce(self, params) -> None:
        for p in params:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.world

    def reseed(self) -> None:
        self.rng = np.random.default_rng(worker_seed(self.seed, self.rank, self.step))
        torch.manual_seed(worker_seed(self.seed, self.rank, self.step))

    def train_step(self, batch: dict) -> dict[str, float]:
        self.nets.train()
        aa, cg, box = _batch(batch, self.n_atoms, self.n_beads)
        return self.objective.update(aa, cg, box, self.rng, self.step)

    def validate(self) -> dict[str, float]:
        import ray.train

        self.nets.eval()
        rng = np.random.default_rng(worker_seed(self.seed, 7))
        keys = ("placement_error_nm", "bond_error_nm")
        sums = torch.zeros(len(keys) + 1, dtype=torch.float64, device=self.device)
        batches = ray.train.get_dataset_shard("validation").iter_torch_batches(
            batch_size=self.cfg.batch_size, dtypes=torch.float32, device=self.device)
        for k, batch in enumerate(batches):
            if k >= self.config.training.validation_batches:
                break
            aa, cg, box = _batch(batch, self.n_atoms, self.n_beads)
            m = self.objective.placement_error(aa, cg, box, rng)
            n = m["n_items"]
            sums += torch.tensor([m[key] * n for key in keys] + [n], dtype=torch.float64, device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(sums)
        if sums[-1] == 0:
            return {}
        return {f"val_{key}": float(sums[i] / sums[-1]) for i, key in enumerate(keys)}

    def report(self, metrics: dict[str, float], checkpoint: bool = False, final: bool = False) -> None:
        def save(folder: Path) -> None:
            write_checkpoint(folder, self.nets, self.opt, {
                "step": self.step, "epoch": self.epoch, "dbm": self.cfg.to_dict(),
                "atom_types": list(self.nets.atom_types), "bead_types": list(self.nets.bead_types),
                "recipe": self.ctx.payload["recipe"], "periodic": bool(self.ctx.payload["periodic"]),
                "n_atoms": self.n_atoms, "n_beads": self.n_beads, "world_size": self.world, "final": final},
                extra={"energy": {k: torch.as_tensor(v) for k, v in self.params.items()}})

        self.publish(metrics, save if checkpoint else None)

    def step_metrics(self, means: dict[str, float], used: int) -> dict[str, float]:
        return dict(means)

    def run(self) -> None:
        self.train(self.config.training.max_steps, self.cfg.batch_size, "train dbm", checkpoint_last=True)


def train_loop_per_worker(config: dict) -> None:
    """The Ray Train loop (``TorchTrainer(train_loop_per_worker, train_loop_config=config)``)."""
    _Worker(config).run()


def run_payload(recipe: DBMRecipe, energy: dict[str, np.ndarray], periodic: bool) -> dict[str, Any]:
    """What the workers need (``RunContext.payload``): the recipe, the vocabularies (this topology's types) and
    the energy prior's parameters, as plain JSON."""
    return {"recipe": recipe.to_dict(), "atom_types": list(recipe.type_names),
            "bead_types": list(recipe.bead_type_names), "periodic": bool(periodic),
            "energy": {k: np.asarray(v).tolist() for k, v in energy.items()}}


def fit_detailed(config: DBMTrainConfig) -> FitResult:
    """Train, log one MLflow run (params, step metrics, tags, final model); see :class:`FitResult`."""
    from finegrain.datasets.systems import get_system
    from finegrain.trainables.dbm.forcefield import prior_parameters

    data = load_training_data(config)
    recipe = DBMRecipe.from_topology(data.topology, data.mapping)
    energy = prior_parameters(get_system(data.manifest.system).create_system(constraints=None))
    periodic = bool(data.manifest.has_box)
    return run_training(
        config, "dbm", data, train_loop_per_worker, run_payload(recipe, energy, periodic),
        lambda ck_dir, info: DBMBackmapper.from_checkpoint(ck_dir, data.topology, data.mapping, info=info),
        extra_params={"mapping.n_beads": data.mapping.n_beads, "model.n_atom_types": len(recipe.type_names),
                      "model.n_bead_types": len(recipe.bead_type_names), "data.periodic": periodic})
