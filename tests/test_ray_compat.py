"""The private-Ray-API adapters (platform/services/ray_compat.py) against real Ray, and the public APIs
that replaced the other private calls (the Tune-session check).

Each adapter's effect is checked through a public API, and the installed Ray must be one the adapters
were verified with: moving Ray out of ``VERIFIED_RAY`` fails here first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finegrain.platform.services.ray_compat import VERIFIED_RAY, kill_actor_via_gcs, ray_version_verified


def test_installed_ray_is_a_verified_version():
    import ray

    assert ray_version_verified(), (f"Ray {ray.__version__} is outside the range the private-API adapters were "
                                    f"verified with ({VERIFIED_RAY}): rerun tests/test_ray_compat.py, then widen "
                                    "VERIFIED_RAY and the ray bound in pyproject.toml")
    low, high = VERIFIED_RAY
    assert ray_version_verified(low) and not ray_version_verified(high)


# A process that used Ray's token loader before it knew the stack's token (the CLI imports Ray, then reads the
# stack state): after setting RAY_AUTH_* and reload_auth_token() it reaches the dashboard and the GCS.
_RELOAD_SCRIPT = r"""
import json, os, sys
import ray
from ray.job_submission import JobSubmissionClient
from finegrain.platform.services.ray_compat import reload_auth_token

dashboard, gcs, token_path = sys.argv[1:4]
out = {}
try:  # no token yet: refused, and the loader has now looked for a token
    JobSubmissionClient(dashboard).list_jobs()
    out["before"] = "ok"
except Exception as exc:
    out["before"] = type(exc).__name__
os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_path})
try:  # the environment alone (not asserted: shows whether Ray still caches)
    JobSubmissionClient(dashboard).list_jobs()
    out["env_only"] = "ok"
except Exception as exc:
    out["env_only"] = type(exc).__name__
reload_auth_token()
out["jobs"] = type(JobSubmissionClient(dashboard).list_jobs()).__name__
ray.init(address=gcs, log_to_driver=False)
out["gcs"] = ray.get_runtime_context().gcs_address
out["cpus"] = ray.cluster_resources().get("CPU")
ray.shutdown()
print("RESULT " + json.dumps(out))
"""


def test_reload_auth_token_makes_a_running_process_present_the_stack_token(stack):
    import ray

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAY_API_SERVER"))}
    r = subprocess.run([sys.executable, "-c", _RELOAD_SCRIPT, stack.dashboard_url, stack.ray_address,
                        stack.token_path], env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    print(out)
    assert out["before"] != "ok"  # the dashboard refuses a process without the token (so "jobs" means it)
    assert out["jobs"] == "list"
    assert out["gcs"] == ray.get_runtime_context().gcs_address  # the same cluster as this process
    assert out["cpus"] == ray.cluster_resources().get("CPU")


def _actor_state(actor_id: str) -> str | None:
    import ray
    from ray.util.state import get_actor

    a = get_actor(actor_id, address=ray.get_runtime_context().gcs_address)
    return a.state if a is not None else None


def test_kill_actor_via_gcs_kills_a_restartable_unnamed_actor_for_good(stack):
    import ray

    @ray.remote(num_cpus=0, max_restarts=5)
    class Sleeper:
        def ids(self):
            return os.getpid(), ray.get_runtime_context().get_actor_id()

    a = Sleeper.remote()
    pid, actor_id = ray.get(a.ids.remote())
    assert _actor_state(actor_id) == "ALIVE"
    kill_actor_via_gcs(actor_id, ray.get_runtime_context().gcs_address)
    deadline = time.monotonic() + 30
    while _actor_state(actor_id) != "DEAD" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _actor_state(actor_id) == "DEAD"
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(a.ids.remote(), timeout=30)
    time.sleep(1.0)  # no restart (max_restarts=5 would otherwise bring it back)
    assert _actor_state(actor_id) == "DEAD"
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]


def test_kill_actor_via_gcs_refuses_an_unknown_actor(stack):
    import ray

    with pytest.raises(RuntimeError, match="actor 0+: the GCS refused"):
        kill_actor_via_gcs("00" * 16, ray.get_runtime_context().gcs_address)


def test_in_tune_session_is_true_only_inside_a_trial(stack, tmp_path):
    """``ray.tune.get_context()`` (public) tells a trial's process from any other, as the private
    ``_in_tune_session`` did; ``tune_callbacks`` follows it."""
    from ray import tune

    from finegrain.trainables.tune_hooks import in_tune_session, tune_callbacks

    assert in_tune_session() is False and tune_callbacks() == []

    def trial(config):
        tune.report({"inside": int(in_tune_session()), "callbacks": len(tune_callbacks())})

    results = tune.Tuner(tune.with_resources(trial, {"cpu": 0.1}),
                         run_config=tune.RunConfig(storage_path=str(tmp_path), name="in-tune-session",
                                                   verbose=0)).fit()
    assert not results.errors, results.errors
    assert [(r.metrics["inside"], r.metrics["callbacks"]) for r in results] == [(1, 1)]
    assert in_tune_session() is False
