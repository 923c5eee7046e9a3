"""Ingest trajectories into Parquet shards with Ray Data.

Each input trajectory (any format mdtraj reads) is read in chunks by a Ray
Data task, checked (atom count, finite coordinates, nm units), mapped to CG
with the mapping matrix and written as one shard per chunk. The manifest
(counts, names, mapping, per-shard sha256, the simulation's constrained
distances) is written last and the folder is renamed into place only when
everything succeeded.

Periodic boxes are carried too: a trajectory with unit cells gives every
shard row its box (``box_nm``, nm, [3, 3]; a box that changes between frames
is recorded as it is) and its molecules are made whole (mdtraj, along the
topology's bonds) before mapping, so a molecule split by the box edge maps to
the right bead. A periodic system's trajectory (its simulation's metadata
says ``periodic``, or ``ingest(periodic=True)``) without box vectors is refused.

Constraints are carried, not guessed: trajectories from ``finegrain simulate``
bring the constrained pairs recorded in its ``metadata.json``; external
trajectories have none unless given (``ingest(constraints=...)``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finegrain.datasets.folders import atomic_folder
from finegrain.platform.science.mapping import CGMapping
from finegrain.datasets.shards import Manifest, ShardInfo, frames_table, sha256_file
from finegrain.platform.science.errors import InputError
from finegrain.platform.science.validation import check_units_nm, check_xyz

__all__ = ["TrajectorySource", "sources_from_simulation", "constraints_from_simulation", "periodic_from_simulation",
           "ingest", "IngestError", "FROM_SOURCES"]

#: ``ingest(constraints=FROM_SOURCES)``: take the constraint record from the sources' simulation metadata.
FROM_SOURCES = "from-sources"


class IngestError(InputError):
    """An input file that cannot be ingested (the message names file and frame)."""


@dataclass(frozen=True)
class TrajectorySource:
    """One trajectory file; ``observables`` is an optional NPZ with
    ``time_ps`` [F], ``potential_kj_mol`` [F], ``forces_kj_mol_nm`` [F, N, 3];
    ``simulation`` the ``finegrain simulate`` folder it came from (its
    metadata.json says which distances were constrained), None for external files."""

    traj_id: str
    path: str
    observables: str | None = None
    simulation: str | None = None


def sources_from_simulation(sim_dir: str | Path) -> tuple[str, str, list[TrajectorySource]]:
    """(topology path, system name, sources) of a ``finegrain simulate`` output folder."""
    sim_dir = Path(sim_dir).resolve()  # Ray tasks run in other folders
    meta_path = sim_dir / "metadata.json"
    if not meta_path.is_file():
        raise IngestError(f"SIM_DIR {sim_dir}: no metadata.json (not a finegrain simulate output)")
    meta = json.loads(meta_path.read_text())
    sources = [
        TrajectorySource(
            traj_id=f"{meta['system']}-s{meta['config']['seed']}-r{r['replica']:03d}",
            path=str(sim_dir / r["trajectory"]),
            observables=str(sim_dir / r["observables"]),
            simulation=str(sim_dir),
        )
        for r in meta["replicas"]
    ]
    return str(sim_dir / "topology.pdb"), meta["system"], sources


def constraints_from_simulation(sim_dir: str | Path) -> list[list] | None:
    """The constrained distances [[i, j, r0_nm], ...] a ``finegrain simulate`` folder recorded.

    [] when it ran without constraints; None (unknown) for an older folder
    that names constraints ("HBonds") but did not record the pairs.
    """
    meta_path = Path(sim_dir) / "metadata.json"
    if not meta_path.is_file():
        raise IngestError(f"SIM_DIR {sim_dir}: no metadata.json (not a finegrain simulate output)")
    meta = json.loads(meta_path.read_text())
    if "constrained_pairs" in meta:
        return [[int(i), int(j), float(r0)] for i, j, r0 in meta["constrained_pairs"]]
    return [] if meta.get("constraints") is None else None


def _constraint_rows(constraints, sources: list[TrajectorySource], n_atoms: int) -> list[list] | None:
    """The manifest's constraint record: given explicitly, or the one every source's simulation recorded."""
    if constraints == FROM_SOURCES:
        records = {}
        for src in sources:
            rec = constraints_from_simulation(src.simulation) if src.simulation else None
            records.setdefault(json.dumps(rec), (src, rec))
        if len(records) > 1:
            (a, _), (b, _) = list(records.values())[:2]
            raise IngestError(f"traj: trajectories {a.traj_id} and {b.traj_id} come with different constraint records "
                              f"(simulations {a.simulation} and {b.simulation}); ingest them separately or pass "
                              f"constraints explicitly")
        constraints = next(iter(records.values()))[1]
    if constraints is None:
        return None
    rows = []
    for row in constraints:
        if len(row) != 3 or not (0 <= int(row[0]) < n_atoms and 0 <= int(row[1]) < n_atoms) or not float(row[2]) > 0:
            raise IngestError(f"constraints: expected rows [i, j, r0_nm] with atoms in 0..{n_atoms - 1} and "
                              f"r0 > 0, got {row}")
        rows.append([int(row[0]), int(row[1]), float(row[2])])
    return rows


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def dcd_declared_frames(path: str | Path) -> int | None:
    """Frame count a DCD header declares (NSET), or None if not a DCD / not declared.

    mdtraj reads as many whole frames as the file holds, so a truncated DCD
    loads silently short; comparing with NSET catches it.
    """
    import struct

    if Path(path).suffix.lower() != ".dcd":
        return None
    with open(path, "rb") as fh:
        head = fh.read(12)
    if len(head) < 12 or head[4:8] != b"CORD":
        return None
    (nset,) = struct.unpack("<i", head[8:12])
    return nset if nset > 0 else None


def periodic_from_simulation(sim_dir: str | Path) -> bool:
    """Whether a ``finegrain simulate`` folder's system was periodic (False for older folders)."""
    meta_path = Path(sim_dir) / "metadata.json"
    if not meta_path.is_file():
        raise IngestError(f"SIM_DIR {sim_dir}: no metadata.json (not a finegrain simulate output)")
    return bool(json.loads(meta_path.read_text()).get("periodic", False))


