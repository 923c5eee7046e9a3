"""Backmappers in MLflow and on disk: log, load, and resolve a model reference.

A backmapper is logged as a pyfunc "models from code" model: the logged
Python file (:mod:`finegrain.trainables.mlflow_model`) is code, and the
``backmapper`` artifact is the folder written by ``Backmapper.save`` (JSON,
PDB and a tensors-only torch file).  :func:`load_backmapper_from_uri`
downloads that folder and rebuilds the backmapper with
``torch.load(weights_only=True)``: nothing is unpickled.
:func:`load_backmapper_any` takes any model reference a user may type: a
saved folder, a downloaded MLflow model, ``runs:/`` or ``models:/`` URIs, or
``zoo:NAME``.
"""

from __future__ import annotations

import importlib.util
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml

from finegrain.platform.science.errors import InputError
from finegrain.trainables import shipped
from finegrain.trainables.protocol import META, load_backmapper

if TYPE_CHECKING:  # MLflow takes ~1.7 s to import (measured): `finegrain backmap --model zoo:NAME` or a folder
    # needs none of it, so MLflow is imported where a model goes to or comes from a server
    from finegrain.platform.services.tracking import Tracker

__all__ = ["log_backmapper", "load_backmapper_from_uri", "load_backmapper_any", "model_code_path"]


def model_code_path() -> str:
    """The models-from-code file logged with every backmapper."""
    spec = importlib.util.find_spec("finegrain.trainables.mlflow_model")  # located, not imported
    if spec is None or spec.origin is None:
        raise FileNotFoundError("finegrain.trainables.mlflow_model is missing from the installation")
    return str(Path(spec.origin).resolve())


def log_backmapper(backmapper, tracker: Tracker, run_id: str, name: str = "model",
                   registered_model_name: str | None = None) -> str:
    """Log a backmapper into run ``run_id`` as a pyfunc models-from-code model; returns ``runs:/RUN/NAME``.

    With ``registered_model_name`` the model is also registered (a new version);
    ``models:/<name>/<version>`` and ``models:/<name>@<alias>`` then resolve to it
    (:meth:`Tracker.artifact_location`).
    """
    import mlflow.pyfunc  # see the module top

    reqs = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={np.__version__}", "mdtraj"]
    metadata = {"family": backmapper.family, "mapping": backmapper.mapping.name,
                "n_atoms": int(backmapper.topology.n_atoms), "n_beads": int(backmapper.mapping.n_beads)}

    def build(local: Path, info) -> None:
        info.metadata = metadata
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            # the code model takes arrays or dicts: no type-hint signature
            warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
            folder = backmapper.save(Path(tmp) / "backmapper")
            mlflow.pyfunc.save_model(str(local), python_model=model_code_path(), artifacts={"backmapper": str(folder)},
                                     pip_requirements=reqs, mlflow_model=info)

    return tracker.log_model_folder(run_id, name, build, registered_model_name)


def load_backmapper_from_uri(model_uri: str, tracker: Tracker):
    """Load a backmapper logged by :func:`log_backmapper` (runs:/, models:/NAME/V, models:/NAME@alias).

    Downloads the artifacts and reads ``backmapper.json``, ``topology.pdb`` and
    ``weights.pt`` (``weights_only=True``); the logged Python file is not run.
    """
    with tempfile.TemporaryDirectory() as tmp:
        return _load_local_model_dir(tracker.download(model_uri, tmp), source=model_uri)


def load_backmapper_any(model: str, tracker: Tracker | None = None):
    """A backmapper from a ``Backmapper.save`` folder, a downloaded MLflow model folder, a model URI (needs
    ``tracker``), or a shipped model (``zoo:NAME``, :mod:`finegrain.trainables.shipped`)."""
    if model.startswith(shipped.PREFIX):
        return load_backmapper(shipped.folder(model))
    path = Path(model)
    if path.is_dir():
        return _load_local_model_dir(path, source=model)
    if "://" in model or model.startswith(("runs:/", "models:/")):
        if tracker is None:
            raise InputError(f"model: {model} is a model URI, and no tracking server was given to resolve it")
        return load_backmapper_from_uri(model, tracker)
    raise FileNotFoundError(f"model: {model} is neither a model folder nor a model URI (runs:/..., models:/...) "
                            f"nor zoo:NAME")


def _load_local_model_dir(path: Path, source: str):
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
