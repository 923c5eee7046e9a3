"""Serve a backmapper over HTTP with Ray Serve: the driver side, settings and the client.

``serve_model("models:/NAME@champion", port=8000)`` starts Serve on the
running stack (HTTP on 127.0.0.1 unless told otherwise) with one FastAPI
application, named ``finegrain``, at ``/``; it returns the base URL once
``GET /healthz`` answers. :func:`shutdown` stops Serve. ``finegrain serve``
and ``serve deploy cluster/serve_backmap.yaml`` (import path
``finegrain.platform.apps.serving:build_app``, arguments = :class:`ServeSettings`)
start the same application.

Endpoints (OpenAPI at ``/docs``; see :mod:`finegrain.platform.apps.serving_app`):
``POST /backmap`` (JSON), ``POST /backmap/file`` (multipart upload of a CG
trajectory + topology, any mdtraj format; an AA file back), ``GET /model``,
``GET /model/topology.pdb``, ``GET /healthz``.

Model updates: with ``reload`` each replica checks the registry alias every
``poll_s`` seconds and, when it moved, loads the new version and swaps it in;
requests already running finish on the version they started with.

Client: :func:`backmap_remote` (arrays over JSON) and
:func:`backmap_file_remote` (files, as ``finegrain backmap --endpoint``).
"""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack
from pathlib import Path

from finegrain.platform.apps.model_refs import model_info, resolve_model
from finegrain.platform.apps.serving_app import BackmapServer
from finegrain.platform.apps.serving_config import HTTP_HOST, HTTP_PORT, ModelRef, ServeSettings
from finegrain.platform.science.errors import FinegrainError
from finegrain.platform.services.stack import LocalStack, connect_ray, tracking_uri

__all__ = [
    "APP_NAME", "ServeSettings", "ModelRef", "EndpointError", "resolve_model", "model_info", "build_app",
    "serve_model", "serve_http_address", "shutdown", "wait_ready", "backmap_remote", "backmap_file_remote",
    "free_port",
]

APP_NAME = "finegrain"


class EndpointError(FinegrainError, ValueError):
    """A backmapping server that cannot be reached, or that refused the request (message from the server)."""


def build_app(args):
    """Serve application builder (``import_path: finegrain.platform.apps.serving:build_app``).

    ``args``: a :class:`ServeSettings` or its dict (the ``args:`` of a Serve config).
    """
    settings = args if isinstance(args, ServeSettings) else ServeSettings.model_validate(dict(args or {}))

    return BackmapServer.options(
        num_replicas=settings.replicas,
        ray_actor_options={"num_cpus": settings.cpus_per_replica,
                           "runtime_env": {"env_vars": {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}}},
        max_ongoing_requests=settings.max_ongoing_requests,
    ).bind(settings.model_dump())


def serve_model(model_uri: str, host: str = HTTP_HOST, port: int = HTTP_PORT, replicas: int = ServeSettings.model_fields["replicas"].default, *,
                timeout_s: float = 180.0, **settings) -> str:
    """Serve ``model_uri`` on the running stack; returns the base URL (``http://HOST:PORT``).

    ``settings``: further :class:`ServeSettings` fields (``reload``, ``poll_s``,
    ``max_frames``, ``max_batch_size``, ...). Replaces a running ``finegrain``
    application. Serve's HTTP address is fixed while Serve runs: asking for
    another one raises ValueError (call :func:`shutdown` first).
    """

    if not 0 < port < 65536:
        raise ValueError(f"port: expected 1-65535, got {port}")
    if Path(model_uri).is_dir():  # replicas run elsewhere: give them an absolute path
        model_uri = str(Path(model_uri).resolve())
    elif not model_uri.startswith(("models:/", "runs:/")):
        raise FileNotFoundError(f"model: {model_uri} is neither a model folder nor a model URI")
    cfg = ServeSettings(model=model_uri, replicas=replicas,
                        tracking_uri=settings.pop("tracking_uri", None) or tracking_uri(), **settings)
    resolve_model(cfg.model, cfg.tracking_uri)  # fail here, not in a replica, on an unknown model
    connect_ray()
    from ray import serve

    serve.start(http_options={"host": host, "port": port})  # a running Serve keeps its address (Ray only warns)
    running_host, running_port = serve_http_address()
    if (running_host, running_port) != (host, port):
        raise ValueError(f"port: Serve already listens on {running_host}:{running_port} in this Ray cluster "
                         "(stop it first: `finegrain serve --stop`)")
    serve.run(build_app(cfg), name=APP_NAME, route_prefix="/")
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    wait_ready(base, timeout_s)
    return base


