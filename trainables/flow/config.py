"""Typed configuration of the conditional flow-matching backmapper (Hummerich et al., split-flows (2025)).

Units: lengths in nm, time of the flow in [0, 1] (dimensionless), densities
in nats w.r.t. the Lebesgue measure of the fibre in nm (see
:mod:`finegrain.trainables.flow.geometry`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from finegrain.trainables.model_config import ModelConfig, ModelConfigError, positive_int, positive_number

__all__ = ["FlowConfig", "METHODS", "DIVERGENCES"]

METHODS = ("euler", "rk4", "dopri5")
DIVERGENCES = ("exact", "hutchinson")




@dataclass(frozen=True)
class FlowConfig(ModelConfig):
    """Hyper-parameters of :class:`~finegrain.trainables.flow.model.ConditionalFlow`.

    Prior
        prior_width_nm: standard deviation of each atom's Gaussian around its
        bead (projected onto the fibre, see ``geometry``).
    Velocity network (EGNN-style, see ``model``)
        hidden: feature width; layers: message-passing layers; n_rbf: radial
        basis functions of pair distances up to rbf_max_nm; time_features:
        Fourier features of t; length_scale_nm: coordinates are divided by it
        inside the network (keeps features O(1)); chiral: add a pseudo-vector
        (cross-product) term, making the field SE(3)- rather than
        E(3)-equivariant so mirror images can be told apart.
    Condition
        temporal: condition on AA(t-1) as well as CG(t); prev_dropout: fraction
        of training pairs whose AA(t-1) is hidden (the model then also gives
        the frame-only density q(x | y), used for entropies and first frames).
    Optimisation
        learning_rate (Adam), batch_size, weight_decay.
    Inference (sampling and likelihood)
        method: solver of sampling, euler | rk4 (fixed steps) | dopri5
        (adaptive, rtol/atol); steps: fixed-step count; likelihood_method:
        solver of log-likelihoods, dopri5 by default (10 fixed RK4 steps are
        ~0.05-0.1 nat off per stiff fibre degree of freedom), controlled by rtol /
        atol (per step, relative / absolute in nm for coordinates and nats
        for the log-density, which is normed on its own); divergence: exact
        (autograd trace over an orthonormal fibre basis) | hutchinson
        (n_probes Gaussian probes).
    """

    prior_width_nm: float = 0.1
    hidden: int = 64
    layers: int = 4
    n_rbf: int = 16
    rbf_max_nm: float = 1.0
    time_features: int = 8
    length_scale_nm: float = 0.1
    chiral: bool = True
    temporal: bool = False
    prev_dropout: float = 0.2
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    method: Literal["euler", "rk4", "dopri5"] = "rk4"
    steps: int = 20
    likelihood_method: Literal["euler", "rk4", "dopri5"] = "dopri5"
    rtol: float = 1e-4
    atol: float = 1e-5
    divergence: Literal["exact", "hutchinson"] = "exact"
    n_probes: int = 1

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "n_rbf", "time_features", "batch_size", "steps", "n_probes"):
            if not positive_int(getattr(self, name)):
                raise ModelConfigError(
                    f"FlowConfig.{name}: expected an integer >= 1, got {getattr(self, name)!r}", name)
        for name in ("prior_width_nm", "rbf_max_nm", "length_scale_nm", "learning_rate", "rtol", "atol"):
            if not positive_number(getattr(self, name)):
                raise ModelConfigError(f"FlowConfig.{name}: expected a number > 0, got {getattr(self, name)!r}", name)
        if not (isinstance(self.prev_dropout, (int, float)) and 0.0 <= self.prev_dropout <= 1.0):
            raise ModelConfigError(
                f"FlowConfig.prev_dropout: expected a number in [0, 1], got {self.prev_dropout!r}", "prev_dropout")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ModelConfigError(
                f"FlowConfig.weight_decay: expected a number >= 0, got {self.weight_decay!r}", "weight_decay")
        for name in ("method", "likelihood_method"):
            if getattr(self, name) not in METHODS:
                raise ModelConfigError(
                    f"FlowConfig.{name}: expected one of {METHODS}, got {getattr(self, name)!r}", name)
        if self.divergence not in DIVERGENCES:
            raise ModelConfigError(
                f"FlowConfig.divergence: expected one of {DIVERGENCES}, got {self.divergence!r}", "divergence")
        for name in ("chiral", "temporal"):
            if not isinstance(getattr(self, name), bool):
                raise ModelConfigError(f"FlowConfig.{name}: expected true/false, got {getattr(self, name)!r}", name)

    @classmethod
    def smoke(cls, **overrides: Any) -> "FlowConfig":
        """A tiny CPU model for tests and CI."""
        return cls(**{"hidden": 32, "layers": 2, "n_rbf": 8, "batch_size": 32, "steps": 8,
                      "divergence": "hutchinson", **overrides})
