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
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from finegrain.platform.science.validation import InputError

__all__ = [
    "APP_NAME", "ServeSettings", "ModelRef", "EndpointError", "resolve_model", "model_info", "build_app",
    "serve_model", "shutdown", "wait_ready", "backmap_remote", "backmap_file_remote", "free_port",
]

APP_NAME = "finegrain"


class EndpointError(ValueError):
    """A backmapping server that cannot be reached, or that refused the request (message from the server)."""


class ServeSettings(BaseModel):
    """Arguments of the Serve application (``args:`` in a Serve config YAML)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Model URI: models:/NAME@alias, models:/NAME/V, runs:/ID/model, or a model folder.")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI / the stack).")
    reload: bool = Field(False, description="Follow the registry alias: switch versions when it moves.")
    poll_s: float = Field(30.0, gt=0, description="Seconds between alias checks when reload is on.")
    replicas: int = Field(1, ge=1, description="Serve replicas.")
    cpus_per_replica: float = Field(1.0, gt=0, description="Ray CPUs reserved per replica.")
    max_frames: int = Field(10_000, ge=1, description="Most output frames (samples x CG frames) per request.")
    max_samples: int = Field(64, ge=1, description="Most samples per request.")
    max_bytes: int = Field(64 * 2**20, ge=1024, description="Largest request body, bytes.")
    max_batch_size: int = Field(16, ge=1, description="Requests batched on a replica (1: no batching).")
    batch_wait_s: float = Field(0.005, ge=0, description="How long a batch waits to fill, seconds.")
    max_ongoing_requests: int = Field(64, ge=1, description="Concurrent requests per replica.")
    bead_spacing_nm: tuple[float, float] = Field(
        (0.05, 1.0), description="Accepted median nearest-bead distance, nm (outside: coordinates not in nm).")

    @model_validator(mode="after")
    def _check(self) -> "ServeSettings":
        lo, hi = self.bead_spacing_nm
        if not 0 < lo < hi:
            raise ValueError(f"bead_spacing_nm: expected 0 < low < high, got {self.bead_spacing_nm}")
        if self.reload and not _alias_parts(self.model):
            raise ValueError(f"reload: needs a models:/NAME@alias model URI, got {self.model!r}")
        return self


@dataclass(frozen=True)
class ModelRef:
    """A model to load: ``source`` as given; ``uri`` pins the registry version when there is one."""

    source: str
    uri: str
    name: str | None = None
    alias: str | None = None
    version: str | None = None
    run_id: str | None = None
    tags: dict = field(default_factory=dict)  # the registry version's tags


def _alias_parts(model: str) -> tuple[str, str] | None:
    if not model.startswith("models:/") or "@" not in model:
        return None
    name, _, alias = model[len("models:/"):].partition("@")
    return (name, alias) if name and alias else None


def _mlflow(tracking: str | None):
    from mlflow import MlflowClient

    from finegrain.platform.services.stack import tracking_uri

    return MlflowClient(tracking_uri=tracking or tracking_uri())


def resolve_model(model: str, tracking: str | None = None) -> ModelRef:
    """Resolve a registry alias to its current version (``models:/NAME@A`` -> ``models:/NAME/V``).

    Other URIs and folders come back unchanged (no name or version).
    Raises InputError naming ``model`` when the name, alias or version is unknown.
    """
    from mlflow.exceptions import MlflowException

    if model.startswith("zoo:"):  # a shipped model: checked now, so a wrong name fails before anything starts
        from finegrain.platform.apps import zoo

        zoo.folder(model)
        return ModelRef(source=model, uri=model)
    if not model.startswith(("runs:/", "models:/")):
        return ModelRef(source=model, uri=model)
    spec = model[len("models:/"):]
    alias_parts = _alias_parts(model)
    try:
        client = _mlflow(tracking)
        if model.startswith("runs:/"):
            run_id = model.split("/")[1]
            return ModelRef(source=model, uri=model, run_id=client.get_run(run_id).info.run_id)
        if alias_parts:
            name, alias = alias_parts
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = spec.partition("/")
            alias, mv = None, client.get_model_version(name, version)
    except MlflowException as exc:
        raise InputError(f"model: {model}: not found in MLflow ({exc.message})") from exc
    return ModelRef(source=model, uri=f"models:/{mv.name}/{mv.version}", name=mv.name, alias=alias,
                    version=str(mv.version), run_id=mv.run_id, tags=dict(mv.tags or {}))


def model_info(ref: ModelRef, backmapper, tracking: str | None = None) -> dict:
    """What ``GET /model`` reports: registry identity, mapping, training data hash, evaluation metrics.

    The data hash is the training run's ``data_hash`` (or ``dataset_digest``) tag, else the
    version's. ``selection_metrics``: the figures the registry promoted the version by
    (version tags ``metric.<name>``, see :mod:`finegrain.platform.services.registry`);
    ``evaluation``: the newest run of the evaluation experiment tagged with the
    model's run id (None when it was never evaluated).
    """
    from finegrain.platform.apps.evaluation import EVAL_EXPERIMENT, KEY_METRICS

    info = {
        "name": ref.name, "version": ref.version, "alias": ref.alias, "uri": ref.uri, "source": ref.source,
        "run_id": ref.run_id, "family": backmapper.family, "label": backmapper.label,
        "mapping": backmapper.mapping.name, "bead_names": list(backmapper.mapping.bead_names),
        "n_beads": backmapper.mapping.n_beads, "n_atoms": int(backmapper.topology.n_atoms),
        "data_hash": ref.tags.get("data_hash"), "evaluation": None,
        "selection_metrics": {k[len("metric."):]: _number(v) for k, v in ref.tags.items() if k.startswith("metric.")},
    }
    if ref.run_id is None:
        return info
    client = _mlflow(tracking)
    tags = client.get_run(ref.run_id).data.tags
    info["data_hash"] = tags.get("data_hash") or tags.get("dataset_digest") or info["data_hash"]
    exp = client.get_experiment_by_name(EVAL_EXPERIMENT)
    if exp is not None:
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.model_run_id = '{ref.run_id}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            run = runs[0]
            info["evaluation"] = {"run_id": run.info.run_id, "kind": run.data.tags.get("evaluation"),
                                  "metrics": {k: run.data.metrics[k] for k in KEY_METRICS if k in run.data.metrics}}
    return info


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def build_app(args):
    """Serve application builder (``import_path: finegrain.platform.apps.serving:build_app``).

    ``args``: a :class:`ServeSettings` or its dict (the ``args:`` of a Serve config).
    """
    settings = args if isinstance(args, ServeSettings) else ServeSettings.model_validate(dict(args or {}))
    from finegrain.platform.apps.serving_app import BackmapServer

    return BackmapServer.options(
        num_replicas=settings.replicas,
        ray_actor_options={"num_cpus": settings.cpus_per_replica,
                           "runtime_env": {"env_vars": {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}}},
        max_ongoing_requests=settings.max_ongoing_requests,
    ).bind(settings.model_dump())


def serve_model(model_uri: str, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1, *,
                timeout_s: float = 180.0, **settings) -> str:
    """Serve ``model_uri`` on the running stack; returns the base URL (``http://HOST:PORT``).

    ``settings``: further :class:`ServeSettings` fields (``reload``, ``poll_s``,
    ``max_frames``, ``max_batch_size``, ...). Replaces a running ``finegrain``
    application. Serve's HTTP address is fixed while Serve runs: asking for
    another one raises ValueError (call :func:`shutdown` first).
    """
    from finegrain.platform.services.stack import connect_ray, tracking_uri

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
    from ray.serve.context import _get_global_client

    serve.start(http_options={"host": host, "port": port})
    running = _get_global_client().http_config
    if (running.host, running.port) != (host, port):
        raise ValueError(f"port: Serve already listens on {running.host}:{running.port} in this Ray cluster "
                         "(stop it first: `finegrain serve --stop`)")
    serve.run(build_app(cfg), name=APP_NAME, route_prefix="/")
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    wait_ready(base, timeout_s)
    return base


def shutdown() -> None:
    """Stop Serve (every application and its HTTP proxy) on the stack's Ray cluster."""
    from finegrain.platform.services.stack import connect_ray

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
