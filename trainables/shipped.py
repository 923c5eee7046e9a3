"""Shipped pretrained backmappers (``zoo:NAME``): where they are and what their cards say.

Each model is a ``Backmapper.save`` folder inside the package
(``trainables/zoo/NAME/``: ``backmapper.json``, ``topology.pdb``,
``weights.pt`` with tensors only) plus ``card.json``, its model card. How a
model is remade from nothing (its recipe) is the application job
:mod:`finegrain.platform.apps.zoo`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finegrain.platform.science.errors import InputError

__all__ = ["ZOO", "PREFIX", "CARD", "names", "folder", "card"]

ZOO = Path(__file__).resolve().parent / "zoo"
PREFIX = "zoo:"
CARD = "card.json"


def names() -> list[str]:
    """The shipped models (folders with a card)."""
    return sorted(p.parent.name for p in ZOO.glob(f"*/{CARD}"))


def folder(name: str) -> Path:
    """The model folder of ``name`` (``zoo:`` prefix allowed); InputError listing the names when unknown."""
    name = name[len(PREFIX):] if name.startswith(PREFIX) else name
    path = ZOO / name
    if not name or "/" in name or not (path / CARD).is_file():
        known = ", ".join(names()) or "none"
        raise InputError(f"model: zoo:{name} is not a shipped model (known: {known}; `finegrain zoo` lists them)")
    return path


def card(name: str) -> dict[str, Any]:
    """The model card of ``name``."""
    return json.loads((folder(name) / CARD).read_text())
