"""The local stack, the CLI's use of it, and the stdlib-shadowing trap."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finegrain.platform.services.stack import LocalStack, _session_pids

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PRINT_PLATFORM = (
    "import platform, ray; platform.python_version(); print('DRIVER', platform.__file__); ray.init(); "
    "f = ray.remote(lambda: __import__('platform').__file__); print('WORKER', ray.get(f.remote()))"
)


def _stdlib_platform() -> str:
    import platform

    return platform.__file__


def test_bare_platform_is_the_stdlib_from_the_repo_root():
    assert not (REPO / "platform" / "__init__.py").exists()
    assert not (REPO / "datasets" / "__init__.py").exists()
    r = subprocess.run([sys.executable, "-c", "import platform; platform.python_version(); print(platform.__file__)"],
                       cwd=REPO, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == _stdlib_platform()
    # python -m from the repo root (sys.path[0] is the root): the CLI, which imports rich/typer
    # (both import the stdlib platform), still works
    r = subprocess.run([sys.executable, "-m", "finegrain.platform.apps.cli", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "simulate" in r.stdout


def test_job_submitted_with_working_dir_sees_the_stdlib(stack):
    env = {**os.environ, **stack.client_env()}
    r = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", stack.dashboard_url, "--working-dir", ".", "--",
         "python", "-c", PRINT_PLATFORM],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines() if line.startswith(("DRIVER ", "WORKER ")))
    assert lines == {"DRIVER": _stdlib_platform(), "WORKER": _stdlib_platform()}


def test_jobs_api_refuses_requests_without_the_token(stack):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{stack.dashboard_url}/api/jobs/", timeout=10)
    assert err.value.code in (401, 403)
    token = Path(stack.token_path).read_text().strip()
    req = urllib.request.Request(f"{stack.dashboard_url}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def test_cli_status_and_env_find_the_stack(stack, stack_home, tmp_path):
    env = {**os.environ, "FINEGRAIN_HOME": str(stack_home)}
    r = subprocess.run([str(BIN / "finegrain"), "stack", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and stack.mlflow_uri in r.stdout and stack.dashboard_url in r.stdout
    r = subprocess.run([str(BIN / "finegrain"), "stack", "env"], env=env, capture_output=True, text=True, timeout=60)
    assert f"export RAY_AUTH_TOKEN_PATH={stack.token_path}" in r.stdout
    # another state folder has no stack: status exits non-zero, other commands say so clearly
    env["FINEGRAIN_HOME"] = str(tmp_path / "none")
    r = subprocess.run([str(BIN / "finegrain"), "stack", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "not running" in r.stdout
    r = subprocess.run([str(BIN / "finegrain"), "simulate", "adp", "--out", str(tmp_path / "x")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not running" in r.stderr and "finegrain stack up" in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_stack_up_is_idempotent_and_down_leaves_no_process(tmp_path):
    local = LocalStack(tmp_path / "home")
    st = local.up(dashboard_port=28365, mlflow_port=25100, num_cpus=1)
    try:
        again = local.up()
        assert (again.ray.pid, again.mlflow.pid) == (st.ray.pid, st.mlflow.pid)
        saved = json.loads((tmp_path / "home" / "stack.json").read_text())
        assert saved["mlflow_uri"] == st.mlflow_uri and st.mlflow_uri.startswith("http://127.0.0.1:")
        sessions = [st.ray.pid, st.mlflow.pid]
        assert all(_session_pids(s) for s in sessions)
        assert local.status() == {"ray": True, "mlflow": True}
    finally:
        stopped = local.down()
    assert sorted(stopped) == ["mlflow", "ray"]
    assert [p for s in sessions for p in _session_pids(s)] == []
    assert local.status() == {"ray": False, "mlflow": False}
    assert local.down() == []  # idempotent
