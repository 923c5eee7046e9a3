"""The optimiser step the flow and ic families share, whoever drives the step loop
(:func:`finegrain.trainables.loop.run_steps`): a Ray Train worker, or the torch-only in-memory
:func:`finegrain.trainables.flow.fit.fit_arrays` on a machine without Ray.

AdamW; learning rate: linear warm-up, then cosine decay to 5 % of the base rate; gradient-norm clip 10.
"""

from __future__ import annotations

import math

import torch

__all__ = ["GRAD_CLIP_NORM", "make_optimizer", "lr_factor", "set_learning_rate", "optimizer_step"]

#: gradient-norm clip of every step
GRAD_CLIP_NORM = 10.0


def make_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)


def lr_factor(step: int, max_steps: int, warmup: int = 50) -> float:
    """Linear warm-up then cosine decay to 5% of the base rate."""
    if step < warmup:
        return (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))


def set_learning_rate(opt: torch.optim.Optimizer, base_rate: float, step: int, max_steps: int) -> None:
    """The schedule's rate for ``step`` (before the forward pass of that step)."""
    for g in opt.param_groups:
        g["lr"] = base_rate * lr_factor(step, max_steps)


def optimizer_step(opt: torch.optim.Optimizer, model: torch.nn.Module, loss: torch.Tensor) -> float:
    """Backward, clip (:data:`GRAD_CLIP_NORM`) and step; returns the loss as a float."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
    opt.step()
    return float(loss.detach())
