"""Torch-only helpers: train a :class:`ConditionalFlow` on in-memory arrays, score held-out frames.

For tests, notebooks and GPU boxes that have torch and numpy only; the Ray
Train worker (:mod:`.train`) takes the same step (:mod:`finegrain.trainables.optim`).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from finegrain.trainables.flow.model import ConditionalFlow
from finegrain.trainables.optim import make_optimizer, optimizer_step, set_learning_rate

__all__ = ["fit_arrays", "nll_arrays"]


def fit_arrays(flow: ConditionalFlow, aa: np.ndarray, cg: np.ndarray, steps: int, seed: int = 0,
               prev: np.ndarray | None = None, device: str | torch.device = "cpu",
               log_every: int = 0) -> list[float]:
    """Train ``flow`` in place for ``steps`` Adam steps on aa [F, N, 3], cg [F, n, 3] (nm); returns the losses.

    Batches of ``flow.config.batch_size`` frames drawn with replacement;
    learning rate: warm-up then cosine decay (:func:`finegrain.trainables.optim.lr_factor`).
    """
    aa_t = torch.as_tensor(np.asarray(aa), dtype=torch.float32, device=device)
    cg_t = torch.as_tensor(np.asarray(cg), dtype=torch.float32, device=device)
    prev_t = None if prev is None else torch.as_tensor(np.asarray(prev), dtype=torch.float32, device=device)
    if aa_t.shape[0] != cg_t.shape[0]:
        raise ValueError(f"aa, cg: frame counts differ ({aa_t.shape[0]} vs {cg_t.shape[0]})")
    flow.to(device).train()
    opt = make_optimizer(flow, flow.config.learning_rate, flow.config.weight_decay)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        set_learning_rate(opt, flow.config.learning_rate, step, steps)
        idx = torch.randint(0, aa_t.shape[0], (flow.config.batch_size,), generator=gen, device=device)
        loss = flow.cfm_loss(aa_t[idx], cg_t[idx], None if prev_t is None else prev_t[idx], generator=gen)
        losses.append(optimizer_step(opt, flow, loss))
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}: loss {np.mean(losses[-log_every:]):.5f} ({time.perf_counter() - t0:.1f} s)")
    flow.eval()
    return losses


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
