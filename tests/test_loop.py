"""The shared training step loop (trainables/loop.py), torch only: it trains, reports on the cadence worked out
by hand, feeds its observers, resumes exactly, and imports nothing beyond torch, numpy and the standard library.

Budget: about a second of torch (a linear least-squares fit, a 5-step tiny flow).
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from finegrain.trainables.loop import Cadence, Observer, PrintObserver, ProgressObserver, StepHooks, run_steps

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers
class Recorder(Observer):
    """Everything the loop told it."""

    def __init__(self):
        self.steps, self.logs, self.flushes, self.closed = [], [], 0, 0

    def on_step(self, step):
        self.steps.append(step)

    def log(self, step, metrics):
        self.logs.append((step, dict(metrics)))

    def flush(self):
        self.flushes += 1

    def close(self):
        self.closed += 1


class LogOnly:
    """A partial observer, as MLflow's metric logger is: ``log`` and ``flush`` only."""

    def __init__(self):
        self.steps = []

    def log(self, step, metrics):
        self.steps.append(step)

    def flush(self):
        pass


class Counting(StepHooks):
    """Hooks whose term ``u`` is a draw of a generator that is a function of the step after each checkpoint."""

    def __init__(self, step: int = 0, epoch: int = 0, validation: bool = True):
        self.step, self.epoch = step, epoch
        self.opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.25)
        self.reports, self.draws, self.reseeds, self.validation = [], {}, [], validation
        self.reseed()

    def train_step(self, batch):
        u = float(torch.rand((), generator=self.gen))
        self.draws[self.step] = u
        return {"u": u, "used": float(self.step), "batch": float(batch)}

    def step_metrics(self, means, used):
        return {**means, "used_arg": float(used)}

    def validate(self):
        return {"val_step": float(self.step)}

    def report(self, metrics, checkpoint, final):
        self.reports.append((self.step, dict(metrics), checkpoint, final))

    def reseed(self):
        self.reseeds.append(self.step)
        self.gen = torch.Generator().manual_seed(1000 + self.step)


def four_per_epoch(epoch: int):
    return [10 * epoch + i for i in range(4)]


# ----------------------------------------------------------------------------- it trains
def test_a_linear_model_trained_by_the_loop_reaches_the_least_squares_solution():
    """Minibatch SGD through the loop (several epochs, reshuffled each) lands on numpy's lstsq answer."""
    rng = np.random.default_rng(0)
    n, d = 256, 3
    x = rng.normal(size=(n, d))
    y = x @ np.array([1.5, -2.0, 0.5]) + 0.7 + 0.3 * rng.normal(size=n)
    a = np.hstack([x, np.ones((n, 1))])
    exact, *_ = np.linalg.lstsq(a, y, rcond=None)
    assert np.abs(exact[:3] - [1.5, -2.0, 0.5]).max() > 1e-3  # the noise moves it off the generating weights
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)

    class Linear(StepHooks):
        def __init__(self):
            self.model = torch.nn.Linear(d, 1, dtype=torch.float64)
            self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)

        def train_step(self, batch):
            for g in self.opt.param_groups:  # decays to 0.1 / 61 over the run
                g["lr"] = 0.1 / (1 + self.step / 20)
            bx, by = batch
            loss = ((self.model(bx)[:, 0] - by) ** 2).mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            return {"loss": float(loss.detach())}

    def epoch_batches(epoch):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        return ((xt[perm[i:i + 64]], yt[perm[i:i + 64]]) for i in range(0, n - 63, 64))

    hooks = Linear()
    run_steps(hooks, epoch_batches, 1200, 64, Cadence(log_every=100))
    got = np.r_[hooks.model.weight.detach().numpy()[0], hooks.model.bias.detach().numpy()]
    assert np.abs(got - exact).max() < 1e-4, (got, exact)
    assert hooks.step == 1200 and hooks.epoch == 299  # 4 batches an epoch; no increment after the last step


