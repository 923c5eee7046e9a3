"""The DeepBackmap recipe: atom and bead types, generation beads and the order in which atoms are placed.

DeepBackmap (M. Stieffenhofer, M. Wand, T. Bereau, "Adversarial reverse mapping of equilibrated
condensed-phase molecular structures", Mach. Learn.: Sci. Technol. 1, 045014 (2020); M. Stieffenhofer,
"DeepBackmap" PhD thesis, ordering of molecular graphs and local environments) places atoms one at a time.
Molecules are rebuilt one after the other; inside a molecule a depth-first search over the CG bead graph
gives the bead order (outer loop) and, inside each bead, a depth-first search over its heavy atoms followed
by its hydrogens gives the atom order (inner loop). Each bead's local frame is aligned to the direction of
its predecessor bead (``axis_bead``). Types are transferable: an atom type is its element plus the numbers
of bonded heavy atoms and hydrogens, so a model trained on one molecule can backmap another.

Numpy and the standard library only; mdtraj topologies are duck-typed (``atoms``, ``bonds``,
``atom.element.symbol``, ``atom.index``, ``str(atom)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np

from finegrain.platform.science.errors import InputError
from finegrain.platform.science.mapping import CGMapping

__all__ = ["DBMRecipe", "bead_type_name"]

_HYDROGEN = {"H", "D"}
_MAX_REL = 4
_ARRAYS = {  # field -> dtype
    "is_hydrogen": np.bool_, "atom_type": np.int64, "bead_type": np.int64, "atom_bead": np.int64,
    "bonds": np.int64, "bead_neighbours": np.int64, "molecule": np.int64, "bead_molecule": np.int64,
    "bead_parent": np.int64, "bead_rank": np.int64, "bead_order": np.int64, "axis_bead": np.int64,
    "bead_atoms": np.int64, "atom_order": np.int64, "dist_flat": np.int8, "mol_offset": np.int64,
    "mol_size": np.int64, "local_index": np.int64,
}


def bead_type_name(name: str) -> str:
    """``RESn-NAME`` -> ``NAME``, then trailing digits stripped ("CA2" -> "CA"); kept when that leaves nothing."""
    m = re.fullmatch(r"[^-\s]*?\d+-(.+)", name)
    name = m.group(1) if m else name
    return name.rstrip("0123456789") or name


def _dfs(start: int, nbrs: Sequence[Sequence[int]], allowed, seen: set[int],
         parent: dict[int, int] | None = None) -> list[int]:
    """Recursive-order DFS preorder from ``start`` over ``nbrs`` (sorted lists) restricted to ``allowed``;
    fills ``parent`` (vertex -> the vertex it was discovered from) when given."""
    out, stack = [start], [(start, iter(nbrs[start]))]
    seen.add(start)
    while stack:
        u, it = stack[-1]
        for v in it:
            if v in allowed and v not in seen:
                seen.add(v)
                out.append(v)
                if parent is not None:
                    parent[v] = u
                stack.append((v, iter(nbrs[v])))
                break
        else:
            stack.pop()
    return out


def _padded(rows: Sequence[Sequence[int]], width: int | None = None) -> np.ndarray:
    width = max((len(r) for r in rows), default=0) if width is None else width
    out = np.full((len(rows), width), -1, np.int64)
    for k, r in enumerate(rows):
        out[k, :len(r)] = r
    return out


@dataclass(frozen=True, eq=False)
class DBMRecipe:
    """Everything DeepBackmap needs to know about a topology + mapping, as read-only numpy arrays.

    Attributes (A = n_atoms, N = n_beads, K = max bead degree, L = max atoms of a bead, -1 pads)
    ----------
    atom_labels : tuple[str, ...] (A,) e.g. "ALA2-CA".   bead_labels : the mapping's bead names (N,).
    is_hydrogen : bool [A].
    type_names : sorted atom type names ("C3h1": element, bonded heavy atoms, "h", bonded hydrogens).
    atom_type : int [A] into type_names.   bead_type_names : sorted bead type names.   bead_type : int [N].
    atom_bead : int [A] the bead that generates each atom.   bonds : int [n_bonds, 2] (i < j, sorted).
    bead_neighbours : int [N, K].   molecule : int [A].   bead_molecule : int [N].
    bead_parent, bead_rank, axis_bead : int [N].   bead_order : int [N].
    bead_atoms : int [N, L] generation order inside each bead.   atom_order : int [A].
    dist_flat : int8, per-molecule bond-graph distance blocks (capped at 4), row-major, concatenated.
    mol_offset, mol_size : int [n_molecules] start and side of each block.   local_index : int [A].
    """

    atom_labels: tuple[str, ...]
    bead_labels: tuple[str, ...]
    is_hydrogen: np.ndarray
    type_names: tuple[str, ...]
    atom_type: np.ndarray
    bead_type_names: tuple[str, ...]
    bead_type: np.ndarray
    atom_bead: np.ndarray
    bonds: np.ndarray
    bead_neighbours: np.ndarray
    molecule: np.ndarray
    bead_molecule: np.ndarray
    bead_parent: np.ndarray
    bead_rank: np.ndarray
    bead_order: np.ndarray
    axis_bead: np.ndarray
    bead_atoms: np.ndarray
    atom_order: np.ndarray
    dist_flat: np.ndarray
    mol_offset: np.ndarray
    mol_size: np.ndarray
    local_index: np.ndarray

    def __post_init__(self) -> None:
        for name, dtype in _ARRAYS.items():
            a = np.array(getattr(self, name), dtype=dtype)
            a.setflags(write=False)
            object.__setattr__(self, name, a)
        for name in ("atom_labels", "bead_labels", "type_names", "bead_type_names"):
            object.__setattr__(self, name, tuple(str(s) for s in getattr(self, name)))

    @property
    def n_atoms(self) -> int:
        return len(self.atom_labels)

    @property
    def n_beads(self) -> int:
        return int(self.bead_type.shape[0])

    @property
    def max_bead_atoms(self) -> int:
        return int(self.bead_atoms.shape[1])

    @property
    def n_molecules(self) -> int:
        return int(self.mol_size.shape[0])

    def relation(self, i, j) -> np.ndarray:
        """Topological relation of atoms ``i`` (int [B]) to ``j`` (int [B, P]): int64 [B, P] with 0 (same
        atom), 1 (bonded), 2 (one-three), 3 (one-four), 4 (further or another molecule), -1 where j < 0."""
        i = np.asarray(i, np.int64)
        j = np.asarray(j, np.int64)
        jj = np.maximum(j, 0)
        mi = self.molecule[i][:, None]
        same = mi == self.molecule[jj]
        flat = self.mol_offset[mi] + self.local_index[i][:, None] * self.mol_size[mi] + self.local_index[jj]
        out = np.where(same, self.dist_flat[np.where(same, flat, 0)], _MAX_REL).astype(np.int64)
        return np.where(j < 0, -1, out)

    def require_types(self, atom_vocabulary: Sequence[str], bead_vocabulary: Sequence[str],
                      where: str) -> tuple[np.ndarray, np.ndarray]:
        """Indices (int64 [n_atoms], int64 [n_beads]) of this recipe's atom and bead types in a model's
        vocabularies; InputError naming ``where`` and the first atom or bead whose type is missing."""
        out = []
        for kind, vocab, names, idx, label in (
                ("atom", atom_vocabulary, self.type_names, self.atom_type, lambda k: f"atom {self.atom_labels[k]}"),
                ("bead", bead_vocabulary, self.bead_type_names, self.bead_type,
                 lambda k: f"bead {k} '{self.bead_labels[k]}'")):
            lookup = {str(t): k for k, t in enumerate(vocab)}
            missing = [k for k, t in enumerate(names) if t not in lookup]
            if missing:
                first = int(np.flatnonzero(np.isin(idx, missing))[0])
                raise InputError(f"{where}: {label(first)} has {kind} type '{names[idx[first]]}', which is not in "
                                 f"the model's {kind} vocabulary {list(map(str, vocab))}")
            table = np.array([lookup[t] for t in names], np.int64)
            out.append(table[idx] if idx.size else np.zeros(0, np.int64))
        return out[0], out[1]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (lists, strings, ints); :meth:`from_dict` restores it exactly."""
        d: dict[str, Any] = {k: list(getattr(self, k)) for k in ("atom_labels", "bead_labels", "type_names",
                                                                "bead_type_names")}
        for k in _ARRAYS:
            a = getattr(self, k)
            d[k] = {"shape": list(a.shape), "data": a.ravel().tolist()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DBMRecipe":
        """Inverse of :meth:`to_dict`."""
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in d:
                raise InputError(f"DBM recipe: missing key '{f.name}'")
            v = d[f.name]
            if f.name in _ARRAYS:
                kw[f.name] = np.array(v["data"], dtype=_ARRAYS[f.name]).reshape(v["shape"])
            else:
                kw[f.name] = tuple(v)
        return cls(**kw)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_topology(cls, topology, mapping: CGMapping) -> "DBMRecipe":
        """Build the recipe of an mdtraj-like ``topology`` under ``mapping`` ([n_beads, n_atoms] matrix)."""
        atoms = sorted(topology.atoms, key=lambda a: a.index)
        n = len(atoms)
        w = np.asarray(mapping.matrix, np.float64)
        if w.shape[1] != n:
            raise InputError(f"mapping '{mapping.name}' has {w.shape[1]} atoms, the topology {n}")
        nb = w.shape[0]
        labels = tuple(str(a) for a in atoms)
        symbols = [getattr(a.element, "symbol", None) or "X" for a in atoms]
        is_h = np.array([s in _HYDROGEN for s in symbols])
        pairs = sorted({(min(b[0].index, b[1].index), max(b[0].index, b[1].index)) for b in topology.bonds
                        if b[0].index != b[1].index})
        bonds = np.array(pairs, np.int64).reshape(-1, 2)
        nbrs: list[list[int]] = [[] for _ in range(n)]
        for i, j in pairs:
            nbrs[i].append(j)
            nbrs[j].append(i)
        for lst in nbrs:
            lst.sort()
        # atom types
        tnames = [f"{symbols[i]}{sum(not is_h[j] for j in nbrs[i])}h{sum(bool(is_h[j]) for j in nbrs[i])}"
                  for i in range(n)]
        type_names = tuple(sorted(set(tnames)))
        atom_type = np.array([type_names.index(t) for t in tnames], np.int64)
        bnames = [bead_type_name(b) for b in mapping.bead_names]
        bead_type_names = tuple(sorted(set(bnames)))
        bead_type = np.array([bead_type_names.index(t) for t in bnames], np.int64)
        # molecules: bonded components numbered by their lowest atom index
        molecule = np.full(n, -1, np.int64)
        members: list[list[int]] = []
        for s in range(n):
            if molecule[s] < 0:
                comp = sorted(_dfs(s, nbrs, range(n), set()))
                molecule[comp] = len(members)
                members.append(comp)
        weighted = w != 0.0
        bead_molecule = np.empty(nb, np.int64)
        for b in range(nb):
            mols = np.unique(molecule[weighted[b]])
            if mols.size != 1:
                raise InputError(f"mapping '{mapping.name}': bead {b} '{mapping.bead_names[b]}' spans "
                                 f"molecules {mols.tolist()} (atoms of different bonded components)")
            bead_molecule[b] = mols[0]
        atom_bead = cls._generation_beads(w, weighted, nbrs, labels)
        # bead graph
        adj = [set() for _ in range(nb)]
        for i, j in pairs:
            if atom_bead[i] != atom_bead[j]:
                adj[atom_bead[i]].add(int(atom_bead[j]))
                adj[atom_bead[j]].add(int(atom_bead[i]))
        for a in np.flatnonzero(weighted.sum(0) > 1):
            bs = np.flatnonzero(weighted[:, a]).tolist()
            for b in bs:
                adj[b].update(c for c in bs if c != b)
        bnbrs = [sorted(s) for s in adj]
        # bead order: DFS per molecule
        parent = np.full(nb, -1, np.int64)
        rank = np.zeros(nb, np.int64)
        order: list[int] = []
        by_mol: list[set[int]] = [set() for _ in members]
        for bd, m in enumerate(bead_molecule.tolist()):
            by_mol[m].add(bd)
        for todo in by_mol:
            seq, seen = [], set()
            while todo - seen:
                left = sorted(todo - seen)
                root = next((b for b in left if len(bnbrs[b]) <= 1), left[0])
                found: dict[int, int] = {}
                seq.extend(_dfs(root, bnbrs, todo, seen, found))
                for b, p in found.items():
                    parent[b] = p
            rank[seq] = np.arange(len(seq))
            order.extend(seq)
        axis = parent.copy()
        for b in order:
            if parent[b] >= 0 and axis[parent[b]] < 0:
                axis[parent[b]] = b
        # atom order inside each bead
        rows = []
        for b in range(nb):
            mine = np.flatnonzero(atom_bead == b)
            heavy = [int(a) for a in mine if not is_h[a]]
            hs = set(heavy)
            link = [a for a in heavy if parent[b] >= 0 and any(atom_bead[j] == parent[b] for j in nbrs[a])]
            if link:
                start = link[0]
            elif heavy and weighted[b, heavy].any():
                start = heavy[int(np.argmax(np.where(weighted[b, heavy], w[b, heavy], -np.inf)))]
            else:
                start = heavy[0] if heavy else -1
            seq, seen = [], set()
            while start >= 0:
                seq.extend(_dfs(start, nbrs, hs, seen))
                start = next((a for a in heavy if a not in seen), -1)
            pos = {a: k for k, a in enumerate(seq)}
            hyd = [int(a) for a in mine if is_h[a]]
            seq.extend(sorted(hyd, key=lambda a: (min((pos[j] for j in nbrs[a] if j in pos), default=n), a)))
            rows.append(seq)
        bead_atoms = _padded(rows, max(len(r) for r in rows))
        atom_order = np.array([a for b in order for a in rows[b]], np.int64)
        # bond-graph distance blocks
        local = np.empty(n, np.int64)
        blocks, offsets, sizes, off = [], [], [], 0
        bond_mol = molecule[bonds[:, 0]]
        for mi, comp in enumerate(members):
            m = len(comp)
            local[comp] = np.arange(m)
            a = np.zeros((m, m), np.int32)
            sub = bonds[bond_mol == mi]
            a[local[sub[:, 0]], local[sub[:, 1]]] = 1
            a += a.T
            d = np.full((m, m), _MAX_REL, np.int8)
            reach = np.eye(m, dtype=np.int32)
            d[reach > 0] = 0
            for k in range(1, _MAX_REL):
                new = ((reach @ a) > 0).astype(np.int32)
                d[(new > 0) & (reach == 0)] = k
                reach = np.maximum(reach, new)
            blocks.append(d.ravel())
            offsets.append(off)
            sizes.append(m)
            off += m * m
        return cls(labels, tuple(mapping.bead_names), is_h, type_names, atom_type, bead_type_names, bead_type, atom_bead, bonds,
                   _padded(bnbrs), molecule, bead_molecule, parent, rank, np.array(order, np.int64), axis,
                   bead_atoms, atom_order, np.concatenate(blocks), np.array(offsets, np.int64),
                   np.array(sizes, np.int64), local)

    @staticmethod
    def _generation_beads(w: np.ndarray, weighted: np.ndarray, nbrs, labels) -> np.ndarray:
        """Weighted atoms: the bead of largest weight; others: the bead of the nearest weighted atom (BFS)."""
        n = w.shape[1]
        bead = np.where(weighted.any(0), np.argmax(np.where(weighted, w, -np.inf), axis=0), -1).astype(np.int64)
        frontier = np.flatnonzero(bead >= 0).tolist()
        while frontier:
            cand: dict[int, int] = {}
            for i in frontier:
                for j in nbrs[i]:
                    if bead[j] < 0:
                        cand[j] = min(cand.get(j, n + w.shape[0]), int(bead[i]))
            for j, b in cand.items():
                bead[j] = b
            frontier = sorted(cand)
        lost = np.flatnonzero(bead < 0)
        if lost.size:
            raise InputError(f"atom {labels[lost[0]]} (index {lost[0]}) has no mapping weight and no bonded path "
                             f"to an atom that has one: it cannot be assigned to a bead")
        return bead
