"""What every family's model hyper-parameters share: declared field types and bounds, one validator, and the
pydantic model section a training config builds from them.

A family's model config (``CVAEConfig``, ``FlowConfig``, ``ICConfig``) is a
``@dataclass(frozen=True)`` subclass of :class:`ModelConfig` whose fields are
annotated with their type and bounds, for example ``hidden: PositiveInt = 256``
(``Annotated[int, Bounds(ge=1)]``), ``method: Literal["euler", "rk4"]``,
``w_clip: PositiveFloat | None``. That declaration is the only place a field's
constraints are written; two enforcers read it:

- the dataclass itself (:meth:`ModelConfig.__post_init__`), so a model built on
  a machine with torch and numpy only (a GPU box without pydantic) is checked
  the same way; a failing field raises :class:`ModelConfigError`, a
  ``ValueError`` whose ``field`` names it;
- pydantic, through :func:`~finegrain.trainables.train_config.model_section`: the ``model`` section of a training
  config (a preset plus field overrides) is a pydantic model generated from the
  dataclass, so an override that does not validate is reported natively as
  ``model.<field>`` like any other key of the config.

``tests/test_model_config.py`` checks that the two agree, field by field.
Constraints between fields (the cVAE's latent size a multiple of 8, ...) live in
a config's :meth:`ModelConfig._check`, raising ``ModelConfigError`` with the field.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal, Union

from finegrain.platform.science.errors import FinegrainError

__all__ = ["Bounds", "ModelConfig", "ModelConfigError", "NonNegativeFloat", "NonNegativeInt", "PositiveFloat",
           "PositiveInt", "UnitInterval", "check_field", "field_hints", "optional_inner", "split_bounds"]


class ModelConfigError(FinegrainError, ValueError):
    """A model-config field that does not validate; ``field`` names it (None: the config as a whole)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Bounds:
    """Inclusive (ge, le) and exclusive (gt, lt) bounds of a number, in pydantic's vocabulary."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def violated(self, v: float) -> str | None:
        """What ``v`` breaks ("> 0", ...) or None."""
        for name, op, ok in (("ge", ">=", lambda b: v >= b), ("gt", ">", lambda b: v > b),
                             ("le", "<=", lambda b: v <= b), ("lt", "<", lambda b: v < b)):
            bound = getattr(self, name)
            if bound is not None and not ok(bound):
                return f"{op} {bound:g}"
        return None

    def kwargs(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


PositiveInt = Annotated[int, Bounds(ge=1)]
NonNegativeInt = Annotated[int, Bounds(ge=0)]
PositiveFloat = Annotated[float, Bounds(gt=0)]
NonNegativeFloat = Annotated[float, Bounds(ge=0)]
UnitInterval = Annotated[float, Bounds(ge=0, le=1)]


# --------------------------------------------------------------------------- the dataclass-side validator
def split_bounds(hint) -> tuple[Any, Bounds | None]:
    """Annotated[T, Bounds(...)] -> (T, Bounds); anything else -> (hint, None)."""
    if typing.get_origin(hint) is Annotated:
        base, *meta = typing.get_args(hint)
        return base, next((m for m in meta if isinstance(m, Bounds)), None)
    return hint, None


def optional_inner(hint):
    """T for ``T | None`` (either spelling), else None."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
    return None


def _describe(hint) -> str:
    base, bounds = split_bounds(hint)
    inner = optional_inner(base)
    if inner is not None:
        return f"null or {_describe(inner)}"
    if typing.get_origin(base) is Literal:
        return f"one of {list(typing.get_args(base))}"
    if typing.get_origin(base) is tuple:
        return f"a non-empty list of {_describe(typing.get_args(base)[0])}"
    name = {bool: "true/false", int: "an integer", float: "a finite number"}.get(base, str(base))
    rule = " and ".join(f"{op} {b:g}" for op, b in (
        (">=", bounds.ge), (">", bounds.gt), ("<=", bounds.le), ("<", bounds.lt)) if b is not None) if bounds else ""
    return f"{name} {rule}".strip()


def _valid(hint, v) -> tuple[bool, Any]:
    """(valid?, the value normalised: lists of a tuple field become tuples)."""
    base, bounds = split_bounds(hint)
    inner = optional_inner(base)
    if inner is not None:
        return (True, None) if v is None else _valid(inner, v)
    if typing.get_origin(base) is Literal:
        return v in typing.get_args(base) and not isinstance(v, bool), v
    if typing.get_origin(base) is tuple:
        if not isinstance(v, (list, tuple)) or len(v) == 0:
            return False, v
        items = [_valid(typing.get_args(base)[0], x) for x in v]
        return all(ok for ok, _ in items), tuple(x for _, x in items)
    if base is bool:
        return isinstance(v, bool), v
    if base is int:
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif base is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    else:
        raise TypeError(f"model_config: unsupported field type {base!r}")
    return ok and (bounds is None or bounds.violated(v) is None), v


@lru_cache(maxsize=None)
def field_hints(cls) -> dict[str, Any]:
    """{field: its annotation with ``Annotated`` metadata} of a config class."""
    return typing.get_type_hints(cls, include_extras=True)


def check_field(cls, name: str, value) -> tuple[str | None, Any]:
    """(what is wrong with ``value`` for field ``name`` of config class ``cls`` or None, the value normalised)."""
    hint = field_hints(cls)[name]
    ok, normalised = _valid(hint, value)
    return (None if ok else f"{cls.__name__}.{name}: expected {_describe(hint)}, got {value!r}"), normalised


class ModelConfig:
    """Base of a family's frozen dataclass of hyper-parameters: validation from the field annotations,
    ``to_dict`` / ``from_dict`` (unknown fields refused, naming them) / ``replace``."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            problem, value = check_field(type(self), f.name, getattr(self, f.name))
            if problem:
                raise ModelConfigError(problem, f.name)
            object.__setattr__(self, f.name, value)
        self._check()

    def _check(self) -> None:
        """Constraints between fields; raise :class:`ModelConfigError` naming the field."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)}", unknown[0])
        return cls(**data)

    def replace(self, **changes: Any):
        """A copy with ``changes`` applied (validated again)."""
        return self.from_dict({**self.to_dict(), **changes})
