"""What a Serve application serves: its settings, and model references resolved against the registry.

Shared by the driver side (:mod:`finegrain.platform.apps.serving`) and the
replicas (:mod:`finegrain.platform.apps.serving_app`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator

from finegrain.platform.apps.evaluation import EVAL_EXPERIMENT, KEY_METRICS
from finegrain.platform.science.errors import InputError
from finegrain.platform.services.stack import tracking_uri
from finegrain.platform.services.tracking import Tracker
from finegrain.trainables import shipped

__all__ = ["ServeSettings", "ModelRef", "resolve_model", "model_info"]


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
    return Tracker(tracking or tracking_uri()).client


def resolve_model(model: str, tracking: str | None = None) -> ModelRef:
    """Resolve a registry alias to its current version (``models:/NAME@A`` -> ``models:/NAME/V``).

    Other URIs and folders come back unchanged (no name or version).
    Raises InputError naming ``model`` when the name, alias or version is unknown.
    """
    from mlflow.exceptions import MlflowException

    if model.startswith("zoo:"):  # a shipped model: checked now, so a wrong name fails before anything starts
        shipped.folder(model)
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
