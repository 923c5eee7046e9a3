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

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from finegrain.trainables.cvae.train_config import (
    ConfigError,
    DataSection,
    RunSection,
    TrackingSection,
    TrainingConfigBase,
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


class FlowTrainingSection(RunSection):
    """The flow run: budget, validation likelihood (and the shared :class:`RunSection`)."""

    max_steps: int = Field(2000, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    eval_every: int = Field(500, ge=1)
    log_every: int = Field(50, ge=1)
    val_nll_frames: int = Field(64, ge=0, description="validation frames scored by -log q at each evaluation")
    val_divergence: Literal["exact", "hutchinson"] = "hutchinson"
    val_steps: int = Field(8, ge=1, description="RK4 steps of the validation likelihood")


class FlowTrainConfig(TrainingConfigBase):
    """The whole configuration of one flow training run."""

    FAMILY: ClassVar[str] = "flow"
    MODEL_CONFIG: ClassVar[type] = FlowConfig

    data: DataSection
    model: FlowModelSection = Field(default_factory=FlowModelSection)
    training: FlowTrainingSection = Field(default_factory=FlowTrainingSection)
    tracking: TrackingSection = Field(default_factory=lambda: TrackingSection(experiment="flow"))

    def flow(self) -> FlowConfig:
        """The resolved FlowConfig (preset + overrides)."""
        return PRESETS[self.model.preset](**self.model.overrides())

    def resolved_model(self) -> FlowConfig:
        return self.flow()
