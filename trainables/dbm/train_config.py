"""The typed top-level configuration of a DeepBackmap training run (same sections as every family).

::

    data:                       # DataSection (shared)
      shards: path/to/shards    # molecules or a periodic box (condensed phase)
    model:                      # DBMConfig: a preset plus field overrides
      preset: default           # default | smoke | thesis
      channels: 32
    training:
      max_steps: 4000           # critic steps; the generator steps every model.n_critic-th
      eval_every: 500           # validation: val_placement_error_nm
      num_workers: 1            # 0: in this process
    tracking:                   # TrackingSection (shared)
      experiment: dbm

``--set section.key=value`` overrides any key (values parsed as YAML).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from finegrain.trainables.dbm.config import DBMConfig
from finegrain.trainables.train_config import ConfigError, DataSection, RunSection, TrackingSection
from finegrain.trainables.train_config import TrainingConfigBase, model_section

__all__ = ["DBMTrainConfig", "DBMTrainingSection", "ConfigError"]

#: the ``model`` section: a preset of DBMConfig and overrides of its fields (types and bounds from DBMConfig)
DBMModelSection = model_section(DBMConfig)


class DBMTrainingSection(RunSection):
    """The DeepBackmap run: budget and validation size (and the shared :class:`RunSection`)."""

    max_steps: int = Field(4000, ge=1)
    validation_batches: int = Field(4, ge=1, description="validation batches of model.batch_size frames")


class DBMTrainConfig(TrainingConfigBase):
    """The whole configuration of one DeepBackmap training run."""

    FAMILY: ClassVar[str] = "dbm"
    PRESETS: ClassVar[dict[str, Any]] = {"default": DBMConfig, "smoke": DBMConfig.smoke, "thesis": DBMConfig.thesis}

    data: DataSection
    model: DBMModelSection = Field(default_factory=DBMModelSection)
    training: DBMTrainingSection = Field(default_factory=DBMTrainingSection)
    tracking: TrackingSection = Field(default_factory=lambda: TrackingSection(experiment="dbm"))

    def dbm(self) -> DBMConfig:
        """The resolved DBMConfig (preset + overrides)."""
        return self.resolved_model()
