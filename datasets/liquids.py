"""Condensed-phase reference systems built offline: a periodic box of liquid cumene.

One cumene molecule (CHARMM36/CGenFF residue ``CUME`` of the ``charmm36.xml``
OpenMM ships, 21 atoms, 120.19 g/mol) is built from ideal geometry in code;
``n_molecules`` copies go on a cubic lattice (spacing ``LATTICE_NM``) with
seeded random orientations; the box is then compressed to the target density
in ``compress_stages`` steps (molecule centres scaled rigidly, minimised, a
short Langevin run each), equilibrated in NPT (``MonteCarloBarostat``) and
fixed at the NPT run's mean volume (second half), equilibrated in NVT,
minimised, and written with molecules whole and their centres of mass
wrapped into the box. The same arguments give the same box on the same
platform (every random number is seeded).

The shipped ``data/cumene_liquid.pdb`` (reference system ``cumene``) was made
with the defaults of :class:`LiquidBuild` on the CPU platform::

    python -m finegrain.datasets.liquids --out datasets/data/cumene_liquid.pdb

Units: nm, ps, K, bar, g/cm^3.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass


__all__ = ["LiquidBuild", "CUMENE_ATOMS", "cumene_molecule_nm", "lattice_positions_nm", "cumene_topology", "build_cumene_liquid",
           "density_g_cm3", "write_pdb", "main"]

#: CHARMM36 ``CUME`` atom names in template order, with elements.
CUMENE_ATOMS: tuple[tuple[str, str], ...] = (
    ("CA1", "C"), ("HA1", "H"), ("CA2", "C"), ("HA2", "H"), ("CA3", "C"), ("HA3", "H"), ("CA4", "C"),
    ("CA5", "C"), ("HA5", "H"), ("CA6", "C"), ("HA6", "H"), ("C4", "C"), ("H41", "H"), ("C3", "C"),
    ("H31", "H"), ("H32", "H"), ("H33", "H"), ("C5", "C"), ("H51", "H"), ("H52", "H"), ("H53", "H"),
)
_BONDS = (("CA1", "HA1"), ("CA1", "CA2"), ("CA2", "HA2"), ("CA3", "HA3"), ("CA3", "CA4"), ("CA5", "HA5"),
          ("CA5", "CA6"), ("CA6", "HA6"), ("CA6", "CA1"), ("CA4", "CA5"), ("CA2", "CA3"), ("C3", "H31"),
          ("C3", "H32"), ("C3", "H33"), ("CA4", "C4"), ("C3", "C4"), ("C4", "H41"), ("C4", "C5"), ("C5", "H51"),
          ("C5", "H52"), ("C5", "H53"))
#: Ideal bond lengths (nm): aromatic C-C, aromatic C-H, C(ar)-C(sp3), C-C(sp3), C(sp3)-H.
_R_CC_AR, _R_CH_AR, _R_C_AR_C, _R_CC, _R_CH = 0.139, 0.108, 0.151, 0.153, 0.111
#: Lattice spacing of the starting (dilute) configuration, nm: above the molecule's largest extent.
LATTICE_NM = 1.0
_AVOGADRO = 6.02214076e23


_Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class LiquidBuild:
    """How a cumene box is built (defaults: the shipped box); validated by pydantic (a ValueError naming the field).

    n_molecules : molecules (21 atoms each). density_g_cm3 : compression target
    (experiment, 300 K: 0.86). cutoff_nm : PME real-space/LJ cutoff (switch at
    ``cutoff_nm - 0.1``; CHARMM36 as OpenMM ships it: no long-range LJ
    correction); the target box must exceed 2.1 x cutoff. compress_stages x
    stage_ps : rigid compression; npt_ps at pressure_bar (its mean density
    over the second half is recorded: the force field's density), then the
    box is fixed at ``box_from``: "target" (density_g_cm3, the default) or
    "npt" (that mean), and nvt_ps run in it; timestep_fs with H bonds constrained.
    platform : OpenMM platform (Reference for tests; CPU threads ``threads``).
    """

    n_molecules: Annotated[int, Field(ge=1)] = 125
    seed: int = 0
    temperature_k: _Positive = 300.0
    pressure_bar: _Positive = 1.0
    density_g_cm3: _Positive = 0.86
    cutoff_nm: _Positive = 1.0
    compress_stages: Annotated[int, Field(ge=1)] = 10
    stage_ps: _NonNegative = 0.2
    npt_ps: _NonNegative = 6.0
    nvt_ps: _NonNegative = 4.0
    box_from: Literal["target", "npt"] = "target"
    timestep_fs: _Positive = 2.0
    platform: str = "CPU"
    threads: Annotated[int, Field(ge=0)] = 0  # 0: OpenMM's default

    def __post_init__(self) -> None:
        if self.box_from == "npt" and self.npt_ps <= 0:
            raise ValueError("box_from: 'npt' needs npt_ps > 0")
        box = self.target_box_nm
        if box < 2.1 * self.cutoff_nm:
            raise ValueError(f"n_molecules: {self.n_molecules} molecules at {self.density_g_cm3} g/cm^3 make a "
                             f"{box:.3f} nm box, less than 2.1 x cutoff_nm ({self.cutoff_nm} nm); add molecules "
                             f"or lower the cutoff")

    @property
    def target_box_nm(self) -> float:
        """Edge (nm) of the cubic box holding ``n_molecules`` at ``density_g_cm3``."""
        return (self.n_molecules * _cumene_mass() / _AVOGADRO / self.density_g_cm3 * 1e21) ** (1.0 / 3.0)


def _cumene_mass() -> float:
    """Molar mass of cumene C9H12 from OpenMM's element masses, g/mol (120.19)."""
    from openmm.app import element

    return float(sum(element.get_by_symbol(e).mass._value for _, e in CUMENE_ATOMS))


def _perpendicular(u: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal (e1, e2) perpendicular to unit ``u``, e1 in the plane of u and ``ref``."""
    e1 = ref - np.dot(ref, u) * u
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(u, e1)


def _tetrahedral(center: np.ndarray, neighbour: np.ndarray, ref: np.ndarray, length: float,
                 phases_deg=(0.0, 120.0, 240.0)) -> list[np.ndarray]:
    """Three positions at ``length`` from ``center`` completing a tetrahedron with the bond to ``neighbour``.

    Each new bond makes 109.47 deg with center->neighbour; ``phases_deg`` are
    their azimuths about that bond, measured from the ``ref`` direction.
    """
    b = (neighbour - center) / np.linalg.norm(neighbour - center)
    e1, e2 = _perpendicular(b, ref)
    cos_t = -1.0 / 3.0
    sin_t = math.sqrt(1.0 - cos_t * cos_t)
    return [center + length * (cos_t * b + sin_t * (math.cos(math.radians(p)) * e1 + math.sin(math.radians(p)) * e2))
            for p in phases_deg]


def cumene_molecule_nm() -> np.ndarray:
    """Ideal-geometry cumene, [21, 3] nm in :data:`CUMENE_ATOMS` order, centre of mass at the origin.

    Planar hexagonal ring in the xy plane (ipso carbon CA4 on +x), the
    isopropyl CH (C4) on the ring axis with H41 in the ring plane and the
    methyls C3/C5 above and below it; staggered methyl hydrogens; all sp3
    angles tetrahedral.
    """
    pos: dict[str, np.ndarray] = {}
    ring = ("CA4", "CA5", "CA6", "CA1", "CA2", "CA3")  # ring order, 60 deg apart, from +x
    for k, name in enumerate(ring):
        d = np.array([math.cos(math.radians(60 * k)), math.sin(math.radians(60 * k)), 0.0])
        pos[name] = _R_CC_AR * d
        if name != "CA4":
            pos["H" + name[1:]] = (_R_CC_AR + _R_CH_AR) * d
    pos["C4"] = np.array([_R_CC_AR + _R_C_AR_C, 0.0, 0.0])
    z = np.array([0.0, 0.0, 1.0])
    # azimuths from +z about the C4->CA4 bond: methyls at +-60 deg off the ring normal, H41 in the ring plane
    c3, c5, h41 = _tetrahedral(pos["C4"], pos["CA4"], z, _R_CC, phases_deg=(60.0, 300.0, 180.0))
    h41 = pos["C4"] + (h41 - pos["C4"]) * (_R_CH / _R_CC)
    pos.update(C3=c3, C5=c5, H41=h41)
    for c in ("C3", "C5"):
        hs = _tetrahedral(pos[c], pos["C4"], pos["H41"] - pos["C4"], _R_CH, phases_deg=(60.0, 180.0, 300.0))
        for j, h in enumerate(hs):
            pos[f"H{c[1]}{j + 1}"] = h
    xyz = np.array([pos[name] for name, _ in CUMENE_ATOMS], dtype=np.float64)
    from openmm.app import element

    m = np.array([element.get_by_symbol(e).mass._value for _, e in CUMENE_ATOMS])
    return xyz - (m[:, None] * xyz).sum(0) / m.sum()


def _random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """n uniformly random rotation matrices [n, 3, 3] (normalised Gaussian quaternions)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], 1)


