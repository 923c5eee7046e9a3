"""Settings of a mapping-entropy comparison (:mod:`finegrain.platform.apps.entropy_compare`): the one place
their defaults live (the CLI reads them from here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["CompareConfig"]


@dataclass(frozen=True)
class CompareConfig:
    """Settings of one comparison.

    budget: training steps per flow; eval_frames: held-out frames scored;
    n_clusters: first k of the energy-variance k-doubling check; giulini_tol:
    its convergence tolerance (relative change from k to 2k).
    """

    shards: Path
    system: str = "adp"
    mappings: tuple[str, ...] = ("backbone6", "backbone5", "ca", "heavy")
    budget: int = 2000
    flow_config: Path | None = None
    overrides: tuple[str, ...] = ()
    experiment: str = "entropy-compare"
    work_dir: Path | None = None
    eval_frames: int = 256
    divergence: str = "hutchinson"
    n_probes: int = 4
    ode_steps: int = 10
    n_clusters: int = 20
    temperature_k: float = 300.0
    giulini_tol: float = 0.05
    reuse: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.mappings:
            raise ValueError("mappings: expected at least one mapping name")
        if self.budget < 1:
            raise ValueError(f"budget: expected >= 1 training step, got {self.budget}")
        if self.eval_frames < 2:
            raise ValueError(f"eval_frames: expected >= 2, got {self.eval_frames}")
        if not 0 < self.giulini_tol < 1:
            raise ValueError(f"giulini_tol: expected a relative change in (0, 1), got {self.giulini_tol}")
        if self.divergence not in ("exact", "hutchinson"):
            raise ValueError(f"divergence: expected exact or hutchinson, got {self.divergence!r}")
