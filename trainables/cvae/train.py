"""Training the temporally coherent cVAE on Ray Train (Shmilovich et al. (2022), section 2.3; SI 4.1).

:func:`train_loop_per_worker` is the per-worker loop of a
``ray.train.torch.TorchTrainer``; :func:`fit` (the driver) builds the trainer
from a :class:`~finegrain.trainables.cvae.train_config.TrainConfig`, tracks
the run in MLflow and returns the trained :class:`CVAEBackmapper`.

Per step t (0-based count of optimizer steps already taken):

1. a batch of pairs (AA(t-1), CG(t), AA(t)) [B, *, 3] nm from the worker's
   Ray Data shard (``get_dataset_shard("train").iter_torch_batches``);
2. one shared translation (CG(t)'s centroid to the origin) and one uniform
   random rotation per triplet, applied identically to AA(t), CG(t), AA(t-1);
   then, when ``prev_noise_nm`` > 0, isotropic Gaussian noise of that standard
   deviation (nm, per Cartesian component) on AA(t-1) (training updates only);
3. eq. 3 with lambda(t) (eq. 5) and beta(t) (eq. 6), their breakpoints
   compressed to the run when it is shorter than the config's
   ``schedule_steps`` (:attr:`CVAEConfig.schedule`); L_ENERGY only once
   lambda > 0; Adam; gradient-norm clipping at ``w_clip`` once lambda > 0.

Checkpoints (a folder: ``model.pt``, ``optimizer.pt``, ``state.json``
[step, epoch, next lambda/beta], plus ``gmm.pt`` / ``bank.pt`` at the end;
tensors only, read with ``torch.load(weights_only=True)``) are reported every
``checkpoint_every`` steps; a restarted worker group (``FailureConfig``) or a
new run given ``resume_from`` continues at the saved step, so the schedules
(functions of the step) continue exactly.  After the last step the workers
encode their shards (posterior means, augmented as in training) and rank 0
fits the latent GMM (section 2.4) and keeps a bank of training (CG(t),
AA(t-1)) pairs for seeding inference: a uniform random sample, seeded by the
training seed, of all training pairs of all training trajectories
(:class:`SeedBank`).  Only rank 0 logs to MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from finegrain.datasets.shards import unflatten_pair_batch
from finegrain.datasets.systems import get_system
from finegrain.platform.science.energies import energy_model
from finegrain.platform.science.voxels import apply_rotation, mean_centre, random_rotations
from finegrain.trainables.checkpoints import read_checkpoint, write_checkpoint
from finegrain.trainables.cvae.backmapper import CKPT_EXTRA, CVAEBackmapper, GaussianMixtureSampler
from finegrain.trainables.cvae.config import CVAEConfig
from finegrain.trainables.cvae.losses import total_loss
from finegrain.trainables.cvae.model import CVAE
from finegrain.trainables.cvae.train_config import TrainConfig
from finegrain.trainables.ray_run import FitResult, TrainWorker, load_training_data, run_training, worker_seed
from finegrain.trainables.run_context import parse_loop_config


__all__ = ["fit", "fit_detailed", "FitResult", "run_payload", "train_loop_per_worker", "prepare_triplet", "step_loss",
           "save_checkpoint_dir", "load_checkpoint_state", "SeedBank"]

TERMS = ("total", "vox", "aa", "cg", "edm", "energy", "kld")


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint_dir(folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                        meta: dict[str, Any], gmm: dict[str, torch.Tensor] | None = None,
                        bank: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a cVAE checkpoint folder (:mod:`finegrain.trainables.checkpoints`) with the prior and seed bank."""
    return write_checkpoint(folder, model, optimizer, meta, {"gmm": gmm, "bank": bank})


def load_checkpoint_state(folder: str | Path) -> dict[str, Any]:
    """Read a cVAE checkpoint folder: {"meta", "model", "optimizer"?, "gmm"?, "bank"?} (weights_only loads)."""
    return read_checkpoint(folder, "cVAE", extra=CKPT_EXTRA)