def lattice_positions_nm(n_molecules: int, seed: int, spacing_nm: float = LATTICE_NM) -> tuple[np.ndarray, float]:
    """Dilute start: molecules on the first ``n_molecules`` sites of a cubic lattice, random orientations.

    Returns (positions [n_molecules * 21, 3] nm, cubic box edge nm = sites per
    edge x spacing). Molecule k's centre of mass is at its site (centred in the cell).
    """
    per_edge = math.ceil(round(n_molecules ** (1.0 / 3.0), 9))
    sites = np.array([(i, j, k) for i in range(per_edge) for j in range(per_edge) for k in range(per_edge)],
                     dtype=np.float64)[:n_molecules]
    centres = (sites + 0.5) * spacing_nm
    rot = _random_rotations(n_molecules, np.random.default_rng(seed))
    mol = cumene_molecule_nm()
    xyz = np.einsum("nij,aj->nai", rot, mol) + centres[:, None, :]
    return xyz.reshape(-1, 3), per_edge * spacing_nm


def cumene_topology(n_molecules: int, box_nm: float | None = None):
    """An OpenMM Topology of ``n_molecules`` CUME residues (one chain, residues numbered from 1, bonds set)."""
    import openmm.app as app
    import openmm.unit as u

    top = app.Topology()
    chain = top.addChain("A")
    for k in range(n_molecules):
        res = top.addResidue("CUME", chain, id=str(k + 1))
        atoms = {name: top.addAtom(name, app.element.get_by_symbol(el), res) for name, el in CUMENE_ATOMS}
        for a, b in _BONDS:
            top.addBond(atoms[a], atoms[b])
    if box_nm is not None:
        top.setPeriodicBoxVectors(np.eye(3) * box_nm * u.nanometer)
    return top


