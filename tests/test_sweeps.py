"""Sweeps: spec validation, a smoke sweep through a real `ray job submit`, the registry alias, resume.

Everything runs against the real local stack (Ray head with token auth + MLflow
server); trials train the tiny ADP cVAE on ``adp_shards`` in one-worker Ray
Train groups. References: the MLflow runs themselves (children vs Tune's
sampled configs, the parent's best vs the children's final figures), and
hand-chosen figures for the registry decisions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from finegrain.platform.services.tracking import Tracker
from finegrain.sweeps.spec import SweepSpec, SweepSpecError

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMOKE = REPO / "sweeps" / "adp_cvae_smoke.yaml"


def _spec_file(tmp_path: Path, **changes) -> Path:
    """The shipped smoke spec with ``changes`` (its base made absolute), written to tmp_path."""
    data = yaml.safe_load(SMOKE.read_text())
    data["base"] = str((SMOKE.parent / data["base"]).resolve())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = tmp_path / f"spec-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("changes,key", [
    ({"search_space": {"model.no_such_field": {"type": "uniform", "low": 0, "high": 1}}},
     "search_space.model.no_such_field"),
    ({"search_space": {"model.learning_rate": {"type": "loguniform", "low": 0.0, "high": 1e-3}}},
     "search_space.model.learning_rate"),
    ({"search_space": {"model.n_grid": {"type": "int", "low": 12, "high": 8}}}, "search_space.model.n_grid"),
    ({"search_space": {"model.sigma": {"type": "gaussian", "low": 0.1, "high": 0.2}}}, "search_space.model.sigma"),
    ({"search_space": {"model.sigma": {"type": "uniform", "low": 0.1, "high": 5.0}}}, "search_space.model.sigma"),
    ({"search_space": {"model.beta_schedule": {"type": "choice", "values": []}}},
     "search_space.model.beta_schedule"),
    ({"asha": {"grace_period": 60, "max_t": 50}}, "asha"),
    ({"metric": "train_total"}, "metric"),
    ({"resources": {"num_workers": 0}}, "resources.num_workers"),
    ({"colour": "blue"}, "colour"),
    ({"family": "gan"}, "family"),
])
def test_bad_specs_are_refused_naming_the_key(tmp_path, changes, key):
    with pytest.raises(SweepSpecError, match=f"key '{key}"):  # the key, or a field of it
        SweepSpec.load(_spec_file(tmp_path, **changes))


def test_shipped_specs_validate_and_cover_the_required_space():
    required = {"model.t_lambda0", "model.n_lambda", "model.lambda_final", "model.beta_schedule",
                "model.beta_n_cycles", "model.beta_cycle_length", "model.beta_k", "model.beta_tau", "model.n_grid",
                "model.grid_width", "model.sigma", "model.d_latent", "model.learning_rate"}
    for name in ("adp_cvae_smoke", "adp_cvae", "chignolin_cvae"):
        spec = SweepSpec.load(REPO / "sweeps" / f"{name}.yaml")
        assert required <= set(spec.search_space), name
        # every end of every range builds a valid training config of the family
        for key, dist in spec.search_space.items():
            for value in dist.extremes():
                assert spec.trial_config({key: value}).flat()[key] == str(value)


def test_impossible_resources_are_refused_before_anything_starts(stack, adp_shards, tmp_path):
    from mlflow import MlflowClient

    spec_path = _spec_file(tmp_path, name="too-big", resources={"num_workers": 2, "cpus_per_worker": 64})
    env = {**os.environ, **stack.client_env(), "FINEGRAIN_HOME": stack.home}
    r = subprocess.run([str(BIN / "finegrain"), "sweep", str(spec_path), "--set", f"data.shards={adp_shards}"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "key 'resources'" in r.stderr and "128 CPUs" in r.stderr, r.stderr[-2000:]
    spec = SweepSpec.load(spec_path)
    assert MlflowClient(stack.mlflow_uri).get_experiment_by_name(spec.experiment_name) is None
    assert not (Path(stack.home) / "sweeps" / "too-big").exists()
    with pytest.raises(SweepSpecError, match="resources.gpus_per_worker"):
        SweepSpec.load(_spec_file(tmp_path, resources={"num_workers": 1, "gpus_per_worker": 1})).check_resources(
            {"CPU": 2.0})


# ----------------------------------------------------------------------------- a real sweep job
def _children(client, parent):
    exp = client.get_run(parent.info.run_id).info.experiment_id
    return client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


def _parent(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.sweep != ''",
                              order_by=["attributes.start_time DESC"])
    return runs[0]


@pytest.fixture(scope="module")
def submitted_sweep(stack, adp_shards):
    """The shipped smoke sweep (3 trials), submitted with `ray job submit --working-dir .` and the stack's token."""
    from mlflow import MlflowClient

    env = {**os.environ, **stack.client_env()}  # RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH, ...
    r = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", stack.dashboard_url, "--working-dir", ".", "--",
         "finegrain", "sweep", "sweeps/adp_cvae_smoke.yaml", "--set", f"data.shards={adp_shards}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    client = MlflowClient(stack.mlflow_uri)
    return client, _parent(client, "sweep-adp-cvae-smoke"), r.stdout


