"""The MLflow model registry: register a candidate and move the ``champion`` alias only on improvement.

Every registered version carries its figure on the metric it was chosen by as
a version tag ``metric.<name>`` (and the data set it was measured on as
``data_hash``), so a later candidate is compared with the champion's own
recorded figure. The loser of the comparison gets the alias ``challenger``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from mlflow.exceptions import MlflowException

from finegrain.platform.services.tracking import Tracker

__all__ = ["Promotion", "register_and_promote", "champion_figure", "CHAMPION", "CHALLENGER"]

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class Promotion:
    """What :func:`register_and_promote` decided."""

    name: str
    version: str
    alias: str  # "champion" or "challenger"
    metric: str
    value: float
    champion_version: str | None  # the champion before the decision
    champion_value: float | None
    comparable: bool = True  # False: the champion's figure was measured on other data

    def as_dict(self) -> dict:
        return asdict(self)


def _better(value: float, than: float, mode: str) -> bool:
    return value < than if mode == "min" else value > than


def champion_figure(name: str, metric: str, tracker: Tracker) -> tuple[str | None, float | None, str | None]:
    """(version, recorded figure on ``metric``, data hash) of the current champion; Nones when there is none."""
    client = tracker.client
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None, None
    raw = mv.tags.get(f"metric.{metric}")
    return mv.version, (float(raw) if raw is not None else None), mv.tags.get("data_hash")


def register_and_promote(name: str, model_uri: str, metric: str, mode: str, value: float,
                         tracker: Tracker, tags: dict[str, str] | None = None) -> Promotion:
    """Register ``model_uri`` as a new version of ``name``; alias it champion if it beats the champion.

    A champion without a recorded figure on ``metric`` is beaten by any
    candidate. When both carry a ``data_hash`` tag and they differ, the
    figures are not comparable and the candidate stays ``challenger``
    (promote it by hand if the new data should win). ``mode``: "min" or "max".
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}")
    if not math.isfinite(value):
        raise ValueError(f"value: the candidate's {metric} is not finite ({value})")
    client = tracker.client
    champ_version, champ_value, champ_data = champion_figure(name, metric, tracker)
    data = (tags or {}).get("data_hash")
    comparable = not (champ_data and data and champ_data != data)
    mv = tracker.register(name, model_uri)
    for k, v in {f"metric.{metric}": repr(float(value)), **(tags or {})}.items():
        client.set_model_version_tag(name, mv.version, k, str(v))
    wins = champ_version is None or champ_value is None or (comparable and _better(value, champ_value, mode))
    alias = CHAMPION if wins else CHALLENGER
    client.set_registered_model_alias(name, alias, mv.version)
    return Promotion(name, str(mv.version), alias, metric, float(value), champ_version, champ_value, comparable)
