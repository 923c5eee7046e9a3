"""The typed top-level configuration of an internal-coordinate training run (same sections as the others).

::

    data:                       # DataSection (shared)
      shards: path/to/shards    # the mapping must put every bead on one atom
    model:                      # ICConfig: a preset plus field overrides
      preset: default           # default | smoke
      hidden: 128
    training:
      max_steps: 4000
      eval_every: 500           # validation: val_nll (-log q per frame, nats)
      num_workers: 1            # 0: in this process
    tracking:                   # TrackingSection (shared)
      experiment: ic

``--set section.key=value`` overrides any key (values parsed as YAML).
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
from finegrain.trainables.ic.config import ICConfig

__all__ = ["ICTrainConfig", "ICModelSection", "ICTrainingSection", "ConfigError"]

PRESETS = {"default": ICConfig, "smoke": ICConfig.smoke}


class ICModelSection(BaseModel):
    """An ICConfig preset plus overrides of any of its fields."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    preset: Literal["default", "smoke"] = "default"

    def overrides(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ICTrainingSection(RunSection):
    """The ic run: budget and cadence (and the shared :class:`RunSection`)."""

    max_steps: int = Field(4000, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    eval_every: int = Field(500, ge=1)
    log_every: int = Field(50, ge=1)
    statistics_frames: int = Field(5000, ge=2, description="training frames the standardisation is fitted on")


class ICTrainConfig(TrainingConfigBase):
    """The whole configuration of one internal-coordinate training run."""

    FAMILY: ClassVar[str] = "ic"
    MODEL_CONFIG: ClassVar[type] = ICConfig

    data: DataSection
    model: ICModelSection = Field(default_factory=ICModelSection)
    training: ICTrainingSection = Field(default_factory=ICTrainingSection)
    tracking: TrackingSection = Field(default_factory=lambda: TrackingSection(experiment="ic"))

    def ic(self) -> ICConfig:
        """The resolved ICConfig (preset + overrides)."""
        return PRESETS[self.model.preset](**self.model.overrides())

    def resolved_model(self) -> ICConfig:
        return self.ic()
