"""Sweep specs: a YAML file naming a base training config, a search space and how to search it.

::

    name: adp-cvae-smoke             # Tune experiment, MLflow parent run name
    family: cvae                     # which trainer (finegrain.trainables.protocol.TRAINERS)
    base: ../trainables/configs/adp_cvae_smoke.yaml   # relative to this file (or an inline mapping)
    set: [training.progress=false]   # overrides of the base, as `finegrain train --set`
    search_space:                    # config key -> distribution
      model.t_lambda0: {type: int, low: 10, high: 40}          # inclusive bounds
      model.learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
      model.sigma: {type: uniform, low: 0.1, high: 0.14}
      model.beta_schedule: {type: choice, values: [cyclic, constant]}
    metric: val_recon                # a validation metric the trainer reports (val_ prefix)
    mode: min
    num_samples: 3
    max_concurrent_trials: 1
    asha: {grace_period: 10, reduction_factor: 2, max_t: 50}   # in training steps
    resources: {num_workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}
    seed: 0
    register_as: cvae-adp            # registered model; alias champion or challenger
    experiment: sweep-adp-cvae       # MLflow experiment (parent + child runs)

:meth:`SweepSpec.load` validates everything that can be checked without a
cluster — unknown keys, bad distributions, and every search-space key by
building the base config at each end of its range — and
:meth:`SweepSpec.check_resources` what needs one (CPUs and GPUs). Every
error is a :class:`SweepSpecError` (a ``ValueError``) naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from finegrain.platform.science.errors import FinegrainError
from finegrain.trainables.defaults import CPUS_PER_WORKER, NUM_WORKERS
from finegrain.trainables.protocol import trainer_for
from finegrain.trainables.train_config import apply_overrides, set_values
from finegrain.trainables.tune_hooks import VALIDATION_PREFIX

__all__ = ["SweepSpec", "SweepSpecError", "Distribution", "AshaSection", "ResourcesSection"]

#: CPUs of each trial's own process: it reads the shards with Ray Data, then drives the workers.
DATA_CPUS = 1.0


class SweepSpecError(FinegrainError, ValueError):
    """A sweep spec that does not validate; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(_Strict):
    """One search dimension: uniform / loguniform (floats), int (inclusive), or choice."""

    type: Literal["uniform", "loguniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> "Distribution":
        if self.type == "choice":
            if not self.values or self.low is not None or self.high is not None:
                raise ValueError("choice needs a non-empty 'values' list and no low/high")
            return self
        if self.values is not None or self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs 'low' and 'high' and no 'values'")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"int needs integer bounds, got {self.low}, {self.high}")
        return self

    def extremes(self) -> list[Any]:
        """Values that span the range (both ends, or every choice): what validation tries."""
        if self.type == "choice":
            return list(self.values)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]

    def to_tune(self):
        """The Ray Tune domain (OptunaSearch turns it into an Optuna distribution)."""
        from ray import tune

        if self.type == "choice":
            return tune.choice(self.values)
        if self.type == "int":
            return tune.randint(int(self.low), int(self.high) + 1)  # Tune's upper bound is exclusive
        return (tune.loguniform if self.type == "loguniform" else tune.uniform)(self.low, self.high)

    def describe(self) -> str:
        return f"choice{self.values}" if self.type == "choice" else f"{self.type}[{self.low:g}, {self.high:g}]"


