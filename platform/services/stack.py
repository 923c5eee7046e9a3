"""The local stack: a Ray head and an MLflow tracking server on 127.0.0.1.

State (PIDs, ports, URIs, logs, the Ray auth token) lives in one folder,
``$FINEGRAIN_HOME`` or ``./.finegrain``. ``up`` is idempotent; ``down`` stops
only the processes ``up`` started (each service runs in its own session, and
only processes of that session are signalled). Ray runs with token
authentication (``RAY_AUTH_MODE=token``) and a per-stack token file; every
client finegrain starts is given ``RAY_AUTH_TOKEN_PATH``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from finegrain.platform.science.errors import FinegrainError
from finegrain.platform.services.ray_compat import reload_auth_token

__all__ = ["LocalStack", "StackState", "StackNotRunning", "stack_home", "connect_ray", "use_token", "tracking_uri"]

STATE_FILE = "stack.json"


class StackNotRunning(FinegrainError, RuntimeError):
    """The local stack is not up (or its state folder is stale)."""


def stack_home(home: str | Path | None = None) -> Path:
    """The state folder: ``home``, else ``$FINEGRAIN_HOME``, else ``./.finegrain``."""
    return Path(home or os.environ.get("FINEGRAIN_HOME") or ".finegrain").resolve()


@dataclass
class Service:
    pid: int
    start_time: int  # /proc/<pid>/stat field 22, guards against PID reuse
    log: str


@dataclass
class StackState:
    home: str
    ray_address: str  # GCS address, 127.0.0.1:PORT
    dashboard_url: str  # also the Ray job submission address
    mlflow_uri: str
    token_path: str
    ray_temp_dir: str
    ray: Service
    mlflow: Service

    def client_env(self) -> dict[str, str]:
        """Environment for a client of this stack (Ray jobs CLI, ray.init, MLflow)."""
        return {
            "RAY_ADDRESS": self.ray_address,
            "RAY_API_SERVER_ADDRESS": self.dashboard_url,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.token_path,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
        }


def _proc_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # zombie: exited
        return None
    return int(fields[19])


def _alive(svc: Service) -> bool:
    return _proc_start_time(svc.pid) == svc.start_time


def _session_pids(sid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(p.name))
    return out


def _free_port(preferred: int | None = None) -> int:
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free TCP port on 127.0.0.1")


def _http_ok(url: str, token: str | None = None, timeout: float = 2.0) -> bool:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return 200 <= r.status < 300
    except Exception:
        return False


class LocalStack:
    """Start, inspect and stop the local Ray + MLflow stack of one state folder."""

    def __init__(self, home: str | Path | None = None):
        self.home = stack_home(home)

    @property
    def state_path(self) -> Path:
        return self.home / STATE_FILE

    def state(self) -> StackState | None:
        """The recorded state, or None when nothing was started from this folder."""
        if not self.state_path.is_file():
            return None
        d = json.loads(self.state_path.read_text())
        d["ray"], d["mlflow"] = Service(**d["ray"]), Service(**d["mlflow"])
        return StackState(**d)

    def status(self) -> dict[str, bool]:
        st = self.state()
        if st is None:
            return {"ray": False, "mlflow": False}
        token = Path(st.token_path).read_text().strip() if Path(st.token_path).is_file() else None
        return {
            "ray": _alive(st.ray) and _http_ok(f"{st.dashboard_url}/api/version", token),
            "mlflow": _alive(st.mlflow) and _http_ok(f"{st.mlflow_uri}/health"),
        }

    def require(self) -> StackState:
        """The state of a running stack, or StackNotRunning with what to do."""
        st = self.state()
        if st is None or not all(self.status().values()):
            raise StackNotRunning(f"the finegrain stack ({self.home}) is not running: start it with `finegrain stack up`")
        return st

    def up(self, dashboard_port: int = 8265, mlflow_port: int = 5000, num_cpus: int | None = None,
           timeout_s: float = 120.0) -> StackState:
        """Start what is not running yet; return the state.

        Ports: the preferred ones when free, else any free port (Ray keeps
        10002-19999 for its workers, so avoid preferring ports there).
        """
        st = self.state()
        if st is not None and all(self.status().values()):
            return st
        if st is not None:
            self.down()
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        token_path = self.home / "ray_auth_token"
        if not token_path.is_file():
            token_path.write_text(secrets.token_hex(32))
            token_path.chmod(0o600)
        bindir = str(Path(sys.executable).parent)
        mlflow_port = _free_port(mlflow_port)
        mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
        (self.home / "mlflow" / "artifacts").mkdir(parents=True, exist_ok=True)
        mlflow_svc = self._spawn(
            [
                f"{bindir}/mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                "--backend-store-uri", f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}",
                "--artifacts-destination", str(self.home / "mlflow" / "artifacts"),
                "--workers", "1",
            ],
            "mlflow",
            {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        gcs_port = _free_port()
        dashboard_port = _free_port(dashboard_port)
        # Unix socket paths must stay short: Ray's temp dir goes under /tmp.
        temp_dir = f"/tmp/finegrain-{hashlib.sha1(str(self.home).encode()).hexdigest()[:8]}"
        cmd = [
            f"{bindir}/ray", "start", "--head", "--block", f"--port={gcs_port}",
            "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
            f"--temp-dir={temp_dir}", "--disable-usage-stats",
            # fixed defaults (10001, 52365) would collide with a second stack
            f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
        ]
        if num_cpus is not None:
            cmd.append(f"--num-cpus={num_cpus}")
        env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token_path),
            "MLFLOW_TRACKING_URI": mlflow_uri,
            "FINEGRAIN_HOME": str(self.home),
            # Ray's own actors (e.g. Train's placement-group cleaner) resolve "auto" through this:
            # without it a second Ray instance on the machine makes them fail
            "RAY_ADDRESS": f"127.0.0.1:{gcs_port}",
            "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "2",
        }
        ray_svc = self._spawn(cmd, "ray", env)
        st = StackState(
            home=str(self.home),
            ray_address=f"127.0.0.1:{gcs_port}",
            dashboard_url=f"http://127.0.0.1:{dashboard_port}",
            mlflow_uri=mlflow_uri,
            token_path=str(token_path),
            ray_temp_dir=temp_dir,
            ray=ray_svc,
            mlflow=mlflow_svc,
        )
        self.state_path.write_text(json.dumps(asdict(st), indent=1))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status()
            if all(status.values()):
                return st
            for name, svc in (("ray", ray_svc), ("mlflow", mlflow_svc)):
                if not _alive(svc):
                    self.down()
                    raise RuntimeError(f"{name} exited during start-up; see {svc.log}")
            time.sleep(0.5)
        self.down()
        raise RuntimeError(f"stack did not come up within {timeout_s:.0f} s; see logs in {self.home / 'logs'}")

    def _spawn(self, cmd: list[str], name: str, extra_env: dict[str, str]) -> Service:
        log = self.home / "logs" / f"{name}.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **extra_env}, start_new_session=True, cwd=self.home)
        start = None
        for _ in range(50):
            start = _proc_start_time(proc.pid)
            if start is not None:
                break
            time.sleep(0.01)
        return Service(pid=proc.pid, start_time=start or -1, log=str(log))

    def down(self, timeout_s: float = 20.0) -> list[str]:
        """Stop the services this folder started; return the names stopped."""
        st = self.state()
        stopped = []
        if st is None:
            return stopped
        for name, svc in (("ray", st.ray), ("mlflow", st.mlflow)):
            if not _alive(svc):
                continue
            sid = svc.pid  # start_new_session: the leader's pid is the session id
            # The leader first (`ray start --block` stops its own children), then
            # whatever is left of the session, then SIGKILL for stragglers.
            for targets, sig, wait in (([sid], signal.SIGTERM, 0.6), (None, signal.SIGTERM, 0.3), (None, signal.SIGKILL, 0.1)):
                for pid in targets or _session_pids(sid):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + wait * timeout_s
                while _session_pids(sid) and time.monotonic() < deadline:
                    time.sleep(0.2)
                if not _session_pids(sid):
                    break
            stopped.append(name)
        self.state_path.unlink(missing_ok=True)
        return stopped


def connect_ray(home: str | Path | None = None, namespace: str | None = None):
    """Connect this process to Ray: the current job's cluster, or the local stack.

    namespace : the Ray namespace of this driver's job (None: an anonymous one);
        ignored when Ray is already initialised here.

    Inside a Ray job (``RAY_ADDRESS`` set by the job supervisor) or when Ray is
    already initialised, that connection is used; otherwise the stack's state
    gives the address and the auth token.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True, namespace=namespace)
        return
    st = LocalStack(home).require()
    use_token(st)
    ray.init(address=st.ray_address, log_to_driver=True, namespace=namespace)


def use_token(st: StackState) -> None:
    """Make this process present the stack's Ray auth token.

    Ray's C++ token loader caches the token on first use (e.g. at ``import
    ray``), so setting the environment is followed by a reset of that cache
    (:func:`~finegrain.platform.services.ray_compat.reload_auth_token`: Ray has
    no public API for it).
    """

    os.environ.update({k: v for k, v in st.client_env().items() if k.startswith("RAY_AUTH")})
    os.environ.pop("RAY_AUTH_TOKEN", None)
    reload_auth_token()


def tracking_uri(home: str | Path | None = None) -> str:
    """The MLflow tracking URI: ``$MLFLOW_TRACKING_URI`` (set inside jobs) or the one the stack recorded.

    A lookup, not a check: no process or HTTP probe (``Tracker.connect`` checks the server once, where a
    command starts). StackNotRunning when neither is there.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    st = LocalStack(home).state()
    if st is None:
        raise StackNotRunning(f"the finegrain stack ({stack_home(home)}) is not running: start it with "
                              f"`finegrain stack up`")
    return st.mlflow_uri
