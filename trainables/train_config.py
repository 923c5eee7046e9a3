"""What every family's training config shares: the data, training-run, tracking and model sections, the
base class, and ``--set`` overrides.

A config file has four sections (and an optional ``family``); every key is
optional except ``data.shards``. ``--set section.key=value`` overrides any
key; values are parsed as YAML (``8`` -> int, ``true`` -> bool,
``[0.5, 0.5, 0]`` -> list, ``null`` -> None). That string form is the command
line's only (:func:`apply_overrides`); code sets typed values by key
(:func:`set_values`, :meth:`TrainingConfigBase.with_values`). Validation
errors are :class:`ConfigError` naming the key. The ``model`` section is
pydantic too (:func:`model_section` of the family's model-config dataclass),
so a model field's type or bound error names ``model.<field>`` natively; a
constraint between fields names it from the
:class:`~finegrain.trainables.model_config.ModelConfigError` it raises.
A family's config (``trainables/NAME/train_config.py``) subclasses
:class:`TrainingConfigBase` and :class:`RunSection`.
"""

from __future__ import annotations

import dataclasses
import typing
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_serializer

from finegrain.datasets.shards import DEFAULT_FRACTIONS, DEFAULT_SPLIT_SEED
from finegrain.platform.science.errors import FinegrainError
from finegrain.trainables.defaults import CPUS_PER_WORKER, NUM_WORKERS
from finegrain.trainables.model_config import ModelConfigError, field_hints, optional_inner, split_bounds

__all__ = ["ConfigError", "DataSection", "PresetModelSection", "RunSection", "TrackingSection", "TrainingConfigBase",
           "model_section", "apply_overrides", "parse_override", "set_values", "flatten"]


