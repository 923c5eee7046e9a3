"""Reference systems: topology, force field, starting coordinates and CG mappings.

Everything is built locally. ``adp`` reads the alanine dipeptide files that
openmmtools ships; ``chignolin`` is CLN025 read from the 5AWL file shipped in
``datasets/data`` (starting states: finegrain.datasets.peptides); a ``sequence:``
system is grown by PDBFixer and protonated by OpenMM's Modeller; a user system is
a small YAML file::

    name: my_peptide
    topology: peptide.pdb          # or a .prmtop (then `coordinates:` .inpcrd)
    forcefield: [amber99sbildn.xml, amber99_obc.xml]   # for PDB topologies
    implicit_solvent: OBC2         # for prmtop topologies (optional)
    mappings: {ca: {per_residue: {select: "name CA"}}}
    periodic: {nonbonded: PME, cutoff_nm: 1.0, switch_nm: 0.9}   # condensed phase (box from CRYST1)

A ``periodic`` system (``cumene``: a liquid box built by finegrain.datasets.liquids)
uses the declared Ewald-type method with that cutoff in the topology's box;
the others have no cutoff (implicit solvent as defined). Mappings may also be
``per_molecule: {beads: [{name, select, weights}, ...]}`` (CGMapping.from_spec):
those beads for every residue (molecule); atoms may be shared between beads.

Units: positions in nm.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from finegrain.platform.science.errors import FinegrainError
from finegrain.platform.science.mapping import CGMapping, MappingError
from finegrain.platform.science.mapping_formats import MAPPING_FILE_SUFFIXES, mapping_from_file
from finegrain.platform.science.metrics.features import parse_feature_sets

__all__ = ["ReferenceSystem", "UnknownSystemError", "available_systems", "get_system"]

_THREE = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU", "G": "GLY",
    "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE", "P": "PRO", "S": "SER",
    "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL",
}


class UnknownSystemError(FinegrainError, ValueError):
    """A system name or definition that cannot be built."""


@dataclass(frozen=True, eq=False)
class ReferenceSystem:
    """A molecular system finegrain can simulate, map and backmap.

    Attributes
    ----------
    name, description : str
    topology : openmm.app.Topology
    positions_nm : ndarray [n_atoms, 3] float64, starting coordinates (nm).
    mapping_specs : dict name -> CG spec (see finegrain.platform.science.mapping).
    definition : dict, the YAML-level definition (portable: rebuilds the system
        in another process via ``get_system(definition)``).
    """

    name: str
    description: str
    topology: Any
    positions_nm: np.ndarray
    mapping_specs: dict[str, dict]
    definition: dict = field(repr=False)
    _prmtop: Any = field(default=None, repr=False)

    @property
    def n_atoms(self) -> int:
        return self.topology.getNumAtoms()

    def starting_positions(self, replica: int) -> tuple[np.ndarray, str]:
        """(positions [n_atoms, 3] nm, kind) where replica ``replica`` starts.

        Without a ``starting_states`` section every replica starts from
        ``positions_nm`` (kind "given"); with one (chignolin) replicas alternate
        "folded" / "unfolded" starts, built deterministically (finegrain.datasets.peptides).
        """
        from finegrain.datasets.peptides import starting_positions

        return starting_positions(self, replica, self.definition.get("starting_states"))

    @property
    def md_topology(self):
        """The topology as an ``mdtraj.Topology``."""
        import mdtraj as md

        return md.Topology.from_openmm(self.topology)

    @property
    def periodic(self) -> bool:
        """True for a condensed-phase system under periodic boundaries (a ``periodic:`` section)."""
        return bool(self.definition.get("periodic"))

    @property
    def box_nm(self) -> np.ndarray | None:
        """Periodic box vectors [3, 3] nm (rows a, b, c) of a periodic system; None otherwise."""
        import openmm.unit as u

        vectors = self.topology.getPeriodicBoxVectors()
        if not self.periodic or vectors is None:
            return None
        return np.array([v.value_in_unit(u.nanometer) for v in vectors], dtype=np.float64).reshape(3, 3)

    @property
    def nonbonded(self) -> dict[str, Any]:
        """The nonbonded treatment: ``{"method": "NoCutoff"}`` or, for a periodic system,
        ``{"method": "PME" | ..., "cutoff_nm": float, "switch_nm": float | None}``."""
        per = self.definition.get("periodic")
        if not per:
            return {"method": "NoCutoff"}
        return {"method": str(per.get("nonbonded", "PME")), "cutoff_nm": float(per.get("cutoff_nm", 1.0)),
                "switch_nm": None if per.get("switch_nm") is None else float(per["switch_nm"])}

    def create_system(self, constraints: str | None = "HBonds"):
        """The OpenMM ``System``: no cutoff (implicit solvent as defined) or, for a periodic system,
        the declared method (PME) with its cutoff (and switching distance) in the topology's box.

        constraints : "HBonds" (for dynamics), None (for energies of arbitrary
        frames; constraints never add energy, so both give the same U(x)).
        """
        import openmm.app as app
        import openmm.unit as u

        cons = {None: None, "None": None, "HBonds": app.HBonds, "AllBonds": app.AllBonds, "HAngles": app.HAngles}
        if constraints not in cons:
            raise UnknownSystemError(f"constraints: expected one of {sorted(map(str, cons))}, got {constraints!r}")
        if self._prmtop is not None:
            solvent = self.definition.get("implicit_solvent")
            return self._prmtop.createSystem(
                nonbondedMethod=app.NoCutoff,
                constraints=cons[constraints],
                implicitSolvent=getattr(app, solvent) if solvent else None,
            )
        ff = app.ForceField(*self.definition["forcefield"])
        if self.periodic:
            nb = self.nonbonded
            extra = {} if nb["switch_nm"] is None else {"switchDistance": nb["switch_nm"] * u.nanometer}
            return ff.createSystem(self.topology, nonbondedMethod=getattr(app, nb["method"]),
                                   nonbondedCutoff=nb["cutoff_nm"] * u.nanometer, constraints=cons[constraints],
                                   **extra)
        return ff.createSystem(self.topology, nonbondedMethod=app.NoCutoff, constraints=cons[constraints])

    @property
    def feature_sets(self):
        """The evaluation features of the YAML's ``evaluation.features`` (list of
        :class:`~finegrain.platform.science.metrics.features.FeatureSet`; empty when none are declared)."""
        return parse_feature_sets((self.definition.get("evaluation") or {}).get("features"),
                                  source=f"system {self.name}: evaluation.features")

    def evaluation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``evaluate_frames`` from the YAML's ``evaluation`` section: ``features``,
        ``kinetics`` (feature-set names for the MSM, in order of preference) and, where given, ``lag_ps``
        (float) and ``n_centres`` (int)."""
        ev = self.definition.get("evaluation") or {}
        out: dict[str, Any] = {"features": self.feature_sets, "kinetics": list(ev.get("kinetics") or [])}
        if "lag_ps" in ev:
            out["lag_ps"] = float(ev["lag_ps"])
        if "n_centres" in ev:
            out["n_centres"] = int(ev["n_centres"])
        return out

    def mapping(self, name_or_path: str | Path) -> CGMapping:
        """A CG mapping by name (from this system's specs) or from a file: a YAML spec, a Martini/backward
        ``.map`` or a GROMACS ``.ndx`` (default options; see finegrain.platform.science.mapping_formats)."""
        key = str(name_or_path)
        if key in self.mapping_specs:
            return CGMapping.from_spec(self.mapping_specs[key], self.md_topology, name=key)
        if key.lower().endswith(MAPPING_FILE_SUFFIXES) and Path(key).is_file():
            return mapping_from_file(key, self.md_topology)
        raise MappingError(
            f"mapping: unknown mapping {key!r} for system '{self.name}' "
            f"(known: {', '.join(self.mapping_specs) or 'none'}; or give a .yaml, .map or .ndx file)"
        )