def serve_http_address(timeout_s: float = 30.0) -> tuple[str, int]:
    """``(host, port)`` the running Serve's HTTP proxies listen on, in the stack's Ray cluster.

    Public API: Serve's REST API, ``GET /api/serve/applications/`` on the Ray
    dashboard (its ``http_options`` is a ``ray.serve.schema.HTTPOptionsSchema``),
    with the stack's auth token. (``serve.status()`` leaves the HTTP options out.)
    """
    import requests

    st = LocalStack().require()
    token = Path(st.token_path).read_text().strip()
    r = requests.get(f"{st.dashboard_url}/api/serve/applications/", headers={"Authorization": f"Bearer {token}"},
                     timeout=timeout_s)
    r.raise_for_status()
    opts = r.json().get("http_options") or {}
    return opts.get("host", "0.0.0.0"), int(opts.get("port", 8000))  # HTTPOptionsSchema's defaults


def shutdown() -> None:
    """Stop Serve (every application and its HTTP proxy) on the stack's Ray cluster."""
    connect_ray()
    from ray import serve

    serve.shutdown()


def wait_ready(base_url: str, timeout_s: float = 60.0) -> dict:
    """Wait until ``GET /healthz`` answers 200; returns its JSON."""
    import requests

    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{base_url}/healthz", timeout=5)
            if r.status_code == 200:
                return r.json()
            last = f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(0.25)
    raise TimeoutError(f"{base_url}/healthz did not answer within {timeout_s:.0f} s ({last})")


def _post(url: str, timeout_s: float, **kwargs):
    import requests

    try:
        r = requests.post(url, timeout=timeout_s, **kwargs)
    except requests.RequestException as exc:
        raise EndpointError(f"endpoint: cannot reach {url} ({exc})") from exc
    if r.status_code != 200:
        try:
            message = r.json().get("error", r.text)
        except ValueError:
            message = r.text[:500]
        raise EndpointError(f"endpoint {url}: HTTP {r.status_code}: {message}")
    return r


def backmap_remote(endpoint: str, cg_xyz, samples: int = 1, seed: int | None = None,
                   bead_names: list[str] | None = None, timeout_s: float = 600.0) -> dict:
    """``POST /backmap``: cg_xyz [T, n_beads, 3] nm -> the server's JSON (``aa_nm`` [K, T, N, 3] nm, names, model)."""
    import numpy as np

    body = {"cg_nm": np.asarray(cg_xyz, dtype=np.float64).tolist(), "samples": samples, "seed": seed}
    if bead_names is not None:
        body["bead_names"] = list(bead_names)
    return _post(f"{endpoint.rstrip('/')}/backmap", timeout_s, json=body).json()


def backmap_file_remote(endpoint: str, traj: str | Path, top: str | Path | None, out: str | Path,
                        samples: int = 1, seed: int | None = None, timeout_s: float = 600.0,
                        refine: int = 0) -> list[Path]:
    """``POST /backmap/file``: upload a CG trajectory (+ topology), write the AA file(s).

    The output format is ``out``'s extension. With ``samples`` K > 1 the server
    answers a zip of K files, written as ``NAME_k.EXT`` like ``finegrain backmap``.
    Returns the paths written.
    """
    import io
    import zipfile

    traj, out = Path(traj), Path(out)
    for p, what in ((traj, "traj"), (Path(top) if top else None, "top")):
        if p is not None and not p.is_file():
            raise FileNotFoundError(f"{what}: {p} does not exist")
    fmt = "".join(out.suffixes[-2:]) if out.name.endswith(".gz") else out.suffix
    data = {"format": fmt.lstrip("."), "samples": str(samples)}
    if seed is not None:
        data["seed"] = str(seed)
    if refine:
        data["refine"] = str(int(refine))
    with ExitStack() as opened:
        files = {"cg_file": (traj.name, opened.enter_context(open(traj, "rb")))}
        if top:
            files["cg_top"] = (Path(top).name, opened.enter_context(open(top, "rb")))
        r = _post(f"{endpoint.rstrip('/')}/backmap/file", timeout_s, data=data, files=files)
    out.parent.mkdir(parents=True, exist_ok=True)
    if samples == 1:
        out.write_bytes(r.content)
        return [out]
    stem = out.name[: -len(fmt)]
    paths = []
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        for k in range(samples):
            path = out.with_name(f"{stem}_{k}{fmt}")
            path.write_bytes(zf.read(f"aa_{k}{fmt}"))
            paths.append(path)
    return paths


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for tests and benchmarks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
