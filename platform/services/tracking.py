"""MLflow tracking: one :class:`Tracker` per entry point, passed down explicitly.

One MLflow run per training: the flattened config as params, step metrics
(per-term losses, schedule values, learning rate, throughput), the data set's
manifest digest and the mapping as tags, and the final model.

A :class:`Tracker` wraps one ``MlflowClient`` for one tracking (and
registry) URI. It is built once where a process starts work: a CLI command,
a Ray job, a Train worker (rank 0, from the run context's URI), a Serve
replica. Only MLflow's client API is used: no process-wide tracking URI,
no fluent runs, so two trackers in one process never interfere. Models are
logged as MLflow 3 *logged models* (``create_logged_model`` +
``log_model_artifacts``) and model URIs (``runs:/``, ``models:/NAME/V``,
``models:/NAME@alias``, ``models:/<model id>``) are resolved here with the
same client (MLflow's own resolver of ``models:/`` URIs reads the process-wide
registry URI instead).

What a backmapper's model folder holds is :mod:`finegrain.trainables.persistence`'s business.
"""

from __future__ import annotations

import math
import time
import urllib.request
from pathlib import Path
from typing import Any

import mlflow.artifacts
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from finegrain.platform.science.errors import InputError

__all__ = ["Tracker", "MetricLogger"]

#: MLflow's limit on one param value (characters).
_PARAM_MAX = 6000


class Tracker:
    """One MLflow connection (tracking and registry at ``uri``). Cheap to build; :meth:`connect` checks it."""

    def __init__(self, uri: str):
        if not uri:
            raise InputError("tracking uri: empty (start the stack with `finegrain stack up` or set "
                             "MLFLOW_TRACKING_URI)")
        self.uri = str(uri)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    @classmethod
    def connect(cls, uri: str, timeout_s: float = 5.0) -> "Tracker":
        """A tracker after one health check of an HTTP server (``GET /health``); other URIs are taken as given."""
        if uri.startswith(("http://", "https://")):
            try:
                with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
                    ok = r.status == 200
            except OSError as exc:
                raise InputError(f"tracking uri: no MLflow server answers at {uri} ({exc})") from None
            if not ok:
                raise InputError(f"tracking uri: the MLflow server at {uri} is not healthy")
        return cls(uri)

    def __repr__(self) -> str:
        return f"Tracker({self.uri!r})"

    # ------------------------------------------------------------------ runs
    def start_run(self, experiment: str, params: dict[str, Any] | None = None, tags: dict[str, Any] | None = None,
                  run_name: str | None = None) -> str:
        """Create a run (and its experiment when new) with params and tags; returns the run id."""
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
        run = self.client.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in (tags or {}).items()})
        items = [Param(k, str(v)[:_PARAM_MAX]) for k, v in (params or {}).items()]
        for i in range(0, len(items), 100):  # MLflow: at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=items[i : i + 100])
        if tags:
            self.client.log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        return run.info.run_id

    def end_run(self, run_id: str, failed: bool = False) -> None:
        """Mark the run FINISHED (or FAILED)."""
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")

    def metric_logger(self, run_id: str, max_buffer: int = 900) -> "MetricLogger":
        return MetricLogger(self, run_id, max_buffer)

    # ---------------------------------------------------------------- models
    def log_model_folder(self, run_id: str, name: str, build, registered_model_name: str | None = None) -> str:
        """Log a model of run ``run_id`` as an MLflow logged model named ``name``; returns ``runs:/RUN/NAME``.

        build : ``(local folder, mlflow.models.Model) -> None`` writes the MLflow model into the folder
            (``mlflow.pyfunc.save_model(path, mlflow_model=...)``); the ``Model`` carries the run and model ids.
        With ``registered_model_name`` the model also becomes a new version of that registered model.
        """
        import tempfile

        from mlflow.models import Model

        run = self.client.get_run(run_id)
        logged = self.client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / "model"
                build(local, Model(artifact_path=logged.artifact_location, run_id=run_id, model_id=logged.model_id))
                self.client.log_model_artifacts(logged.model_id, str(local))
        except BaseException:
            self.client.finalize_logged_model(logged.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(logged.model_id, "READY")
        self.client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        if registered_model_name:
            self.register(registered_model_name, f"models:/{logged.model_id}", run_id)
        return f"runs:/{run_id}/{name}"

    def register(self, name: str, model_uri: str, run_id: str | None = None):
        """A new version of registered model ``name`` (created when new) holding ``model_uri``'s model."""
        model_id = self._logged_model(model_uri).model_id
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = self.client.get_logged_model(model_id).artifact_location
        return self.client.create_model_version(name, source=source, run_id=run_id, model_id=model_id)

    def artifact_location(self, model_uri: str) -> str:
        """Where the files of ``runs:/RUN/NAME``, ``models:/NAME/V``, ``models:/NAME@alias`` or ``models:/ID`` are
        (any other artifact URI is its own location)."""
        if not model_uri.startswith(("runs:/", "models:/")):
            return model_uri
        if model_uri.startswith("models:/") and not model_uri[len("models:/"):].startswith("m-"):
            spec = model_uri[len("models:/"):].strip("/")
            if "@" in spec:
                name, alias = spec.split("@", 1)
                version = self.client.get_model_version_by_alias(name, alias).version
            else:
                name, _, version = spec.partition("/")
                if not version:
                    raise InputError(f"model: {model_uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
            return self.client.get_model_version_download_uri(name, version)
        return self._logged_model(model_uri).artifact_location

    def download(self, model_uri: str, dst: str | Path) -> Path:
        """Download a model's files into ``dst``; returns the local folder."""
        loc = self.artifact_location(model_uri)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=loc, dst_path=str(dst), tracking_uri=self.uri))

    def _logged_model(self, model_uri: str):
        if model_uri.startswith("models:/m-"):
            return self.client.get_logged_model(model_uri[len("models:/"):].strip("/"))
        if not model_uri.startswith("runs:/"):
            raise InputError(f"model: {model_uri}: expected runs:/RUN_ID/NAME or models:/...")
        run_id, _, name = model_uri[len("runs:/"):].strip("/").partition("/")
        run = self.client.get_run(run_id)
        page = self.client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                                filter_string=f"name = '{name or 'model'}'")
        hits = [m for m in page if m.source_run_id == run_id]
        if not hits:
            raise InputError(f"model: {model_uri}: run {run_id} logged no model named {name!r}")
        return max(hits, key=lambda m: m.creation_timestamp)  # the newest, as MLflow resolves a runs:/ URI


class MetricLogger:
    """Buffered step metrics for one run (``log`` queues, ``flush`` sends one batch).

    Non-finite values are skipped (MLflow rejects NaN/inf); metric names are
    used as given.
    """

    def __init__(self, tracker: Tracker, run_id: str, max_buffer: int = 900):
        self.run_id = run_id
        self._client = tracker.client
        self._buffer: list = []
        self._max = max_buffer

    def log(self, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        for k, v in metrics.items():
            v = float(v)
            if math.isfinite(v):
                self._buffer.append(Metric(k, v, now, int(step)))
        if len(self._buffer) >= self._max:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self._client.log_batch(self.run_id, metrics=chunk)