# ----------------------------------------------------------------------------- cadence
def test_reports_evaluations_and_checkpoints_fall_on_the_steps_worked_out_by_hand():
    hooks, rec = Counting(), Recorder()
    run_steps(hooks, four_per_epoch, 11, 8, Cadence(log_every=3, eval_every=4, checkpoint_every=5), [rec])
    # multiples of 3: 3 6 9; of 4 (validate): 4 8; of 5 before the last (checkpoint): 5 10; the last: 11
    assert [r[0] for r in hooks.reports] == [3, 4, 5, 6, 8, 9, 10, 11]
    assert [r[0] for r in hooks.reports if r[2]] == [5, 10, 11]  # checkpoint_last
    assert [r[0] for r in hooks.reports if r[3]] == [11]
    assert [r[0] for r in hooks.reports if "val_step" in r[1]] == [4, 8, 11]
    assert hooks.reseeds == [0, 5, 10, 11]  # the constructor's, then after each checkpoint
    # means since the previous report of the update counts used (0-based), and the step the schedules used
    expect_used = {3: 1.0, 4: 3.0, 5: 4.0, 6: 5.0, 8: 6.5, 9: 8.0, 10: 9.0, 11: 10.0}
    for step, metrics, _, _ in hooks.reports:
        assert metrics["used"] == expect_used[step] and metrics["used_arg"] == step - 1
        assert metrics["lr"] == 0.25 and metrics["samples_per_s"] > 0
    # 4 batches an epoch: steps 1-4 in epoch 0, 5-8 in 1, 9-11 in 2; batches 10 * epoch + i
    assert {s: m["epoch"] for s, m, _, _ in hooks.reports} == {3: 0, 4: 0, 5: 1, 6: 1, 8: 1, 9: 2, 10: 2, 11: 2}
    assert {s: m["batch"] for s, m, _, _ in hooks.reports}[11] == 22.0 and hooks.epoch == 2
    # every step reached the observer, every report too (before the report hook's own), then one close
    assert rec.steps == list(range(1, 12)) and [s for s, _ in rec.logs] == [3, 4, 5, 6, 8, 9, 10, 11]
    assert rec.logs == [(s, m) for s, m, _, _ in hooks.reports] and rec.flushes == 8 and rec.closed == 1


def test_without_validation_or_a_last_checkpoint_the_last_step_only_logs():
    hooks = Counting()
    run_steps(hooks, four_per_epoch, 11, 8, Cadence(log_every=3, checkpoint_every=5, checkpoint_last=False))
    assert [(r[0], r[2], r[3]) for r in hooks.reports] == [(3, False, False), (5, True, False), (6, False, False),
                                                           (9, False, False), (10, True, False), (11, False, True)]
    assert not any("val_step" in r[1] for r in hooks.reports)
    hooks = Counting()  # a last step on the checkpoint cadence is still not checkpointed (the family writes it)
    run_steps(hooks, four_per_epoch, 10, 8, Cadence(log_every=5, checkpoint_every=5, checkpoint_last=False))
    assert [(r[0], r[2], r[3]) for r in hooks.reports] == [(5, True, False), (10, False, True)]


def test_samples_per_second_counts_every_worker(monkeypatch):
    """On a clock that ticks 1 s per reading, each step takes 1 s: B pairs x ``world`` workers per second."""
    from finegrain.trainables import loop

    ticks = iter(range(10_000))
    monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(ticks)))
    hooks = Counting()
    run_steps(hooks, four_per_epoch, 7, 8, Cadence(log_every=3), world=3)
    monkeypatch.undo()
    assert [(s, m["samples_per_s"]) for s, m, _, _ in hooks.reports] == [(3, 24.0), (6, 24.0), (7, 24.0)]


@pytest.mark.parametrize("bad", [{"log_every": 0}, {"log_every": None}, {"log_every": 2, "eval_every": 0},
                                 {"log_every": 2, "checkpoint_every": 1.5}, {"log_every": True}])
def test_cadence_refuses_counts_below_one(bad):
    with pytest.raises(ValueError, match="Cadence"):
        Cadence(**bad)


# ----------------------------------------------------------------------------- observers
def test_partial_observers_and_the_progress_bar_observe_every_step():
    class Bar:
        def __init__(self):
            self.n, self.closed = 3, 0  # positioned at the resumed step, as tqdm(initial=3) is

        def update(self, k):
            self.n += k

        def close(self):
            self.closed += 1

    bar, partial = Bar(), LogOnly()
    hooks = Counting(step=3)
    run_steps(hooks, four_per_epoch, 9, 8, Cadence(log_every=2), [ProgressObserver(bar), partial, object()])
    assert bar.n == 9 and bar.closed == 1
    assert partial.steps == [4, 6, 8, 9]


def test_print_observer_prints_each_report():
    out = io.StringIO()
    hooks = Counting()
    run_steps(hooks, four_per_epoch, 5, 8, Cadence(log_every=2), [PrintObserver("u", stream=out)])
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["step 2", "step 4", "step 5"]
    assert lines[-1].startswith(f"step 5: u {hooks.reports[-1][1]['u']:.5f} (")


