"""Trajectory frames as Arrow/Parquet shards: schema, manifest, readers, pairs.

A shard folder holds ``shards/*.parquet`` (each shard: contiguous frames of
one trajectory) and ``manifest.json``. One row per frame:

=================  ===============================  ==========
column             type                             unit
=================  ===============================  ==========
system             string
traj_id            string
frame              int32 (index in its trajectory)
time_ps            float64                          ps
aa_xyz_nm          fixed_size_list<float32>[3N]     nm, atom-major xyz
cg_xyz_nm          fixed_size_list<float32>[3n]     nm, bead-major xyz
energy_kj_mol      float64, nullable                kJ/mol
forces             fixed_size_list<float32>[3N],    kJ/mol/nm
                   nullable
box_nm             fixed_size_list<float32>[9]      nm, box vectors a, b, c
                   (periodic frames only)           (rows of a [3, 3]) per frame
=================  ===============================  ==========

Periodic trajectories (``Manifest.has_box``) carry their box per frame
(``box_nm``; a box that changes between frames is recorded as it is) and
their molecules are made whole before mapping, so ``aa_xyz_nm`` may differ
from the file's coordinates by box vectors.

Temporal pairs (AA(t-lag), CG(t), AA(t)) never cross trajectories.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_SPLIT_SEED",
    "Manifest",
    "ShardInfo",
    "frame_schema",
    "frames_table",
    "sha256_file",
    "read_frames",
    "split_trajectories",
    "temporal_pairs",
    "pair_dataset",
    "iter_pair_batches",
    "unflatten_pair_batch",
]

#: The default trajectory split: train / validation / test fractions and the seed that assigns them.
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
DEFAULT_SPLIT_SEED = 0

MANIFEST = "manifest.json"
_FRAME_COLUMNS = ["traj_id", "frame", "time_ps", "aa_xyz_nm", "cg_xyz_nm", "energy_kj_mol"]  # forces on demand
SPLITS = ("train", "validation", "test")


def frame_schema(n_atoms: int, n_beads: int, box: bool = False) -> pa.Schema:
    """The Arrow schema of a frame row for ``n_atoms`` atoms and ``n_beads`` beads (with a ``box_nm``
    column for periodic frames)."""
    return pa.schema(
        [
            pa.field("system", pa.string(), nullable=False),
            pa.field("traj_id", pa.string(), nullable=False),
            pa.field("frame", pa.int32(), nullable=False),
            pa.field("time_ps", pa.float64(), nullable=False),
            pa.field("aa_xyz_nm", pa.list_(pa.float32(), 3 * n_atoms), nullable=False),
            pa.field("cg_xyz_nm", pa.list_(pa.float32(), 3 * n_beads), nullable=False),
            pa.field("energy_kj_mol", pa.float64()),
            pa.field("forces", pa.list_(pa.float32(), 3 * n_atoms)),
        ] + ([pa.field("box_nm", pa.list_(pa.float32(), 9), nullable=False)] if box else []),
        metadata={b"units": b"xyz nm, time ps, energy kJ/mol, forces kJ/mol/nm"},
    )


def _fixed(arr: np.ndarray, width: int) -> pa.FixedSizeListArray:
    flat = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), width)


def frames_table(
    system: str,
    traj_id: str,
    frame: np.ndarray,
    time_ps: np.ndarray,
    aa_xyz_nm: np.ndarray,
    cg_xyz_nm: np.ndarray,
    energy_kj_mol: np.ndarray | None = None,
    forces: np.ndarray | None = None,
    box_nm: np.ndarray | None = None,
) -> pa.Table:
    """Build a frame table. aa_xyz_nm [F, N, 3]; cg_xyz_nm [F, n, 3]; forces [F, N, 3] or None;
    box_nm [F, 3, 3] periodic box vectors (nm, rows a, b, c) or None (not periodic)."""
    f, n_atoms, _ = aa_xyz_nm.shape
    n_beads = cg_xyz_nm.shape[1]
    schema = frame_schema(n_atoms, n_beads, box=box_nm is not None)
    cols = [
        pa.array([system] * f, pa.string()),
        pa.array([traj_id] * f, pa.string()),
        pa.array(np.asarray(frame, dtype=np.int32)),
        pa.array(np.asarray(time_ps, dtype=np.float64)),
        _fixed(aa_xyz_nm, 3 * n_atoms),
        _fixed(cg_xyz_nm, 3 * n_beads),
        pa.array(energy_kj_mol, pa.float64()) if energy_kj_mol is not None else pa.nulls(f, pa.float64()),
        _fixed(forces, 3 * n_atoms) if forces is not None else pa.nulls(f, schema.field("forces").type),
    ] + ([_fixed(box_nm, 9)] if box_nm is not None else [])
    return pa.Table.from_arrays(cols, schema=schema)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the shard folder
    traj_id: str
    first_frame: int
    n_rows: int
    sha256: str


@dataclass
class Manifest:
    """What a shard folder holds; written last, so its presence means complete."""

    system: str
    mapping: dict[str, Any]  # CGMapping.to_dict(): name, bead_names, matrix
    n_atoms: int
    n_beads: int
    atom_names: list[str]
    residue_names: list[str]
    n_frames: int
    n_trajectories: int
    trajectories: dict[str, int]  # traj_id -> n_frames
    shards: list[ShardInfo]
    sources: dict[str, str] = field(default_factory=dict)  # traj_id -> source file
    topology_pdb: str = "topology.pdb"
    has_energies: bool = False
    #: Distance constraints of the simulation that made the frames: [[i, j, r0_nm], ...] atom
    #: indices and length (nm), from its metadata.json. None: unknown (older manifests, external
    #: trajectories) and then treated as nothing constrained; []: known to be unconstrained.
    constraints: list[list] | None = None
    #: Periodic frames: every row carries ``box_nm`` [3, 3] (nm) and molecules were made whole before mapping.
    has_box: bool = False
    schema_version: int = 1

    def save(self, folder: str | Path) -> None:
        (Path(folder) / MANIFEST).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> "Manifest":
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"shard folder {folder}: no {MANIFEST} (not an ingest output, or incomplete)")
        d = json.loads(path.read_text())
        d["shards"] = [ShardInfo(**s) for s in d["shards"]]
        cons = d.get("constraints")
        if cons is not None and (not isinstance(cons, list) or any(not isinstance(r, list) or len(r) != 3 for r in cons)):
            raise ValueError(f"{path}: 'constraints' must be a list of [i, j, r0_nm] rows or null")
        return cls(**d)

    def constraint_arrays(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(pairs [C, 2] int, r0 [C] float64 nm) of :attr:`constraints`, or None when unknown."""
        if self.constraints is None:
            return None
        rows = np.asarray(self.constraints, dtype=np.float64).reshape(-1, 3)
        return rows[:, :2].astype(int), rows[:, 2].copy()

    @property
    def digest(self) -> str:
        """A hash of the data set: the shards' hashes in order (for MLflow tags)."""
        return hashlib.sha256("".join(s.sha256 for s in self.shards).encode()).hexdigest()[:16]

    def verify(self, folder: str | Path) -> None:
        """Recompute row counts and hashes; raise ValueError naming the first bad shard."""
        for s in self.shards:
            p = Path(folder) / s.path
            if not p.is_file():
                raise ValueError(f"shard {p}: missing")
            if sha256_file(p) != s.sha256:
                raise ValueError(f"shard {p}: sha256 differs from the manifest")
            if pq.ParquetFile(p).metadata.num_rows != s.n_rows:
                raise ValueError(f"shard {p}: row count differs from the manifest")

    def shard_paths(self, folder: str | Path, traj_ids: list[str] | None = None) -> list[str]:
        keep = None if traj_ids is None else set(traj_ids)
        return [str(Path(folder) / s.path) for s in self.shards if keep is None or s.traj_id in keep]