def _builtin_definitions() -> dict[str, dict]:
    text = importlib.resources.files("finegrain.datasets").joinpath("reference_systems.yaml").read_text()
    return yaml.safe_load(text)


def available_systems() -> dict[str, dict]:
    """Built-in system definitions by name (description and mapping names)."""
    return _builtin_definitions()


def get_system(name_or_definition: str | Path | dict) -> ReferenceSystem:
    """Build a system from a built-in name, a YAML file or a definition dict."""
    if isinstance(name_or_definition, dict):
        definition, base = dict(name_or_definition), Path(name_or_definition.get("_base", "."))
    else:
        key = str(name_or_definition)
        builtins = _builtin_definitions()
        if key in builtins:
            definition, base = dict(builtins[key], name=key), Path(".")
        elif key.endswith((".yaml", ".yml")):
            path = Path(key)
            try:
                definition = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError) as exc:
                raise UnknownSystemError(f"system file {path}: cannot read ({exc})") from exc
            if not isinstance(definition, dict):
                raise UnknownSystemError(f"system file {path}: expected a mapping at the top level")
            definition.setdefault("name", path.stem)
            base = path.resolve().parent
            definition["_base"] = str(base)
        else:
            raise UnknownSystemError(f"system: unknown system {key!r} (built-in: {', '.join(builtins)}; or a YAML file)")
    topology, positions, prmtop = _build(definition, base)
    if definition.get("periodic"):
        _check_periodic(definition, topology)
    specs = dict(definition.get("mappings") or {})
    return ReferenceSystem(
        name=str(definition["name"]),
        description=str(definition.get("description", "")),
        topology=topology,
        positions_nm=positions,
        mapping_specs=specs,
        definition=definition,
        _prmtop=prmtop,
    )


