"""What every family's frozen dataclass of hyper-parameters shares: plain-dict round trips and validated checks.

A family's config (``FlowConfig``, ``ICConfig``) subclasses :class:`ModelConfig`
as a ``@dataclass(frozen=True)`` and validates its fields in ``__post_init__``
with :func:`positive_int` / :func:`positive_number`; ``to_dict`` /
``from_dict`` (unknown fields refused, naming them) / ``replace`` come from here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ["ModelConfig", "positive_int", "positive_number"]


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
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any):
        return self.from_dict({**self.to_dict(), **changes})
