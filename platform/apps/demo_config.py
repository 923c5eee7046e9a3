"""What ``finegrain demo`` simulates and trains: the one place its defaults live (the CLI reads them from here,
without importing the demo itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from finegrain.platform.apps.serving_config import HTTP_PORT

__all__ = ["DemoConfig"]

_Count = Annotated[int, Field(ge=1)]
_Nanoseconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class DemoConfig:
    """What the demo simulates and trains (validated by pydantic: a ``ValueError`` naming the field)."""

    workdir: Path
    system: str = "adp"
    mapping: str = "backbone6"
    replicas: _Count = 4
    ns: _Nanoseconds = 0.25
    heldout_ns: _Nanoseconds = 1.0  # 1000 held-out frames: enough for FES, MSM and their floors
    seed: Annotated[int, Field(ge=0)] = 0
    train_steps: _Count = 600
    flow_steps: _Count = 300
    ic_steps: _Count = 600
    zoo_model: str = "adp-backbone6"
    serve_port: Annotated[int, Field(ge=1, le=65535)] = HTTP_PORT
    entropy_mappings: Annotated[tuple[str, ...], Field(min_length=1)] = ("backbone6", "ca", "heavy")
    entropy_steps: _Count = 300
    entropy_ns: _Nanoseconds = 0.2
