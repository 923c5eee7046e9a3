"""Defaults that more than one configuration declares, each written here once.

A training run's scaling (:class:`~finegrain.trainables.cvae.train_config.RunSection`)
and a sweep trial's resources (:class:`~finegrain.sweeps.spec.ResourcesSection`)
start from the same worker count and CPUs per worker. Light on purpose (no
torch): the sweep spec imports it at load time.
"""

from __future__ import annotations

__all__ = ["NUM_WORKERS", "CPUS_PER_WORKER"]

#: Ray Train workers of a run (a sweep trial needs at least one; a training run may ask for 0: in-process)
NUM_WORKERS = 1
#: CPUs reserved for each Ray Train worker (also its torch thread count)
CPUS_PER_WORKER = 1.0
