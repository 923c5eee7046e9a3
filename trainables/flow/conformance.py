"""What the ``flow`` family declares beyond the protocol (:class:`~finegrain.trainables.protocol.Conformance`).

Translation-equivariant per sample; rotation-equivariant in distribution only (the prior noise is drawn
in the lab frame), which the conformance test asserts as the invariance of log q(x | y) under a joint
rigid motion of x and y. Outputs map onto the CG to float32 round-off. The temporal variant conditions
on AA(t-1), so its frames are not independent.
"""

from __future__ import annotations

from finegrain.trainables.protocol import Conformance


def build(topology, mapping, train_xyz, variant: str, system: str):
    """A tiny untrained flow (every weight moved off its zero init, so the field is not 0)."""
    import torch

    from finegrain.trainables.flow.backmapper import FlowBackmapper
    from finegrain.trainables.flow.config import FlowConfig
    from finegrain.trainables.flow.geometry import bead_assignment
    from finegrain.trainables.flow.model import ConditionalFlow

    m = mapping
    torch.manual_seed(0)
    cfg = FlowConfig(hidden=8, layers=1, n_rbf=4, time_features=2, steps=2, temporal=variant == "temporal")
    flow = ConditionalFlow(cfg, m.matrix, bead_assignment(m.matrix, train_xyz, m.map(train_xyz)))
    with torch.no_grad():  # the output coefficients start at zero (the field would be 0): move every weight
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return FlowBackmapper(topology, m, flow)


CONFORMANCE = Conformance(build, ("frame_based", "temporal"), "translation", lambda v: 1e-5,
                          lambda v: v != "temporal")