class AshaSection(_Strict):
    """ASHA early stopping, in training steps (the ``step`` every report carries)."""

    grace_period: int = Field(10, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "AshaSection":
        if self.grace_period > self.max_t:
            raise ValueError(f"grace_period ({self.grace_period}) must be <= max_t ({self.max_t})")
        return self


class ResourcesSection(_Strict):
    """Per trial: Ray Train workers and their CPUs/GPUs.

    A trial always trains in a worker group of at least one worker: Ray 2.60
    refuses ``ray.train`` calls made from the process of a Tune function trial
    (ray-project/ray#49454), so Train's in-process mode (``num_workers=0``)
    cannot run inside a trial. The trial's own process takes ``DATA_CPUS``
    for reading the data set.
    """

    num_workers: int = Field(NUM_WORKERS, ge=1,
                             description="Ray Train workers per trial (>= 1; see the class docstring)")
    cpus_per_worker: float = Field(CPUS_PER_WORKER, gt=0)
    gpus_per_worker: Literal[0, 1] = Field(0, description="0 or 1: Ray Train gives each GPU worker a whole GPU")
    wait_s: float = Field(300.0, gt=0, description="how long a trial waits for its CPUs before it fails, naming "
                                                   "what holds them")

    def trial_cpus(self) -> float:
        return self.cpus_per_worker * self.num_workers

    def trial_gpus(self) -> float:
        return self.gpus_per_worker * self.num_workers

    def config_values(self) -> dict[str, Any]:
        """The training-config keys these settings fix, with their typed values."""
        return {"training.num_workers": self.num_workers, "training.cpus_per_worker": self.cpus_per_worker,
                "training.use_gpu": self.gpus_per_worker > 0}


class SweepSpec(_Strict):
    """A validated sweep spec (see the module docstring)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    family: str = "cvae"
    base: Union[str, dict[str, Any]]
    set: list[str] = Field(default_factory=list)
    search_space: dict[str, Distribution]
    metric: str = "val_total"
    mode: Literal["min", "max"] = "min"
    num_samples: int = Field(4, ge=1)
    max_concurrent_trials: int = Field(1, ge=1)
    asha: AshaSection = Field(default_factory=AshaSection)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    seed: int = 0
    register_as: str | None = None
    experiment: str | None = None
    storage: str | None = Field(None, description="Tune state folder; default $FINEGRAIN_HOME/sweeps")
    source: str = Field("spec", exclude=True)
    base_config: dict[str, Any] = Field(default_factory=dict, exclude=True)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> "SweepSpec":
        """Read and validate a spec file; ``overrides`` are extra base-config ``key=value`` strings."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise SweepSpecError(f"sweep spec {path}: cannot read ({exc})") from None
        return cls.from_dict(data, source=str(path), folder=path.parent, overrides=overrides)

    @classmethod
    def from_dict(cls, data: Any, source: str = "spec", folder: str | Path = ".",
                  overrides: list[str] | None = None) -> "SweepSpec":
        if not isinstance(data, dict):
            raise SweepSpecError(f"sweep spec {source}: expected a mapping, got {type(data).__name__}")
        try:
            spec = cls.model_validate({**data, "source": source})
        except ValidationError as exc:
            raise SweepSpecError(f"sweep spec {source}: " + "; ".join(_describe(e) for e in exc.errors())) from None
        spec.base_config = spec._read_base(Path(folder))
        spec.set = list(spec.set) + list(overrides or [])
        spec._validate_against_trainer()
        return spec

    def _read_base(self, folder: Path) -> dict[str, Any]:
        if isinstance(self.base, dict):
            return dict(self.base)
        path = Path(self.base)
        path = path if path.is_absolute() or not (folder / path).is_file() else folder / path
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SweepSpecError(f"sweep spec {self.source}: key 'base': cannot read {path} ({exc})") from None
        if not isinstance(data, dict):
            raise SweepSpecError(f"sweep spec {self.source}: key 'base': {path} is not a training config mapping")
        return data

    def _validate_against_trainer(self) -> None:
        """Build the trial config at every end of every range: unknown or invalid keys fail here."""

        if not self.metric.startswith(VALIDATION_PREFIX):
            raise SweepSpecError(f"sweep spec {self.source}: key 'metric': {self.metric!r} is not a validation metric "
                                 f"(trainers report those with the prefix '{VALIDATION_PREFIX}', e.g. val_total)")

        try:
            config_cls, _ = trainer_for(self.family)
        except ValueError as exc:
            raise SweepSpecError(f"sweep spec {self.source}: key 'family': {exc}") from None
        try:
            base = self.trial_config({})
        except ValueError as exc:
            raise SweepSpecError(f"sweep spec {self.source}: key 'base'/'set': {exc}") from None
        flat = base.flat()
        for key, dist in self.search_space.items():
            if key not in flat:
                raise SweepSpecError(f"sweep spec {self.source}: key 'search_space.{key}': unknown parameter "
                                     f"(not a key of the {self.family} training config)")
            for value in dist.extremes():
                try:
                    self.trial_config({key: value})
                except ValueError as exc:
                    raise SweepSpecError(f"sweep spec {self.source}: key 'search_space.{key}': value {value!r} "
                                         f"is invalid ({exc})") from None
        del config_cls

    # ------------------------------------------------------------------ use
    def trial_config(self, params: dict[str, Any], extra: dict[str, Any] | None = None):
        """The validated training config of one trial: base, ``set``, resources, ``params``, then ``extra``.

        ``set`` holds command-line ``key=value`` strings (parsed once, as ``finegrain train --set``);
        resources, the sampled ``params`` and ``extra`` are typed values set by dotted key.
        """

        config_cls, _ = trainer_for(self.family)
        data = set_values(apply_overrides(self.base_config, list(self.set)),
                          {**self.resources.config_values(), **params, **(extra or {})})
        return config_cls.from_dict(data, source=f"sweep {self.name}")

    def check_resources(self, cluster: dict[str, float]) -> None:
        """Refuse a request the cluster can never satisfy (``cluster``: ``ray.cluster_resources()``)."""
        cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
        r = self.resources
        need = (r.trial_cpus() + DATA_CPUS) * self.max_concurrent_trials
        if r.trial_cpus() + DATA_CPUS > cpus:
            raise SweepSpecError(
                f"sweep spec {self.source}: key 'resources': one trial needs {r.trial_cpus():g} CPUs "
                f"({r.num_workers} x cpus_per_worker {r.cpus_per_worker:g}) plus {DATA_CPUS:g} for Ray Data; "
                f"the cluster has {cpus:g}")
        if need > cpus:
            raise SweepSpecError(
                f"sweep spec {self.source}: key 'max_concurrent_trials': {self.max_concurrent_trials} trials x "
                f"({r.trial_cpus():g} CPUs + {DATA_CPUS:g} for Ray Data) exceed the cluster's {cpus:g} CPUs "
                f"(training would stall waiting for Ray Data)")
        if r.trial_gpus() * self.max_concurrent_trials > gpus:
            raise SweepSpecError(
                f"sweep spec {self.source}: key 'resources.gpus_per_worker': {self.max_concurrent_trials} trial(s) "
                f"need {r.trial_gpus() * self.max_concurrent_trials:g} GPUs, the cluster has {gpus:g}")

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"sweep-{self.name}"

    def space_params(self) -> dict[str, str]:
        """The search space as MLflow params of the parent run."""
        return {f"space.{k}": d.describe() for k, d in self.search_space.items()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _describe(err: dict) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    if err.get("type") == "extra_forbidden":
        return f"key '{loc}': unknown key"
    if err.get("type") == "missing":
        return f"key '{loc}': required"
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    return f"key '{loc}': {msg}"
