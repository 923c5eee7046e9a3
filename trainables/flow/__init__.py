"""Conditional flow-matching backmapper with exact likelihoods.

After Hummerich, Bereau and Köthe, "Split-Flows: Measure Transport and Information
Loss Across Molecular Resolutions" (2025).

Public API (torch + numpy only): :class:`FlowConfig`, :class:`FibreGeometry`
and :func:`bead_assignment` (where densities live), :class:`VelocityField`
and :class:`ConditionalFlow` (loss, ODE sampling, log q(x | y)),
:func:`odeint` / :func:`trace_along` (solvers, divergences),
:func:`fit_arrays` / :func:`nll_arrays` (in-memory training and scoring) and
:class:`FlowBackmapper` (the Backmapper protocol).  Training on Ray:
``finegrain.trainables.flow.train.fit_detailed`` with a
``finegrain.trainables.flow.train_config.FlowTrainConfig`` (imported on demand).
"""

from finegrain.trainables.flow.backmapper import FlowBackmapper
from finegrain.trainables.flow.config import FlowConfig
from finegrain.trainables.flow.fit import fit_arrays, nll_arrays
from finegrain.trainables.flow.geometry import FibreGeometry, bead_assignment, fibre_basis
from finegrain.trainables.flow.model import ConditionalFlow, VelocityField, centre_on_cg
from finegrain.trainables.flow.ode import odeint, trace_along

__all__ = ["FlowBackmapper", "FlowConfig", "fit_arrays", "nll_arrays", "FibreGeometry", "bead_assignment",
           "fibre_basis", "ConditionalFlow", "VelocityField", "centre_on_cg", "odeint", "trace_along"]
