"""finegrain: machine-learned backmapping of molecular simulations on Ray.

The repository root is this package: ``finegrain.platform`` (core library),
``finegrain.trainables`` (models), ``finegrain.datasets`` (reference systems,
simulation, ingest) and ``finegrain.sweeps`` (sweep specs and driver).
"""

__version__ = "0.1.0"
