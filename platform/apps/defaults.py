"""CLI option defaults read from the config objects, so each default is written once (in the object)."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

__all__ = ["defaults_of"]


def defaults_of(config_cls) -> dict[str, Any]:
    """{field: default} of a pydantic model, a dataclass or a function's keyword arguments (fields without a
    plain default are left out)."""
    if callable(config_cls) and not isinstance(config_cls, type):
        return {k: p.default for k, p in inspect.signature(config_cls).parameters.items()
                if p.default is not inspect.Parameter.empty}
    if hasattr(config_cls, "model_fields"):
        return {k: f.default for k, f in config_cls.model_fields.items() if not f.is_required()}
    return {f.name: f.default for f in dataclasses.fields(config_cls) if f.default is not dataclasses.MISSING}
