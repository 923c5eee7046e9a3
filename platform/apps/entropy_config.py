"""Settings of a mapping-entropy comparison (:mod:`finegrain.platform.apps.entropy_compare`): the one place
their defaults live (the CLI reads them from here)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

__all__ = ["CompareConfig"]


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class CompareConfig:
    """Settings of one comparison (validated by pydantic: a ``ValueError`` naming the field).

    budget: training steps per flow; eval_frames: held-out frames scored;
    n_clusters: first k of the energy-variance k-doubling check; giulini_tol:
    its convergence tolerance (relative change from k to 2k).
    """

    shards: Path
    system: str = "adp"
    mappings: Annotated[tuple[str, ...], Field(min_length=1)] = ("backbone6", "backbone5", "ca", "heavy")
    budget: Annotated[int, Field(ge=1, description="training steps per flow")] = 2000
    flow_config: Path | None = None
    overrides: tuple[str, ...] = ()
    experiment: str = "entropy-compare"
    work_dir: Path | None = None
    eval_frames: Annotated[int, Field(ge=2)] = 256
    divergence: Literal["exact", "hutchinson"] = "hutchinson"
    n_probes: Annotated[int, Field(ge=1)] = 4
    ode_steps: Annotated[int, Field(ge=1)] = 10
    n_clusters: Annotated[int, Field(ge=2)] = 20
    temperature_k: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 300.0
    giulini_tol: Annotated[float, Field(gt=0, lt=1, description="relative change from k to 2k")] = 0.05
    reuse: bool = True
    seed: int = 0