def read_frames(folder: str | Path, traj_ids: list[str] | None = None) -> dict[str, np.ndarray]:
    """Read frames in-process, sorted by (traj_id, frame).

    Returns traj_id [F] (str), frame [F], time_ps [F], aa_xyz_nm [F, N, 3],
    cg_xyz_nm [F, n, 3], energy_kj_mol [F] (NaN where unknown), and for a
    periodic data set (``manifest.has_box``) box_nm [F, 3, 3] (nm).
    """
    man = Manifest.load(folder)
    paths = man.shard_paths(folder, traj_ids)
    if not paths:
        raise ValueError(f"shard folder {folder}: no shard for trajectories {traj_ids}")
    cols = _FRAME_COLUMNS + (["box_nm"] if man.has_box else [])
    table = pa.concat_tables([pq.read_table(p, columns=cols) for p in paths])
    table = table.sort_by([("traj_id", "ascending"), ("frame", "ascending")])
    out = _columns(table, man.n_atoms, man.n_beads)
    if man.has_box:
        col = table.column("box_nm").combine_chunks()
        out["box_nm"] = col.values.to_numpy(zero_copy_only=False).reshape(len(table), 3, 3).astype(np.float64)
    return out


def _columns(table: pa.Table, n_atoms: int, n_beads: int) -> dict[str, np.ndarray]:
    def xyz(name: str, n: int) -> np.ndarray:
        col = table.column(name).combine_chunks()
        # writable (a copy where Arrow shares its buffer): mdtraj's kernels need writable arrays
        return np.require(col.values.to_numpy(zero_copy_only=False).reshape(len(table), n, 3), requirements="W")

    energy = table.column("energy_kj_mol").to_numpy(zero_copy_only=False)
    traj = table.column("traj_id").combine_chunks().dictionary_encode()
    return {
        "traj_id": np.asarray(traj.dictionary.to_pylist())[traj.indices.to_numpy()] if len(table) else np.array([], str),
        "frame": table.column("frame").to_numpy(),
        "time_ps": table.column("time_ps").to_numpy(),
        "aa_xyz_nm": xyz("aa_xyz_nm", n_atoms),
        "cg_xyz_nm": xyz("cg_xyz_nm", n_beads),
        "energy_kj_mol": np.asarray(energy, dtype=np.float64),
    }


