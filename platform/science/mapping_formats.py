"""CG mappings as the community writes them: Martini/backward ``.map`` files and GROMACS ``.ndx`` index files.

Both readers return a :class:`~finegrain.platform.science.mapping.CGMapping` (the ``[n_beads, n_atoms]``
matrix C of ``y = C x``) for an mdtraj Topology. Pure functions of the file text and the topology: no
coordinates are read; numpy and the standard library only (the topology is duck-typed mdtraj).

Backward / Martini ``.map`` files
---------------------------------
The residue mapping files of *backward* (T. A. Wassenaar, K. Pluhackova, R. A. Boeckmann, S. J. Marrink,
D. P. Tieleman, "Going backward: a flexible geometric approach to reverse transformation from coarse
grained to atomistic models", J. Chem. Theory Comput. 10, 676 (2014)), also read by martinize2/vermouth::

    [ molecule ]            ; residue name(s) this block applies to (several allowed: "HIS HSD HSE")
    CUME
    [ martini ]             ; bead names, in bead order (any other unknown section name, e.g.
    R A1 A2                 ; [ elnedyn ], is likewise the bead list of that CG model)
    [ mapping ]             ; atomistic force field(s) of the atom names below (kept, not checked)
    charmm36
    [ atoms ]               ; index  atom-name  bead [bead ...]
        1  CA1  R
       12  C4   A1 A2       ; shared: half its weight in A1, half in A2
       13  H41  A1 A2
        5  HA   !BB         ; member of BB with zero weight (not used for BB's position)
    [ chiral ] / [ trans ] / [ cis ] / [ out ] / [ assign ]   ; backward's geometric modifiers:
                            ; parsed and kept (BackwardBlock.modifiers), not used by the forward map

A file may hold several ``[ molecule ]`` blocks, and a molecule several ``[ mapping ]`` + ``[ atoms ]``
blocks (one per atomistic naming scheme); ``[ from ]``/``[ to ]`` (vermouth) are accepted and kept.
``;`` starts a comment.

Weights (the conventions of vermouth's reader of these files and of Martini 3 mappings; checked against
the Tsjerk/Backward and marrink-lab/vermouth-martinize mapping files):

* An atom has total weight 1, split over the bead names on its line in proportion to how often each
  appears: ``CD1 SC1 SC2 SC2`` gives SC1 1/3 and SC2 2/3 of the atom. ``!BEAD`` makes the atom a member
  of BEAD with weight 0 (vermouth's "null weight"; backward itself uses it for atoms that should not
  pull the bead, e.g. a backbone HA).
* A line with an atom name but no bead inherits the beads of the previous atom line (backward's rule);
  on the first atom line that is an error.
* ``weights="geometry"`` (default) makes each bead the weighted centre of geometry of its atoms with those
  shares as weights; ``"mass"`` multiplies each share by the element mass (a centre of mass with shared
  atoms split). Rows are normalised to sum to one. (Backward's own forward projection uses crude masses
  H=1, C=12, ... and counts a shared atom fully in each bead; vermouth and Martini 3 split it, as here.)

Applying it: every topology residue whose name is a ``[ molecule ]`` name gets that molecule's beads, in
``[ martini ]`` order, named ``RESn-BEAD`` (``str(residue)`` + ``-`` + bead, e.g. ``CUME1-R``: the names
:meth:`CGMapping.cg_topology` turns into a residue/atom pair). Beads follow topology residue order.

Unmapped atoms: backward maps only the atoms listed (in the *reverse* direction it places unlisted
target atoms, e.g. hydrogens of a united-atom map, on the previous listed atom; in the forward direction
an unlisted atom is simply not used). A missing atom is far more often a naming mismatch (``HN`` vs
``H``) than intent, so by default every atom of a mapped residue must be listed and every residue must
have a molecule; ``allow_unmapped=True`` leaves such atoms/residues out of every bead (zero columns).

GROMACS index files (``.ndx``)
------------------------------
``[ group ]`` headers followed by 1-based atom numbers (whitespace separated, any number of lines).
Each group becomes one bead named after the group (all groups in file order, or ``groups=[...]`` in the
order given), at the centre of geometry or of mass of its atoms. Groups are independent, as in
``gmx traj -com``: an atom in two groups counts fully in both (``shared="split"`` splits it equally over
the selected groups listing it, the Martini 3 convention). An atom number repeated within a group
counts once per listing.

Every error is a :class:`MappingError` that names the file and the line, group, residue or atom.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from finegrain.platform.science.mapping import CGMapping, MappingError

__all__ = [
    "BackwardAtom", "BackwardBlock", "BackwardMolecule", "BackwardMap",
    "read_backward_map", "mapping_from_backward", "read_ndx", "mapping_from_ndx", "mapping_from_file",
    "MAPPING_FILE_SUFFIXES",
]

#: the suffixes of the mapping files :func:`mapping_from_file` reads
MAPPING_FILE_SUFFIXES = (".map", ".ndx", ".yaml", ".yml")

_MODIFIERS = ("chiral", "trans", "cis", "out", "assign")
_KNOWN = ("molecule", "mapping", "atoms", "from", "to", "extra") + _MODIFIERS
_HEADER = re.compile(r"\[\s*([^\]]*?)\s*\]")


@dataclass(frozen=True)
class BackwardAtom:
    """One ``[ atoms ]`` line: ``number name bead...`` (beads as written, ``!`` prefixes kept;
    inherited from the previous line when the line gives none). ``line`` is 1-based."""

    line: int
    number: int
    name: str
    beads: tuple[str, ...]

    def shares(self) -> dict[str, float]:
        """Bead -> this atom's weight share (0 for ``!BEAD``); the non-zero shares sum to one."""
        counts = Counter(b for b in self.beads if not b.startswith("!"))
        total = sum(counts.values())
        out = {b[1:]: 0.0 for b in self.beads if b.startswith("!")}
        out.update({b: c / total for b, c in counts.items()})
        return out


