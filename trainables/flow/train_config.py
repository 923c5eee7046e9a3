"""The typed top-level configuration of a flow training run (same sections as the cVAE's).

::

    data:                       # DataSection of the cVAE config (shared)
      shards: path/to/shards
    model:                      # FlowConfig: a preset plus field overrides
      preset: default           # default | smoke
      prior_width_nm: 0.1
      temporal: false
    training:
      max_steps: 2000
      eval_every: 500           # validation: val_total (CFM loss) and val_nll (-log q)
      val_nll_frames: 64        # held-out frames scored for val_nll (0: skip)
      num_workers: 1            # 0: in this process
    tracking:                   # TrackingSection of the cVAE config (shared)
      experiment: flow

``--set section.key=value`` overrides any key (values parsed as YAML).
Errors are :class:`~finegrain.trainables.cvae.train_config.ConfigError`
naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from finegrain.trainables.cvae.train_config import (
    ConfigError,
    DataSection,
    TrackingSection,
    _describe,
    _Section,
    apply_overrides,
    flatten,
)
from finegrain.trainables.flow.config import FlowConfig

__all__ = ["FlowTrainConfig", "FlowModelSection", "FlowTrainingSection", "ConfigError"]

PRESETS = {"default": FlowConfig, "smoke": FlowConfig.smoke}


class FlowModelSection(BaseModel):
    """A FlowConfig preset plus overrides of any of its fields."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    preset: Literal["default", "smoke"] = "default"

    def overrides(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class FlowTrainingSection(_Section):
    """The run: budget, cadence, scaling, validation likelihood."""

    max_steps: int = Field(2000, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    eval_every: int = Field(500, ge=1)
    log_every: int = Field(50, ge=1)
    num_workers: int = Field(1, ge=0, description="Ray Train workers; 0 runs in this process (local mode)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = Field(2, ge=-1)
    keep_checkpoints: int | None = Field(None, ge=1)
    seed: int = 0
    val_nll_frames: int = Field(64, ge=0, description="validation frames scored by -log q at each evaluation")
    val_divergence: Literal["exact", "hutchinson"] = "hutchinson"
    val_steps: int = Field(8, ge=1, description="RK4 steps of the validation likelihood")
    resume_from: Path | None = None
    work_dir: Path | None = None
    progress: bool = True


class FlowTrainConfig(_Section):
    """The whole configuration of one flow training run."""

    data: DataSection
    model: FlowModelSection = Field(default_factory=FlowModelSection)
    training: FlowTrainingSection = Field(default_factory=FlowTrainingSection)
    tracking: TrackingSection = Field(default_factory=lambda: TrackingSection(experiment="flow"))

    def flow(self) -> FlowConfig:
        """The resolved FlowConfig (preset + overrides)."""
        return PRESETS[self.model.preset](**self.model.overrides())

    def flat(self) -> dict[str, str]:
        """Every setting as ``section.key`` -> str (MLflow params); model fields fully resolved."""
        d = self.model_dump(mode="json")
        d["model"] = {"preset": self.model.preset, **self.flow().to_dict()}
        return flatten(d)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "FlowTrainConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping with sections data/model/training/tracking, "
                              f"got {type(data).__name__}")
        try:
            cfg = cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: " + "; ".join(_describe(e) for e in exc.errors())) from None
        try:
            cfg.flow()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {_model_key(str(exc))}: {exc}") from None
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "FlowTrainConfig":
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"config {path}: cannot read ({exc})") from None
        return cls.from_dict(apply_overrides(data, overrides or []), source=f"config {path}")

    def with_overrides(self, overrides: list[str]) -> "FlowTrainConfig":
        return FlowTrainConfig.from_dict(apply_overrides(self.model_dump(mode="json", exclude_none=False), overrides))


def _model_key(message: str) -> str:
    import re

    m = re.search(r"unexpected keyword argument '(\w+)'", message)
    if m:
        return f"key 'model.{m.group(1)}': unknown key"
    m = re.search(r"FlowConfig\.(\w+)", message)
    return f"key 'model.{m.group(1)}'" if m else "key 'model'"
