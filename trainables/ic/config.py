"""Typed configuration of the internal-coordinate backmapper (family ``ic``).

Units: bond lengths nm, angles and dihedrals rad; densities in nats with
respect to the Lebesgue measure of the internal coordinates (bond nm, angle
rad, dihedral rad) of the free atoms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finegrain.trainables.model_config import ModelConfig, NonNegativeFloat, PositiveFloat, PositiveInt

__all__ = ["ICConfig"]


@dataclass(frozen=True)
class ICConfig(ModelConfig):
    """Hyper-parameters of :class:`~finegrain.trainables.ic.model.ConditionalIC`.

    Network (a MADE: masked autoregressive MLP, Germain et al. 2015)
        hidden: width; layers: hidden layers; the CG description enters every
        hidden layer unmasked.
    Densities of each internal coordinate given the CG and the earlier ones
        components: mixture components (Gaussians for bonds and angles in
        standardised units, von Mises for dihedrals); min_scale: floor of a
        Gaussian's standard deviation (standardised units); max_concentration:
        ceiling of a von Mises concentration (1/rad^2, 1e4 = 0.01 rad);
        fixed_tolerance: a bond or angle whose training spread is below it (nm
        or rad; constrained X-H bonds) is held at its mean and not modelled.
    Optimisation
        learning_rate (AdamW), weight_decay, batch_size.
    """

    hidden: PositiveInt = 256
    layers: PositiveInt = 3
    components: PositiveInt = 6
    min_scale: PositiveFloat = 0.01
    max_concentration: PositiveFloat = 1e4
    fixed_tolerance: PositiveFloat = 1e-5
    learning_rate: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0
    batch_size: PositiveInt = 256

    @classmethod
    def smoke(cls, **overrides: Any) -> "ICConfig":
        """A small CPU model for tests and CI."""
        return cls(**{"hidden": 64, "layers": 2, "components": 4, "batch_size": 128, **overrides})