def _check_source(src: TrajectorySource, top, n_atoms: int, periodic: bool = False) -> bool:
    """Cheap checks in the driver, so bad input fails before any task starts. Returns whether the
    file carries box vectors (unit cells)."""
    import mdtraj as md

    if not Path(src.path).is_file():
        raise IngestError(f"trajectory {src.path}: file not found")
    try:
        first = md.load_frame(src.path, 0, top=top)
    except (ValueError, IndexError, OSError, RuntimeError, EOFError) as exc:
        if "shape" in str(exc) or "atoms" in str(exc):
            raise IngestError(f"trajectory {src.path}: atom count does not match the topology ({n_atoms} atoms): {exc}") from exc
        raise IngestError(f"trajectory {src.path}: unreadable or empty ({type(exc).__name__}: {exc})") from exc
    if first.n_atoms != n_atoms:
        raise IngestError(f"trajectory {src.path}: {first.n_atoms} atoms, topology has {n_atoms}")
    if periodic and first.unitcell_vectors is None:
        raise IngestError(f"trajectory {src.path}: the system is periodic but the file has no box vectors "
                          f"(unit cells); write them (e.g. DCD with unit cells) or ingest with periodic=False")
    return first.unitcell_vectors is not None


class _ShardWriter:
    """Ray Data UDF: one source row in, one metadata row per written shard out."""

    def __init__(self, top_path: str, mapping: dict, system: str, out_dir: str, chunk_frames: int,
                 has_box: bool = False):
        self.top_path, self.system, self.out_dir, self.chunk = top_path, system, Path(out_dir), chunk_frames
        self.mapping = CGMapping.from_dict(mapping)
        self.has_box = has_box

    def __call__(self, batch: dict) -> dict:
        """Bad input is reported as data (column ``error``), so the driver can
        raise it with its message intact whatever Ray wraps around task errors."""
        import mdtraj as md

        rows = {k: [] for k in ("path", "traj_id", "first_frame", "n_rows", "sha256", "error")}
        top = md.load_topology(self.top_path)
        bonds = np.array([[b[0].index, b[1].index] for b in top.bonds], dtype=int)
        for traj_id, path, obs_path in zip(batch["traj_id"], batch["path"], batch["observables"]):
            try:
                self._source(rows, str(traj_id), str(path), str(obs_path), top, bonds)
            except InputError as exc:
                for key, val in zip(rows, ("", str(traj_id), 0, 0, "", str(exc))):
                    rows[key].append(val)
        return rows

    def _source(self, rows, traj_id, path, obs_path, top, bonds) -> None:
        import mdtraj as md

        obs = dict(np.load(obs_path)) if obs_path else {}
        start = 0
        try:
            for k, chunk in enumerate(md.iterload(path, top=top, chunk=self.chunk)):
                self._write(rows, traj_id, path, k, start, chunk, obs, bonds)
                start += chunk.n_frames
        except InputError:
            raise
        except Exception as exc:  # mdtraj raises many types for truncated/corrupt files
            raise IngestError(f"trajectory {path}: unreadable after frame {start} ({type(exc).__name__}: {exc})") from exc
        if start == 0:
            raise IngestError(f"trajectory {path}: no frames")
        declared = dcd_declared_frames(path)
        if declared is not None and declared != start:
            raise IngestError(f"trajectory {path}: truncated (header declares {declared} frames, file holds {start})")
        n_obs = len(obs.get("potential_kj_mol", ()))
        if obs and n_obs != start:
            raise IngestError(f"trajectory {path}: {start} frames but {obs_path} has {n_obs} (truncated file?)")

    def _write(self, rows, traj_id, path, k, start, chunk, obs, bonds) -> None:
        xyz = check_xyz(chunk.xyz, chunk.n_atoms, f"trajectory {path}", frame_offset=start)
        box = None
        if self.has_box:
            box, xyz = _whole_molecules(chunk, xyz, path, start)
        if k == 0:
            check_units_nm(xyz, bonds, f"trajectory {path}")
        sl = slice(start, start + chunk.n_frames)
        if obs:
            time_ps, energy, forces = obs["time_ps"][sl], obs["potential_kj_mol"][sl], obs["forces_kj_mol_nm"][sl]
            if len(time_ps) != chunk.n_frames:
                raise IngestError(f"trajectory {path}: more frames than its observables file has ({start + chunk.n_frames}+)")
        else:
            time_ps, energy, forces = np.asarray(chunk.time, dtype=np.float64), None, None
        cg = self.mapping.map(xyz.astype(np.float64))
        table = frames_table(self.system, traj_id, np.arange(sl.start, sl.stop), time_ps, xyz, cg, energy, forces,
                             box)
        rel = f"shards/{_safe(traj_id)}-{k:05d}.parquet"
        import pyarrow.parquet as pq

        pq.write_table(table, self.out_dir / rel)
        for key, val in zip(rows, (rel, traj_id, start, chunk.n_frames, sha256_file(self.out_dir / rel), "")):
            rows[key].append(val)


