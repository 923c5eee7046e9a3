"""The internal-coordinate model as a :class:`~finegrain.trainables.protocol.Backmapper` (family ``ic``).

Frame-based: every frame and sample is one row of one batch, each free
coordinate one MADE pass over all rows (no per-frame Python). Bead atoms are
placed on their beads exactly. Saved as JSON (config, Z-matrix) + tensors
only (``weights_only`` load).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from finegrain.platform.science.mapping import CGMapping
from finegrain.platform.science.errors import InputError
from finegrain.platform.science.validation import check_xyz
from finegrain.trainables.ic.config import ICConfig
from finegrain.trainables.ic.model import ConditionalIC
from finegrain.trainables.ic.zmatrix import ZMatrix, anchor_atoms
from finegrain.trainables.checkpoints import read_checkpoint
from finegrain.trainables.protocol import Backmapper, load_weights

__all__ = ["ICBackmapper"]


class ICBackmapper(Backmapper):
    """A :class:`ConditionalIC` for one topology and CG mapping; ``info``: provenance (run id, data hash)."""

    family = "ic"
    frames_independent = True

    def __init__(self, topology, mapping: CGMapping, model: ConditionalIC, info: dict | None = None,
                 batch_rows: int = 8192):
        super().__init__(topology, mapping)
        if model.zm.n_atoms != mapping.n_atoms or not np.array_equal(model.zm.anchors, anchor_atoms(mapping)):
            raise InputError(f"model: its Z-matrix does not fit mapping '{mapping.name}' on this topology")
        if not bool(model.ready):
            raise InputError("model: its standardisation was never fitted (fit_statistics); not a trained model")
        self.model = model.eval()
        self.info = dict(info or {})
        self.batch_rows = int(batch_rows)

    @property
    def config(self) -> ICConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.ic_mean.device

    def to(self, device) -> "ICBackmapper":
        self.model.to(device)
        return self

    def backmap_xyz(self, cg_xyz: np.ndarray, n_samples: int = 1, seed: int | None = None,
                    prev_aa_xyz: np.ndarray | None = None) -> np.ndarray:
        """[T, n_beads, 3] nm -> [n_samples, T, n_atoms, 3] nm (``prev_aa_xyz`` is not used: frame-based)."""
        cg = self.check_cg(cg_xyz)
        if n_samples < 1:
            raise InputError(f"n_samples: expected >= 1, got {n_samples}")
        if prev_aa_xyz is not None:
            check_xyz(prev_aa_xyz, self.mapping.n_atoms, "prev_aa_xyz")
        t_frames = cg.shape[0]
        rows = np.repeat(cg[None], n_samples, axis=0).reshape(-1, self.mapping.n_beads, 3)
        dtype = self.model.ic_mean.dtype
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # seeded draws without touching the caller's stream
            if seed is None:
                torch.seed()
            else:
                torch.manual_seed(int(seed))
            out = [self.model.sample(torch.as_tensor(rows[s:s + self.batch_rows], dtype=dtype, device=self.device))
                   for s in range(0, len(rows), self.batch_rows)]
        return torch.cat(out).double().cpu().numpy().reshape(n_samples, t_frames, self.mapping.n_atoms, 3)

    def log_likelihood(self, aa_xyz: np.ndarray, cg_xyz: np.ndarray, batch: int = 4096) -> np.ndarray:
        """log q(z(x) | y) per frame [T] (nats; bond nm, angle rad, dihedral rad of the free atoms)."""
        aa = check_xyz(aa_xyz, self.mapping.n_atoms, "aa_xyz")
        cg = self.check_cg(cg_xyz)
        if cg.shape[0] != aa.shape[0]:
            raise InputError(f"cg_xyz: {cg.shape[0]} frames, aa_xyz has {aa.shape[0]}")
        dtype = self.model.ic_mean.dtype
        with torch.no_grad():
            return np.concatenate([self.model.log_prob(
                torch.as_tensor(aa[s:s + batch], dtype=dtype, device=self.device),
                torch.as_tensor(cg[s:s + batch], dtype=dtype, device=self.device)).double().cpu().numpy()
                for s in range(0, len(aa), batch)])

    # -- persistence ----------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {"ic": self.config.to_dict(), "zmatrix": self.model.zm.to_dict(), "info": self.info}

    def _state(self) -> dict[str, Any]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    @classmethod
    def _from_saved(cls, topology, mapping: CGMapping, config: dict, state: dict) -> "ICBackmapper":
        return cls(topology, mapping, _model(config, state), info=config.get("info"))

    @classmethod
    def from_checkpoint(cls, folder, topology, mapping: CGMapping, info: dict | None = None) -> "ICBackmapper":
        """Rebuild from a training checkpoint folder (see :mod:`.train`)."""
        ck = read_checkpoint(folder, "ic", "ic")
        return cls(topology, mapping, _model(ck["meta"], ck["model"]), info=info)


def _model(config: dict, state: dict) -> ConditionalIC:
    """The model of a saved config (``ic``, ``zmatrix``) with its weights."""
    model = ConditionalIC(ICConfig.from_dict(config["ic"]), ZMatrix.from_dict(config["zmatrix"]))
    return load_weights(model, state, "ic")
