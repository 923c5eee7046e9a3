"""Linear coarse-grained mappings y = C x.

A CG mapping is one ``[n_beads, n_atoms]`` matrix ``C`` acting identically on
x, y and z: ``y[b] = sum_i C[b, i] x[i]``. Slices, centres of mass, centres of
geometry and explicit weights are all rows of that matrix. Rows sum to one,
so the map commutes with translations.

Spec language (YAML or dict), one of four forms::

    beads:                       # explicit beads
      - {name: CA2, select: "resname ALA and name CA"}   # mdtraj selection
      - {name: X, atoms: [0, "ALA2-CB"], weights: mass}  # indices / atom names
    per_residue: {select: "name CA", weights: geometry}  # one bead per residue
    per_atom: {select: "not element H"}                  # one bead per atom
    per_molecule: {beads: [{name: R, select: "name CA1 CA2", weights: mass}]}  # these beads in every residue

``weights`` is ``mass`` (centre of mass), ``geometry`` (centre of geometry,
the default) or a list of numbers (normalised to sum to one).

The linear-map view of backmapping: for a full-row-rank C, the pseudo-inverse C+ and an orthonormal
basis N of ker C give every point of the fibre M^-1(y) as x = C+ y + N eta.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finegrain.platform.science.errors import FinegrainError

__all__ = ["CGMapping", "MappingError", "MoleculeBlocks", "molecule_blocks"]


class MappingError(FinegrainError, ValueError):
    """A mapping spec that cannot be applied to a topology."""


@dataclass(frozen=True, eq=False)
class CGMapping:
    """A linear CG operator.

    Attributes
    ----------
    name : str
    matrix : ndarray [n_beads, n_atoms], float64, rows summing to one.
    bead_names : tuple[str, ...] of length n_beads.
    """

    name: str
    matrix: np.ndarray
    bead_names: tuple[str, ...]

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
            raise MappingError(f"mapping '{self.name}': matrix must be [n_beads, n_atoms], got shape {m.shape}")
        if len(self.bead_names) != m.shape[0]:
            raise MappingError(
                f"mapping '{self.name}': {len(self.bead_names)} bead names for {m.shape[0]} matrix rows"
            )
        if not np.all(np.isfinite(m)):
            raise MappingError(f"mapping '{self.name}': matrix has non-finite entries")
        bad = np.flatnonzero(np.abs(m.sum(axis=1) - 1.0) > 1e-8)
        if bad.size:
            raise MappingError(
                f"mapping '{self.name}': rows of beads {[self.bead_names[i] for i in bad]} do not sum to 1"
            )
        m.setflags(write=False)
        object.__setattr__(self, "matrix", m)
        object.__setattr__(self, "bead_names", tuple(self.bead_names))

    @property
    def n_beads(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_atoms(self) -> int:
        return self.matrix.shape[1]

    # -- construction -----------------------------------------------------
    @classmethod
    def from_spec(cls, spec: dict[str, Any], topology, name: str = "custom") -> "CGMapping":
        """Build from a spec dict (see module docstring) and an mdtraj Topology."""
        if not isinstance(spec, dict):
            raise MappingError(f"mapping '{name}': spec must be a mapping, got {type(spec).__name__}")
        forms = [k for k in ("beads", "per_residue", "per_atom", "per_molecule") if k in spec]
        if len(forms) != 1:
            raise MappingError(f"mapping '{name}': spec needs exactly one of 'beads', 'per_residue', 'per_atom', "
                               f"'per_molecule'; got {sorted(spec)}")
        form = forms[0]
        if form == "per_molecule":  # the same beads in every molecule: an explicit ``beads`` spec
            spec, form = _per_molecule_beads(spec, topology, f"mapping '{name}'"), "beads"
        masses = np.array([a.element.mass if a.element is not None else 0.0 for a in topology.atoms])
        rows: list[np.ndarray] = []
        names: list[str] = []
        if form == "beads":
            for k, bead in enumerate(spec["beads"]):
                bname = str(bead.get("name", f"B{k}"))
                idx = _bead_atoms(bead, topology, f"mapping '{name}', bead '{bname}'")
                rows.append(_row(idx, bead.get("weights", "geometry"), masses, topology.n_atoms, f"mapping '{name}', bead '{bname}'"))
                names.append(bname)
        else:
            sub = spec[form] or {}
            sel = _select(topology, sub.get("select", "all"), f"mapping '{name}'")
            if form == "per_atom":
                for i in sel:
                    rows.append(_row([i], "geometry", masses, topology.n_atoms, name))
                    names.append(str(topology.atom(int(i))))
            else:
                chosen = set(int(i) for i in sel)
                for res in topology.residues:
                    idx = [a.index for a in res.atoms if a.index in chosen]
                    if not idx:
                        continue
                    where = f"mapping '{name}', residue {res}"
                    rows.append(_row(idx, sub.get("weights", "geometry"), masses, topology.n_atoms, where))
                    names.append(str(res))
        if not rows:
            raise MappingError(f"mapping '{name}': spec produced no beads")
        return cls(name=name, matrix=np.stack(rows), bead_names=tuple(names))

    @classmethod
    def from_yaml(cls, path: str | Path, topology) -> "CGMapping":
        """Load a spec from a YAML file; the mapping is named after the file stem."""
        import yaml

        path = Path(path)
        try:
            spec = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise MappingError(f"mapping file {path}: cannot read ({exc})") from exc
        return cls.from_spec(spec, topology, name=spec.get("name", path.stem) if isinstance(spec, dict) else path.stem)

    # -- application ------------------------------------------------------
    def map(self, xyz):
        """Map atom coordinates to beads.

        xyz : array [..., n_atoms, 3] (numpy or torch), any length unit.
        Returns [..., n_beads, 3] in the same unit and array type.
        """
        if xyz.shape[-2:] != (self.n_atoms, 3):
            raise MappingError(
                f"xyz: expected shape [..., {self.n_atoms}, 3] for mapping '{self.name}', got {tuple(xyz.shape)}"
            )
        if isinstance(xyz, np.ndarray):
            return np.einsum("bi,...ic->...bc", self.matrix.astype(xyz.dtype, copy=False), xyz)
        import torch

        m = torch.tensor(self.matrix, dtype=xyz.dtype, device=xyz.device)
        return torch.einsum("bi,...ic->...bc", m, xyz)

    def pseudo_inverse(self) -> np.ndarray:
        """Moore-Penrose pseudo-inverse C+, [n_atoms, n_beads]."""
        return np.linalg.pinv(self.matrix)

    def null_space(self) -> np.ndarray:
        """Orthonormal basis of ker C, [n_atoms, n_atoms - rank(C)]: x = C+ y + N eta spans the fibre."""
        _, s, vt = np.linalg.svd(self.matrix)
        rank = int(np.sum(s > s.max() * max(self.matrix.shape) * np.finfo(float).eps))
        return vt[rank:].T.copy()

    def fibre_points(self, y: np.ndarray, eta: np.ndarray) -> np.ndarray:
        """Points x = C+ y + N eta of the fibre over y.

        y : [F, n_beads, 3]; eta : [F, n_atoms - rank, 3] null-space coordinates.
        Returns x : [F, n_atoms, 3] with C x = y exactly (up to round-off) when
        C has full row rank.
        """
        y = np.asarray(y, dtype=np.float64)
        basis = self.null_space()
        if y.ndim != 3 or y.shape[1:] != (self.n_beads, 3):
            raise MappingError(f"y: expected shape [F, {self.n_beads}, 3], got {y.shape}")
        eta = np.asarray(eta, dtype=np.float64)
        if eta.shape != (y.shape[0], basis.shape[1], 3):
            raise MappingError(f"eta: expected shape [{y.shape[0]}, {basis.shape[1]}, 3], got {eta.shape}")
        return np.einsum("ib,fbc->fic", self.pseudo_inverse(), y) + np.einsum("ik,fkc->fic", basis, eta)

    def sample_fibre(self, y: np.ndarray, scale: float | np.ndarray = 0.1, seed: int | None = None) -> np.ndarray:
        """Sample x = C+ y + N eta with Gaussian eta of standard deviation ``scale`` (nm)."""
        y = np.asarray(y, dtype=np.float64)
        rng = np.random.default_rng(seed)
        k = self.null_space().shape[1]
        return self.fibre_points(y, rng.normal(size=(y.shape[0], k, 3)) * scale)

    def cg_topology(self):
        """An mdtraj Topology of the beads whose PDB round trip keeps the bead names.

        ``RESn-NAME`` beads become atom NAME of residue RES n, ``RESn`` beads an
        atom "CG" of residue RES n, other names an atom of that name in residue
        "CG" (names longer than 4 characters do not fit a PDB atom field).
        """
        import re

        import mdtraj as md

        top = md.Topology()
        chain = top.add_chain()
        for i, name in enumerate(self.bead_names):
            m = re.fullmatch(r"([A-Z0-9]{1,4}?)(-?\d+)(?:-(\S{1,4}))?", name)
            if m and (m.group(3) or len(m.group(1)) == 3):
                res = top.add_residue(m.group(1), chain, resSeq=int(m.group(2)))
                atom = m.group(3) or "CG"
            else:
                if len(name) > 4:
                    raise MappingError(f"mapping '{self.name}': bead name {name!r} does not fit a PDB atom name")
                res, atom = top.add_residue("CG", chain, resSeq=i + 1), name
            top.add_atom(atom, md.element.virtual, res)
        return top

    def matches_bead_names(self, cg_topology) -> bool:
        """True when each CG atom is its bead by atom name, ``RESn-NAME`` or residue ``RESn``."""
        atoms = list(cg_topology.atoms)
        return len(atoms) == self.n_beads and all(
            name in (a.name, str(a), str(a.residue)) for a, name in zip(atoms, self.bead_names))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bead_names": list(self.bead_names), "matrix": self.matrix.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CGMapping":
        return cls(name=d["name"], matrix=np.asarray(d["matrix"], dtype=np.float64), bead_names=tuple(d["bead_names"]))


@dataclass(frozen=True, eq=False)
class MoleculeBlocks:
    """A mapping that repeats one molecule's block: R copies of an [b, a] sub-matrix.

    atoms : [R, a] int, each molecule's atoms (topology order); beads : [R, b] int, its beads;
    molecule : the shared one-molecule :class:`CGMapping` ([b, a], the first molecule's bead names).
    """

    atoms: np.ndarray
    beads: np.ndarray
    molecule: CGMapping

    @property
    def n_molecules(self) -> int:
        return self.atoms.shape[0]


def molecule_blocks(mapping: CGMapping, topology, atol: float = 1e-12) -> MoleculeBlocks:
    """Split ``mapping`` into identical per-molecule blocks (a liquid of one species, each molecule mapped alike).

    Molecules are the topology's bonded components (``mdtraj.Topology.find_molecules``). Raises
    :class:`MappingError` naming the bead or molecule when a bead spans two molecules, when a molecule has no
    bead, or when molecules differ (atom count, elements, or their block of the matrix).
    """
    if topology.n_atoms > 1 and topology.n_bonds == 0:
        raise MappingError(f"mapping '{mapping.name}': the topology has no bonds, so its molecules are unknown "
                           f"(a PDB of non-standard residues needs CONECT records)")
    molecules = sorted((sorted(a.index for a in m) for m in topology.find_molecules()), key=lambda m: m[0])
    m = mapping.matrix
    owner = np.full(topology.n_atoms, -1)
    for k, atoms in enumerate(molecules):
        owner[atoms] = k
    beads: list[list[int]] = [[] for _ in molecules]
    for b in range(mapping.n_beads):
        mols = np.unique(owner[np.flatnonzero(m[b])])
        if len(mols) != 1:
            raise MappingError(f"mapping '{mapping.name}': bead {mapping.bead_names[b]!r} spans molecules "
                               f"{mols.tolist()}; a molecule-wise model needs every bead inside one molecule")
        beads[int(mols[0])].append(b)
    first_atoms, first_beads = molecules[0], beads[0]
    elements = [str(topology.atom(i).element) for i in first_atoms]
    block = m[np.ix_(first_beads, first_atoms)]
    for k, (atoms, bk) in enumerate(zip(molecules, beads)):
        where = f"mapping '{mapping.name}': molecule {k} (first atom {topology.atom(atoms[0])})"
        if not bk:
            raise MappingError(f"{where} has no bead")
        if len(atoms) != len(first_atoms) or len(bk) != len(first_beads):
            raise MappingError(f"{where} has {len(atoms)} atoms and {len(bk)} beads, molecule 0 has "
                               f"{len(first_atoms)} and {len(first_beads)}: not one species")
        if [str(topology.atom(i).element) for i in atoms] != elements or not np.allclose(
                m[np.ix_(bk, atoms)], block, rtol=0, atol=atol):
            raise MappingError(f"{where} is not mapped like molecule 0 (elements or weights differ)")
    molecule = CGMapping(f"{mapping.name}/molecule", block, tuple(mapping.bead_names[b] for b in first_beads))
    return MoleculeBlocks(np.asarray(molecules, dtype=np.int64), np.asarray(beads, dtype=np.int64), molecule)


def _per_molecule_beads(spec: dict, topology, where: str) -> dict:
    """Expand ``per_molecule: {beads: [{name, select, weights}, ...]}`` to an explicit ``beads`` spec.

    Every residue (one molecule each) in which every bead's selection matches
    at least one atom gets all the beads, in order, named ``RESn-NAME``
    (e.g. ``CUM1-R``); residues matching none are skipped; one matching only
    some is an error naming it. An atom may belong to several beads (shared
    atoms, e.g. cumene's CH in both methyl beads of the ``dbm`` mapping).
    The result is a plain ``beads`` spec with atom indices (CGMapping.from_spec).
    """
    body = spec["per_molecule"] or {}
    beads = body.get("beads") if isinstance(body, dict) else None
    if not beads or not isinstance(beads, list) or set(body) - {"beads"}:
        raise MappingError(f"{where}: per_molecule needs exactly a non-empty 'beads' list")
    chosen = []
    for k, bead in enumerate(beads):
        if not isinstance(bead, dict) or "select" not in bead or set(bead) - {"name", "select", "weights"}:
            raise MappingError(f"{where}: per_molecule bead {k}: expected {{name, select, weights}}, got {bead!r}")
        try:
            chosen.append(set(int(i) for i in topology.select(bead["select"])))
        except Exception as exc:  # mdtraj raises several types for bad DSL
            raise MappingError(f"{where}: bead {bead.get('name', k)}: invalid selection {bead['select']!r} "
                               f"({exc})") from exc
    out = []
    for res in topology.residues:
        groups = [[a.index for a in res.atoms if a.index in sel] for sel in chosen]
        if not any(groups):
            continue
        if not all(groups):
            missing = [str(b.get("name", k)) for k, (b, g) in enumerate(zip(beads, groups)) if not g]
            raise MappingError(f"{where}: residue {res} matches some beads but not {missing}")
        for k, (bead, idx) in enumerate(zip(beads, groups)):
            out.append({"name": f"{res}-{bead.get('name', f'B{k}')}", "atoms": idx,
                        "weights": bead.get("weights", "geometry")})
    if not out:
        raise MappingError(f"{where}: per_molecule matched no residue")
    rest = {k: v for k, v in spec.items() if k != "per_molecule"}
    return rest | {"beads": out}


def _select(topology, selection: str, where: str) -> np.ndarray:
    try:
        idx = topology.select(selection)
    except Exception as exc:  # mdtraj raises several types for bad DSL
        raise MappingError(f"{where}: invalid selection {selection!r} ({exc})") from exc
    if idx.size == 0:
        names = sorted({a.name for a in topology.atoms})
        raise MappingError(f"{where}: selection {selection!r} matched no atom (atom names present: {', '.join(names)})")
    return idx


def _bead_atoms(bead: dict[str, Any], topology, where: str) -> list[int]:
    if ("select" in bead) == ("atoms" in bead):
        raise MappingError(f"{where}: give exactly one of 'select' or 'atoms'")
    if "select" in bead:
        return [int(i) for i in _select(topology, bead["select"], where)]
    out = []
    for a in bead["atoms"]:
        if isinstance(a, (int, np.integer)):
            if not 0 <= a < topology.n_atoms:
                raise MappingError(f"{where}: atom index {a} out of range [0, {topology.n_atoms})")
            out.append(int(a))
            continue
        hits = [x.index for x in topology.atoms if str(x) == a] or [x.index for x in topology.atoms if x.name == a]
        if len(hits) != 1:
            problem = "unknown atom name" if not hits else f"ambiguous atom name ({len(hits)} atoms; use RESNAMEresSeq-NAME)"
            raise MappingError(f"{where}: {problem} {a!r}")
        out.append(hits[0])
    return out


def _row(idx, weights, masses: np.ndarray, n_atoms: int, where: str) -> np.ndarray:
    idx = np.asarray(idx, dtype=int)
    if isinstance(weights, str):
        if weights == "mass":
            w = masses[idx]
        elif weights == "geometry":
            w = np.ones(idx.size)
        else:
            raise MappingError(f"{where}: weights must be 'mass', 'geometry' or a list, got {weights!r}")
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != idx.shape:
            raise MappingError(f"{where}: {w.size} weights for {idx.size} atoms")
    if not np.isfinite(w).all() or w.sum() <= 0:
        raise MappingError(f"{where}: weights must be finite with a positive sum")
    row = np.zeros(n_atoms)
    np.add.at(row, idx, w / w.sum())
    return row