_NONBONDED_PERIODIC = ("PME", "LJPME", "Ewald", "CutoffPeriodic")


def _check_periodic(defn: dict, topology) -> None:
    """A periodic definition needs a known method, a cutoff, and a box (CRYST1) larger than twice the cutoff."""
    import openmm.unit as u

    name, per = defn.get("name", "?"), defn["periodic"]
    if not isinstance(per, dict):
        raise UnknownSystemError(f"system '{name}': periodic: expected a mapping (nonbonded, cutoff_nm, switch_nm)")
    extra = set(per) - {"nonbonded", "cutoff_nm", "switch_nm"}
    if extra:
        raise UnknownSystemError(f"system '{name}': periodic: unknown keys {sorted(extra)}")
    method = per.get("nonbonded", "PME")
    if method not in _NONBONDED_PERIODIC:
        raise UnknownSystemError(f"system '{name}': periodic.nonbonded: expected one of {_NONBONDED_PERIODIC}, "
                                 f"got {method!r}")
    cutoff = float(per.get("cutoff_nm", 1.0))
    switch = per.get("switch_nm")
    if not cutoff > 0 or (switch is not None and not 0 < float(switch) < cutoff):
        raise UnknownSystemError(f"system '{name}': periodic: need cutoff_nm > 0 and 0 < switch_nm < cutoff_nm, "
                                 f"got {cutoff} and {switch}")
    vectors = topology.getPeriodicBoxVectors()
    where = (defn.get("files") or {}).get("pdb") or defn.get("topology") or "the topology"
    if vectors is None:
        raise UnknownSystemError(f"system '{name}': periodic, but {where} has no box (CRYST1 record)")
    box = np.array([v.value_in_unit(u.nanometer) for v in vectors]).reshape(3, 3)
    if min(box[0, 0], box[1, 1], box[2, 2]) < 2 * cutoff:
        raise UnknownSystemError(f"system '{name}': box {np.diag(box).round(4).tolist()} nm of {where} is smaller "
                                 f"than twice the cutoff ({cutoff} nm)")