# ----------------------------------------------------------------------------- resume
def test_a_run_resumed_at_a_checkpoint_takes_the_same_later_steps():
    """Restarting from the checkpoint at step 5 (its step, its epoch; the random streams reseeded there) draws
    and reports exactly what the uninterrupted run did after step 5."""
    endless = lambda epoch: iter(lambda: 1, None)  # noqa: E731  (in-memory draws: one endless epoch)
    cadence = Cadence(log_every=2, checkpoint_every=5)
    a = Counting()
    run_steps(a, endless, 11, 4, cadence)
    step, metrics, checkpoint, _ = next(r for r in a.reports if r[2])
    assert step == 5 and checkpoint
    b = Counting(step=5, epoch=int(metrics["epoch"]))
    run_steps(b, endless, 11, 4, cadence)
    assert b.draws == {s: u for s, u in a.draws.items() if s >= 5}
    strip = lambda reports: [(s, {k: v for k, v in m.items() if k != "samples_per_s"}, c, f)  # noqa: E731
                             for s, m, c, f in reports]
    assert strip(b.reports) == strip([r for r in a.reports if r[0] > 5])
    assert a.draws[5] == float(torch.rand((), generator=torch.Generator().manual_seed(1005)))  # reseeded at 5


def test_a_run_at_its_last_step_does_nothing_and_no_full_batch_names_the_setting():
    hooks, rec = Counting(step=7), Recorder()
    run_steps(hooks, four_per_epoch, 7, 8, Cadence(log_every=1), [rec])
    assert hooks.reports == [] and rec.steps == [] and rec.closed == 1
    rec = Recorder()
    with pytest.raises(ValueError, match=r"no full batch of 64 pairs per worker \(2 workers\).*model\.batch_size"):
        run_steps(Counting(), lambda epoch: [], 5, 64, Cadence(log_every=1), [rec], world=2)
    assert rec.closed == 1  # the bar is closed even when the loop fails


# ----------------------------------------------------------------------------- the Ray worker
def test_a_ray_worker_is_the_loops_hooks():
    """``TrainWorker`` is a :class:`StepHooks`: ``TrainWorker.train`` hands the loop the worker itself."""
    from finegrain.trainables import loop
    from finegrain.trainables.ray_run import StepObserver, TrainWorker

    assert StepObserver is loop.StepObserver  # still importable from ray_run

    seen = []

    class Worker(TrainWorker):
        def train_step(self, batch):
            seen.append(("train", self.step))
            return {"train_x": float(batch)}

        def validate(self):
            return {"val_x": 1.0}

        def step_metrics(self, means, used):
            return {**means, "used": float(used)}

        def report(self, metrics, checkpoint=False, final=False):
            seen.append(("report", self.step, self.epoch, checkpoint, final, metrics["used"]))

        def reseed(self):
            seen.append(("reseed", self.step))

    w = Worker.__new__(Worker)  # no Ray Train context
    w.step, w.epoch = 2, 1
    w.opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    run_steps(w, lambda epoch: [epoch, epoch], 5, 1, Cadence(log_every=10, checkpoint_every=3))
    assert (w.step, w.epoch) == (5, 2)
    assert seen == [("train", 2), ("report", 3, 1, True, False, 2.0), ("reseed", 3), ("train", 3),
                    ("train", 4), ("report", 5, 2, True, True, 4.0), ("reseed", 5)]


# ----------------------------------------------------------------------------- fit_arrays
def test_fit_arrays_drives_the_loop_and_prints_on_its_cadence(capsys):
    from finegrain.trainables.flow import FlowConfig, bead_assignment, fit_arrays
    from finegrain.trainables.flow.model import ConditionalFlow

    rng = np.random.default_rng(0)
    c = np.zeros((2, 4))
    c[0, :2] = c[1, 2:] = 0.5
    x = 0.1 * rng.normal(size=(40, 4, 3))
    y = np.einsum("bi,fic->fbc", c, x)

    def trained(log_every):
        torch.manual_seed(0)
        flow = ConditionalFlow(FlowConfig(hidden=8, layers=1, n_rbf=4, batch_size=8), c, bead_assignment(c))
        return fit_arrays(flow, x, y, 5, seed=3, log_every=log_every)

    quiet = trained(0)
    assert capsys.readouterr().out == ""
    loud = trained(2)
    lines = capsys.readouterr().out.splitlines()
    assert loud == quiet and len(loud) == 5 and np.all(np.isfinite(loud))  # printing changes nothing
    assert [line.split(":")[0] for line in lines] == ["step 2", "step 4", "step 5"]
    assert lines[0].startswith(f"step 2: loss {np.mean(loud[:2]):.5f} (")


# ----------------------------------------------------------------------------- imports
BLOCKED = ("ray", "mlflow", "pydantic", "tqdm")


def _import_with_blocked(module: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import importlib, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED!r}:
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        importlib.import_module({module!r})
        print("imported")
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_the_loop_imports_only_torch_numpy_and_the_standard_library():
    r = _import_with_blocked("finegrain.trainables.loop")
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr[-3000:]
    # the blocker works: a module that needs Ray does not import under it
    r = _import_with_blocked("finegrain.trainables.ray_run")
    assert r.returncode != 0 and "blocked: " in r.stderr, r.stderr[-3000:]
