"""Evaluation features declared per system: which free-energy surfaces and kinetics say something.

A CG mapping fixes some degrees of freedom: with ADP's ``backbone6`` beads
(C, N, CA, C, N, CB) phi and psi are functions of the beads, so a model that
stays on the fibre scores a perfect Ramachandran FES and timescale ratio 1
whatever it does with the atoms it places. The informative surfaces are
those of the degrees of freedom the beads leave free (omega, methyl and
carbonyl orientations for ``backbone6``; phi/psi again for ``ca``). Which
features a system has is declared in its YAML (``evaluation.features``), and
whether a feature set is fixed by a mapping is *computed*
(:func:`fixed_by_mapping`), never assumed per system name.

A feature set is one of (YAML)::

    ramachandran: {dihedrals: [[ACE:C, ALA:N, ALA:CA, ALA:C], [ALA:N, ALA:CA, ALA:C, NME:N]],
                   labels: [phi, psi]}
    backbone:     {backbone: [phi, psi]}           # mdtraj's phi/psi/omega/chi1..chi4 of every residue
    hbonds:       {contacts: {a: "name N", b: "name O", min_separation: 3}}

Atoms in ``dihedrals`` are ``RESNAME:ATOM`` (first residue of that name) or
``RESIDX:ATOM`` (0-based residue index). Dihedrals are radians in -pi..pi;
contacts are distances in nm between the two selections' atoms in residues at
least ``min_separation`` apart.

Surfaces: a set of exactly two dihedrals is histogrammed directly (like the
Ramachandran plot); any other set is projected on its two slowest TICA
components (fitted on the reference, dihedrals as cos/sin). Kinetics use the
same coordinates (cos/sin of the two dihedrals, or the TICA projection).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from finegrain.platform.science.metrics.structure import check_frames

__all__ = ["FeatureSet", "parse_feature_sets", "fixed_by_mapping", "BACKBONE_KINDS"]

BACKBONE_KINDS = ("phi", "psi", "omega", "chi1", "chi2", "chi3", "chi4")


@dataclass(frozen=True)
class FeatureSet:
    """One declared feature set (see the module docstring)."""

    name: str
    dihedrals: tuple[tuple[str, str, str, str], ...] = ()
    labels: tuple[str, ...] = ()
    backbone: tuple[str, ...] = ()
    contacts: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, name: str, spec: dict, source: str = "evaluation.features") -> "FeatureSet":
        where = f"{source}.{name}"
        if not isinstance(spec, dict) or len({"dihedrals", "backbone", "contacts"} & set(spec)) != 1:
            raise ValueError(f"{where}: expected exactly one of 'dihedrals', 'backbone', 'contacts'")
        extra = set(spec) - {"dihedrals", "backbone", "contacts", "labels"}
        if extra:
            raise ValueError(f"{where}: unknown key(s) {sorted(extra)}")
        if "dihedrals" in spec:
            dih = tuple(tuple(str(a) for a in d) for d in spec["dihedrals"])
            if not dih or any(len(d) != 4 for d in dih):
                raise ValueError(f"{where}.dihedrals: expected a non-empty list of 4-atom lists")
            labels = tuple(spec.get("labels") or [f"{name}_{k}" for k in range(len(dih))])
            if len(labels) != len(dih):
                raise ValueError(f"{where}.labels: {len(labels)} labels for {len(dih)} dihedrals")
            return cls(name, dihedrals=dih, labels=labels)
        if "backbone" in spec:
            kinds = tuple(spec["backbone"])
            bad = [k for k in kinds if k not in BACKBONE_KINDS]
            if not kinds or bad:
                raise ValueError(f"{where}.backbone: expected names from {list(BACKBONE_KINDS)}, got {list(kinds)}")
            return cls(name, backbone=kinds)
        c = dict(spec["contacts"])
        if set(c) - {"a", "b", "min_separation"} or "a" not in c or "b" not in c:
            raise ValueError(f"{where}.contacts: expected keys a, b (mdtraj selections) and min_separation")
        c.setdefault("min_separation", 3)
        return cls(name, contacts=c)

    @property
    def is_angle_pair(self) -> bool:
        """Exactly two dihedrals: a periodic 2-D surface, no TICA."""
        return len(self.dihedrals) == 2

    # ------------------------------------------------------------------ atoms and values
    def atom_groups(self, topology) -> list[np.ndarray]:
        """The atoms each feature depends on: a list of index arrays (4 per dihedral, 2 per distance)."""
        import mdtraj as md

        if self.dihedrals:
            return [np.array([_atom(topology, a, self.name) for a in d]) for d in self.dihedrals]
        if self.backbone:
            traj = md.Trajectory(np.zeros((1, topology.n_atoms, 3), np.float32), topology)
            groups = []
            for kind in self.backbone:
                idx, _ = getattr(md, f"compute_{kind}")(traj, periodic=False)
                groups.extend(np.asarray(idx))
            if not groups:
                raise ValueError(f"evaluation.features.{self.name}: the topology has no {list(self.backbone)} dihedral")
            return groups
        return list(self._contact_pairs(topology))

    def _contact_pairs(self, topology) -> np.ndarray:
        a, b = topology.select(self.contacts["a"]), topology.select(self.contacts["b"])
        sep = int(self.contacts["min_separation"])
        pairs = sorted({(min(i, j), max(i, j)) for i in a.tolist() for j in b.tolist()
                        if abs(topology.atom(i).residue.index - topology.atom(j).residue.index) >= sep})
        if not pairs:
            raise ValueError(f"evaluation.features.{self.name}.contacts: no pair of '{self.contacts['a']}' and "
                             f"'{self.contacts['b']}' atoms {sep} or more residues apart")
        return np.asarray(pairs, dtype=np.int64)

    @property
    def periodic(self) -> bool:
        return not self.contacts

    def values(self, xyz, topology) -> np.ndarray:
        """The raw features [F, d]: dihedrals in radians (-pi..pi) or distances in nm; xyz [F, N, 3] nm."""
        import mdtraj as md

        xyz = check_frames(xyz, "xyz", topology.n_atoms)
        traj = md.Trajectory(np.asarray(xyz, dtype=np.float32), topology)
        groups = np.stack(self.atom_groups(topology))
        if self.periodic:
            return md.compute_dihedrals(traj, groups, periodic=False).astype(np.float64)
        return md.compute_distances(traj, groups, periodic=False).astype(np.float64)

    def embedding(self, xyz, topology) -> np.ndarray:
        """Features for TICA / k-means [F, d']: (cos, sin) of every dihedral, distances as they are."""
        v = self.values(xyz, topology)
        return np.concatenate([np.cos(v), np.sin(v)], axis=1) if self.periodic else v


def _atom(topology, ref: str, feature: str) -> int:
    """``RESNAME:ATOM`` (first residue of that name) or ``RESIDX:ATOM`` -> atom index."""
    res, _, name = ref.partition(":")
    if not name:
        raise ValueError(f"evaluation.features.{feature}: atom '{ref}' is not RESNAME:ATOM or RESIDX:ATOM")
    for r in topology.residues:
        if (res.isdigit() and r.index == int(res)) or r.name == res:
            for a in r.atoms:
                if a.name == name:
                    return a.index
            raise ValueError(f"evaluation.features.{feature}: residue {r.name}{r.index} has no atom '{name}'")
    raise ValueError(f"evaluation.features.{feature}: no residue '{res}' in the topology")


def parse_feature_sets(spec: dict | None, source: str = "evaluation.features") -> list[FeatureSet]:
    """The system YAML's ``evaluation.features`` mapping -> FeatureSets, in declaration order."""
    if not spec:
        return []
    if not isinstance(spec, dict):
        raise ValueError(f"{source}: expected a mapping of feature-set names")
    return [FeatureSet.from_dict(str(k), v, source) for k, v in spec.items()]


def fixed_by_mapping(feature: FeatureSet, topology, mapping) -> bool:
    """Whether the beads alone determine every feature of the set.

    A feature is a function of the beads when each of its atoms *is* a bead:
    a bead row of the mapping matrix with a single non-zero weight, on that
    atom. (A feature on atoms inside multi-atom beads is not fixed by them.)
    """
    c = np.asarray(mapping.matrix, dtype=np.float64)
    single = np.count_nonzero(np.abs(c) > 1e-12, axis=1) == 1
    bead_atoms = set(np.argmax(np.abs(c[single]), axis=1).tolist())
    return all(set(np.asarray(g).tolist()) <= bead_atoms for g in feature.atom_groups(topology))