class ConfigError(FinegrainError, ValueError):
    """A training config that does not validate; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSection(_Section):
    """Training data: a shard folder and how to cut it into temporal pairs."""

    shards: Path
    lag: int = Field(1, ge=1, description="frames between AA(t-lag) and AA(t)")
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    seed: int = Field(DEFAULT_SPLIT_SEED, description="seed of the trajectory split")
    materialize: bool = Field(True, description="hold the pairs in the Ray object store (no re-read per epoch)")
    shuffle_buffer: int = Field(1024, ge=0, description="rows in Ray Data's local shuffle buffer (0: no shuffle)")
    global_shuffle: bool = Field(True, description="shuffle the training pairs over all trajectories once, the same "
                                 "way on every run (seeded by data.seed); false: each trajectory in time order, only "
                                 "mixed within the local shuffle buffer")

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v):
        if min(v) < 0 or abs(sum(v) - 1.0) > 1e-9 or v[0] <= 0:
            raise ValueError(f"three non-negative numbers summing to 1 with train > 0, got {list(v)}")
        return v


class PresetModelSection(_Section):
    """A family's model section: a named preset of its model config plus overrides of any of its fields.

    A family's section is :func:`model_section` of its model config (every field declared, typed and
    bounded); only the fields a file or override sets count, and only they are dumped, so a preset's own
    values are never replaced by the dataclass defaults.
    """

    preset: str | None = Field(None, description="None: the family's default preset")

    def overrides(self) -> dict[str, Any]:
        """The fields set (by a file, ``--set`` or a sweep), without ``preset``."""
        return {k: getattr(self, k) for k in type(self).model_fields if k in self.model_fields_set and k != "preset"}

    @model_serializer(mode="wrap")
    def _dump_set_fields_only(self, handler):
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


def _pydantic_type(hint):
    """The pydantic annotation of a model-config field: strict scalars (no bool for int, no text for
    numbers), finite floats, the declared bounds; lists accepted for tuples (YAML has no tuples)."""
    base, bounds = split_bounds(hint)
    inner = optional_inner(base)
    if inner is not None:
        return _pydantic_type(inner) | None
    if typing.get_origin(base) is tuple:
        return Annotated[tuple[_pydantic_type(typing.get_args(base)[0]), ...], Field(min_length=1)]
    if typing.get_origin(base) is Literal:
        return base
    finite = {"allow_inf_nan": False} if base is float else {}
    return Annotated[base, Field(strict=True, **finite, **(bounds.kwargs() if bounds else {}))]


@lru_cache(maxsize=None)
def model_section(config_cls: type) -> type[PresetModelSection]:
    """The pydantic ``model`` section of a training config for ``config_cls`` (a
    :class:`~finegrain.trainables.model_config.ModelConfig` dataclass): ``preset`` plus every field as an
    optional override, validated with the field's declared type and bounds, so a bad value is reported as
    ``model.<field>`` natively."""
    hints = field_hints(config_cls)
    fields = {f.name: (_pydantic_type(hints[f.name]), Field(f.default, description="default: the preset's"))
              for f in dataclasses.fields(config_cls)}
    return create_model(f"{config_cls.__name__}Section", __base__=PresetModelSection,
                        __doc__=f"A preset of {config_cls.__name__} and overrides of its fields.", **fields)


class RunSection(_Section):
    """The training-section fields every family shares: cadence, scaling, fault tolerance, folders.

    A family's training section subclasses it, redeclaring a field to change its default.
    """

    checkpoint_every: int = Field(1000, ge=1)
    eval_every: int = Field(500, ge=1)
    log_every: int = Field(50, ge=1)
    num_workers: int = Field(NUM_WORKERS, ge=0, description="Ray Train workers; 0 runs in this process (local mode)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(CPUS_PER_WORKER, gt=0)
    max_failures: int = Field(2, ge=-1, description="worker-group restarts from the last checkpoint; -1: unlimited")
    startup_failures: int = Field(3, ge=-1, description="failed worker-group start-ups tolerated (Train's "
                                  "controller_failure_limit) before the run fails; -1: unlimited (opt-in: a "
                                  "start-up that can never get its resources then retries forever)")
    keep_checkpoints: int | None = Field(None, ge=1, description="checkpoints kept on disk; None: all")
    seed: int = 0
    precision: Literal["32", "bf16-mixed"] = Field("32", description="bf16-mixed: forward passes under bfloat16 "
                                                  "autocast (GPU recipes; weights and optimiser stay float32)")
    compile: bool = Field(False, description="torch.compile the model for training (GPU recipes)")
    resume_from: Path | None = Field(None, description="a checkpoint folder to continue from")
    work_dir: Path | None = Field(None, description="Ray Train storage and model folders; None: $FINEGRAIN_HOME/runs")
    progress: bool = True


class TrackingSection(_Section):
    """MLflow: one run per training, in ``experiment``."""

    enabled: bool = True
    experiment: str = "runs"
    run_name: str | None = None
    model_name: str = "model"
    register_as: str | None = None
    parent_run_id: str | None = Field(None, description="nest the run under this MLflow run (a sweep's parent)")


class TrainingConfigBase(_Section):
    """What every family's training config shares: sections data/model/training/tracking,
    flattening to MLflow params, and loading from dicts, YAML and ``--set`` overrides.

    A family sets ``FAMILY`` and ``PRESETS`` and declares its sections, the
    model section as ``model: model_section(ItsConfig)``; :meth:`resolved_model`
    builds its model config from that section (preset + overrides; an object
    with ``to_dict()``); a family may refine both and :meth:`_check`.
    """

    #: the family this config trains, or a tuple of the families one config class serves (then the file must
    #: name one with ``family:``)
    FAMILY: ClassVar[str | tuple[str, ...]] = "?"
    #: preset name -> constructor of the model config (its class or one of its classmethods); the first
    #: is the default
    PRESETS: ClassVar[dict[str, Any]] = {}
    family: str | None = Field(None, description="the model family (finegrain train dispatches on it)")

    def resolved_model(self):
        """The model config: the ``model.preset`` with the section's overrides."""
        return self.PRESETS[self.preset](**self.model.overrides())

    @property
    def preset(self) -> str:
        """The model preset in use (``model.preset``, else the family's first)."""
        return self.model.preset or next(iter(self.PRESETS))

    def _check(self, source: str) -> None:
        """Family checks after validation; raise ConfigError naming the key."""
        names = (self.FAMILY,) if isinstance(self.FAMILY, str) else tuple(self.FAMILY)
        if self.family not in names and not (self.family is None and len(names) == 1):
            raise ConfigError(f"{source}: key 'family': {self.family!r} is not a {' or '.join(names)} config")
        if self.PRESETS and self.preset not in self.PRESETS:
            raise ConfigError(f"{source}: key 'model.preset': {self.preset!r} is not one of "
                              f"{', '.join(self.PRESETS)}")
        try:
            self.resolved_model()
        except ModelConfigError as exc:
            raise ConfigError(f"{source}: key 'model{'.' + exc.field if exc.field else ''}': {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: key 'model': {exc}") from None

    def flat(self) -> dict[str, str]:
        """Every setting as ``section.key`` -> str (MLflow params); model fields fully resolved."""
        d = self.model_dump(mode="json")
        d["model"] = {"preset": self.preset, **self.resolved_model().to_dict()}
        return flatten(d)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config"):
        """Validate a nested dict; every problem is reported as ``key 'a.b': reason``."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping with sections data/model/training/tracking, "
                              f"got {type(data).__name__}")
        try:
            cfg = cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: " + "; ".join(_describe(e) for e in exc.errors())) from None
        cfg._check(source)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None):
        """Load a YAML file, apply ``--set key=value`` overrides, validate.

        A relative ``data.shards`` / ``training.*`` path in the file is taken
        relative to the current directory (as typed on the command line).
        """
        import yaml

        path = Path(path)
        try:
            data = yaml_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"config {path}: cannot read ({exc})") from None
        return cls.from_dict(apply_overrides(data, overrides or []), source=f"config {path}")

    def with_overrides(self, overrides: list[str]):
        """A validated copy with ``key=value`` overrides (command-line strings) applied."""
        return type(self).from_dict(apply_overrides(self.model_dump(mode="json", exclude_none=False), overrides))

    def with_values(self, values: dict[str, Any], source: str = "config"):
        """A validated copy with typed values set by dotted key (``{"training.max_steps": 10}``)."""
        return type(self).from_dict(set_values(self.model_dump(mode="json", exclude_none=False), values), source)


def yaml_load(text: str):
    """YAML with the YAML 1.2 rule for floats: ``3e-4`` and ``1E5`` are numbers (YAML 1.1, PyYAML's default,
    reads an exponent without a dot as a string, so ``learning_rate: 3e-4`` would be refused as text)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
        list("-+0123456789."))
    # integers keep their own (earlier-registered) resolver: it is tried first for plain digits
    return yaml.load(text, Loader=Loader)


