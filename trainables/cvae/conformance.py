"""What the ``cvae`` family declares beyond the protocol (:class:`~finegrain.trainables.protocol.Conformance`).

Translation-equivariant per sample (frames are centred on their CG centroid); not rotation-equivariant
(it voxelises in the lab frame and learns rotations only through augmentation). The frame-based variant
projects onto the CG (``project_cg``), so its outputs map exactly onto the beads, rotated ones included;
the untrained temporal decoder makes no such claim. The temporal variant conditions on AA(t-1).
"""

from __future__ import annotations

from finegrain.trainables.protocol import Conformance


def build(topology, mapping, train_xyz, variant: str, system: str):
    """A smoke-sized untrained CVAE; the temporal variant gets a seed bank from ``train_xyz``."""
    import torch

    from finegrain.trainables.cvae.backmapper import CVAEBackmapper
    from finegrain.trainables.cvae.config import CVAEConfig
    from finegrain.trainables.cvae.model import CVAE

    m, frame_based = mapping, variant == "frame_based"
    torch.manual_seed(0)
    model = CVAE(CVAEConfig.smoke(frame_based=frame_based), topology.n_atoms, m.n_beads)
    cg = m.map(train_xyz[1:])
    c = cg.mean(1, keepdims=True)
    bank = (None, None) if frame_based else (cg - c, train_xyz[:-1] - c)
    return CVAEBackmapper(topology, m, model, None, *bank, prior="normal", project_cg=frame_based)


CONFORMANCE = Conformance(build, ("temporal", "frame_based"), "translation",
                          lambda v: 1e-9 if v == "frame_based" else None, lambda v: v == "frame_based")
