"""Torch-only helpers: train a :class:`ConditionalFlow` on in-memory arrays, score held-out frames.

For tests, notebooks and GPU boxes that have torch and numpy only.
:func:`fit_arrays` drives the step loop every family shares
(:func:`finegrain.trainables.loop.run_steps`) with batches drawn from
arrays in memory; the Ray Train worker (:mod:`.train`) drives the same loop
from its Ray Data shard, and both take the same step (:func:`flow_update`).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from finegrain.trainables.flow.model import ConditionalFlow
from finegrain.trainables.loop import Cadence, PrintObserver, StepHooks, run_steps
from finegrain.trainables.optim import make_optimizer, optimizer_step, set_learning_rate

__all__ = ["fit_arrays", "nll_arrays", "flow_update"]


def flow_update(opt: torch.optim.Optimizer, model: torch.nn.Module, raw: ConditionalFlow, step: int, max_steps: int,
                aa: torch.Tensor, cg: torch.Tensor, prev: torch.Tensor | None, generator: torch.Generator | None,
                autocast: contextlib.AbstractContextManager | None = None) -> float:
    """One optimiser step of the flow from ``step`` of ``max_steps``; returns the flow-matching loss.

    The schedule's learning rate for ``step`` (:func:`~finegrain.trainables.optim.set_learning_rate`,
    base rate ``raw.config.learning_rate``), the loss ``model(aa, cg, prev, generator=generator)``
    (:meth:`ConditionalFlow.cfm_loss`; ``model`` is ``raw`` or its DDP / compiled wrapper) on
    aa [B, N, 3], cg [B, n, 3], prev [B, N, 3] | None nm, inside ``autocast`` when given, then
    :func:`~finegrain.trainables.optim.optimizer_step` (gradients clipped on ``raw``'s parameters).
    """
    set_learning_rate(opt, raw.config.learning_rate, step, max_steps)
    with autocast if autocast is not None else contextlib.nullcontext():
        loss = model(aa, cg, prev, generator=generator)
    return optimizer_step(opt, raw, loss)


class _ArrayHooks(StepHooks):
    """:func:`fit_arrays`'s hooks: :func:`flow_update` on (aa, cg, prev) batches; keeps every step's loss."""

    def __init__(self, flow: ConditionalFlow, opt: torch.optim.Optimizer, steps: int, gen: torch.Generator):
        self.flow, self.opt, self.steps, self.gen = flow, opt, steps, gen
        self.losses: list[float] = []

    def train_step(self, batch) -> dict[str, float]:
        aa, cg, prev = batch
        self.losses.append(flow_update(self.opt, self.flow, self.flow, self.step, self.steps, aa, cg, prev, self.gen))
        return {"loss": self.losses[-1]}


def fit_arrays(flow: ConditionalFlow, aa: np.ndarray, cg: np.ndarray, steps: int, seed: int = 0,
               prev: np.ndarray | None = None, device: str | torch.device = "cpu",
               log_every: int = 0) -> list[float]:
    """Train ``flow`` in place for ``steps`` Adam steps on aa [F, N, 3], cg [F, n, 3] (nm); returns the losses.

    Batches of ``flow.config.batch_size`` frames drawn with replacement from
    a generator seeded with ``seed`` (which also draws the flow-matching
    noise); learning rate: warm-up then cosine decay
    (:func:`finegrain.trainables.optim.lr_factor`). ``prev`` [F, N, 3] nm:
    AA(t-1) of each frame (temporal flows). ``log_every`` > 0 prints the mean
    loss every ``log_every`` steps and at the last step.
    """
    aa_t = torch.as_tensor(np.asarray(aa), dtype=torch.float32, device=device)
    cg_t = torch.as_tensor(np.asarray(cg), dtype=torch.float32, device=device)
    prev_t = None if prev is None else torch.as_tensor(np.asarray(prev), dtype=torch.float32, device=device)
    if aa_t.shape[0] != cg_t.shape[0]:
        raise ValueError(f"aa, cg: frame counts differ ({aa_t.shape[0]} vs {cg_t.shape[0]})")
    flow.to(device).train()
    opt = make_optimizer(flow, flow.config.learning_rate, flow.config.weight_decay)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    batch_size = flow.config.batch_size

    def draws(epoch: int):
        """One endless epoch of batches (aa, cg, prev) drawn with replacement, each drawn when it is taken."""
        while True:
            idx = torch.randint(0, aa_t.shape[0], (batch_size,), generator=gen, device=device)
            yield aa_t[idx], cg_t[idx], None if prev_t is None else prev_t[idx]

    hooks = _ArrayHooks(flow, opt, steps, gen)
    run_steps(hooks, draws, steps, batch_size, Cadence(log_every=log_every or max(steps, 1)),
              observers=[PrintObserver("loss")] if log_every else [])
    flow.eval()
    return hooks.losses


def nll_arrays(flow: ConditionalFlow, aa: np.ndarray, cg: np.ndarray, batch: int = 256, seed: int = 0,
               device: str | torch.device = "cpu", **log_prob_options) -> np.ndarray:
    """-log q(x | y) per frame [F] (nats, fibre measure in nm) for aa [F, N, 3], cg [F, n, 3] nm."""
    flow.to(device).eval()
    gen = torch.Generator(device=device).manual_seed(int(seed))
    out = []
    for s in range(0, len(aa), batch):
        a = torch.as_tensor(np.asarray(aa[s:s + batch]), dtype=torch.float32, device=device)
        c = torch.as_tensor(np.asarray(cg[s:s + batch]), dtype=torch.float32, device=device)
        out.append(-flow.log_prob(a, c, generator=gen, **log_prob_options).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
