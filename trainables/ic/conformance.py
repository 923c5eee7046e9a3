"""What the ``ic`` family declares beyond the protocol (:class:`~finegrain.trainables.protocol.Conformance`).

Exactly equivariant per sample (internal coordinates placed on the bead atoms); outputs map onto the CG
to the round-off of the compute dtype (both float32 and float64 are checked). Frames are independent.
"""

from __future__ import annotations

from finegrain.trainables.protocol import Conformance


def build(topology, mapping, train_xyz, variant: str, system: str):
    """A small untrained ConditionalIC in the variant's dtype, with statistics fitted on ``train_xyz``."""
    import torch

    from finegrain.trainables.ic.backmapper import ICBackmapper
    from finegrain.trainables.ic.config import ICConfig
    from finegrain.trainables.ic.model import ConditionalIC
    from finegrain.trainables.ic.zmatrix import build_zmatrix

    m = mapping
    dtype = torch.float64 if variant == "float64" else torch.float32
    torch.manual_seed(0)
    model = ConditionalIC(ICConfig.smoke(hidden=16), build_zmatrix(topology, m)).to(dtype)
    model.fit_statistics(torch.as_tensor(train_xyz, dtype=dtype), torch.as_tensor(m.map(train_xyz), dtype=dtype))
    return ICBackmapper(topology, m, model)


CONFORMANCE = Conformance(build, ("float32", "float64"), "exact", lambda v: 1e-6 if v == "float32" else 1e-12,
                          lambda v: True)