def _build(defn: dict, base: Path):
    import openmm.app as app
    import openmm.unit as u

    name = defn.get("name", "?")
    if "files" in defn:
        spec = importlib.util.find_spec(defn["files"]["package"])
        if spec is None or not spec.submodule_search_locations:
            raise UnknownSystemError(f"system '{name}': package {defn['files']['package']!r} is not installed")
        pdb = app.PDBFile(str(Path(spec.submodule_search_locations[0]) / defn["files"]["pdb"]))
        return pdb.topology, _nm(pdb.positions), None
    if "sequence" in defn:
        top, pos = _grow_peptide(defn["sequence"], defn["forcefield"])
        return top, pos, None
    if "topology" not in defn:
        raise UnknownSystemError(f"system '{name}': needs one of 'topology', 'sequence' or 'files'")
    path = (base / defn["topology"]).resolve()
    if not path.is_file():
        raise UnknownSystemError(f"system '{name}': topology file {path} not found")
    if path.suffix in (".prmtop", ".parm7"):
        if "coordinates" not in defn:
            raise UnknownSystemError(f"system '{name}': a prmtop topology needs 'coordinates' (.inpcrd/.rst7)")
        prmtop = app.AmberPrmtopFile(str(path))
        crd = app.AmberInpcrdFile(str((base / defn["coordinates"]).resolve()))
        return prmtop.topology, _nm(crd.positions), prmtop
    if "forcefield" not in defn:
        raise UnknownSystemError(f"system '{name}': a PDB topology needs 'forcefield' (list of OpenMM XML files)")
    pdb = app.PDBFile(str(path))
    return pdb.topology, np.asarray(pdb.positions.value_in_unit(u.nanometer), dtype=np.float64), None


def _nm(positions) -> np.ndarray:
    import openmm.unit as u

    return np.asarray(positions.value_in_unit(u.nanometer), dtype=np.float64)


def _grow_peptide(sequence: str, forcefield: list[str]):
    """Grow a linear peptide from its one-letter sequence offline.

    PDBFixer builds missing residues between the first and last residue's
    backbone (placed off-axis, 1.3 nm apart) from its templates; Modeller
    adds hydrogens at pH 7; a short minimisation removes the worst clashes.
    """
    import openmm as mm
    import openmm.app as app
    from pdbfixer import PDBFixer

    try:
        res = [_THREE[c] for c in sequence.upper()]
    except KeyError as exc:
        raise UnknownSystemError(f"sequence: unknown residue letter {exc.args[0]!r} in {sequence!r}") from None
    if len(res) < 2:
        raise UnknownSystemError(f"sequence: need at least 2 residues, got {sequence!r}")
    lines = []
    for i in range(0, len(res), 13):
        lines.append(f"SEQRES {i // 13 + 1:3d} A {len(res):4d}  " + " ".join(res[i:i + 13]))
    backbone = [("N", 0.0, 0.0, 0.0), ("CA", 1.458, 0.0, 0.0), ("C", 2.009, 1.42, 0.0), ("O", 1.251, 2.39, 0.0)]
    serial = 1
    for resi, shift in ((1, (0.0, 0.0, 0.0)), (len(res), (12.0, 6.0, 3.0))):
        for atom, x, y, z in backbone:
            lines.append(
                f"ATOM  {serial:5d}  {atom:<3s} {res[resi - 1]} A{resi:4d}    "
                f"{x + shift[0]:8.3f}{y + shift[1]:8.3f}{z + shift[2]:8.3f}  1.00  0.00"
            )
            serial += 1
    lines.append("END")
    fixer = PDBFixer(pdbfile=io.StringIO("\n".join(lines) + "\n"))
    fixer.findMissingResidues()
    fixer.findMissingAtoms()
    fixer.addMissingAtoms()
    fixer.addMissingHydrogens(7.0)
    ff = app.ForceField(*forcefield)
    system = ff.createSystem(fixer.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(fixer.positions)
    mm.LocalEnergyMinimizer.minimize(ctx, maxIterations=500)
    return fixer.topology, _nm(ctx.getState(getPositions=True).getPositions())