# ----------------------------------------------------------------------------- one step
def prepare_triplet(aa_prev: torch.Tensor, cg: torch.Tensor, aa: torch.Tensor,
                    generator: torch.Generator | None = None, prev_noise_nm: float = 0.0):
    """Centre a batch of triplets on CG(t)'s centroid and (with a CPU ``generator``) rotate them.

    aa_prev, aa [B, N, 3], cg [B, n, 3] nm -> the same shapes: one translation
    and one uniformly random rotation per triplet, shared by its three frames
    (section 2.3); ``generator=None`` centres only (validation).
    ``prev_noise_nm`` > 0 (needs ``generator``; training only) then adds
    i.i.d. N(0, prev_noise_nm^2) nm^2 noise to every coordinate of AA(t-1),
    drawn from ``generator`` after the rotations; 0 draws nothing (the
    result and the generator's stream are exactly those without noise).
    """
    if prev_noise_nm < 0 or not np.isfinite(prev_noise_nm):
        raise ValueError(f"prev_noise_nm must be a finite number >= 0 (nm), got {prev_noise_nm!r}")
    if prev_noise_nm > 0 and generator is None:
        raise ValueError("prev_noise_nm > 0 needs a generator (noise is a training-time augmentation)")
    ref = cg
    aa_prev, aa = mean_centre(aa_prev, reference=ref), mean_centre(aa, reference=ref)
    cg = mean_centre(cg, reference=ref)
    if generator is not None:
        rot = random_rotations(cg.shape[0], generator=generator, dtype=cg.dtype, device=cg.device)
        aa_prev, cg, aa = (apply_rotation(x, rot) for x in (aa_prev, cg, aa))
    if prev_noise_nm > 0:
        noise = torch.randn(aa_prev.shape, generator=generator, dtype=aa_prev.dtype, device=generator.device)
        aa_prev = aa_prev + float(prev_noise_nm) * noise.to(aa_prev.device)
    return aa_prev, cg, aa


def step_loss(module: torch.nn.Module, aa_prev: torch.Tensor | None, cg: torch.Tensor, aa: torch.Tensor, step: int,
              mapping: torch.Tensor, energy_fn=None, generator: torch.Generator | None = None):
    """Eq. 3 for one prepared batch at training step ``step``: (total, terms) of :func:`total_loss`.

    ``module`` is a :class:`CVAE` (or its DDP wrapper); lambda and beta come
    from its config's schedules at ``step``; L_ENERGY enters once lambda > 0
    when ``energy_fn`` (positions [B, N, 3] nm -> U [B] kJ/mol) is given.
    """
    cfg = getattr(module, "module", module).config
    out = module(aa, cg, aa_prev, generator=generator)
    return total_loss(out.vox_pred, out.vox_target, out.xyz_pred, aa, cg, mapping, out.mu, out.logvar,
                      lam=cfg.lambda_at(step), beta=cfg.beta_at(step), energy_fn=energy_fn, u_max=cfg.u_max)


# ----------------------------------------------------------------------------- seed bank
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _MIX[0]
        z = (z ^ (z >> np.uint64(30))) * _MIX[1]
        z = (z ^ (z >> np.uint64(27))) * _MIX[2]
        return z ^ (z >> np.uint64(31))


class SeedBank:
    """A uniform random sample of at most ``size`` training (CG(t), AA(t-1)) pairs, seeded by ``seed``.

    Each pair gets a pseudo-random 64-bit key, a hash of ``seed`` and the
    float32 bits of its raw (uncentred) CG(t) frame; the bank keeps the
    ``size`` pairs with the smallest keys (bottom-k sampling: every subset of
    ``size`` pairs is equally likely).  The key depends on the pair alone, so
    the bank does not depend on batch boundaries, iteration order or how the
    pairs are spread over workers: :meth:`merge` of the per-worker banks is
    the bank of the union, and the same data and seed give the same bank.
    Stored frames are centred on CG(t)'s centroid (nm), sorted by key.
    """

    def __init__(self, size: int, seed: int):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"SeedBank size must be a positive int, got {size!r}")
        self.size, self.seed = int(size), int(seed)
        self.keys = np.zeros(0, np.uint64)
        self.cg: torch.Tensor | None = None
        self.aa_prev: torch.Tensor | None = None

    def keys_of(self, cg: torch.Tensor) -> np.ndarray:
        """Keys [B] uint64 of raw CG(t) frames cg [B, n, 3] (float32 bits)."""
        words = cg.detach().to("cpu", torch.float32).contiguous().numpy().reshape(cg.shape[0], -1)
        words = words.view(np.uint32).astype(np.uint64)
        h = np.full(words.shape[0], _splitmix64(np.array([self.seed % 2**64], np.uint64) ^ _MIX[2])[0], np.uint64)
        for j in range(words.shape[1]):
            h = _splitmix64(h ^ words[:, j])
        return h

    def add(self, cg: torch.Tensor, aa_prev: torch.Tensor) -> None:
        """Offer a batch of raw pairs cg [B, n, 3], aa_prev [B, N, 3] nm (not centred)."""
        keys = self.keys_of(cg)
        cg_c = mean_centre(cg, reference=cg).detach().cpu()
        prev_c = mean_centre(aa_prev, reference=cg).detach().cpu()
        self._keep(keys, cg_c, prev_c)

    def _keep(self, keys: np.ndarray, cg: torch.Tensor, aa_prev: torch.Tensor) -> None:
        if self.cg is not None:
            keys = np.concatenate([self.keys, keys])
            cg, aa_prev = torch.cat([self.cg, cg]), torch.cat([self.aa_prev, aa_prev])
        order = np.argsort(keys, kind="stable")[:self.size]
        self.keys, self.cg, self.aa_prev = keys[order], cg[order], aa_prev[order]

    def state(self) -> tuple[np.ndarray, torch.Tensor | None, torch.Tensor | None]:
        return self.keys, self.cg, self.aa_prev

    @classmethod
    def merge(cls, size: int, seed: int, states) -> "SeedBank":
        """The bank of the union of the banks whose :meth:`state` are ``states``."""
        bank = cls(size, seed)
        for keys, cg, prev in states:
            if cg is not None and len(keys):
                bank._keep(keys, cg, prev)
        return bank

    def tensors(self) -> dict[str, torch.Tensor] | None:
        """{"cg": [M, n, 3], "aa_prev": [M, N, 3]} nm (float32, centred on CG(t)), or None when empty."""
        if self.cg is None or len(self.keys) == 0:
            return None
        return {"cg": self.cg.contiguous(), "aa_prev": self.aa_prev.contiguous()}


