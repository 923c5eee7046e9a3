"""What the ``dbm`` family declares beyond the protocol (:class:`~finegrain.trainables.protocol.Conformance`).

Translation-equivariant per sample (environments are centred on their beads); not rotation-equivariant per
sample: the rotation of each environment about its bead axis is drawn in a frame tied to the lab axes (the
thesis' networks are not rotation-equivariant either; section 4.3.1). No claim that outputs map onto the CG:
atoms are placed by a generator, not projected. Frames are independent.
"""

from __future__ import annotations

from finegrain.trainables.protocol import Conformance


def build(topology, mapping, train_xyz, variant: str, system: str):
    """A tiny untrained DeepBackmap model on ``topology`` with an empty energy prior (torch + numpy only, so the
    lowest-energy pick is the first candidate; the prior itself is checked against OpenMM elsewhere)."""
    import torch

    from finegrain.platform.science.energies.parameters import empty_parameters
    from finegrain.trainables.dbm.backmapper import DBMBackmapper
    from finegrain.trainables.dbm.config import DBMConfig
    from finegrain.trainables.dbm.model import DBMNetworks
    from finegrain.trainables.dbm.recipe import DBMRecipe

    torch.manual_seed(0)
    recipe = DBMRecipe.from_topology(topology, mapping)
    cfg = DBMConfig.smoke(channels=4, noise_dim=4, gibbs_sweeps=1, n_candidates=2)
    nets = DBMNetworks(cfg, recipe.type_names, recipe.bead_type_names)
    return DBMBackmapper(topology, mapping, nets, empty_parameters(topology.n_atoms), recipe=recipe)


CONFORMANCE = Conformance(build, ("smoke",), "translation", lambda v: None, lambda v: True)