@dataclass(frozen=True)
class BackwardBlock:
    """One ``[ mapping ]`` + ``[ atoms ]`` block of a molecule.

    forcefields : the ``[ mapping ]``/``[ from ]`` names; atoms : the ``[ atoms ]`` lines;
    modifiers : ``(section, line, tokens)`` of every ``[ chiral ]``/``[ trans ]``/``[ cis ]``/``[ out ]``/
    ``[ assign ]`` line, in file order (backward's geometric modifiers; unused by the forward map).
    """

    forcefields: tuple[str, ...]
    atoms: tuple[BackwardAtom, ...]
    modifiers: tuple[tuple[str, int, tuple[str, ...]], ...]


@dataclass(frozen=True)
class BackwardMolecule:
    """A ``[ molecule ]`` block: residue names, the CG model (section name) and its beads in order."""

    names: tuple[str, ...]
    line: int
    cg_model: str
    beads: tuple[str, ...]
    blocks: tuple[BackwardBlock, ...]
    to: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackwardMap:
    """A parsed ``.map`` file (or several): ``molecules`` in file order; ``path`` for messages."""

    path: str
    molecules: tuple[BackwardMolecule, ...]

    def molecule(self, resname: str) -> BackwardMolecule | None:
        for mol in self.molecules:
            if resname in mol.names:
                return mol
        return None