def _whole_molecules(chunk, xyz: np.ndarray, path: str, start: int) -> tuple[np.ndarray, np.ndarray]:
    """(box [F, 3, 3] nm, xyz [F, N, 3] nm with every molecule whole) of a periodic chunk.

    Each frame's box must be finite with positive volume; molecules (bonded
    components of the topology) are made whole by mdtraj along their bonds.
    Raises IngestError naming the file and the first bad frame.
    """
    if chunk.unitcell_vectors is None:
        raise IngestError(f"trajectory {path}: no box vectors from frame {start} on (periodic data)")
    box = np.asarray(chunk.unitcell_vectors, dtype=np.float64)
    good = np.isfinite(box).all(axis=(1, 2))
    good[good] = np.linalg.det(box[good]) > 0
    if not good.all():
        bad = int(np.flatnonzero(~good)[0])
        raise IngestError(f"trajectory {path}, frame {start + bad}: invalid box vectors {box[bad].tolist()} nm "
                          f"(need finite vectors with positive volume)")
    import mdtraj as md

    frames = md.Trajectory(np.asarray(xyz, dtype=np.float32), chunk.topology,
                           unitcell_lengths=chunk.unitcell_lengths, unitcell_angles=chunk.unitcell_angles)
    return box, frames.make_molecules_whole(inplace=False).xyz


