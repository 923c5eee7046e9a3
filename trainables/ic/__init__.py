"""Internal-coordinate backmapper: an autoregressive density over bonds, angles and dihedrals of the
free atoms, placed on the bead atoms (family ``ic``).

Public API (torch + numpy only): :class:`ICConfig`, :func:`build_zmatrix` / :class:`ZMatrix`
(the anchored Z-matrix and its exact Cartesian round trip), :class:`ConditionalIC` (log q, sampling)
and :class:`ICBackmapper` (the Backmapper protocol). Training on Ray:
``finegrain.trainables.ic.train.fit_detailed`` with a
``finegrain.trainables.ic.train_config.ICTrainConfig`` (imported on demand).
"""

from finegrain.trainables.ic.backmapper import ICBackmapper
from finegrain.trainables.ic.config import ICConfig
from finegrain.trainables.ic.model import ConditionalIC
from finegrain.trainables.ic.zmatrix import ZMatrix, build_zmatrix

__all__ = ["ICBackmapper", "ICConfig", "ConditionalIC", "ZMatrix", "build_zmatrix"]