@pytest.mark.slow
def test_smoke_sweep_job_logs_parent_children_and_registers_the_best(submitted_sweep):
    client, parent, out = submitted_sweep
    assert "registry: cvae-adp-smoke v1 -> champion" in out
    children = _children(client, parent)
    assert len(children) == 3
    assert parent.data.params["space.model.sigma"] == "uniform[0.025, 0.05]"
    assert parent.data.params["num_samples"] == "3"
    finals = {}
    for c in children:
        p = c.data.params
        assert p["model.preset"] == "smoke" and p["training.num_workers"] == "1"
        assert 20 <= int(p["model.t_lambda0"]) <= 45 and p["model.beta_schedule"] in ("cyclic", "constant")
        assert 0.025 <= float(p["model.sigma"]) <= 0.05 and c.data.tags["dataset_digest"]
        m = c.data.metrics
        assert "train_total" in m and "val_total" in m
        # the sweep metric: reconstruction terms only, free of each trial's lambda/beta schedule
        assert m["val_recon"] == pytest.approx(m["val_aa"] + m["val_cg"] + m["val_edm"], rel=1e-9)
        if c.info.status == "FINISHED":  # ASHA may stop one at step 25: KILLED, no model
            finals[c.info.run_id] = m["val_recon"]
    best = min(finals, key=finals.get)
    assert parent.info.status == "FINISHED" and parent.data.tags["best_run_id"] == best
    assert parent.data.metrics["best_val_recon"] == pytest.approx(finals[best])
    mv = client.get_model_version_by_alias("cvae-adp-smoke", "champion")
    assert mv.run_id == best and float(mv.tags["metric.val_recon"]) == pytest.approx(finals[best])
    assert parent.data.tags["registry.decision"] == "champion"
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/param_importances.png"} <= arts
    assert "sweep_spec.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.slow
def test_registry_alias_moves_only_on_improvement(submitted_sweep, stack):
    from finegrain.platform.services.registry import register_and_promote

    client, parent, _ = submitted_sweep
    uris = [f"runs:/{c.info.run_id}/model" for c in _children(client, parent) if c.info.status == "FINISHED"]
    name = f"registry-test-{uuid.uuid4().hex[:6]}"
    steps = [(2.0, "champion", "1"), (3.0, "challenger", "1"), (2.0, "challenger", "1"), (1.0, "champion", "4")]
    for k, (value, alias, champion) in enumerate(steps):
        p = register_and_promote(name, uris[k % len(uris)], "val_total", "min", value, Tracker(stack.mlflow_uri))
        assert (p.version, p.alias) == (str(k + 1), alias)
        assert client.get_model_version_by_alias(name, "champion").version == champion
    assert client.get_model_version_by_alias(name, "challenger").version == "3"
    # mode max: a larger figure wins
    p = register_and_promote(name, uris[0], "val_total", "max", 5.0, Tracker(stack.mlflow_uri))
    assert p.alias == "champion" and p.champion_value == 1.0
    # figures measured on other data are not compared: a better number on other data stays challenger
    other = f"registry-test-{uuid.uuid4().hex[:6]}"
    register_and_promote(other, uris[0], "val_total", "min", 2.0, Tracker(stack.mlflow_uri), tags={"data_hash": "aaaa"})
    p = register_and_promote(other, uris[0], "val_total", "min", 0.5, Tracker(stack.mlflow_uri), tags={"data_hash": "bbbb"})
    assert (p.alias, p.comparable) == ("challenger", False)
    assert client.get_model_version_by_alias(other, "champion").version == "1"


