"""The sweep driver behind ``finegrain sweep SPEC``: Ray Tune + OptunaSearch + ASHA over a training config.

Each trial is a Tune function trial that builds its training config (base +
sampled parameters) and calls the family's ``fit_detailed`` — which builds a
``TorchTrainer`` (Train V2: the trainer runs inside the trial, reporting
through ``TuneReportCallback``) with a worker group of at least one worker. MLflow: one parent run per sweep (the spec as an artifact, the
search space as params) and one nested child run per trial (the trainer's own
run, tagged ``mlflow.parentRunId``). At the end the best trial's model is
registered and aliased ``champion`` only if it beats the current champion
(:mod:`finegrain.platform.services.registry`); the decision, both figures and Optuna's
plots go on the parent run.

State: ``<storage>/<spec name>/<stamp>/`` is the Tune experiment;
``<storage>/<spec name>/latest.json`` records it with the parent run id, so
``--resume`` restores the latest one (``Tuner.restore``: finished trials are
kept, unfinished ones rerun; a child run left unfinished by the interruption
is deleted before its trial reruns, so no trial has two child runs).

Interruptions: the driver joins the Ray namespace of its sweep
(:mod:`finegrain.sweeps.leftovers`). SIGTERM is handled as Ctrl-C (Tune saves
its state and stops the trials); whatever the driver's job still has alive
after Tune returns (a Train controller retrying its worker group, a worker
group) is killed, and the driver waits until the cluster's CPUs are free
again. ``--resume`` first stops the leftovers of earlier drivers of the same
sweep whose jobs are dead (a killed driver), and refuses while one is still
running. A trial waits at most ``resources.wait_s`` for its CPUs and Train
gives up a worker-group start-up after ``training.startup_failures`` failures;
either way the error names what holds the cluster's CPUs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finegrain.platform.science.errors import FinegrainError
from finegrain.platform.services.registry import register_and_promote
from finegrain.platform.services.stack import connect_ray, stack_home, tracking_uri
from finegrain.platform.services.tracking import Tracker
from finegrain.sweeps import leftovers
from finegrain.sweeps.spec import DATA_CPUS, SweepSpec, SweepSpecError
from finegrain.trainables.protocol import trainer_for

__all__ = ["run_sweep", "SweepResult", "SweepInterrupted", "optuna_study"]

LATEST = "latest.json"
STOPPED_TRIAL_GRACE_S = 5
#: After an interruption: how long the driver waits for its leftovers to go and the CPUs to come back.
RELEASE_TIMEOUT_S = 60.0


class SweepInterrupted(FinegrainError, RuntimeError):
    """The sweep stopped before every trial ended (Ctrl-C, ``ray job stop``); ``--resume`` continues it."""

    exit_code = 130  # the CLI prints "interrupted: ..." and exits like a Ctrl-C'd command
    label = "interrupted"


@dataclass
class SweepResult:
    parent_run_id: str
    experiment_path: Path
    n_trials: int
    best: dict[str, Any] | None  # {"trial_id", "params", metric, "model_uri", "run_id"}
    promotion: dict[str, Any] | None


# ----------------------------------------------------------------------------- the trial
def _trial(params: dict[str, Any], ctx: dict[str, Any]) -> None:
    """One Tune trial: train with the sampled ``params``; the last report carries the model URI."""
    import ray.tune
    from ray.train import ControllerError

    os.environ["MLFLOW_TRACKING_URI"] = ctx["tracking_uri"]  # a trial is a process boundary: its training reads it
    spec = SweepSpec.from_dict(ctx["spec"], source=ctx["source"])
    trial_id = ray.tune.get_context().get_trial_id()
    run_name = f"{spec.name}-{trial_id}"
    client = Tracker(ctx["tracking_uri"]).client  # this trial's tracker
    run_id = _finished_child(client, ctx["experiment_id"], ctx["parent_run_id"], run_name)
    if run_id is None:  # a first attempt, or one an interruption cut short: train
        config = spec.trial_config(params, extra={
            "tracking.parent_run_id": ctx["parent_run_id"], "tracking.experiment": spec.experiment_name,
            "tracking.run_name": run_name, "tracking.register_as": None, "tracking.enabled": True,
            "training.work_dir": str(Path(ctx["work_dir"]) / trial_id), "training.progress": False})
        _, fit = trainer_for(spec.family)
        # the trial's own placement group holds DATA_CPUS; the worker group needs the rest
        leftovers.wait_for_cpus(spec.resources.trial_cpus(), spec.resources.wait_s,
                                f"sweep {spec.name} trial {trial_id}")
        try:
            run_id = fit(config).run_id
        except ControllerError as exc:  # Train gave up, e.g. after training.startup_failures failed start-ups
            raise RuntimeError(f"sweep {spec.name} trial {trial_id}: Ray Train's controller gave up ({exc}); "
                               f"CPUs held by: " + ("; ".join(leftovers.resource_holders()) or "nothing Ray lists")
                               ) from exc
        client.set_tag(run_id, "sweep.trial_id", trial_id)
    history = client.get_metric_history(run_id, spec.metric)
    if not history:
        raise ValueError(f"metric: the {spec.family} trainer never reported {spec.metric!r} "
                         f"(is there a validation split?)")
    model_name = spec.trial_config(params).tracking.model_name
    ray.tune.report({spec.metric: history[-1].value, "step": history[-1].step,
                     "model_uri": f"runs:/{run_id}/{model_name}", "mlflow_run_id": run_id})


def _finished_child(client, experiment_id: str, parent_run_id: str, run_name: str) -> str | None:
    """The finished child run of this trial, if an earlier attempt got that far (resume after an
    interruption between the end of training and Tune's record of it); unfinished ones are deleted."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and "
                              f"attributes.run_name = '{run_name}'")
    finished = None
    for r in runs:
        if r.info.status == "FINISHED" and finished is None:
            finished = r.info.run_id
        elif r.info.status != "FINISHED":
            client.delete_run(r.info.run_id)
    return finished


