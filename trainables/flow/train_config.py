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
Errors are :class:`~finegrain.trainables.train_config.ConfigError`
naming the key.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from finegrain.trainables.train_config import ConfigError, DataSection, RunSection, model_section
from finegrain.trainables.train_config import TrackingSection, TrainingConfigBase
from finegrain.trainables.flow.config import FlowConfig

__all__ = ["FlowTrainConfig", "FlowTrainingSection", "ConfigError"]


#: the ``model`` section: a preset of FlowConfig and overrides of its fields (types and bounds from FlowConfig)
FlowModelSection = model_section(FlowConfig)

class FlowTrainingSection(RunSection):
    """The flow run: budget, validation likelihood (and the shared :class:`RunSection`)."""

    max_steps: int = Field(2000, ge=1)
    val_nll_frames: int = Field(64, ge=0, description="validation frames scored by -log q at each evaluation")
    val_divergence: Literal["exact", "hutchinson"] = "hutchinson"
    val_steps: int = Field(8, ge=1, description="RK4 steps of the validation likelihood")


class FlowTrainConfig(TrainingConfigBase):
    """The whole configuration of one flow training run."""

    FAMILY: ClassVar[str] = "flow"
    PRESETS: ClassVar[dict[str, Any]] = {"default": FlowConfig, "smoke": FlowConfig.smoke}

    data: DataSection
    model: FlowModelSection = Field(default_factory=FlowModelSection)
    training: FlowTrainingSection = Field(default_factory=FlowTrainingSection)
    tracking: TrackingSection = Field(default_factory=lambda: TrackingSection(experiment="flow"))

    def flow(self) -> FlowConfig:
        """The resolved FlowConfig (preset + overrides)."""
        return self.resolved_model()
