"""Temporally coherent conditional VAE backmapper (SI 4.1 of Shmilovich et al., "Temporally coherent
backmapping of molecular trajectories from coarse-grained to atomistic
resolution" (2022)).

Public API: :class:`CVAEConfig` (Table 1 presets), :class:`CVAE` (model),
:class:`CVAEOutput`, the loss functions of eq. 3, and :class:`CVAEBackmapper` /
:class:`GaussianMixtureSampler` (inference, section 2.4).  Training:
``finegrain.trainables.cvae.train.fit`` with a
``finegrain.trainables.cvae.train_config.TrainConfig`` (imported on demand: Ray).
"""

from finegrain.trainables.cvae.backmapper import CVAEBackmapper, GaussianMixtureSampler
from finegrain.trainables.cvae.config import CVAEConfig
from finegrain.trainables.cvae.losses import (
    aa_loss,
    cg_loss,
    distance_matrix,
    edm_loss,
    energy_loss,
    kld_loss,
    map_to_cg,
    total_loss,
    vox_loss,
)
from finegrain.trainables.cvae.model import CVAE, CVAEOutput, LayerNorm3d, ResidualBlock3d

__all__ = [
    "CVAEConfig",
    "CVAE",
    "CVAEOutput",
    "LayerNorm3d",
    "ResidualBlock3d",
    "vox_loss",
    "aa_loss",
    "cg_loss",
    "edm_loss",
    "energy_loss",
    "kld_loss",
    "distance_matrix",
    "map_to_cg",
    "total_loss",
    "CVAEBackmapper",
    "GaussianMixtureSampler",
]