# ----------------------------------------------------------------------------- worker loop
class _Worker(TrainWorker):
    """State of one training worker (see module docstring).

    ``loop_config``: the config and run context (``run_context.loop_config``).
    """

    #: ``training.inject_failure_at`` (set from the config; the class value serves a worker built without one)
    inject_failure_at: int | None = None

    def __init__(self, loop_config: dict[str, Any]):
        import ray.train

        super().__init__(*parse_loop_config(loop_config, TrainConfig))
        self.inject_failure_at = self.config.training.inject_failure_at
        self.cfg: CVAEConfig = self.config.cvae()  # preset, overrides, training.max_steps
        torch.manual_seed(worker_seed(self.seed, 0))  # identical initial weights on every rank
        self.raw = CVAE(self.cfg, self.n_atoms, self.n_beads).to(self.device)
        self.opt = torch.optim.Adam(self.raw.parameters(), lr=self.cfg.learning_rate)
        self.mapping = torch.tensor(self.ctx.payload["mapping_matrix"], dtype=torch.float32, device=self.device)
        self.restore(self.raw, self.opt, load_checkpoint_state)
        self.model = self.compiled(ray.train.torch.prepare_model(self.raw, move_to_device=False))
        self.energy_fn = self._energy_model()
        self.reseed()

    # -- setup ---------------------------------------------------------------
    def _energy_model(self):
        """U(x) for L_ENERGY, only when lambda can become > 0 within the budget."""
        t = self.config.training
        if not t.energy or self.cfg.schedule.t_lambda0 >= self.cfg.max_steps:
            return None

        backend = t.energy_backend
        extra = {"compile": True} if backend == "torch" and t.energy_compile else {}
        try:
            # the force field's own cap (pair-distance floor + clamp at U_max) keeps float32 finite
            # for overlapping atoms; L_ENERGY's clamp (eq. 3) is then exact
            # forces the torch force field does not implement (GB-neck2's CustomGBForce) go through OpenMM
            return energy_model(get_system(self.ctx.system), backend=backend, device=self.device, dtype=torch.float32,
                                u_max=self.cfg.u_max, cap="clamp", **extra, **({"fallback": True} if backend == "torch" else {}))
        except Exception as exc:  # unknown system, unsupported force, ...
            raise ValueError(f"training.energy: no energy model for system {self.ctx.system!r} ({exc}); "
                             f"set training.energy=false to train without L_ENERGY") from exc

    def reseed(self) -> None:
        """Generators for rotations (CPU) and eps (device), a function of (seed, rank, step)."""
        s = worker_seed(self.seed, self.rank, self.step)
        self.gen = torch.Generator().manual_seed(s)
        self.gen_dev = self.gen if self.device.type == "cpu" else torch.Generator(self.device).manual_seed(s + 1)

    # -- one batch -------------------------------------------------------------
    def _triplet(self, batch: dict, rotate: bool, prev_noise_nm: float = 0.0):
        aa_prev, cg, aa = unflatten_pair_batch(batch, self.n_atoms, self.n_beads)
        noise = 0.0 if self.cfg.frame_based else prev_noise_nm
        aa_prev, cg, aa = prepare_triplet(aa_prev, cg, aa, self.gen if rotate else None, prev_noise_nm=noise)
        return (None if self.cfg.frame_based else aa_prev), cg, aa

    def _loss(self, module, aa_prev, cg, aa, step: int, generator):
        return step_loss(module, aa_prev, cg, aa, step, self.mapping, energy_fn=self.energy_fn, generator=generator)

    def train_step(self, batch: dict) -> dict[str, float]:
        self._maybe_inject_failure()
        self.model.train()
        aa_prev, cg, aa = self._triplet(batch, rotate=True, prev_noise_nm=self.cfg.prev_noise_nm)
        with self.autocast():
            loss, terms = self._loss(self.model, aa_prev, cg, aa, self.step, self.gen_dev)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.clip_at(self.step)
        # the norm is taken after DDP's all-reduce: every rank takes the same decision
        norm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), clip if clip is not None else float("inf"))
        terms["grad_norm"] = float(norm)
        if torch.isfinite(norm):
            self.opt.step()
            terms["skipped"] = 0.0
        else:
            terms["skipped"] = 1.0
        return terms

    # -- validation --------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        import ray.train

        self.raw.eval()
        gen = torch.Generator().manual_seed(worker_seed(self.seed, 7, self.rank))
        gen = gen if self.device.type == "cpu" else torch.Generator(self.device).manual_seed(worker_seed(self.seed, 7))
        sums = torch.zeros(len(TERMS) + 1, dtype=torch.float64)
        shard = ray.train.get_dataset_shard("validation")
        for batch in shard.iter_torch_batches(batch_size=self.cfg.batch_size, dtypes=torch.float32, device=self.device):
            aa_prev, cg, aa = self._triplet(batch, rotate=False)
            _, terms = self._loss(self.raw, aa_prev, cg, aa, max(self.step - 1, 0), gen)  # as the last update
            b = aa.shape[0]
            sums[:-1] += torch.tensor([terms.get(k, 0.0) * b for k in TERMS], dtype=torch.float64)
            sums[-1] += b
        if self.world > 1:
            torch.distributed.all_reduce(sums)
        n = float(sums[-1])
        energy_on = self.energy_fn is not None and self.cfg.lambda_at(max(self.step - 1, 0)) > 0
        keep = [k for k in TERMS if k != "energy" or energy_on]
        if n == 0:
            return {}
        out = {f"val_{k}": float(sums[TERMS.index(k)]) / n for k in keep}
        # schedule- and grid-free: comparable across runs whose lambda/beta/voxel settings differ (sweeps)
        out["val_recon"] = out["val_aa"] + out["val_cg"] + out["val_edm"]
        return out

    # -- GMM and seed bank ----------------------------------------------------------
    @torch.no_grad()
    def _posterior_and_bank(self) -> tuple[dict | None, dict | None]:
        """Rank 0: (GMM arrays fitted to posterior means of all shards, bank of (CG, AA(t-1))); others: (None, None).

        The bank is a :class:`SeedBank` over every pair of every worker's whole
        training shard (all training trajectories), seeded by the training seed.
        """
        import ray.train

        t = self.config.training
        self.raw.eval()
        per_rank = -(-t.gmm_max_samples // self.world)
        bank = None if self.cfg.frame_based else SeedBank(t.bank_size, self.seed)
        mus, n = [], 0
        shard = ray.train.get_dataset_shard("train")
        for batch in shard.iter_torch_batches(batch_size=max(self.cfg.batch_size, 64), dtypes=torch.float32,
                                              device=self.device):
            if bank is not None:  # every pair of the shard is offered to the bank
                aa_prev_raw, cg_raw, _ = unflatten_pair_batch(batch, self.n_atoms, self.n_beads)
                bank.add(cg_raw, aa_prev_raw)
            if n < per_rank:  # keep draining the shard: streaming splits are consumed together
                aa_prev, cg, aa = self._triplet(batch, rotate=True)
                mu, _ = self.raw.encode(aa, cg, aa_prev)
                mus.append(mu.double().cpu().numpy())
                n += mu.shape[0]
        local = (np.concatenate(mus) if mus else np.zeros((0, self.cfg.d_latent)),
                 bank.state() if bank is not None else None)
        gathered = [local]
        if self.world > 1:
            gathered = [None] * self.world
            torch.distributed.all_gather_object(gathered, local)
        if self.rank != 0:
            return None, None
        z = np.concatenate([g[0] for g in gathered])
        gmm = None
        if t.latent_prior == "gmm" and len(z) > 0:
            fit = GaussianMixtureSampler.fit(z, self.cfg.n_gmm_components, seed=self.seed)
            gmm = {k.split(".", 1)[1]: v for k, v in fit.to_state().items()}
        bank_out = None
        if not self.cfg.frame_based:
            merged = SeedBank.merge(t.bank_size, self.seed, [g[1] for g in gathered])
            bank_out = merged.tensors()
        return gmm, bank_out

    # -- reporting ---------------------------------------------------------------------
    def _meta(self, final: bool) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "lambda_next": self.cfg.lambda_at(self.step),
                "beta_next": self.cfg.beta_at(self.step), "cvae": self.cfg.to_dict(), "n_atoms": self.n_atoms,
                "n_beads": self.n_beads, "mapping": self.ctx.mapping_name, "world_size": self.world,
                "final": final}

    def report(self, metrics: dict[str, float], checkpoint: bool = False, final: bool = False,
                gmm: dict | None = None, bank: dict | None = None) -> None:
        def save(folder: Path) -> None:
            save_checkpoint_dir(folder, self.raw, self.opt, self._meta(final), gmm, bank)

        self.publish(metrics, save if checkpoint else None)

    # -- main loop ------------------------------------------------------------------------
    def step_metrics(self, means: dict[str, float], used: int) -> dict[str, float]:
        metrics = {f"train_{k}" if k in TERMS else k: v for k, v in means.items() if k not in ("lambda", "beta")}
        metrics.update({"lambda": self.cfg.lambda_at(used), "beta": self.cfg.beta_at(used)})
        return metrics

    def run(self) -> None:
        cfg = self.cfg
        # the final checkpoint (with the latent GMM and seed bank) is written below
        self.train(cfg.max_steps, cfg.batch_size, "train cVAE", checkpoint_last=False)
        gmm, bank = self._posterior_and_bank()
        final = {"lambda": cfg.lambda_at(max(self.step - 1, 0)), "beta": cfg.beta_at(max(self.step - 1, 0))}
        if gmm is not None:
            final["gmm_components"] = float(len(gmm["weights"]))
        self.report(final, checkpoint=True, final=True, gmm=gmm, bank=bank)

    def _maybe_inject_failure(self) -> None:
        """Fault-tolerance drill: rank 0 raises once at step ``inject_failure_at`` (a marker file makes it once)."""
        at = self.inject_failure_at
        if at is None or self.step != at or self.rank != 0:
            return
        marker = Path(self.ctx.storage_dir) / f".injected_failure_{at}"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            raise RuntimeError(f"injected failure at step {at} (training.inject_failure_at)")