def split_trajectories(
    manifest: Manifest, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, seed: int = DEFAULT_SPLIT_SEED
) -> dict[str, list[str]]:
    """Assign whole trajectories to train/validation/test (never frames of one to two splits).

    With fewer trajectories than splits, later splits may be empty; train
    always gets at least one trajectory.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions: three non-negative numbers summing to 1, got {fractions}")
    ids = sorted(manifest.trajectories)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n = len(order)
    n_val = int(round(fractions[1] * n)) if n > 1 else 0
    n_test = int(round(fractions[2] * n)) if n > 2 else 0
    if fractions[1] > 0 and n >= 3:
        n_val = max(n_val, 1)
    if fractions[2] > 0 and n >= 3:
        n_test = max(n_test, 1)
    n_train = max(n - n_val - n_test, 1)
    return {
        "train": sorted(order[:n_train]),
        "validation": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def temporal_pairs(frames: dict[str, np.ndarray], lag: int = 1) -> dict[str, np.ndarray]:
    """Pairs (AA(t-lag), CG(t), AA(t)) within trajectories.

    frames: columns as returned by :func:`read_frames` (any order). A pair is
    made only when both frames share ``traj_id`` and their ``frame`` indices
    differ by exactly ``lag``. Returns aa_prev [P, N, 3], cg [P, n, 3], aa [P, N, 3],
    traj_id [P], frame [P] (index of frame t), and box [P, 3, 3] nm (frame t's) when
    ``frames`` has ``box_nm``.
    """
    if lag < 1:
        raise ValueError(f"lag: must be >= 1, got {lag}")
    _, code = np.unique(np.asarray(frames["traj_id"]), return_inverse=True)
    frame = np.asarray(frames["frame"], dtype=np.int64)
    span = int(frame.max()) + lag + 1 if frame.size else 1
    key = code.astype(np.int64) * span + frame  # unique per (trajectory, frame)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    at = np.searchsorted(sorted_key, sorted_key - lag)
    found = (at < len(sorted_key)) & (sorted_key[np.minimum(at, len(sorted_key) - 1)] == sorted_key - lag)
    cur_rows, prev_rows = order[found], order[at[found]]
    return {
        "aa_prev": frames["aa_xyz_nm"][prev_rows],
        "cg": frames["cg_xyz_nm"][cur_rows],
        "aa": frames["aa_xyz_nm"][cur_rows],
        "traj_id": np.asarray(frames["traj_id"])[cur_rows],
        "frame": np.asarray(frames["frame"])[cur_rows],
    } | ({"box": np.asarray(frames["box_nm"])[cur_rows]} if frames.get("box_nm") is not None else {})


def pair_dataset(folder: str | Path, split: str = "train", lag: int = 1, seed: int = DEFAULT_SPLIT_SEED,
                 fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, shuffle_seed: int | None = None):
    """A Ray Dataset of temporal pairs for one split (for ``get_dataset_shard``).

    Columns: aa_prev, cg, aa (flat float32, reshape with
    :func:`unflatten_pair_batch`), frame (index of frame t) and, for a periodic
    data set, box (frame t's box vectors, flat [9] nm). Each task reads
    one trajectory's shards, so pairs never cross a trajectory and do span
    shard edges. With ``shuffle_seed`` the rows come globally shuffled over
    every trajectory of the split: each row gets a pseudo-random key, a
    function of (shuffle_seed, trajectory, frame) only; block k of K holds the
    rows with keys in [k/K, (k+1)/K) in key order, so the order is the same on
    every run (a resumed run sees what the uninterrupted one saw). Without it a trajectory is one block in
    time order (``iter_torch_batches(local_shuffle_buffer_size=...)`` then only
    mixes a window of it).
    """
    import ray.data

    man = Manifest.load(folder)
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    ids = split_trajectories(man, fractions, seed)[split]
    if not ids:
        raise ValueError(f"split {split!r} of {folder} has no trajectory ({man.n_trajectories} in all)")
    n_atoms, n_beads = man.n_atoms, man.n_beads

    if shuffle_seed is None:
        items = [{"traj_id": t, "paths": man.shard_paths(folder, [t])} for t in ids]
        return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _TrajectoryPairs(n_atoms, n_beads, lag, man.has_box), batch_size=1, batch_format="pyarrow", zero_copy_batch=True)
    # K blocks, each a key-ordered random 1/K of every trajectory's pairs (map tasks only: no Ray Data shuffle,
    # whose memory requests do not fit a Tune trial's placement group)
    parts = max(1, min(16, len(ids)))
    trajs = [man.shard_paths(folder, [t]) for t in ids]
    items = [{"part": k, "parts": parts, "trajs": trajs} for k in range(parts)]
    return ray.data.from_items(items, override_num_blocks=parts).map_batches(
        _ShuffledPairs(n_atoms, n_beads, lag, shuffle_seed, man.has_box), batch_size=1, batch_format="pyarrow",
        zero_copy_batch=True)




def _pair_rows(paths: list[str], n_atoms: int, n_beads: int, lag: int, box: bool = False) -> dict[str, np.ndarray]:
    table = pa.concat_tables([pq.read_table(p, columns=_FRAME_COLUMNS + (["box_nm"] if box else []))
                              for p in paths])
    frames = _columns(table, n_atoms, n_beads)
    if box:
        frames["box_nm"] = table.column("box_nm").combine_chunks().values.to_numpy(
            zero_copy_only=False).reshape(len(table), 3, 3)
    p = temporal_pairs(frames, lag)
    n = len(p["frame"])
    keys = ("aa_prev", "cg", "aa") + (("box",) if box else ())
    return {k: p[k].reshape(n, -1) for k in keys} | {"frame": p["frame"], "traj_id": p["traj_id"]}


def pair_columns(box: bool) -> tuple[str, ...]:
    """The columns of a pair data set's rows (``box``: flat [9] nm box vectors of frame t, periodic data)."""
    return ("aa_prev", "cg", "aa", "frame") + (("box",) if box else ())


class _TrajectoryPairs:
    """Ray Data UDF: one trajectory's shard paths in, its temporal pairs out, in time order."""

    def __init__(self, n_atoms: int, n_beads: int, lag: int, box: bool = False):
        self.n_atoms, self.n_beads, self.lag, self.box = n_atoms, n_beads, lag, box

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        paths = [p for ps in batch.column("paths").to_pylist() for p in ps]
        rows = _pair_rows(paths, self.n_atoms, self.n_beads, self.lag, self.box)
        return {k: rows[k] for k in pair_columns(self.box)}


class _ShuffledPairs:
    """Ray Data UDF: part k of K in, the pairs of every trajectory whose key falls in [k/K, (k+1)/K) out,
    ordered by key. A pair's key is a function of (seed, trajectory id, frame) only."""

    def __init__(self, n_atoms: int, n_beads: int, lag: int, seed: int, box: bool = False):
        self.n_atoms, self.n_beads, self.lag, self.seed, self.box = n_atoms, n_beads, lag, int(seed), box

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        import zlib

        k, parts = batch.column("part")[0].as_py(), batch.column("parts")[0].as_py()
        chunks, keys = [], []
        for paths in batch.column("trajs")[0].as_py():
            rows = _pair_rows(paths, self.n_atoms, self.n_beads, self.lag, self.box)
            if not len(rows["frame"]):
                continue
            traj = zlib.crc32(str(rows["traj_id"][0]).encode())
            key = np.random.default_rng([self.seed, traj]).random(int(rows["frame"].max()) + 1)[rows["frame"]]
            mine = np.floor(key * parts).astype(int) == k
            chunks.append({c: rows[c][mine] for c in pair_columns(self.box)})
            keys.append(key[mine])
        if not chunks:
            return {"aa_prev": np.zeros((0, 3 * self.n_atoms), np.float32), "cg": np.zeros((0, 3 * self.n_beads),
                    np.float32), "aa": np.zeros((0, 3 * self.n_atoms), np.float32), "frame": np.zeros(0, np.int32)
                    } | ({"box": np.zeros((0, 9), np.float32)} if self.box else {})
        order = np.argsort(np.concatenate(keys), kind="stable")
        return {c: np.concatenate([ch[c] for ch in chunks])[order] for c in pair_columns(self.box)}


def unflatten_pair_batch(batch: dict, n_atoms: int, n_beads: int):
    """(aa_prev [B, N, 3], cg [B, n, 3], aa [B, N, 3]) from a flat pair batch (numpy or torch)."""
    b = batch["aa"].shape[0]
    return (
        batch["aa_prev"].reshape(b, n_atoms, 3),
        batch["cg"].reshape(b, n_beads, 3),
        batch["aa"].reshape(b, n_atoms, 3),
    )


def iter_pair_batches(folder: str | Path, split: str = "train", lag: int = 1, batch_size: int = 64,
                      shuffle: bool = True, seed: int = 0, device: str = "cpu",
                      fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> Iterator[tuple]:
    """In-process torch batches (aa_prev, cg, aa), each [B, *, 3] float32, for one epoch."""
    import torch

    man = Manifest.load(folder)
    ids = split_trajectories(man, fractions, seed)[split]
    pairs = temporal_pairs(read_frames(folder, ids), lag)
    n = len(pairs["frame"])
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        yield tuple(torch.from_numpy(np.ascontiguousarray(pairs[k][rows])).to(device) for k in ("aa_prev", "cg", "aa"))
