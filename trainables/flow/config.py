"""Typed configuration of the conditional flow-matching backmapper (Hummerich et al., split-flows (2025)).

Units: lengths in nm, time of the flow in [0, 1] (dimensionless), densities
in nats w.r.t. the Lebesgue measure of the fibre in nm (see
:mod:`finegrain.trainables.flow.geometry`).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

from finegrain.trainables.model_config import ModelConfig, NonNegativeFloat, PositiveFloat, PositiveInt, UnitInterval

__all__ = ["FlowConfig", "METHODS", "DIVERGENCES"]

Method = Literal["euler", "rk4", "dopri5"]
Divergence = Literal["exact", "hutchinson"]
METHODS: tuple[str, ...] = typing.get_args(Method)
DIVERGENCES: tuple[str, ...] = typing.get_args(Divergence)


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

    prior_width_nm: PositiveFloat = 0.1
    hidden: PositiveInt = 64
    layers: PositiveInt = 4
    n_rbf: PositiveInt = 16
    rbf_max_nm: PositiveFloat = 1.0
    time_features: PositiveInt = 8
    length_scale_nm: PositiveFloat = 0.1
    chiral: bool = True
    temporal: bool = False
    prev_dropout: UnitInterval = 0.2
    learning_rate: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0
    batch_size: PositiveInt = 64
    method: Method = "rk4"
    steps: PositiveInt = 20
    likelihood_method: Method = "dopri5"
    rtol: PositiveFloat = 1e-4
    atol: PositiveFloat = 1e-5
    divergence: Divergence = "exact"
    n_probes: PositiveInt = 1

    @classmethod
    def smoke(cls, **overrides: Any) -> "FlowConfig":
        """A tiny CPU model for tests and CI."""
        return cls(**{"hidden": 32, "layers": 2, "n_rbf": 8, "batch_size": 32, "steps": 8,
                      "divergence": "hutchinson", **overrides})