# ----------------------------------------------------------------------------- the driver
def run_sweep(spec: SweepSpec, resume: bool = False, verbose: int = 1) -> SweepResult:
    """Run (or with ``resume`` continue) a sweep on the connected Ray cluster; see the module docstring."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    namespace = leftovers.sweep_namespace(spec.name)
    connect_ray(namespace=namespace)
    job_id = ray.get_runtime_context().get_job_id()
    spec.check_resources(ray.cluster_resources())
    # trainers report training terms every log_every steps and validation terms every eval_every:
    # results without the metric are normal (ASHA skips them), so Tune must not insist on it
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # a trial ASHA stops is blocked inside TorchTrainer.fit and never sees Tune's stop request:
    # kill it (and so its Train controller and workers) after a few seconds, not Tune's default 600
    os.environ["TUNE_FORCE_TRIAL_CLEANUP_S"] = str(STOPPED_TRIAL_GRACE_S)
    uri = tracking_uri()
    tracker = Tracker(uri)  # the sweep driver's one tracker
    client = tracker.client
    root = Path(spec.storage or stack_home() / "sweeps").resolve() / spec.name
    if resume:
        latest = _read_latest(root, spec)
        exp_path, parent_run_id = Path(latest["path"]), latest["parent_run_id"]
        if client.get_run(parent_run_id).info.status == "FINISHED":
            raise SweepSpecError(f"--resume: the latest sweep {spec.name!r} ({exp_path}) has finished; "
                                 f"start a new one without --resume")
        _stop_earlier_drivers(spec, namespace, job_id, resume=True, verbose=verbose)
        client.update_run(parent_run_id, status="RUNNING")
    else:
        _stop_earlier_drivers(spec, namespace, job_id, resume=False, verbose=verbose)
        exp_path = root / time.strftime("%Y%m%d-%H%M%S")
        params = {**spec.space_params(), "family": spec.family, "metric": spec.metric, "mode": spec.mode,
                  "num_samples": spec.num_samples, "seed": spec.seed, **{f"asha.{k}": v for k, v in
                                                                         spec.asha.model_dump().items()}}
        parent_run_id = tracker.start_run(spec.experiment_name, params, {"sweep": spec.name, "family": spec.family,
                                                                           "sweep.path": str(exp_path)},
                                          run_name=f"sweep-{spec.name}")
        client.log_text(parent_run_id, spec.to_yaml(), "sweep_spec.yaml")
        root.mkdir(parents=True, exist_ok=True)
        (root / LATEST).write_text(json.dumps({"path": str(exp_path), "parent_run_id": parent_run_id}))
    ctx = {"spec": spec.model_dump() | {"base": spec.base_config, "set": spec.set}, "source": spec.source,
           "tracking_uri": uri, "parent_run_id": parent_run_id, "work_dir": str(exp_path / "trials"),
           "experiment_id": client.get_experiment_by_name(spec.experiment_name).experiment_id}
    trainable = tune.with_parameters(_trial, ctx=ctx)
    # the trial drives its TorchTrainer and runs the Ray Data reads of its data set (tasks launched
    # from a trial are placed in the trial's placement group): DATA_CPUS are for that
    trainable = tune.with_resources(trainable, {"cpu": DATA_CPUS})
    try:
        if resume:
            tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            space = {k: d.to_tune() for k, d in spec.search_space.items()}
            tuner = tune.Tuner(
                trainable, param_space=space,
                tune_config=tune.TuneConfig(
                    metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
                    max_concurrent_trials=spec.max_concurrent_trials, trial_dirname_creator=_trial_dirname,
                    search_alg=OptunaSearch(seed=spec.seed),
                    scheduler=ASHAScheduler(time_attr="step", max_t=spec.asha.max_t,
                                            grace_period=spec.asha.grace_period,
                                            reduction_factor=spec.asha.reduction_factor,
                                            stop_last_trials=False)),  # survivors finish and log their model
                run_config=tune.RunConfig(name=exp_path.name, storage_path=str(exp_path.parent), verbose=verbose),
            )
        with _sigterm_as_sigint():
            grid = tuner.fit()
        if grid.num_terminated + grid.num_errors < spec.num_samples:  # Ctrl-C: Tune saved its state and returned
            raise SweepInterrupted(f"sweep {spec.name} interrupted after {grid.num_terminated} of "
                                   f"{spec.num_samples} trials; continue it with --resume")
        return _finish(spec, grid, tracker, parent_run_id, exp_path)
    except BaseException:
        client.set_terminated(parent_run_id, status="KILLED")
        _release(spec, namespace, job_id)
        raise


@contextlib.contextmanager
def _sigterm_as_sigint():
    """SIGTERM (``kill``, a batch system, ``ray job stop``) stops the sweep as Ctrl-C does: Tune saves its
    state and stops the trials. Only in the main thread (signal handlers can be set nowhere else)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    def on_sigterm(signum, frame):
        # call the SIGINT handler in force (Tune's, once fit() runs) instead of raising SIGINT: a Ray job's
        # driver has SIGINT blocked (Ray's job supervisor does that), so a raised SIGINT would never arrive
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _release(spec: SweepSpec, namespace: str, job_id: str) -> None:
    """After an interruption: kill what this driver's job still has alive (Tune has stopped its trials,
    but a Train controller may still be retrying its worker group), then wait for the CPUs to be free."""
    import ray

    try:
        stopped = leftovers.stop_leftovers(namespace, job_id=job_id, timeout_s=RELEASE_TIMEOUT_S)
    except TimeoutError as exc:
        print(f"warning: sweep {spec.name}: {exc}", flush=True)
        return
    if stopped:
        print(f"sweep {spec.name}: stopped {len(stopped)} leftover(s): " + "; ".join(map(str, stopped)), flush=True)
    total = ray.cluster_resources().get("CPU", 0.0)
    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    while ray.available_resources().get("CPU", 0.0) + 1e-9 < total and time.monotonic() < deadline:
        time.sleep(0.5)


