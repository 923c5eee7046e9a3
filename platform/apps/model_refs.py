"""Model references of a Serve application, resolved against the MLflow registry (or the shipped models).

Shared by the driver side (:mod:`finegrain.platform.apps.serving`) and the
replicas (:mod:`finegrain.platform.apps.serving_app`).
"""

from __future__ import annotations

from finegrain.platform.apps.evaluation import EVAL_EXPERIMENT, KEY_METRICS
from finegrain.platform.apps.serving_config import ModelRef, alias_parts
from finegrain.platform.science.errors import InputError
from finegrain.platform.services.stack import tracking_uri
from finegrain.platform.services.tracking import Tracker
from finegrain.trainables import shipped

__all__ = ["resolve_model", "model_info"]


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
    parts = alias_parts(model)
    try:
        client = _mlflow(tracking)
        if model.startswith("runs:/"):
            run_id = model.split("/")[1]
            return ModelRef(source=model, uri=model, run_id=client.get_run(run_id).info.run_id)
        if parts:
            name, alias = parts
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
