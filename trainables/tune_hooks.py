"""How a training run reports to Ray Tune when it runs as a sweep trial.

Every family's driver builds a ``TorchTrainer`` (the Train V2 pattern: the
trial function runs the trainer, the trainer does not become the trial).

- With a worker group, ``RunConfig(callbacks=tune_callbacks())`` forwards each
  ``ray.train.report`` of rank 0 to the trial (``TuneReportCallback``).
- With ``num_workers=0`` the loop runs in the trial's own process, where Train's
  local controller keeps reports to itself: the loop also calls
  :func:`report_local_to_tune`.

Outside a Tune trial both are no-ops, so the same training code serves
``finegrain train`` and ``finegrain sweep``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["in_tune_session", "tune_callbacks", "report_local_to_tune", "VALIDATION_PREFIX"]

#: Trainers name their validation metrics with this prefix (val_total, val_nll, ...).
VALIDATION_PREFIX = "val_"


def in_tune_session() -> bool:
    """True inside the process of a Ray Tune trial."""
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    return bool(_in_tune_session())


def tune_callbacks() -> list:
    """Inside a Tune trial, a callback forwarding validation reports to it; else ``[]``.

    For ``RunConfig(callbacks=...)``. Only reports that hold validation
    metrics (keys starting with ``val_``) reach Tune: a sweep's metric is one
    of them, and Tune's searchers and schedulers expect it in every result.
    """
    if not in_tune_session():
        return []
    from ray.tune.integration.ray_train import TuneReportCallback

    class ValidationReportCallback(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if any(k.startswith(VALIDATION_PREFIX) for k in metrics[0]):
                super().after_report(run_context, metrics, checkpoint)

    return [ValidationReportCallback()]


def report_local_to_tune(metrics: dict[str, Any]) -> None:
    """Forward one report of an in-process (``num_workers=0``) loop to the Tune trial, if any."""
    if not in_tune_session():
        return
    import ray.tune

    ray.tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