def density_g_cm3(n_molecules: int, box_volume_nm3: float) -> float:
    """Mass density (g/cm^3) of ``n_molecules`` cumene molecules in ``box_volume_nm3``."""
    return n_molecules * _cumene_mass() / _AVOGADRO / (box_volume_nm3 * 1e-21)


def _molecule_centres(xyz: np.ndarray, n_molecules: int) -> np.ndarray:
    from openmm.app import element

    m = np.array([element.get_by_symbol(e).mass._value for _, e in CUMENE_ATOMS])
    mol = xyz.reshape(n_molecules, len(CUMENE_ATOMS), 3)
    return (m[None, :, None] * mol).sum(1) / m.sum()


def _scale_molecules(xyz: np.ndarray, n_molecules: int, factor: float) -> np.ndarray:
    """Move each (whole) molecule rigidly so its centre of mass scales by ``factor``."""
    centres = _molecule_centres(xyz, n_molecules)
    shift = np.repeat((factor - 1.0) * centres, len(CUMENE_ATOMS), axis=0)
    return xyz + shift


def _whole_molecules(xyz: np.ndarray, n_molecules: int, box_nm: float) -> np.ndarray:
    """Molecules whole (each atom imaged next to its molecule's first atom) and centres of mass in [0, box)."""
    mol = xyz.reshape(n_molecules, len(CUMENE_ATOMS), 3).copy()
    mol -= box_nm * np.round((mol - mol[:, :1]) / box_nm)
    flat = mol.reshape(-1, 3)
    centres = _molecule_centres(flat, n_molecules)
    mol -= box_nm * np.floor(centres / box_nm)[:, None, :]
    return mol.reshape(-1, 3)


