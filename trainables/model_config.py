"""What every family's frozen dataclass of hyper-parameters shares: plain-dict round trips and validated checks.

A family's config (``FlowConfig``, ``ICConfig``) subclasses :class:`ModelConfig`
as a ``@dataclass(frozen=True)`` and validates its fields in ``__post_init__``
with :func:`positive_int` / :func:`positive_number`; ``to_dict`` /
``from_dict`` (unknown fields refused, naming them) / ``replace`` come from here.

A field that does not validate raises :class:`ModelConfigError`, a ``ValueError``
that carries the field's name (``field``), so a training config names the key
``model.<field>`` without reading the message.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from finegrain.platform.science.errors import FinegrainError

__all__ = ["ModelConfig", "ModelConfigError", "positive_int", "positive_number"]


class ModelConfigError(FinegrainError, ValueError):
    """A model-config field that does not validate; ``field`` names it (None: the config as a whole)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def positive_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


class ModelConfig:
    """Mixin of a frozen dataclass config: ``to_dict`` / ``from_dict`` / ``replace``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)}", unknown[0])
        return cls(**data)

    def replace(self, **changes: Any):
        return self.from_dict({**self.to_dict(), **changes})
