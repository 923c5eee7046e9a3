"""What a Serve application serves: its settings (the one place their defaults live) and model references.

Shared by the driver side (:mod:`finegrain.platform.apps.serving`) and the
replicas (:mod:`finegrain.platform.apps.serving_app`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator


__all__ = ["HTTP_HOST", "HTTP_PORT", "ServeSettings", "ModelRef", "alias_parts"]

#: where Serve's HTTP proxy listens unless told otherwise: this machine only
HTTP_HOST = "127.0.0.1"
HTTP_PORT = 8000


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
        if self.reload and not alias_parts(self.model):
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


def alias_parts(model: str) -> tuple[str, str] | None:
    if not model.startswith("models:/") or "@" not in model:
        return None
    name, _, alias = model[len("models:/"):].partition("@")
    return (name, alias) if name and alias else None
