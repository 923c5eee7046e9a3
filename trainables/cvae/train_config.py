"""The typed top-level configuration of a cVAE training run (YAML + ``--set`` overrides).

A config file has four sections (and an optional ``family: cvae``); every key is
optional except ``data.shards``::

    data:                      # where the pairs (AA(t-lag), CG(t), AA(t)) come from
      shards: path/to/shards   # a `finegrain ingest` output folder (manifest.json)
      lag: 1                   # frames between AA(t-1) and AA(t)
      fractions: [0.8, 0.1, 0.1]   # train / validation / test, by whole trajectories
      seed: 0                  # split seed
    model:                     # CVAEConfig (Table 1): a preset plus field overrides
      preset: adp              # adp | chignolin | smoke
      frame_based: false       # ...any CVAEConfig field
    training:
      max_steps: null          # null: the preset's (Table 1) step count
      checkpoint_every: 10000
      eval_every: 10000
      num_workers: 1           # Ray Train workers (DDP); 0 runs in this process
      use_gpu: false
      cpus_per_worker: 1.0
      max_failures: 2
    tracking:
      experiment: cvae
      register_as: null        # a registered-model name for the final model

``--set section.key=value`` overrides any key; values are parsed as YAML
(``8`` -> int, ``true`` -> bool, ``[0.5, 0.5, 0]`` -> list, ``null`` -> None).
That string form is the command line's only (:func:`apply_overrides`); code
sets typed values by key (:func:`set_values`, :meth:`TrainingConfigBase.with_values`).
Validation errors are :class:`ConfigError` (a ``ValueError``) naming the key;
a model field's error names ``model.<field>`` from the
:class:`~finegrain.trainables.model_config.ModelConfigError` it raises.
The sections every family shares live in :mod:`finegrain.trainables.train_config`;
every cVAE default lives here or in :class:`~finegrain.trainables.cvae.config.CVAEConfig`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from finegrain.trainables.cvae.config import CVAEConfig
from finegrain.trainables.train_config import ConfigError, DataSection, RunSection, model_section
from finegrain.trainables.train_config import TrackingSection, TrainingConfigBase

__all__ = ["TrainConfig", "TrainingSection", "ConfigError"]


#: the ``model`` section: a preset of CVAEConfig and overrides of its fields (types and bounds from CVAEConfig)
CVAEModelSection = model_section(CVAEConfig)

class TrainingSection(RunSection):
    """The cVAE run: budget, energy term, inference extras (and the shared :class:`RunSection`)."""

    max_steps: int | None = Field(None, ge=1, description="None: the preset's (Table 1) count")
    checkpoint_every: int = Field(10_000, ge=1)
    eval_every: int = Field(10_000, ge=1)
    log_every: int = Field(100, ge=1)
    energy: bool = Field(True, description="add lambda L_ENERGY once lambda > 0 (needs an energy model of the system)")
    energy_backend: Literal["torch", "openmm"] = "torch"
    energy_compile: bool = Field(False, description="torch backend: run U(x) through torch.compile "
                                 "(10-30 s to compile, then several times faster on CPU)")
    latent_prior: Literal["gmm", "normal"] = Field("gmm", description="inference prior: GMM on the posterior or N(0, I)")
    gmm_max_samples: int = Field(100_000, ge=1, description="posterior means used to fit the GMM")
    bank_size: int = Field(1024, ge=1, description="training (CG(t), AA(t-1)) pairs kept to seed inference")
    inject_failure_at: int | None = Field(None, ge=0, description="drill: rank 0 raises once at this step")


class TrainConfig(TrainingConfigBase):
    """The whole configuration of one cVAE training run."""

    FAMILY: ClassVar[str] = "cvae"
    PRESETS: ClassVar[dict[str, Any]] = {"adp": CVAEConfig.adp, "chignolin": CVAEConfig.chignolin,
                                         "smoke": CVAEConfig.smoke}

    data: DataSection
    model: CVAEModelSection = Field(default_factory=CVAEModelSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    tracking: TrackingSection = Field(default_factory=lambda: TrackingSection(experiment="cvae"))

    # ------------------------------------------------------------------ derived
    def cvae(self) -> CVAEConfig:
        """The resolved CVAEConfig: preset, overrides, then ``training.max_steps``."""
        cfg = super().resolved_model()
        if self.training.max_steps is not None:
            cfg = cfg.replace(max_steps=self.training.max_steps)
        return cfg

    def resolved_model(self) -> CVAEConfig:
        return self.cvae()

    def _check(self, source: str) -> None:
        if self.training.max_steps is not None and "max_steps" in self.model.overrides():
            raise ConfigError(f"{source}: key 'training.max_steps' and key 'model.max_steps' are both set; keep one")
        super()._check(source)
