"""Argument checks for positions at the public boundary of the energy modules."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["check_positions"]


def check_positions(positions, n_atoms: int, name: str = "positions") -> torch.Tensor:
    """Check a batch of frames and return it as a floating-point tensor [B, N, 3] (nm).

    Accepts a torch tensor or a numpy array. Raises ValueError naming
    ``name`` on a wrong type or shape (expected [B, N, 3] with N = n_atoms),
    an empty batch, or a non-finite value (naming the first bad frame and atom).
    Tensors keep their autograd graph, dtype and device.
    """
    if isinstance(positions, np.ndarray):
        positions = torch.from_numpy(positions)
    if not isinstance(positions, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor of shape [B, N, 3] (N={n_atoms}), got {type(positions).__name__}")
    if positions.ndim != 3 or positions.shape[1] != n_atoms or positions.shape[2] != 3:
        raise ValueError(f"{name}: expected shape [B, N, 3] with N={n_atoms}, got {list(positions.shape)}")
    if positions.shape[0] == 0:
        raise ValueError(f"{name}: empty batch (B=0), expected shape [B, N, 3] with B >= 1")
    if not torch.is_floating_point(positions):
        positions = positions.to(torch.get_default_dtype())
    finite = torch.isfinite(positions.detach()).all(dim=-1)
    if not bool(finite.all()):
        frame, atom = (int(v) for v in torch.nonzero(~finite)[0])
        raise ValueError(f"{name}: non-finite coordinate (NaN or inf) at frame {frame}, atom {atom}")
    return positions