def _free_cpus() -> float:
    import ray

    return ray.available_resources().get("CPU", 0.0)


def _plant_leftover(stack, namespace: str, cpus: float) -> None:
    """What a driver killed mid-sweep can leave: an actor of the sweep's namespace, holding ``cpus``, that
    outlives its (dead) job. Detached, so Ray's own end-of-job clean-up leaves it to ``--resume``."""
    code = ("import ray\n"
            "from finegrain.platform.services.stack import connect_ray\n"
            f"connect_ray(namespace={namespace!r})\n"
            f"@ray.remote(num_cpus={cpus})\n"
            "class LeftoverController:\n"
            "    def ping(self):\n"
            "        return 1\n"
            "a = LeftoverController.options(lifetime='detached').remote()\n"
            "ray.get(a.ping.remote())\n")
    env = {**os.environ, **stack.client_env(), "FINEGRAIN_HOME": stack.home}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_trial_short_of_cpus_fails_in_bounded_time_naming_the_holder(stack):
    """wait_for_cpus: every CPU held by one actor -> a RuntimeError within the bound, naming that actor."""
    import ray

    from finegrain.sweeps.leftovers import wait_for_cpus

    total = ray.cluster_resources()["CPU"]

    @ray.remote(num_cpus=total)
    class CpuHog:
        def ping(self):
            return 1

    hog = CpuHog.remote()
    ray.get(hog.ping.remote())
    try:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"trial T waited 3 s for 1 free CPUs.*actor \S*CpuHog {.CPU.: 2.0}"):
            wait_for_cpus(1, 3, "trial T")
        assert time.monotonic() - t0 < 10
    finally:
        ray.kill(hog)
    deadline = time.monotonic() + 30
    while _free_cpus() < total and time.monotonic() < deadline:
        time.sleep(0.5)
    wait_for_cpus(total, 1, "after the hog")  # freed: returns at once


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_interrupted_sweep_resumes_without_duplicate_children(stack, adp_shards, tmp_path):
    """Ctrl-C while the second trial trains (the first one FINISHED): every CPU comes back and nothing of the
    sweep stays alive; a leftover of a killed driver (planted) is stopped by --resume, which then finishes
    the sweep with one child run per trial, leaving no actor or placement group behind."""
    import ray
    from mlflow import MlflowClient
    from ray.util.state import list_placement_groups

    from finegrain.sweeps.leftovers import find_leftovers, sweep_namespace

    name = "resume-smoke"
    spec_path = _spec_file(tmp_path, name=name, experiment="sweep-resume-smoke", register_as=None,
                           asha={"grace_period": 100, "reduction_factor": 2, "max_t": 100})  # no rung: ASHA stops none
    env = {**os.environ, **stack.client_env(), "FINEGRAIN_HOME": stack.home}
    cmd = [str(BIN / "finegrain"), "sweep", str(spec_path), "--set", f"data.shards={adp_shards}"]
    client = MlflowClient(stack.mlflow_uri)
    total = ray.cluster_resources()["CPU"]
    assert _free_cpus() == total  # nothing else of the suite holds CPUs now
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline:  # the defined point: trial 1 FINISHED, trial 2 RUNNING
            exp = client.get_experiment_by_name("sweep-resume-smoke")
            runs = exp and client.search_runs([exp.experiment_id], "tags.mlflow.parentRunId != ''")
            status = sorted(r.info.status for r in runs or [])
            if ("FINISHED" in status and "RUNNING" in status) or proc.poll() is not None:
                break
            time.sleep(1)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    first = (tmp_path / "first.log").read_text()
    assert proc.returncode != 0 and "--resume" in first, first[-3000:]
    # nothing of the interrupted sweep holds resources: all CPUs free again within a bounded time
    deadline = time.monotonic() + 60
    while _free_cpus() < total and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _free_cpus() == total, first[-3000:]
    assert find_leftovers(sweep_namespace(name)) == []

    _plant_leftover(stack, sweep_namespace(name), cpus=1)
    assert _free_cpus() == total - 1 and len(find_leftovers(sweep_namespace(name))) == 1
    t0 = time.monotonic()
    r = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    resume_s = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "stopped 1 leftover(s) of an earlier driver" in r.stdout and "LeftoverController" in r.stdout
    assert resume_s < 400, resume_s  # two trials of 50 steps; a starved trial would wait for ever
    print(f"resume wall time {resume_s:.1f} s")
    parent = _parent(client, "sweep-resume-smoke")
    children = _children(client, parent)
    names = [c.info.run_name for c in children]
    assert len(children) == 3 and len(set(names)) == 3, names
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 3
    assert parent.info.status == "FINISHED"
    # the finished sweep leaves no actor of its namespace and no placement group alive
    deadline = time.monotonic() + 60
    while (find_leftovers(sweep_namespace(name)) or _free_cpus() < total) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert find_leftovers(sweep_namespace(name)) == []
    pgs = list_placement_groups(address=ray.get_runtime_context().gcs_address, detail=True)
    assert [p.placement_group_id for p in pgs if p.state != "REMOVED"] == []
    assert _free_cpus() == total


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stopping_a_submitted_sweep_job_frees_every_cpu(stack, adp_shards, tmp_path):
    """`ray job stop` (SIGTERM to the job's driver) while a trial trains: the job ends STOPPED, and within a
    bounded time every CPU is free and no actor of the sweep's namespace is alive."""
    import ray
    from mlflow import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient

    from finegrain.platform.services.stack import use_token
    from finegrain.sweeps.leftovers import find_leftovers, sweep_namespace

    name = "stop-smoke"
    spec_path = _spec_file(tmp_path, name=name, experiment="sweep-stop-smoke", register_as=None,
                           asha={"grace_period": 100, "reduction_factor": 2, "max_t": 100})
    client = MlflowClient(stack.mlflow_uri)
    total = ray.cluster_resources()["CPU"]
    use_token(stack)
    jobs = JobSubmissionClient(stack.dashboard_url)
    job = jobs.submit_job(entrypoint=f"{BIN / 'finegrain'} sweep {spec_path} --set data.shards={adp_shards}",
                          runtime_env={"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "60"}})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # a trial's child run has started: its Train run is under way
        exp = client.get_experiment_by_name("sweep-stop-smoke")
        if exp and client.search_runs([exp.experiment_id], "tags.mlflow.parentRunId != '' and "
                                                           "attributes.status = 'RUNNING'"):
            break
        assert jobs.get_job_status(job) in (JobStatus.PENDING, JobStatus.RUNNING), jobs.get_job_logs(job)[-3000:]
        time.sleep(1)
    t0 = time.monotonic()
    jobs.stop_job(job)
    while jobs.get_job_status(job) not in (JobStatus.STOPPED, JobStatus.FAILED, JobStatus.SUCCEEDED):
        assert time.monotonic() - t0 < 120
        time.sleep(1)
    assert jobs.get_job_status(job) == JobStatus.STOPPED
    deadline = time.monotonic() + 60
    while (_free_cpus() < total or find_leftovers(sweep_namespace(name))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _free_cpus() == total, jobs.get_job_logs(job)[-3000:]
    assert find_leftovers(sweep_namespace(name)) == []
    print(f"job stopped and every CPU free {time.monotonic() - t0:.1f} s after `ray job stop`")
