"""Training checkpoints as plain files: tensors-only torch files and JSON metadata.

A checkpoint folder holds ``model.pt`` (the model's state dict), ``optimizer.pt``
(when saved), any extra tensor dicts a family keeps (the cVAE's mixture prior
``gmm.pt`` and seed bank ``bank.pt``) and ``state.json``. Everything is read
with ``torch.load(weights_only=True)``: nothing is unpickled. Ray Train
persists these folders; backmappers are rebuilt from them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["CKPT_MODEL", "CKPT_OPTIM", "CKPT_META", "write_checkpoint", "read_checkpoint"]

CKPT_MODEL, CKPT_OPTIM, CKPT_META = "model.pt", "optimizer.pt", "state.json"


def write_checkpoint(folder: str | Path, model: torch.nn.Module, optimizer, meta: dict[str, Any],
                     extra: dict[str, dict[str, torch.Tensor] | None] | None = None) -> Path:
    """Write ``model``'s state, ``optimizer``'s (when given), each ``extra`` tensor dict (``NAME.pt``, when not
    None) and ``meta`` (JSON) into ``folder``; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / CKPT_MODEL)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), folder / CKPT_OPTIM)
    for name, tensors in (extra or {}).items():
        if tensors is not None:
            torch.save(tensors, folder / f"{name}.pt")
    (folder / CKPT_META).write_text(json.dumps(meta, indent=1))
    return folder


def read_checkpoint(folder: str | Path, family: str, config_key: str | None = None,
                    extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """{"meta", "model", "optimizer"?, each of ``extra``?} of a ``family`` checkpoint folder.

    ``config_key``: a key the metadata must hold (the family's config), else a ValueError naming the folder.
    """
    folder = Path(folder)
    if not (folder / CKPT_META).is_file():
        raise FileNotFoundError(f"checkpoint {folder}: no {CKPT_META} (not a {family} checkpoint)")
    meta = json.loads((folder / CKPT_META).read_text())
    if config_key is not None and config_key not in meta:
        raise ValueError(f"checkpoint {folder}: not a {family} checkpoint (no {config_key!r} config in {CKPT_META})")
    out: dict[str, Any] = {"meta": meta}
    for key, name in (("model", CKPT_MODEL), ("optimizer", CKPT_OPTIM), *((k, f"{k}.pt") for k in extra)):
        if (folder / name).is_file():
            out[key] = torch.load(folder / name, map_location="cpu", weights_only=True)
    return out