# -- .map --------------------------------------------------------------------------------------------
class _MolBuilder:
    def __init__(self, where: str, line: int):
        self.where, self.line = where, line
        self.names: list[str] = []
        self.cg_model, self.beads, self.to = "", [], []
        self.blocks: list[BackwardBlock] = []
        self.ff: list[str] = []
        self.atoms: list[BackwardAtom] = []
        self.mods: list[tuple[str, int, tuple[str, ...]]] = []

    def close_block(self) -> None:
        if self.atoms:
            self.blocks.append(BackwardBlock(tuple(self.ff), tuple(self.atoms), tuple(self.mods)))
        elif self.mods and self.blocks:  # modifiers after the last [ atoms ] belong to it
            last = self.blocks.pop()
            self.blocks.append(BackwardBlock(last.forcefields, last.atoms, last.modifiers + tuple(self.mods)))
        self.ff, self.atoms, self.mods = [], [], []

    def build(self) -> BackwardMolecule:
        self.close_block()
        where = f"{self.where}:{self.line}: [ molecule ] {' '.join(self.names) or '?'}"
        if not self.names:
            raise MappingError(f"{self.where}:{self.line}: [ molecule ] gives no residue name")
        if not self.beads:
            raise MappingError(f"{where}: no bead list (a [ martini ] section naming the beads)")
        if not self.blocks:
            raise MappingError(f"{where}: no [ atoms ] lines")
        return BackwardMolecule(tuple(self.names), self.line, self.cg_model, tuple(self.beads),
                                tuple(self.blocks), tuple(self.to))


