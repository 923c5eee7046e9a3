"""What one training run knows besides its config: the typed context that crosses the Ray boundary.

The driver (:func:`~finegrain.trainables.ray_run.run_training`) sends each
Ray Train worker ``train_loop_config = {"config": <the validated training
config, dumped as JSON data>, "context": <a RunContext, dumped as JSON data>}``
(:func:`loop_config`); a worker validates both again (:func:`parse_loop_config`)
and reads typed attributes from then on. The config is what a user wrote
(YAML, ``--set``, a sweep's sample); the context is what the run found or made:
the MLflow run, the storage folder, whether there is a validation split, the
checkpoint to resume from (resolved), the sizes and system of the shard folder,
and the family's fitted data (``payload``: the ic Z-matrix and standardisation,
the mapping matrix and prior assignment of the flow) — data, not settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RunContext", "loop_config", "parse_loop_config"]

C = TypeVar("C", bound=BaseModel)


class RunContext(BaseModel):
    """Per-run facts every worker of one training run shares (frozen; JSON round trip)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str | None = Field(None, description="the MLflow run (None: tracking off)")
    tracking_uri: str | None = Field(None, description="the MLflow tracking URI of run_id")
    storage_dir: Path = Field(description="this run's folder under training.work_dir (checkpoints of local mode)")
    local_mode: bool = Field(False, description="training.num_workers == 0: the loop runs in the driver's process")
    has_validation: bool = Field(False, description="the data has a validation split (evaluations run)")
    resume_from: Path | None = Field(None, description="training.resume_from, resolved on the driver")
    n_atoms: int = Field(ge=1, description="AA atoms per frame (shard manifest)")
    n_beads: int = Field(ge=1, description="CG beads per frame (shard manifest)")
    system: str | None = Field(None, description="the reference system of the shard folder (its energy model)")
    mapping_name: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict, description="the family's fitted data (plain JSON)")


def loop_config(config: BaseModel, ctx: RunContext) -> dict[str, Any]:
    """The ``train_loop_config`` of a worker: the config and the context, each as plain JSON data."""
    return {"config": config.model_dump(mode="json"), "context": ctx.model_dump(mode="json")}


def parse_loop_config(data: dict[str, Any], config_cls: type[C]) -> tuple[C, RunContext]:
    """Worker side of :func:`loop_config`: (``config_cls`` validated again, the :class:`RunContext`)."""
    return config_cls.model_validate(data["config"]), RunContext.model_validate(data["context"])