def _stop_earlier_drivers(spec: SweepSpec, namespace: str, job_id: str, resume: bool, verbose: int) -> None:
    """Stop the leftovers of earlier drivers of this sweep whose jobs are dead (a killed driver). With
    ``resume``, refuse while one of them is still running: two drivers of one sweep would race for its
    trials."""
    import ray
    from ray.util.state import list_jobs

    jobs = {f.job_id for f in leftovers.find_leftovers(namespace, exclude_job=job_id)}
    if not jobs:
        return
    running = [j for j in list_jobs(address=ray.get_runtime_context().gcs_address, detail=True, limit=10_000,
                                    raise_on_missing_output=False)
               if j.job_id in jobs and str(getattr(j.status, "value", j.status)) in ("RUNNING", "PENDING")]
    if running and resume:
        desc = ", ".join(f"job {j.job_id}" + (f" (submission {j.submission_id})" if j.submission_id else "")
                         for j in running)
        raise SweepSpecError(f"--resume: sweep {spec.name!r} is still running as {desc}; stop it first "
                             f"(Ctrl-C, or `ray job stop`)")
    for dead in sorted(jobs - {j.job_id for j in running}):
        stopped = leftovers.stop_leftovers(namespace, job_id=dead, timeout_s=RELEASE_TIMEOUT_S)
        if verbose and stopped:
            print(f"sweep {spec.name}: stopped {len(stopped)} leftover(s) of an earlier driver (job {dead}): "
                  + "; ".join(map(str, stopped)), flush=True)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _read_latest(root: Path, spec: SweepSpec) -> dict:
    path = root / LATEST
    if not path.is_file():
        raise SweepSpecError(f"--resume: no earlier sweep named {spec.name!r} under {root}")
    return json.loads(path.read_text())


