"""The MLflow "models from code" file logged with every backmapper (any family).

MLflow copies this file into the logged model and runs it when the model is
loaded with ``mlflow.pyfunc.load_model``; it defines :class:`BackmapperModel`
and registers an instance with ``mlflow.models.set_model``.  The model's one
artifact, ``backmapper``, is a folder written by ``Backmapper.save`` (JSON,
PDB, tensors-only torch file), read with ``load_backmapper`` — no pickle.

Not meant to be imported by finegrain itself (only located, see
:func:`finegrain.trainables.persistence.model_code_path`).

``predict`` input: an array [T, n_beads, 3] (nm) of CG frames, or a dict with
``cg_xyz`` (and optionally ``n_samples``, ``seed``); ``params`` may carry
``n_samples`` and ``seed``.  Output: an array [n_samples, T, n_atoms, 3] (nm).
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class BackmapperModel(PythonModel):
    """pyfunc wrapper around a saved finegrain Backmapper."""

    def load_context(self, context):
        # imported when MLflow loads the model: MLflow reads this file as code, and finding it
        # (persistence.model_code_path) must not import the package
        from finegrain.trainables.protocol import load_backmapper

        self.backmapper = load_backmapper(context.artifacts["backmapper"])

    def predict(self, context, model_input, params=None):
        params = dict(params or {})
        if isinstance(model_input, dict):
            params = {**{k: v for k, v in model_input.items() if k != "cg_xyz"}, **params}
            model_input = model_input["cg_xyz"]
        cg = np.asarray(model_input, dtype=np.float64)
        if cg.ndim == 2 and cg.shape[1] == 3 * self.backmapper.mapping.n_beads:  # flat frames [T, 3n]
            cg = cg.reshape(cg.shape[0], -1, 3)
        seed = params.get("seed")
        return self.backmapper.backmap_xyz(cg, n_samples=int(params.get("n_samples", 1)),
                                           seed=None if seed is None else int(seed))


mlflow.models.set_model(BackmapperModel())
