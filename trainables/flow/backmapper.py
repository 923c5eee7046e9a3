"""The trained flow as a :class:`~finegrain.trainables.protocol.Backmapper` (family ``flow``).

``backmap_xyz`` samples q(x | y) by integrating the ODE (frame-based: all
frames and samples as one batch; temporal: autoregressively, AA(t-1) of
each chain conditioning frame t, the first frame from ``prev_aa_xyz`` or
the frame-only density).  ``log_likelihood`` returns log q(x | y) per
frame (nats, fibre measure in nm; see :mod:`.geometry`).  Saved as JSON
config + tensors only (``weights_only`` load).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from finegrain.platform.science.mapping import CGMapping
from finegrain.platform.science.errors import InputError
from finegrain.platform.science.validation import check_xyz
from finegrain.trainables.flow.config import FlowConfig
from finegrain.trainables.flow.model import ConditionalFlow
from finegrain.trainables.checkpoints import read_checkpoint
from finegrain.trainables.protocol import Backmapper, load_weights

__all__ = ["FlowBackmapper"]


class FlowBackmapper(Backmapper):
    """A :class:`ConditionalFlow` for one topology and CG mapping; ``info``: provenance (run id, data hash)."""

    family = "flow"

    def __init__(self, topology, mapping: CGMapping, flow: ConditionalFlow, info: dict | None = None,
                 batch_rows: int = 1024):
        super().__init__(topology, mapping)
        if (flow.n_atoms, flow.n_beads) != (mapping.n_atoms, mapping.n_beads):
            raise InputError(f"flow: built for {flow.n_atoms} atoms / {flow.n_beads} beads, mapping "
                             f"'{mapping.name}' has {mapping.n_atoms} / {mapping.n_beads}")
        self.flow = flow.eval()
        self.info = dict(info or {})
        self.batch_rows = int(batch_rows)

    @property
    def config(self) -> FlowConfig:
        return self.flow.config

    @property
    def frames_independent(self) -> bool:
        """Frame-only flows sample each frame on its own; temporal ones condition on AA(t-1)."""
        return not self.config.temporal

    @property
    def bead_assignment(self) -> np.ndarray:
        """[n_atoms] int: the bead each atom's fibre coordinates are attached to (the mapping-entropy
        estimators group atoms by it)."""
        return self.flow.geometry.assignment.cpu().numpy()

    @property
    def device(self) -> torch.device:
        return self.flow.geometry.proj.device

    def to(self, device) -> "FlowBackmapper":
        self.flow.to(device)
        return self

    def _gen(self, seed: int | None) -> torch.Generator:
        g = torch.Generator(device=self.device)
        if seed is None:
            g.seed()  # non-deterministic, this generator only
            return g
        return g.manual_seed(int(seed))

    def _tensor(self, arr: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(arr), dtype=torch.float32, device=self.device)

    # -- the protocol -------------------------------------------------------------
    def backmap_xyz(self, cg_xyz: np.ndarray, n_samples: int = 1, seed: int | None = None,
                    prev_aa_xyz: np.ndarray | None = None, **ode_options) -> np.ndarray:
        """[T, n_beads, 3] nm -> [n_samples, T, n_atoms, 3] nm (ode_options: method, steps, rtol, atol)."""
        cg = self.check_cg(cg_xyz)
        if n_samples < 1:
            raise InputError(f"n_samples: expected >= 1, got {n_samples}")
        prev = None
        if prev_aa_xyz is not None:
            prev = check_xyz(prev_aa_xyz, self.mapping.n_atoms, "prev_aa_xyz")
            if prev.shape[0] != 1:
                raise InputError(f"prev_aa_xyz: expected one frame [{self.mapping.n_atoms}, 3], got {prev.shape}")
        gen = self._gen(seed)
        t_frames = cg.shape[0]
        if not self.config.temporal:
            rows = np.repeat(cg[None], n_samples, axis=0).reshape(-1, self.mapping.n_beads, 3)
            out = [self.flow.sample(self._tensor(rows[s:s + self.batch_rows]), generator=gen, **ode_options)
                   for s in range(0, len(rows), self.batch_rows)]
            return torch.cat(out).double().cpu().numpy().reshape(n_samples, t_frames, self.mapping.n_atoms, 3)
        out = np.zeros((n_samples, t_frames, self.mapping.n_atoms, 3))
        last = None if prev is None else self._tensor(np.repeat(prev, n_samples, axis=0))
        for t in range(t_frames):
            y = self._tensor(np.repeat(cg[t:t + 1], n_samples, axis=0))
            last = self.flow.sample(y, prev=last, generator=gen, **ode_options)
            out[:, t] = last.double().cpu().numpy()
        return out

    def log_likelihood(self, aa_xyz: np.ndarray, cg_xyz: np.ndarray, prev_aa_xyz: np.ndarray | None = None,
                       seed: int = 0, batch: int = 256, **options) -> np.ndarray:
        """log q(x | y[, AA(t-1)]) per frame [T] (nats, fibre Lebesgue measure in nm).

        aa_xyz [T, N, 3], cg_xyz [T, n, 3] (nm), prev_aa_xyz [T, N, 3] | None
        (temporal models; None: the frame-only density).  options: divergence
        (exact | hutchinson), n_probes, method, steps, rtol, atol; by default
        the adaptive ``config.likelihood_method`` (dopri5) with the config's
        rtol / atol (see :meth:`ConditionalFlow.log_prob`).  Hutchinson
        probes come from ``seed``: the same call gives the same numbers.
        """
        aa = check_xyz(aa_xyz, self.mapping.n_atoms, "aa_xyz")
        cg = self.check_cg(cg_xyz)
        if cg.shape[0] != aa.shape[0]:
            raise InputError(f"cg_xyz: {cg.shape[0]} frames, aa_xyz has {aa.shape[0]}")
        prev = None
        if prev_aa_xyz is not None:
            prev = check_xyz(prev_aa_xyz, self.mapping.n_atoms, "prev_aa_xyz")
            if prev.shape[0] != aa.shape[0]:
                raise InputError(f"prev_aa_xyz: {prev.shape[0]} frames, aa_xyz has {aa.shape[0]}")
        gen = self._gen(seed)
        out = []
        for s in range(0, aa.shape[0], batch):
            p = None if prev is None else self._tensor(prev[s:s + batch])
            lp = self.flow.log_prob(self._tensor(aa[s:s + batch]), self._tensor(cg[s:s + batch]), p,
                                    generator=gen, **options)
            out.append(lp.double().cpu().numpy())
        return np.concatenate(out)

    # -- persistence ----------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {"flow": self.config.to_dict(), "assignment": self.flow.geometry.assignment.tolist(),
                "info": self.info}

    def _state(self) -> dict[str, Any]:
        return {k: v.detach().cpu() for k, v in self.flow.state_dict().items()}

    @classmethod
    def _from_saved(cls, topology, mapping: CGMapping, config: dict, state: dict) -> "FlowBackmapper":
        return cls(topology, mapping, _flow(config, mapping, state), info=config.get("info"))

    @classmethod
    def from_checkpoint(cls, folder, topology, mapping: CGMapping, info: dict | None = None) -> "FlowBackmapper":
        """Rebuild from a training checkpoint folder (see :mod:`.train`)."""
        ck = read_checkpoint(folder, "flow", "flow")
        return cls(topology, mapping, _flow(ck["meta"], mapping, ck["model"]), info=info)


def _flow(config: dict, mapping: CGMapping, state: dict) -> ConditionalFlow:
    """The flow of a saved config (``flow``, ``assignment``) with its weights."""
    flow = ConditionalFlow(FlowConfig.from_dict(config["flow"]), mapping.matrix, np.asarray(config["assignment"]))
    return load_weights(flow, state, "flow")
