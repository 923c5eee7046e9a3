"""The training step loop every family shares, whoever feeds it (a Ray Train worker, or in-memory arrays).

The standard library only (the hooks bring torch): the same loop runs inside a
Ray Train worker (:meth:`finegrain.trainables.ray_run.TrainWorker.train`,
batches from the worker's Ray Data shard) and on a machine that has torch
and numpy and nothing else (:func:`finegrain.trainables.flow.fit.fit_arrays`,
batches drawn from arrays in memory).

Counting convention
-------------------
``step`` is the number of optimiser steps already taken (0 before the first
update); an update made from ``step = s`` is reported at ``step = s + 1``,
and its schedule values (learning rate, KL weight, ...) are those of ``s``
(the ``used`` argument of :meth:`StepHooks.step_metrics`). ``epoch`` counts
completed passes over the training data; it advances when a pass ends before
``max_steps``, never after the last step. A run resumed from a checkpoint's
(step, epoch) continues the step count and starts that epoch's batches from
the first (a checkpoint on an epoch's last batch still carries that epoch).

Per step the loop
~~~~~~~~~~~~~~~~~
1. takes the next batch of the current epoch (``epoch_batches(epoch)``);
2. calls ``hooks.train_step(batch) -> {term: value}`` and adds the terms to
   running sums; advances ``hooks.step``; tells every observer ``on_step``;
3. on a report step (a multiple of ``log_every``, ``eval_every`` or
   ``checkpoint_every``, or the last step; see :class:`Cadence`) builds
   the metrics: ``hooks.step_metrics(means, used)`` plus ``lr``, ``epoch``
   and ``samples_per_s`` (pairs per second of loop time, all ``world``
   workers together), plus ``hooks.validate()`` on evaluation steps; hands
   them to the observers' ``log`` / ``flush`` and to
   ``hooks.report(metrics, checkpoint, final)``; after a checkpoint calls
   ``hooks.reseed()`` (the random streams after a checkpoint are a function
   of the step, so a run resumed from it draws what this one draws next);
   restarts the running sums.

An epoch that yields no batch at all raises ``ValueError`` (naming
``model.batch_size``). At the end every observer is closed.

Observers (:class:`StepObserver`, in the manner of OpenMM's reporters) watch
the loop: :class:`ProgressObserver` is the console progress bar,
:class:`PrintObserver` prints report lines. An observer may implement only
part of the protocol (MLflow's metric logger has ``log`` / ``flush`` only);
missing methods are skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence, TextIO

__all__ = ["Cadence", "StepHooks", "StepObserver", "Observer", "ProgressObserver", "PrintObserver",
           "notify", "run_steps"]


# ----------------------------------------------------------------------------- observers
class StepObserver(Protocol):
    """Something that watches a training run: every step, every metric report, and its end.

    The MLflow metric logger (``log`` / ``flush`` only), the console progress
    bar (:class:`ProgressObserver`), a test's recorder. Every method is
    optional to the loop (:func:`notify` and :func:`run_steps` skip missing
    ones); :class:`Observer` gives no-op defaults.
    """

    def on_step(self, step: int) -> None:
        """An optimiser step was taken; ``step``: steps taken so far (>= 1)."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Metrics reported at ``step`` (names as given, floats)."""

    def flush(self) -> None:
        """Send what :meth:`log` buffered."""

    def close(self) -> None:
        """The loop ended (after its last step, or when it raised)."""


class Observer:
    """A :class:`StepObserver` whose methods all do nothing: subclass and implement what you need."""

    def on_step(self, step: int) -> None:
        pass

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _call(observer: Any, method: str, *args) -> None:
    fn = getattr(observer, method, None)  # partial observers: what they lack is skipped
    if fn is not None:
        fn(*args)


def notify(observers: Iterable[Any], step: int, metrics: dict[str, float]) -> None:
    """Hand ``metrics`` reported at ``step`` to each observer: ``log`` then ``flush`` (where it has them)."""
    for observer in observers:
        _call(observer, "log", step, metrics)
        _call(observer, "flush")


class ProgressObserver(Observer):
    """A progress bar as an observer: ``update(1)`` per step, ``close()`` at the end.

    ``bar``: any tqdm-like object (``update(n)``, ``close()``) already
    positioned at the starting step (``tqdm(total=max_steps, initial=step)``);
    which tqdm it is (``tqdm.auto`` in-process, Ray's ``tqdm_ray`` in a
    worker group) is the caller's choice.
    """

    def __init__(self, bar):
        self.bar = bar

    def on_step(self, step: int) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class PrintObserver(Observer):
    """Prints ``step S: KEY V (T s)`` per report that has ``key`` to ``stream`` (stdout when None).

    T: seconds since the observer was built.
    """

    def __init__(self, key: str = "loss", stream: TextIO | None = None):
        self.key, self.stream, self.t0 = key, stream, time.perf_counter()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.key in metrics:
            print(f"step {step}: {self.key} {metrics[self.key]:.5f} ({time.perf_counter() - self.t0:.1f} s)",
                  file=self.stream, flush=True)


