"""One container for frames: coordinates, trajectory labels, times, energies, samples, topology, mapping.

:class:`Frames` is what travels between the metrics
(:func:`~finegrain.platform.science.metrics.evaluate_frames`), the evaluation
job and the mapping-entropy comparison.  It is checked once, when it is made;
the string-keyed dicts of the Parquet shards
(:func:`finegrain.datasets.shards.read_frames`) and of MLflow artifacts are
its edges: :meth:`Frames.from_dict` and :meth:`Frames.to_dict` use their keys.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

import numpy as np

from finegrain.platform.science.errors import InputError
from finegrain.platform.science.validation import check_xyz

__all__ = ["Frames", "FRAME_KEYS"]

#: The dict keys :meth:`Frames.from_dict` reads and :meth:`Frames.to_dict` writes (= the field names).
FRAME_KEYS = ("aa_xyz_nm", "cg_xyz_nm", "traj_id", "time_ps", "energy_kj_mol", "frame", "samples", "box_nm")
_PER_FRAME_1D = ("traj_id", "time_ps", "energy_kj_mol", "frame")


@dataclass(frozen=True, eq=False)
class Frames:
    """T frames of one system (numpy arrays; every field but the coordinates' particles is indexed by frame).

    - ``aa_xyz_nm`` [T, N, 3] float, nm: atomistic coordinates (None: not known, e.g. CG input only);
    - ``cg_xyz_nm`` [T, n, 3] float, nm: coarse-grained (bead) coordinates, or None;
    - ``traj_id`` [T] str: the trajectory each frame belongs to (None: one trajectory);
      frames of a trajectory are in time order;
    - ``time_ps`` [T] float, ps: simulation time of each frame, or None;
    - ``energy_kj_mol`` [T] float, kJ/mol: potential energy (NaN where unknown), or None;
    - ``frame`` [T] int: index of the frame in its trajectory (the shards' ``frame`` column), or None;
    - ``samples`` [K, T, N, 3] float, nm: K backmapped samples of each frame, or None;
    - ``box_nm`` [T, 3, 3] float, nm: periodic box vectors (rows a, b, c) of each frame, or None (not
      periodic);
    - ``topology``: ``mdtraj.Topology`` of the N atoms, or None;
    - ``mapping``: :class:`~finegrain.platform.science.mapping.CGMapping` [n, N], or None.

    Checked once in ``__post_init__`` (InputError naming the field): every per-frame field has the
    same T, coordinates have a last axis of 3 and are finite, samples hold the atoms of
    ``aa_xyz_nm``, and topology / mapping agree with N and n.  Arrays are kept as given (no copy,
    no dtype change); the container is frozen, the arrays are not made read-only (mdtraj needs
    writable arrays).
    """

    aa_xyz_nm: np.ndarray | None = None
    cg_xyz_nm: np.ndarray | None = None
    traj_id: np.ndarray | None = None
    time_ps: np.ndarray | None = None
    energy_kj_mol: np.ndarray | None = None
    frame: np.ndarray | None = None
    samples: np.ndarray | None = None
    box_nm: np.ndarray | None = None
    topology: Any = None
    mapping: Any = None

    def __post_init__(self) -> None:
        for key in FRAME_KEYS:
            value = getattr(self, key)
            if value is not None and not isinstance(value, np.ndarray):
                object.__setattr__(self, key, np.asarray(value))
        n = self._frame_count()
        for key in ("aa_xyz_nm", "cg_xyz_nm"):
            _check_coordinates(getattr(self, key), key, n, "[T, N, 3]" if key == "aa_xyz_nm" else "[T, n, 3]")
        for key in _PER_FRAME_1D:
            v = getattr(self, key)
            if v is not None and v.shape != (n,):
                raise InputError(f"{key}: expected shape [{n}] (one value per frame), got {v.shape}")
        for key in ("time_ps", "energy_kj_mol", "frame"):
            v = getattr(self, key)
            if v is not None and not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
                raise InputError(f"{key}: expected numbers, got dtype {v.dtype}")
        b = self.box_nm
        if b is not None and (b.shape != (n, 3, 3) or not np.all(np.isfinite(b))):
            raise InputError(f"box_nm: expected finite box vectors [{n}, 3, 3] (nm), got shape {b.shape}")
        s = self.samples
        if s is not None:
            if s.ndim != 4 or s.shape[-1] != 3:
                raise InputError(f"samples: expected shape [K, T, N, 3], got {s.shape}")
            if s.shape[1] != n:
                raise InputError(f"samples: holds {s.shape[1]} frames per sample, the other fields {n}")
            if self.aa_xyz_nm is not None and s.shape[2] != self.aa_xyz_nm.shape[1]:
                raise InputError(f"samples: has {s.shape[2]} atoms per frame, aa_xyz_nm has {self.aa_xyz_nm.shape[1]}")
            if s.size:
                check_xyz(s.reshape(-1, *s.shape[2:]), None, "samples", "atoms", frames_per_sample=s.shape[1])
        n_atoms = self.n_atoms
        n_beads = None if self.cg_xyz_nm is None else self.cg_xyz_nm.shape[1]
        if self.topology is not None and n_atoms is not None and self.topology.n_atoms != n_atoms:
            raise InputError(f"topology: has {self.topology.n_atoms} atoms, the coordinates have {n_atoms}")
        if self.mapping is not None:
            if n_atoms is not None and self.mapping.n_atoms != n_atoms:
                raise InputError(f"mapping: '{getattr(self.mapping, 'name', '')}' has {self.mapping.n_atoms} atoms, "
                                 f"the coordinates have {n_atoms}")
            if n_beads is not None and self.mapping.n_beads != n_beads:
                raise InputError(f"mapping: '{getattr(self.mapping, 'name', '')}' has {self.mapping.n_beads} beads, "
                                 f"cg_xyz_nm has {n_beads}")
            if self.topology is not None and self.mapping.n_atoms != self.topology.n_atoms:
                raise InputError(f"mapping: has {self.mapping.n_atoms} atoms, topology has {self.topology.n_atoms}")

    def _frame_count(self) -> int:
        """T from the first field given; InputError when none is."""
        for key in FRAME_KEYS:
            v = getattr(self, key)
            if v is None:
                continue
            if v.ndim == 0:
                raise InputError(f"{key}: expected an array over frames, got a scalar")
            if key == "samples":
                if v.ndim < 2:
                    raise InputError(f"samples: expected shape [K, T, N, 3], got {v.shape}")
                return int(v.shape[1])
            return int(v.shape[0])
        raise InputError(f"frames: no per-frame field given (one of {', '.join(FRAME_KEYS)})")

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        """T, the number of frames."""
        return self._frame_count()

    @property
    def n_atoms(self) -> int | None:
        """N from ``aa_xyz_nm`` (else ``samples``, else the topology), or None."""
        if self.aa_xyz_nm is not None:
            return int(self.aa_xyz_nm.shape[1])
        if self.samples is not None:
            return int(self.samples.shape[2])
        return None if self.topology is None else int(self.topology.n_atoms)

    # -- edges: string-keyed dicts ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | Frames, topology=None, mapping=None) -> Frames:
        """Frames from a dict with :data:`FRAME_KEYS` keys (``read_frames`` columns, plus ``samples``).

        Other keys (``system``, ``data_hash``, ``constraints``, ...) are not frames and are left
        out; a key holding None is absent.  topology / mapping are attached when given (a
        Frames given as ``d`` keeps its own otherwise).
        """
        if isinstance(d, Frames):
            extra = {k: v for k, v in (("topology", topology), ("mapping", mapping)) if v is not None}
            return replace(d, **extra) if extra else d
        if not isinstance(d, Mapping):
            raise InputError(f"frames: expected a dict of arrays or Frames, got {type(d).__name__}")
        return cls(**{k: d[k] for k in FRAME_KEYS if d.get(k) is not None}, topology=topology, mapping=mapping)

    def to_dict(self) -> dict[str, np.ndarray]:
        """The arrays that are set, under their :data:`FRAME_KEYS` (no topology or mapping)."""
        return {k: getattr(self, k) for k in FRAME_KEYS if getattr(self, k) is not None}

    # -- selections ------------------------------------------------------------------------------
    def subset(self, index) -> Frames:
        """The frames ``index`` (int indices, a boolean mask [T] or a slice), every field kept aligned
        (``samples`` on its axis 1); topology and mapping are shared."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        if not isinstance(index, slice):
            index = np.asarray(index)
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "samples" and v is not None:
                v = v[:, index]
            elif f.name in FRAME_KEYS and v is not None:
                v = v[index]
            values[f.name] = v
        return Frames(**values)


def _check_coordinates(xyz: np.ndarray | None, key: str, n: int, shape: str) -> None:
    if xyz is None:
        return
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise InputError(f"{key}: expected shape {shape} (nm), got {xyz.shape}")
    if xyz.shape[0] != n:
        raise InputError(f"{key}: holds {xyz.shape[0]} frames, the other fields {n}")
    if n:
        check_xyz(xyz, None, key, "atoms" if key == "aa_xyz_nm" else "beads")
