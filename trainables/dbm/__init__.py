"""DeepBackmap: local-environment adversarial backmapping, linear in system size (family ``dbm``).

M. Stieffenhofer, M. Wand, T. Bereau, "Adversarial reverse mapping of equilibrated condensed-phase molecular
structures", Mach. Learn.: Sci. Technol. 1 (2020); M. Stieffenhofer's PhD thesis on DeepBackmap (2022).

Public API (torch + numpy only): :class:`DBMConfig`, :class:`DBMRecipe` (placement order, atom and bead
types), :class:`DBMNetworks` (generator and critic), :class:`LocalEnergy` (the energy prior) and
:class:`DBMBackmapper` (the Backmapper protocol). Training on Ray:
``finegrain.trainables.dbm.train.fit_detailed`` with a
``finegrain.trainables.dbm.train_config.DBMTrainConfig`` (imported on demand).
"""

from finegrain.trainables.dbm.backmapper import DBMBackmapper
from finegrain.trainables.dbm.config import DBMConfig
from finegrain.trainables.dbm.energy import LocalEnergy
from finegrain.trainables.dbm.model import DBMNetworks
from finegrain.trainables.dbm.recipe import DBMRecipe

__all__ = ["DBMBackmapper", "DBMConfig", "DBMNetworks", "DBMRecipe", "LocalEnergy"]