def _finish(spec: SweepSpec, grid, tracker, parent_run_id: str, exp_path: Path) -> SweepResult:
    client = tracker.client

    rows = [res for res in grid if res.metrics and res.metrics.get("model_uri")]
    # trials ASHA stopped (or that failed) have no model; their child runs end as KILLED
    for r in client.search_runs([client.get_run(parent_run_id).info.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"):
        if r.info.status == "RUNNING":
            client.set_terminated(r.info.run_id, status="KILLED")
    best = promotion = None
    sign = 1.0 if spec.mode == "min" else -1.0
    finite = [res for res in rows if math.isfinite(res.metrics.get(spec.metric, math.nan))]
    if finite:
        top = min(finite, key=lambda res: sign * res.metrics[spec.metric])
        best = {"trial_id": top.metrics.get("trial_id"), "params": dict(top.config), spec.metric: top.metrics[spec.metric],
                "model_uri": top.metrics["model_uri"], "run_id": top.metrics["mlflow_run_id"]}
        client.log_metric(parent_run_id, f"best_{spec.metric}", best[spec.metric])
        client.set_tag(parent_run_id, "best_run_id", best["run_id"])
        client.set_tag(parent_run_id, "best_model_uri", best["model_uri"])
        if spec.register_as:
            data_hash = client.get_run(best["run_id"]).data.tags.get("dataset_digest", "")
            p = register_and_promote(spec.register_as, best["model_uri"], spec.metric, spec.mode, best[spec.metric],
                                     tracker, tags={"sweep": spec.name, "data_hash": data_hash, "run_id": best["run_id"]})
            promotion = p.as_dict()
            client.set_tag(parent_run_id, "registry.decision", p.alias if p.comparable else f"{p.alias} (champion "
                           f"measured on other data: not compared)")
            client.set_tag(parent_run_id, "registry.version", p.version)
            client.log_metric(parent_run_id, "registry.candidate_value", p.value)
            if p.champion_value is not None:
                client.log_metric(parent_run_id, "registry.champion_value", p.champion_value)
    _log_optuna_plots(spec, grid, client, parent_run_id)
    client.set_terminated(parent_run_id, status="FINISHED" if best else "FAILED")
    return SweepResult(parent_run_id, exp_path, len(grid), best, promotion)


# ----------------------------------------------------------------------------- Optuna's plots
def optuna_study(spec: SweepSpec, results: list[tuple[dict[str, Any], float]]):
    """An in-memory Optuna study holding the finished trials (config, final metric value)."""
    import optuna

    dists = {}
    for k, d in spec.search_space.items():
        if d.type == "choice":
            dists[k] = optuna.distributions.CategoricalDistribution(d.values)
        elif d.type == "int":
            dists[k] = optuna.distributions.IntDistribution(int(d.low), int(d.high))
        else:
            dists[k] = optuna.distributions.FloatDistribution(d.low, d.high, log=d.type == "loguniform")
    study = optuna.create_study(direction="minimize" if spec.mode == "min" else "maximize")
    for config, value in results:
        study.add_trial(optuna.trial.create_trial(params={k: config[k] for k in dists}, distributions=dists,
                                                  value=value))
    return study


def _log_optuna_plots(spec: SweepSpec, grid, client, parent_run_id: str) -> None:
    """Optimisation history and parameter importances (Optuna's matplotlib plots) on the parent run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    results = [(dict(res.config), float(res.metrics[spec.metric])) for res in grid
               if res.metrics and math.isfinite(float(res.metrics.get(spec.metric, math.nan)))]
    if not results:
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna_study(spec, results)
    plots = {"optimization_history": optuna.visualization.matplotlib.plot_optimization_history}
    if len(results) >= 2 and len(spec.search_space) >= 1:
        plots["param_importances"] = optuna.visualization.matplotlib.plot_param_importances
    for name, plot in plots.items():
        try:
            ax = plot(study)
        except (ValueError, RuntimeError) as exc:  # e.g. importances of a parameter that never varied
            client.set_tag(parent_run_id, f"plots.{name}", f"not made: {exc}")
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax
        client.log_figure(parent_run_id, fig, f"plots/{name}.png")
        plt.close(fig)