def build_cumene_liquid(cfg: LiquidBuild = LiquidBuild(), log=None) -> tuple[object, np.ndarray, float, dict]:
    """Build and equilibrate a cubic cumene box (see the module docstring).

    Returns (openmm Topology with the box set, positions [N, 3] nm, box edge nm,
    info dict: densities, energies, steps). ``log(str)`` gets progress lines.
    """
    import openmm as mm
    import openmm.app as app
    import openmm.unit as u

    say = log or (lambda _msg: None)
    n = cfg.n_molecules
    xyz, box = lattice_positions_nm(n, cfg.seed)
    top = cumene_topology(n, box)
    ff = app.ForceField("charmm36.xml")
    system = ff.createSystem(top, nonbondedMethod=app.PME, nonbondedCutoff=cfg.cutoff_nm * u.nanometer,
                             switchDistance=(cfg.cutoff_nm - 0.1) * u.nanometer, constraints=app.HBonds)
    barostat = mm.MonteCarloBarostat(cfg.pressure_bar * u.bar, cfg.temperature_k * u.kelvin, 25)
    barostat.setRandomNumberSeed(cfg.seed + 1)
    barostat.setFrequency(0)  # off until the NPT stage
    system.addForce(barostat)
    integrator = mm.LangevinMiddleIntegrator(cfg.temperature_k * u.kelvin, 1.0 / u.picosecond,
                                             cfg.timestep_fs * u.femtosecond)
    integrator.setRandomNumberSeed(cfg.seed + 1)
    platform = mm.Platform.getPlatformByName(cfg.platform)
    props = {"Threads": str(cfg.threads)} if cfg.platform == "CPU" and cfg.threads else {}
    ctx = mm.Context(system, integrator, platform, props)
    steps = lambda ps: int(round(ps * 1000.0 / cfg.timestep_fs))  # noqa: E731

    def set_box(edge: float, positions: np.ndarray) -> None:
        ctx.setPeriodicBoxVectors(*(np.eye(3) * edge * u.nanometer))
        ctx.setPositions(positions * u.nanometer)

    def positions() -> np.ndarray:
        return np.asarray(ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer))

    target = cfg.target_box_nm
    set_box(box, xyz)
    mm.LocalEnergyMinimizer.minimize(ctx, maxIterations=200)
    ctx.setVelocitiesToTemperature(cfg.temperature_k * u.kelvin, cfg.seed + 1)
    for stage in range(1, cfg.compress_stages + 1):
        new = box * (target / box) ** (1.0 / (cfg.compress_stages - stage + 1))
        set_box(new, _scale_molecules(positions(), n, new / box))
        box = new
        mm.LocalEnergyMinimizer.minimize(ctx, maxIterations=200)
        integrator.step(steps(cfg.stage_ps))
        say(f"compress {stage}/{cfg.compress_stages}: box {box:.3f} nm, "
            f"{density_g_cm3(n, box ** 3):.3f} g/cm^3")
    volumes = []
    if cfg.npt_ps > 0:
        barostat.setFrequency(25)
        ctx.reinitialize(preserveState=True)
        chunk = max(1, steps(cfg.npt_ps) // 20)
        for k in range(20):
            integrator.step(chunk)
            a = ctx.getState().getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer)
            volumes.append(float(np.linalg.det(a)))
            say(f"npt {k + 1}/20: {density_g_cm3(n, volumes[-1]):.4f} g/cm^3")
        barostat.setFrequency(0)
        ctx.reinitialize(preserveState=True)
        now = volumes[-1] ** (1.0 / 3.0)
        edge = float(np.mean(volumes[10:])) ** (1.0 / 3.0) if cfg.box_from == "npt" else target
        set_box(edge, _scale_molecules(positions(), n, edge / now))
        box = edge
    integrator.step(steps(cfg.nvt_ps))
    state = ctx.getState(getEnergy=True)
    thermal = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    mm.LocalEnergyMinimizer.minimize(ctx)
    minimised = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    final = _whole_molecules(positions(), n, box)
    top.setPeriodicBoxVectors(np.eye(3) * box * u.nanometer)
    info = {
        "build": asdict(cfg),
        "n_atoms": top.getNumAtoms(),
        "box_nm": box,
        "density_g_cm3": density_g_cm3(n, box ** 3),
        "npt_density_g_cm3": float(np.mean([density_g_cm3(n, v) for v in volumes[10:]])) if volumes else None,
        "potential_thermal_kj_mol": thermal,
        "potential_minimised_kj_mol": minimised,
        "openmm": mm.__version__,
    }
    say(f"done: {info['n_atoms']} atoms, box {box:.4f} nm, {info['density_g_cm3']:.4f} g/cm^3, "
        f"U {thermal:.1f} -> {minimised:.1f} kJ/mol (minimised)")
    return top, final, box, info


def write_pdb(path: str | Path, topology, positions_nm: np.ndarray, remarks: list[str] = ()) -> Path:
    """Write a PDB with a CRYST1 box and CONECT records (so the CUME bonds read back), atomically."""
    import io

    import openmm.app as app
    import openmm.unit as u

    path = Path(path)
    buf = io.StringIO()
    for line in remarks:
        buf.write(f"REMARK   1 {line}\n")
    app.PDBFile.writeFile(topology, positions_nm * u.nanometer, buf, keepIds=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buf.getvalue())
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m finegrain.datasets.liquids --out FILE.pdb [options]``: (re)build a cumene box."""
    d = LiquidBuild()
    p = argparse.ArgumentParser(prog="python -m finegrain.datasets.liquids", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="output PDB (box in CRYST1)")
    for key, val in asdict(d).items():
        p.add_argument("--" + key.replace("_", "-"), type=type(val), default=val, help=f"(default {val})")
    args = vars(p.parse_args(argv))
    out = args.pop("out")
    try:
        cfg = LiquidBuild(**args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    top, xyz, box, info = build_cumene_liquid(cfg, log=lambda m: print(m, flush=True))
    cmd = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in args.items())
    write_pdb(out, top, xyz, remarks=[
        "cumene liquid, CHARMM36 (OpenMM charmm36.xml) built by finegrain.datasets.liquids",
        f"{cmd}",
        f"{info['n_atoms']} atoms, box {box:.4f} nm, {info['density_g_cm3']:.4f} g/cm3, "
        f"OpenMM {info['openmm']}",
        f"NPT mean density (second half): {info['npt_density_g_cm3']} g/cm3; "
        f"U {info['potential_thermal_kj_mol']:.1f} kJ/mol -> {info['potential_minimised_kj_mol']:.1f} minimised",
    ])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