def parse_override(item: str) -> tuple[str, Any]:
    """A command-line ``section.key=value`` string -> (dotted key, value parsed as YAML, see :func:`yaml_load`)."""
    import yaml

    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected section.key=value (e.g. training.max_steps=100)")
    try:
        return key, (yaml_load(raw) if raw.strip() else None)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from None


def _set_key(node: dict[str, Any], key: str, value: Any, label: str) -> None:
    parts = key.split(".")
    if any(not part for part in parts):
        raise ConfigError(f"{label}: expected a dotted key section.key")
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{label}: key '{'.'.join(parts[: i + 1])}' is not a section")
        node = nxt
    node[parts[-1]] = value


def set_values(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Set typed values by dotted key (``{"training.max_steps": 10}``) in a nested dict (a copy), in order."""
    import copy

    out = copy.deepcopy(data) if data else {}
    for key, value in values.items():
        _set_key(out, key, copy.deepcopy(value), f"key {key!r}")
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply command-line ``section.key=value`` strings to a nested dict (a copy); values parsed as YAML."""
    import copy

    out = copy.deepcopy(data) if data else {}
    for item in overrides:
        key, value = parse_override(item)
        _set_key(out, key, value, f"--set {item!r}")
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict -> {'a.b.c': str(value)}; lists and None are rendered as text."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = "null" if v is None else str(v)
    return out


def _describe(err: dict) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = err.get("msg", "invalid")
    if err.get("type") == "extra_forbidden":
        return f"key '{loc}': unknown key"
    if err.get("type") == "missing":
        return f"key '{loc}': required"
    got = err.get("input")
    got_s = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"key '{loc}': {msg}{got_s}"

