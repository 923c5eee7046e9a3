"""How a training run reports to Ray Tune when it runs as a sweep trial.

Every family's driver builds a ``TorchTrainer`` (the Train V2 pattern: the
trial function runs the trainer, the trainer does not become the trial), and
passes ``RunConfig(callbacks=tune_callbacks())``: inside a Tune trial that
forwards rank 0's validation reports to the trial; outside one it is empty,
so the same training code serves ``finegrain train`` and ``finegrain sweep``.

Train's in-process mode (``num_workers=0``) cannot run inside a trial: Ray
2.60 refuses ``ray.train`` calls from a Tune function's process
(ray-project/ray#49454); sweeps use worker groups.
"""

from __future__ import annotations


__all__ = ["in_tune_session", "tune_callbacks", "VALIDATION_PREFIX"]

#: Trainers name their validation metrics with this prefix (val_total, val_nll, ...).
VALIDATION_PREFIX = "val_"


def in_tune_session() -> bool:
    """True inside the process of a Ray Tune trial.

    Public API: ``ray.tune.get_context().get_trial_id()`` is the trial's id in a
    trial's process and ``None`` elsewhere (where Ray also warns once that it
    is meant for trials; that warning is silenced here).
    """
    import warnings

    from ray import tune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tune.get_context().get_trial_id() is not None


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