def read_backward_map(paths: str | Path | Sequence[str | Path]) -> BackwardMap:
    """Parse one ``.map`` file (or several, molecules concatenated) into a :class:`BackwardMap`.

    Checks the syntax and each molecule on its own: bead names unique, every bead named on an
    ``[ atoms ]`` line listed under ``[ martini ]``, atom names unique within a block, atom numbers
    integers, no atom both ``BEAD`` and ``!BEAD``. Residue names must be unique over all files.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    molecules: list[BackwardMolecule] = []
    seen: dict[str, str] = {}
    for path in paths:
        for mol in _read_one_map(Path(path)):
            for n in mol.names:
                if n in seen:
                    raise MappingError(f"{path}:{mol.line}: residue {n!r} already has a [ molecule ] ({seen[n]})")
                seen[n] = f"{path}:{mol.line}"
            molecules.append(mol)
    if not molecules:
        raise MappingError(f"{', '.join(map(str, paths))}: no [ molecule ] block")
    return BackwardMap(path=", ".join(map(str, paths)), molecules=tuple(molecules))


def _read_one_map(path: Path) -> list[BackwardMolecule]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"mapping file {path}: cannot read ({exc})") from exc
    out: list[BackwardMolecule] = []
    mol: _MolBuilder | None = None
    section = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        s = raw.split(";", 1)[0].strip()
        if not s:
            continue
        where = f"{path}:{lineno}"
        if s.startswith("["):
            m = _HEADER.fullmatch(s)
            if not m or not m.group(1):
                raise MappingError(f"{where}: malformed section header {s!r}")
            section = m.group(1).lower()
            if section == "molecule":
                if mol is not None:
                    out.append(mol.build())
                mol = _MolBuilder(str(path), lineno)
            elif mol is None:
                raise MappingError(f"{where}: section [ {section} ] before any [ molecule ]")
            elif section in ("mapping", "from") and mol.atoms:
                mol.close_block()
            elif section not in _KNOWN:
                if mol.beads:
                    raise MappingError(f"{where}: second bead list [ {section} ] in molecule "
                                       f"{' '.join(mol.names)} (already [ {mol.cg_model} ])")
                mol.cg_model = section
            continue
        if mol is None or section is None:
            raise MappingError(f"{where}: {s!r} outside any section (a .map file starts with [ molecule ])")
        tokens = s.split()
        if section == "molecule":
            mol.names.extend(tokens)
        elif section in ("mapping", "from"):
            mol.ff.extend(tokens)
        elif section == "to":
            mol.to.extend(tokens)
        elif section == "extra":
            continue
        elif section in _MODIFIERS:
            mol.mods.append((section, lineno, tuple(tokens)))
        elif section == "atoms":
            mol.atoms.append(_atom_line(tokens, where, lineno, mol))
        else:  # the bead list of the CG model
            for b in tokens:
                if b in mol.beads:
                    raise MappingError(f"{where}: bead {b!r} listed twice in [ {section} ]")
                mol.beads.append(b)
    if mol is not None:
        out.append(mol.build())
    return out


def _atom_line(tokens: list[str], where: str, lineno: int, mol: _MolBuilder) -> BackwardAtom:
    if len(tokens) < 2:
        raise MappingError(f"{where}: [ atoms ] line needs 'number atom-name bead...', got {' '.join(tokens)!r}")
    try:
        number = int(tokens[0])
    except ValueError:
        raise MappingError(f"{where}: [ atoms ] atom number {tokens[0]!r} is not an integer") from None
    name, beads = tokens[1], tuple(tokens[2:])
    if any(a.name == name for a in mol.atoms):
        raise MappingError(f"{where}: atom {name!r} listed twice in [ atoms ] of molecule {' '.join(mol.names)}")
    if not beads:
        if not mol.atoms:
            raise MappingError(f"{where}: atom {name!r} names no bead (and there is no previous atom line "
                               f"to inherit beads from)")
        beads = mol.atoms[-1].beads
    if not mol.beads:
        raise MappingError(f"{where}: [ atoms ] before the bead list ([ martini ])")
    for b in beads:
        if b.lstrip("!") not in mol.beads:
            raise MappingError(f"{where}: atom {name!r}: bead {b.lstrip('!')!r} is not in "
                               f"[ {mol.cg_model} ] ({' '.join(mol.beads)})")
    plain = {b for b in beads if not b.startswith("!")}
    both = sorted(plain & {b[1:] for b in beads if b.startswith("!")})
    if both:
        raise MappingError(f"{where}: atom {name!r} is mapped to {both[0]!r} both with and without '!'")
    return BackwardAtom(line=lineno, number=number, name=name, beads=beads)


def mapping_from_backward(source: BackwardMap | str | Path | Sequence[str | Path], topology, *,
                          weights: str = "geometry", allow_unmapped: bool = False,
                          forcefield: str | None = None, name: str | None = None) -> CGMapping:
    """The CGMapping of a backward/Martini ``.map`` file applied to every matching residue of ``topology``.

    source : a :class:`BackwardMap` or the path(s) of ``.map`` files.
    topology : mdtraj.Topology; residues matched by name, atoms by name within the residue.
    weights : ``"geometry"`` (centre of geometry, the default) or ``"mass"`` (element masses);
        a shared atom's weight is split per the module docstring either way.
    allow_unmapped : leave topology atoms (and residues) the file does not list out of every bead,
        instead of raising.
    forcefield : use only ``[ mapping ]`` blocks naming this force field (or naming none); among the
        candidates the first whose atom names fit the residue is used.
    name : the mapping's name (default: the file stem).
    Returns a CGMapping ``[n_beads, n_atoms]``, beads ``RESn-BEAD`` in residue, then bead-list order.
    """
    bmap = source if isinstance(source, BackwardMap) else read_backward_map(source)
    if weights not in ("geometry", "mass"):
        raise MappingError(f"{bmap.path}: weights must be 'geometry' or 'mass', got {weights!r}")
    n_atoms = topology.n_atoms
    masses = np.array([a.element.mass if a.element is not None else 0.0 for a in topology.atoms])
    rows: list[np.ndarray] = []
    names: list[str] = []
    for res in topology.residues:
        mol = bmap.molecule(res.name)
        if mol is None:
            if allow_unmapped:
                continue
            known = sorted({n for m in bmap.molecules for n in m.names})
            raise MappingError(f"{bmap.path}: no [ molecule ] for residue {res.index} ({res}) of the topology "
                               f"(molecules in the file: {', '.join(known)}; allow_unmapped=True skips it)")
        by_name: dict[str, int] = {}
        for a in res.atoms:
            if a.name in by_name:
                raise MappingError(f"{bmap.path}: residue {res.index} ({res}) has two atoms named {a.name!r}")
            by_name[a.name] = a.index
        block = _pick_block(mol, res, by_name, forcefield, allow_unmapped, bmap.path)
        for bead in mol.beads:
            idx, w = [], []
            for atom in block.atoms:
                share = atom.shares().get(bead)
                if share is None:
                    continue
                i = by_name[atom.name]
                idx.append(i)
                w.append(share * (masses[i] if weights == "mass" else 1.0))
            w = np.asarray(w, dtype=np.float64)
            if not idx or w.sum() <= 0:
                raise MappingError(f"{bmap.path}:{mol.line}: bead {bead!r} of molecule {' '.join(mol.names)} gets "
                                   f"no atom with positive weight in residue {res.index} ({res})")
            row = np.zeros(n_atoms)
            np.add.at(row, np.asarray(idx), w / w.sum())
            rows.append(row)
            names.append(f"{res}-{bead}")
    if not rows:
        raise MappingError(f"{bmap.path}: no residue of the topology matches a [ molecule ] "
                           f"({', '.join(n for m in bmap.molecules for n in m.names)})")
    return CGMapping(name=name or _stem(bmap.path), matrix=np.stack(rows), bead_names=tuple(names))


def _pick_block(mol: BackwardMolecule, res, by_name: dict[str, int], forcefield: str | None,
                allow_unmapped: bool, path: str) -> BackwardBlock:
    blocks = mol.blocks
    if forcefield is not None:
        blocks = tuple(b for b in mol.blocks if forcefield in b.forcefields or not b.forcefields)
        if not blocks:
            ffs = sorted({f for b in mol.blocks for f in b.forcefields})
            raise MappingError(f"{path}:{mol.line}: molecule {' '.join(mol.names)} has no [ mapping ] block for "
                               f"force field {forcefield!r} (has: {', '.join(ffs) or 'none named'})")
    problems = []
    for block in blocks:
        problem = _misfit(block, res, by_name, allow_unmapped, path)
        if problem is None:
            return block
        problems.append(problem)
    raise MappingError(problems[0] if len(problems) == 1 else
                       f"no [ atoms ] block of molecule {' '.join(mol.names)} fits: " + "; ".join(problems))


def _misfit(block: BackwardBlock, res, by_name: dict[str, int], allow_unmapped: bool, path: str) -> str | None:
    for atom in block.atoms:
        if atom.name not in by_name:
            return (f"{path}:{atom.line}: atom {atom.name!r} is not in residue {res.index} ({res}) of the "
                    f"topology (its atoms: {' '.join(by_name)})")
    if not allow_unmapped:
        listed = {a.name for a in block.atoms}
        missing = [n for n in by_name if n not in listed]
        if missing:
            return (f"{path}: atom(s) {', '.join(missing)} of residue {res.index} ({res}) are not in the "
                    f"[ atoms ] block starting at line {block.atoms[0].line} (allow_unmapped=True leaves them out)")
    return None


# -- .ndx --------------------------------------------------------------------------------------------
def read_ndx(path: str | Path) -> dict[str, tuple[tuple[int, ...], int]]:
    """Parse a GROMACS index file: group name -> (1-based atom numbers as listed, header line), file order.

    Raises on numbers before any header, non-integer tokens and duplicate group names (file and lines).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"index file {path}: cannot read ({exc})") from exc
    groups: dict[str, tuple[list[int], int]] = {}
    current = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        s = raw.split(";", 1)[0].strip()
        if not s:
            continue
        if s.startswith("["):
            m = _HEADER.fullmatch(s)
            if not m or not m.group(1):
                raise MappingError(f"{path}:{lineno}: malformed group header {s!r}")
            current = m.group(1)
            if current in groups:
                raise MappingError(f"{path}:{lineno}: duplicate group name [ {current} ] "
                                   f"(first at line {groups[current][1]})")
            groups[current] = ([], lineno)
            continue
        if current is None:
            raise MappingError(f"{path}:{lineno}: atom numbers before any [ group ] header")
        for tok in s.split():
            try:
                groups[current][0].append(int(tok))
            except ValueError:
                raise MappingError(f"{path}:{lineno}: group [ {current} ]: {tok!r} is not an atom number") from None
    if not groups:
        raise MappingError(f"{path}: no [ group ] in the index file")
    return {g: (tuple(nums), line) for g, (nums, line) in groups.items()}