def ingest(
    topology: str | Path,
    sources: list[TrajectorySource],
    mapping: CGMapping,
    out: str | Path,
    system: str = "custom",
    chunk_frames: int = 1000,
    overwrite: bool = False,
    constraints: list | None | str = FROM_SOURCES,
    periodic: bool | None = None,
) -> Manifest:
    """Shard ``sources`` into ``out`` with Ray Data; returns the manifest.

    constraints : the distance constraints the trajectories were simulated
    with, rows [i, j, r0_nm] (None: unknown, treated as none). Default: from
    each source's simulation metadata (None for external files); sources
    with different records are refused.

    periodic : whether the system is periodic (then every trajectory must
    carry box vectors). Default: periodic when a source's simulation metadata
    says so. Box vectors found in the files are carried either way (all
    sources must have them or none), molecules made whole before mapping.

    Needs a connected Ray. Raises IngestError (naming the file/frame) on bad
    input; nothing is left at ``out`` then.
    """
    import mdtraj as md
    import ray.data

    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"out: {out} exists and is not empty (pass overwrite to replace it)")
    if not sources:
        raise IngestError("traj: no trajectory given")
    if len({s.traj_id for s in sources}) != len(sources):
        raise IngestError("traj: duplicate trajectory ids")
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames: must be >= 1, got {chunk_frames}")
    try:
        top = md.load_topology(str(topology))
    except Exception as exc:
        raise IngestError(f"topology {topology}: unreadable ({type(exc).__name__}: {exc})") from exc
    if mapping.n_atoms != top.n_atoms:
        raise IngestError(f"mapping '{mapping.name}' expects {mapping.n_atoms} atoms, topology {topology} has {top.n_atoms}")
    if periodic is None:
        periodic = any(periodic_from_simulation(s.simulation) for s in sources if s.simulation)
    boxes = {s.path: _check_source(s, top, top.n_atoms, periodic) for s in sources}
    if len(set(boxes.values())) > 1:
        with_box = next(p for p, b in boxes.items() if b)
        without = next(p for p, b in boxes.items() if not b)
        raise IngestError(f"traj: trajectory {with_box} has box vectors and {without} has none; ingest them "
                          f"separately")
    has_box = bool(boxes) and all(boxes.values())
    if has_box and top.n_bonds == 0 and top.n_atoms > 1:
        raise IngestError(f"topology {topology}: periodic frames need the topology's bonds (CONECT records) "
                          f"to make molecules whole before mapping; it has none")
    constraint_rows = _constraint_rows(constraints, sources, top.n_atoms)

    with atomic_folder(out) as tmp:
        (tmp / "shards").mkdir()
        md.load_frame(sources[0].path, 0, top=top).save_pdb(str(tmp / "topology.pdb"))
        writer = _ShardWriter(str(tmp / "topology.pdb"), mapping.to_dict(), system, str(tmp), chunk_frames, has_box)
        items = [{"traj_id": s.traj_id, "path": s.path, "observables": s.observables or ""} for s in sources]
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            writer, batch_size=1, num_cpus=1
        )
        rows = ds.take_all()
        errors = sorted(r["error"] for r in rows if r["error"])
        if errors:
            raise IngestError(errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
        shards = sorted((ShardInfo(**{k: v for k, v in r.items() if k != "error"}) for r in rows),
                        key=lambda s: (s.traj_id, s.first_frame))
        trajectories: dict[str, int] = {}
        for s in shards:
            trajectories[s.traj_id] = trajectories.get(s.traj_id, 0) + s.n_rows
        manifest = Manifest(
            system=system,
            mapping=mapping.to_dict(),
            n_atoms=top.n_atoms,
            n_beads=mapping.n_beads,
            atom_names=[a.name for a in top.atoms],
            residue_names=[a.residue.name for a in top.atoms],
            n_frames=sum(trajectories.values()),
            n_trajectories=len(trajectories),
            trajectories=trajectories,
            shards=shards,
            sources={s.traj_id: str(Path(s.path).resolve()) for s in sources},
            has_energies=all(s.observables for s in sources),
            constraints=constraint_rows,
            has_box=has_box,
        )
        manifest.save(tmp)
    return manifest