# ----------------------------------------------------------------------------- what a family plugs in
@dataclass(frozen=True)
class Cadence:
    """When the loop reports, validates and checkpoints (counts of optimiser steps, each >= 1).

    log_every : report every ``log_every`` steps; the last step always reports.
    eval_every : add ``validate()`` every ``eval_every`` steps and at the last step; None: never
        (no validation data).
    checkpoint_every : checkpoint every ``checkpoint_every`` steps before the last; None: never.
    checkpoint_last : also checkpoint at the last step (False for families that write their final
        checkpoint themselves after the loop).
    """

    log_every: int
    eval_every: int | None = None
    checkpoint_every: int | None = None
    checkpoint_last: bool = True

    def __post_init__(self):
        for name in ("log_every", "eval_every", "checkpoint_every"):
            v = getattr(self, name)
            if v is None and name != "log_every":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Cadence.{name} must be an int >= 1, got {v!r}")

    def due(self, step: int, last: bool) -> tuple[bool, bool, bool]:
        """(log, evaluate, checkpoint) after the update that brought the count to ``step``."""
        log = step % self.log_every == 0 or last
        evaluate = self.eval_every is not None and (step % self.eval_every == 0 or last)
        ckpt = (last and self.checkpoint_last) or (
            self.checkpoint_every is not None and step % self.checkpoint_every == 0 and not last)
        return log, evaluate, ckpt


class StepHooks:
    """What a family plugs into :func:`run_steps`; the defaults suit a loop with no validation or checkpoints.

    ``step`` / ``epoch`` (optimiser steps taken, completed epochs) are read
    at the start and advanced by the loop; a resumed run sets them first.
    ``opt``: the optimiser whose first parameter group's ``lr`` is reported.
    """

    step: int = 0
    epoch: int = 0
    opt: Any = None

    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimiser step on ``batch`` (taken from ``step``); its loss terms as floats."""
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        """Validation metrics (``val_*``) at the current step."""
        return {}

    def step_metrics(self, means: dict[str, float], used: int) -> dict[str, float]:
        """Metrics from the means of ``train_step``'s terms since the last report (``used``: the step whose
        schedule values the last update used)."""
        return dict(means)

    def learning_rate(self) -> float:
        """The learning rate the last update used (``opt``'s first parameter group)."""
        return float(self.opt.param_groups[0]["lr"])

    def report(self, metrics: dict[str, float], checkpoint: bool, final: bool) -> None:
        """Send ``metrics`` at the current step on (and write a checkpoint when ``checkpoint``)."""

    def reseed(self) -> None:
        """Restart the random streams as a function of the current step (after a checkpoint)."""


# ----------------------------------------------------------------------------- the loop
def run_steps(hooks: StepHooks, epoch_batches: Callable[[int], Iterable[Any]], max_steps: int, batch_size: int,
              cadence: Cadence, observers: Sequence[Any] = (), world: int = 1) -> None:
    """Train from ``hooks.step`` to ``max_steps``, epoch after epoch (see the module docstring).

    epoch_batches : epoch number -> that epoch's batches (an iterable, drawn lazily, one per step;
        an endless one makes one epoch that the loop stops at ``max_steps``).
    batch_size : samples per batch on this worker (for ``samples_per_s``).
    world : number of workers training together (``samples_per_s`` counts all of them).
    observers : :class:`StepObserver` s (partial ones allowed); closed when the loop ends.
    """
    acc: dict[str, float] = {}
    n_acc, t_busy = 0, 0.0
    try:
        while hooks.step < max_steps:
            n_batches, t0 = 0, time.perf_counter()
            for batch in epoch_batches(hooks.epoch):
                n_batches += 1
                used = hooks.step
                for k, v in hooks.train_step(batch).items():
                    acc[k] = acc.get(k, 0.0) + v
                hooks.step += 1
                n_acc += 1
                t_busy += time.perf_counter() - t0
                for observer in observers:
                    _call(observer, "on_step", hooks.step)
                last = hooks.step == max_steps
                log_now, eval_now, ckpt_now = cadence.due(hooks.step, last)
                if log_now or eval_now or ckpt_now:
                    metrics = hooks.step_metrics({k: v / n_acc for k, v in acc.items()}, used)
                    metrics.update({"lr": hooks.learning_rate(), "epoch": float(hooks.epoch),
                                    "samples_per_s": n_acc * batch_size * world / max(t_busy, 1e-9)})
                    if eval_now:
                        metrics.update(hooks.validate())
                    notify(observers, hooks.step, metrics)
                    hooks.report(metrics, checkpoint=ckpt_now, final=last)
                    if ckpt_now:
                        hooks.reseed()
                    acc, n_acc, t_busy = {}, 0, 0.0
                if hooks.step >= max_steps:
                    break
                t0 = time.perf_counter()
            if n_batches == 0:
                raise ValueError(f"data: the training split gives no full batch of {batch_size} pairs per "
                                 f"worker ({world} workers); use more data or a smaller model.batch_size")
            if hooks.step < max_steps:
                hooks.epoch += 1
    finally:
        for observer in observers:
            _call(observer, "close")