def mapping_from_ndx(path: str | Path, topology, *, groups: Sequence[str] | None = None,
                     weights: str = "geometry", shared: str = "full", name: str | None = None) -> CGMapping:
    """One bead per index group (named after it) of a GROMACS ``.ndx`` file, for ``topology``.

    path : the ``.ndx`` file; atom numbers are 1-based positions in ``topology`` (GROMACS numbering).
    groups : names of the groups that are beads, in bead order (default: every group, file order).
    weights : ``"geometry"`` (default) or ``"mass"`` (element masses).
    shared : ``"full"`` (default; an atom in several groups counts fully in each, as GROMACS computes
        group centres) or ``"split"`` (its weight split equally over the selected groups listing it).
    Returns a CGMapping ``[n_groups, n_atoms]``.
    """
    parsed = read_ndx(path)
    if weights not in ("geometry", "mass"):
        raise MappingError(f"{path}: weights must be 'geometry' or 'mass', got {weights!r}")
    if shared not in ("full", "split"):
        raise MappingError(f"{path}: shared must be 'full' or 'split', got {shared!r}")
    chosen = list(parsed) if groups is None else list(groups)
    unknown = [g for g in chosen if g not in parsed]
    if unknown:
        raise MappingError(f"{path}: no group [ {unknown[0]} ] (groups: {', '.join(parsed)})")
    if len(set(chosen)) != len(chosen):
        raise MappingError(f"{path}: groups lists a group twice: {chosen}")
    n_atoms = topology.n_atoms
    for g in chosen:
        nums, line = parsed[g]
        if not nums:
            raise MappingError(f"{path}:{line}: group [ {g} ] is empty")
        bad = [k for k in nums if not 1 <= k <= n_atoms]
        if bad:
            raise MappingError(f"{path}:{line}: group [ {g} ]: atom number {bad[0]} out of range 1..{n_atoms} "
                               f"(the topology has {n_atoms} atoms)")
    masses = np.array([a.element.mass if a.element is not None else 0.0 for a in topology.atoms])
    n_groups_of = np.zeros(n_atoms)
    for g in chosen:
        n_groups_of[np.unique(np.asarray(parsed[g][0]) - 1)] += 1
    rows = []
    for g in chosen:
        idx = np.asarray(parsed[g][0]) - 1
        w = masses[idx] if weights == "mass" else np.ones(idx.size)
        if shared == "split":
            w = w / n_groups_of[idx]
        if w.sum() <= 0:
            raise MappingError(f"{path}:{parsed[g][1]}: group [ {g} ]: its atoms have zero total mass")
        row = np.zeros(n_atoms)
        np.add.at(row, idx, w / w.sum())
        rows.append(row)
    return CGMapping(name=name or Path(path).stem, matrix=np.stack(rows), bead_names=tuple(chosen))


# -- dispatch ----------------------------------------------------------------------------------------
def mapping_from_file(path: str | Path, topology, **options) -> CGMapping:
    """A CGMapping from a ``.map`` (backward/Martini), ``.ndx`` (GROMACS) or ``.yaml``/``.yml`` (spec) file;
    ``options`` go to :func:`mapping_from_backward` / :func:`mapping_from_ndx`."""
    suffix = Path(path).suffix.lower()
    if suffix == ".map":
        return mapping_from_backward(path, topology, **options)
    if suffix == ".ndx":
        return mapping_from_ndx(path, topology, **options)
    if suffix in (".yaml", ".yml"):
        if options:
            raise MappingError(f"{path}: a YAML mapping takes no options, got {sorted(options)}")
        return CGMapping.from_yaml(path, topology)
    raise MappingError(f"mapping file {path}: unknown format {suffix!r} (expected one of {MAPPING_FILE_SUFFIXES})")


def _stem(paths: str) -> str:
    return Path(paths.split(", ")[0]).stem
