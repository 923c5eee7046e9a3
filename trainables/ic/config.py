"""Typed configuration of the internal-coordinate backmapper (family ``ic``).

Units: bond lengths nm, angles and dihedrals rad; densities in nats with
respect to the Lebesgue measure of the internal coordinates (bond nm, angle
rad, dihedral rad) of the free atoms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finegrain.trainables.model_config import ModelConfig, ModelConfigError, positive_int, positive_number

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

    hidden: int = 256
    layers: int = 3
    components: int = 6
    min_scale: float = 0.01
    max_concentration: float = 1e4
    fixed_tolerance: float = 1e-5
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "components", "batch_size"):
            if not positive_int(getattr(self, name)):
                raise ModelConfigError(f"ICConfig.{name}: expected an integer >= 1, got {getattr(self, name)!r}", name)
        for name in ("min_scale", "max_concentration", "fixed_tolerance", "learning_rate"):
            if not positive_number(getattr(self, name)):
                raise ModelConfigError(f"ICConfig.{name}: expected a number > 0, got {getattr(self, name)!r}", name)
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ModelConfigError(
                f"ICConfig.weight_decay: expected a number >= 0, got {self.weight_decay!r}", "weight_decay")

    @classmethod
    def smoke(cls, **overrides: Any) -> "ICConfig":
        """A small CPU model for tests and CI."""
        return cls(**{"hidden": 64, "layers": 2, "components": 4, "batch_size": 128, **overrides})
