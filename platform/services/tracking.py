"""MLflow tracking shared by every model family.

One MLflow run per training: the flattened config as params, step metrics
(per-term losses, schedule values, learning rate, throughput), the data set's
manifest digest and the mapping as tags, and the final model.

The model is logged as a pyfunc "models from code" model: the logged Python
file (:mod:`finegrain.trainables.mlflow_model`) is code, and the
``backmapper`` artifact is the folder written by ``Backmapper.save`` (JSON,
PDB and a tensors-only torch file).  :func:`load_backmapper_from_uri`
downloads that folder and rebuilds the backmapper with
``torch.load(weights_only=True)``: nothing is unpickled.

The tracking URI comes from :func:`finegrain.platform.services.stack.tracking_uri`
(``$MLFLOW_TRACKING_URI`` inside Ray jobs and workers, else the local stack).
Only rank 0 of a training worker group logs.
"""

from __future__ import annotations

import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = [
    "start_run",
    "end_run",
    "MetricLogger",
    "log_backmapper",
    "load_backmapper_from_uri",
    "load_backmapper_any",
    "model_code_path",
]

#: MLflow's limit on one param value (characters).
_PARAM_MAX = 6000


def _client(uri: str | None):
    from mlflow import MlflowClient

    from finegrain.platform.services.stack import tracking_uri

    return MlflowClient(tracking_uri=uri or tracking_uri())


def start_run(experiment: str, params: dict[str, Any] | None = None, tags: dict[str, Any] | None = None,
              run_name: str | None = None, uri: str | None = None) -> str:
    """Create a run (and its experiment when new) with params and tags; returns the run id."""
    from mlflow.entities import Param, RunTag

    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in (tags or {}).items()})
    items = [Param(k, str(v)[:_PARAM_MAX]) for k, v in (params or {}).items()]
    for i in range(0, len(items), 100):  # MLflow: at most 100 params per batch
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    if tags:
        client.log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    return run.info.run_id


def end_run(run_id: str, failed: bool = False, uri: str | None = None) -> None:
    """Mark the run FINISHED (or FAILED)."""
    _client(uri).set_terminated(run_id, status="FAILED" if failed else "FINISHED")


class MetricLogger:
    """Buffered step metrics for one run (``log`` queues, ``flush`` sends one batch).

    Non-finite values are skipped (MLflow rejects NaN/inf); metric names are
    used as given.
    """

    def __init__(self, run_id: str, uri: str | None = None, max_buffer: int = 900):
        self.run_id = run_id
        self._client = _client(uri)
        self._buffer: list = []
        self._max = max_buffer

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

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


def model_code_path() -> str:
    """The models-from-code file logged with every backmapper."""
    import importlib.util

    spec = importlib.util.find_spec("finegrain.trainables.mlflow_model")  # located, not imported
    if spec is None or spec.origin is None:
        raise FileNotFoundError("finegrain.trainables.mlflow_model is missing from the installation")
    return str(Path(spec.origin).resolve())


def log_backmapper(backmapper, name: str = "model", registered_model_name: str | None = None,
                   run_id: str | None = None, uri: str | None = None) -> str:
    """Log a backmapper as a pyfunc models-from-code model; returns its model URI.

    ``run_id`` selects the run (default: the active run, else a new one).
    With ``registered_model_name`` the model is also registered (a new version).
    The returned URI is ``runs:/<run_id>/<name>``; ``models:/<name>/<version>``
    and ``models:/<name>@<alias>`` work as well for registered models.
    """
    import mlflow
    import numpy as np
    import torch

    from finegrain.platform.services.stack import tracking_uri

    mlflow.set_tracking_uri(uri or tracking_uri())
    with tempfile.TemporaryDirectory() as tmp:
        folder = backmapper.save(Path(tmp) / "backmapper")
        reqs = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                f"numpy=={np.__version__}", "mdtraj"]
        active = mlflow.active_run()
        own = active is None or (run_id is not None and active.info.run_id != run_id)
        run = mlflow.start_run(run_id=run_id, nested=active is not None) if own else active
        try:
            with warnings.catch_warnings():  # the code model takes arrays or dicts: no type-hint signature
                warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
                mlflow.pyfunc.log_model(
                    name=name, python_model=model_code_path(), artifacts={"backmapper": str(folder)},
                    registered_model_name=registered_model_name, pip_requirements=reqs,
                    metadata={"family": backmapper.family, "mapping": backmapper.mapping.name,
                              "n_atoms": int(backmapper.topology.n_atoms), "n_beads": int(backmapper.mapping.n_beads)},
                )
        finally:
            if own:
                mlflow.end_run()
        return f"runs:/{run.info.run_id}/{name}"


def load_backmapper_from_uri(model_uri: str, uri: str | None = None):
    """Load a backmapper logged by :func:`log_backmapper` (runs:/, models:/NAME/V, models:/NAME@alias).

    Downloads the artifacts and reads ``backmapper.json``, ``topology.pdb`` and
    ``weights.pt`` (``weights_only=True``); the logged Python file is not run.
    """
    import mlflow

    from finegrain.platform.services.stack import tracking_uri

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp,
                                                    tracking_uri=uri or tracking_uri(),
                                                    registry_uri=uri or tracking_uri())
        return _load_local_model_dir(Path(local), source=model_uri)


def load_backmapper_any(model: str, uri: str | None = None):
    """A backmapper from a ``Backmapper.save`` folder, a downloaded MLflow model folder, a model URI, or a
    shipped model (``zoo:NAME``, :mod:`finegrain.platform.apps.zoo`)."""
    from finegrain.platform.apps import zoo

    if model.startswith(zoo.PREFIX):
        from finegrain.trainables.protocol import load_backmapper

        return load_backmapper(zoo.folder(model))
    path = Path(model)
    if path.is_dir():
        return _load_local_model_dir(path, source=model)
    if "://" in model or model.startswith(("runs:/", "models:/")):
        return load_backmapper_from_uri(model, uri)
    raise FileNotFoundError(f"model: {model} is neither a model folder nor a model URI (runs:/..., models:/...) "
                            f"nor zoo:NAME")


def _load_local_model_dir(path: Path, source: str):
    import yaml

    from finegrain.trainables.protocol import META, load_backmapper

    if (path / META).is_file():
        return load_backmapper(path)
    mlmodel = next(iter(sorted(path.rglob("MLmodel"))), None)
    if mlmodel is None:
        raise FileNotFoundError(f"model {source}: no {META} and no MLmodel file in {path}")
    meta = yaml.safe_load(mlmodel.read_text()) or {}
    art = (((meta.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}).get("backmapper")
    folder = mlmodel.parent / art["path"] if art and "path" in art else None
    if folder is None or not (folder / META).is_file():
        hits = sorted(mlmodel.parent.rglob(META))
        if not hits:
            raise FileNotFoundError(f"model {source}: the MLflow model holds no backmapper artifact ({META})")
        folder = hits[0].parent
    return load_backmapper(folder)
