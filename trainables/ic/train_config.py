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

from typing import Any, ClassVar

from pydantic import Field

from finegrain.trainables.train_config import ConfigError, DataSection, RunSection, model_section
from finegrain.trainables.train_config import TrackingSection, TrainingConfigBase
from finegrain.trainables.ic.config import ICConfig

__all__ = ["ICTrainConfig", "ICTrainingSection", "ConfigError"]


#: the ``model`` section: a preset of ICConfig and overrides of its fields (types and bounds from ICConfig)
ICModelSection = model_section(ICConfig)

class ICTrainingSection(RunSection):
    """The ic run: budget and cadence (and the shared :class:`RunSection`)."""

    max_steps: int = Field(4000, ge=1)
    statistics_frames: int = Field(5000, ge=2, description="training frames the standardisation is fitted on")


class ICTrainConfig(TrainingConfigBase):
    """The whole configuration of one internal-coordinate training run."""

    FAMILY: ClassVar[str] = "ic"
    PRESETS: ClassVar[dict[str, Any]] = {"default": ICConfig, "smoke": ICConfig.smoke}

    data: DataSection
    model: ICModelSection = Field(default_factory=ICModelSection)
    training: ICTrainingSection = Field(default_factory=ICTrainingSection)
    tracking: TrackingSection = Field(default_factory=lambda: TrackingSection(experiment="ic"))

    def ic(self) -> ICConfig:
        """The resolved ICConfig (preset + overrides)."""
        return self.resolved_model()