def train_loop_per_worker(config: dict) -> None:
    """The Ray Train loop (``TorchTrainer(train_loop_per_worker, train_loop_config=config)``).

    ``config`` (:func:`~finegrain.trainables.run_context.loop_config`): {"config": the
    :class:`~finegrain.trainables.cvae.train_config.TrainConfig` as JSON data, "context": the
    :class:`~finegrain.trainables.run_context.RunContext` as JSON data, its payload the mapping
    matrix [n, N] (:func:`run_payload`)}; the worker validates both again.
    """
    _Worker(config).run()


# ----------------------------------------------------------------------------- driver
def fit(config: "TrainConfig") -> tuple["CVAEBackmapper", str | None]:
    """Train on Ray Train, track in MLflow; returns (backmapper, MLflow run id or None)."""
    r = fit_detailed(config)
    return r.backmapper, r.run_id


def run_payload(mapping) -> dict[str, Any]:
    """The data the workers need (``RunContext.payload``): the mapping matrix [n, N]."""
    return {"mapping_matrix": np.asarray(mapping.matrix).tolist()}


def fit_detailed(config: "TrainConfig") -> FitResult:
    """:func:`fit`, returning everything it made (see :class:`~finegrain.trainables.ray_run.FitResult`).

    Connects to Ray when not connected (the local stack, or the job's cluster).
    Ray Train's storage (checkpoints) and the saved model folder go under
    ``training.work_dir`` (default ``$FINEGRAIN_HOME/runs``), in a folder
    named after the MLflow run.
    """

    data = load_training_data(config)
    return run_training(
        config, "cvae", data, train_loop_per_worker,
        run_payload(data.mapping),
        lambda ck_dir, info: CVAEBackmapper.from_checkpoint(ck_dir, data.topology, data.mapping,
                                                            prior=config.training.latent_prior, info=info))
