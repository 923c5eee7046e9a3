"""Liquid cumene under periodic boundaries: builder, shipped box, periodic simulate/ingest plumbing.

Simulations here are a few steps of a tiny (8-molecule) box on the Reference platform.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import mdtraj as md
import numpy as np
import openmm as mm
import openmm.app as app
import openmm.unit as u
import pytest

from finegrain.datasets.ingest import IngestError, TrajectorySource, _whole_molecules, ingest, sources_from_simulation
from finegrain.datasets.liquids import CUMENE_ATOMS, LiquidBuild, cumene_molecule_nm, cumene_topology
from finegrain.datasets.shards import Manifest, read_frames
from finegrain.datasets.systems import UnknownSystemError, available_systems, get_system

REPO = Path(__file__).resolve().parents[1]
AMU_PER_NM3_IN_G_CM3 = 1.66053906660e-24 / 1e-21
TINY = ["--n-molecules", "8", "--cutoff-nm", "0.55", "--platform", "Reference", "--compress-stages", "2",
        "--stage-ps", "0.01", "--npt-ps", "0.04", "--nvt-ps", "0.02"]


def _density(traj: md.Trajectory) -> float:
    """g/cm^3 from mdtraj's element masses and unit cell (independent of finegrain.datasets.liquids)."""
    mass = sum(a.element.mass for a in traj.topology.atoms)
    return mass / float(traj.unitcell_volumes[0]) * AMU_PER_NM3_IN_G_CM3


def _energy(system, positions_nm, box_nm=None) -> float:
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    if box_nm is not None:
        ctx.setPeriodicBoxVectors(*(np.asarray(box_nm) * u.nanometer))
    ctx.setPositions(np.asarray(positions_nm, dtype=np.float64) * u.nanometer)
    return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)


@pytest.fixture(scope="module")
def tiny_boxes(tmp_path_factory) -> list[Path]:
    """The same tiny box built twice, in two processes at once."""
    tmp = tmp_path_factory.mktemp("tiny-cumene")
    outs = [tmp / "a.pdb", tmp / "b.pdb"]
    procs = [subprocess.Popen([sys.executable, "-m", "finegrain.datasets.liquids", "--out", str(o), *TINY],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for o in outs]
    for p in procs:
        log, _ = p.communicate(timeout=600)
        assert p.returncode == 0, log
    return outs


def _tiny_definition(pdb: Path) -> dict:
    d = dict(available_systems()["cumene"], name="cumene_tiny", topology=str(pdb))
    d.pop("files")
    d["periodic"] = {"nonbonded": "PME", "cutoff_nm": 0.55, "switch_nm": 0.45}
    return d


def test_ideal_molecule_is_charmms_cume_near_its_minimum():
    # atom names and bonds against the XML OpenMM ships (parsed here, not through ForceField)
    xml = Path(app.__file__).parent / "data" / "charmm36.xml"
    res = next(r for r in ET.parse(xml).getroot().iter("Residue") if r.get("name") == "CUME")
    assert [a.get("name") for a in res.iter("Atom")] == [n for n, _ in CUMENE_ATOMS]
    x = cumene_molecule_nm()
    names = [n for n, _ in CUMENE_ATOMS]
    ring = [names.index(f"CA{k}") for k in range(1, 7)]
    assert np.allclose(np.linalg.norm(x[ring] - x[ring].mean(0), axis=1), 0.139)  # hexagon radius = C-C bond
    assert abs(np.linalg.svd(x[ring] - x[ring].mean(0))[1][2]) < 1e-12  # planar
    c4 = names.index("C4")
    nb = [names.index(n) for n in ("CA4", "C3", "C5", "H41")]
    v = x[nb] - x[c4]
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    cos = v @ v.T
    assert np.allclose(cos[np.triu_indices(4, 1)], -1.0 / 3.0)  # tetrahedral
    # the force field accepts it, and its minimum is within 0.02 nm RMSD of the ideal geometry
    top = cumene_topology(1)
    system = app.ForceField("charmm36.xml").createSystem(top, nonbondedMethod=app.NoCutoff)
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(x * u.nanometer)
    mm.LocalEnergyMinimizer.minimize(ctx)
    y = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
    t = md.Trajectory(np.stack([x, y]).astype(np.float32), md.Topology.from_openmm(top))
    assert md.rmsd(t, t, 0)[1] < 0.02


def test_builder_config_is_checked():
    with pytest.raises(ValueError, match="n_molecules: 8 molecules .* less than 2.1 x cutoff_nm"):
        LiquidBuild(n_molecules=8)
    with pytest.raises(ValueError, match="box_from"):
        LiquidBuild(box_from="guess")
    assert LiquidBuild().target_box_nm == pytest.approx((125 * 120.19 / 6.02214e23 / 0.86 * 1e21) ** (1 / 3), rel=1e-4)


def test_tiny_build_is_reproducible_and_at_the_target_density(tiny_boxes):
    a, b = ([ln for ln in p.read_text().splitlines() if not ln.startswith("REMARK")] for p in tiny_boxes)
    assert a == b and len([ln for ln in a if ln.startswith(("ATOM", "HETATM"))]) == 8 * 21
    t = md.load(str(tiny_boxes[0]))
    assert t.topology.n_bonds == 8 * 21 and t.topology.n_residues == 8
    assert _density(t) == pytest.approx(0.86, rel=2e-3)  # CRYST1 keeps 3 decimals (Angstrom)


def test_shipped_box_density_and_minimised_energy():
    s = get_system("cumene")
    assert s.periodic and s.n_atoms == 125 * 21 and s.nonbonded == {"method": "PME", "cutoff_nm": 1.0, "switch_nm": 0.9}
    assert np.allclose(s.box_nm, np.eye(3) * s.box_nm[0, 0]) and s.box_nm[0, 0] > 2 * 1.0 + 0.5
    t = md.load(str(REPO / "datasets" / "data" / "cumene_liquid.pdb"))
    assert _density(t) == pytest.approx(0.86, rel=0.02)
    # every molecule whole (bonded atoms within 0.2 nm) in the shipped file
    pairs = np.array([[b[0].index, b[1].index] for b in t.topology.bonds])
    assert np.linalg.norm(t.xyz[0, pairs[:, 0]] - t.xyz[0, pairs[:, 1]], axis=1).max() < 0.2
    system = s.create_system(constraints=None)
    nb = next(f for f in system.getForces() if isinstance(f, mm.NonbondedForce))
    assert nb.getNonbondedMethod() == mm.NonbondedForce.PME and nb.getCutoffDistance().value_in_unit(u.nanometer) == 1.0
    # the same energy from OpenMM directly (PDB + charmm36.xml, PME)
    pdb = app.PDBFile(str(REPO / "datasets" / "data" / "cumene_liquid.pdb"))
    direct = app.ForceField("charmm36.xml").createSystem(pdb.topology, nonbondedMethod=app.PME,
                                                         nonbondedCutoff=1.0 * u.nanometer,
                                                         switchDistance=0.9 * u.nanometer)
    ctx = mm.Context(direct, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    ctx.setPositions(pdb.positions)
    e0 = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    assert np.isfinite(e0)
    ctx2 = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    ctx2.setPositions(s.positions_nm * u.nanometer)
    assert ctx2.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) == \
        pytest.approx(e0, abs=1e-3 * abs(e0))
    # minimised: more minimisation gains < 1 kJ/mol per molecule (PDB rounding); a thermal box is ~70 higher
    mm.LocalEnergyMinimizer.minimize(ctx, tolerance=10.0, maxIterations=50)
    e1 = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    assert 0 <= e0 - e1 < 125 * 1.0


def test_mappings_per_molecule_match_hand_computed_centres_of_mass():
    s = get_system("cumene")
    top = s.md_topology
    mass = np.array([a.element.mass for a in top.atoms])
    x = s.positions_nm
    ring = set("CA1 CA2 CA3 CA4 CA5 CA6 HA1 HA2 HA3 HA5 HA6".split())
    groups = {"R": ring, "I": {"C3", "C4", "C5", "H41", "H31", "H32", "H33", "H51", "H52", "H53"},
              "B": ring, "A1": {"C4", "H41", "C3", "H31", "H32", "H33"}, "A2": {"C4", "H41", "C5", "H51", "H52", "H53"}}
    for name, beads, n in (("ring_isopropyl", ("R", "I"), 250), ("dbm", ("B", "A1", "A2"), 375)):
        cg = s.mapping(name)
        assert cg.n_beads == n
        y = cg.map(x)
        for res in list(top.residues)[:3] + [top.residue(124)]:
            for bead in beads:
                idx = [a.index for a in res.atoms if a.name in groups[bead]]
                want = (mass[idx, None] * x[idx]).sum(0) / mass[idx].sum()
                k = cg.bead_names.index(f"{res}-{bead}")
                assert np.allclose(y[k], want, atol=1e-12)
    ri = s.mapping("ring_isopropyl").matrix
    heavy = np.array([a.element.symbol != "H" for a in top.atoms])
    assert ((ri > 0) & heavy).sum(1).min() >= 3  # each bead >= 3 heavy atoms
    assert np.array_equal((ri > 0).sum(0), np.ones(s.n_atoms))  # every atom (hydrogens too) in exactly one bead
    for b in (b for b in top.bonds if "H" in (b[0].element.symbol, b[1].element.symbol)):  # H in its heavy atom's bead
        assert np.array_equal(ri[:, b[0].index] > 0, ri[:, b[1].index] > 0)
    dbm = s.mapping("dbm").matrix
    shared = [a.index for a in top.residue(0).atoms if a.name in ("C4", "H41")]
    assert ((dbm[:, shared] > 0).sum(0) == 2).all()  # the CH is in both methyl beads
    # DeepBackmap's isopropyl-ring dihedral is not fixed by either mapping (beads are centres of mass)
    assert [f.name for f in s.feature_sets] == ["ring_isopropyl"]


def test_periodic_definitions_are_checked(tiny_boxes, tmp_path):
    d = _tiny_definition(tiny_boxes[0])
    with pytest.raises(UnknownSystemError, match="smaller than twice the cutoff"):
        get_system(dict(d, periodic={"cutoff_nm": 1.0}))
    with pytest.raises(UnknownSystemError, match="periodic.nonbonded"):
        get_system(dict(d, periodic={"nonbonded": "NoCutoff", "cutoff_nm": 0.5}))
    nobox = tmp_path / "nobox.pdb"
    nobox.write_text("".join(ln + "\n" for ln in tiny_boxes[0].read_text().splitlines() if not ln.startswith("CRYST1")))
    with pytest.raises(UnknownSystemError, match="nobox.pdb has no box"):
        get_system(dict(d, topology=str(nobox)))


def test_whole_molecules_of_a_split_molecule_give_the_unwrapped_bead(tiny_boxes):
    s = get_system(_tiny_definition(tiny_boxes[0]))
    top, L = s.md_topology, float(s.box_nm[0, 0])
    x = s.positions_nm.copy()
    mol = [a.index for a in top.residue(0).atoms]
    ring = [a.index for a in top.residue(0).atoms if a.name.startswith(("CA", "HA"))]
    mass = np.array([a.element.mass for a in top.atoms])
    x[mol, 0] += L - x[ring, 0].mean()  # ring centred on the x = L face
    want = (mass[ring, None] * x[ring]).sum(0) / mass[ring].sum()  # the whole molecule's ring centre of mass
    split = x.copy()
    split[:, 0] = np.mod(split[:, 0], L)  # atoms wrapped one by one: molecule 0 split over the box
    assert np.ptp(split[mol, 0]) > 0.5 * L
    traj = md.Trajectory(split[None].astype(np.float32), top, unitcell_lengths=[[L, L, L]],
                         unitcell_angles=[[90.0, 90.0, 90.0]])
    box, whole = _whole_molecules(traj, traj.xyz, "t.dcd", 0)
    assert np.allclose(box[0], np.eye(3) * L, atol=1e-6)
    y = s.mapping("ring_isopropyl").map(whole[0].astype(np.float64))[0]
    d = y - want
    assert np.abs(d - L * np.round(d / L)).max() < 1e-5  # the unwrapped answer, up to a box vector
    naive = s.mapping("ring_isopropyl").map(split)[0] - want
    assert np.abs(naive - L * np.round(naive / L)).max() > 0.1  # mapping the split atoms would be wrong
    bad = traj[:]
    bad.unitcell_lengths = np.array([[L, np.nan, L]], dtype=np.float32)
    with pytest.raises(IngestError, match=r"t\.dcd, frame 7: invalid box"):
        _whole_molecules(bad, bad.xyz, "t.dcd", 7)


def test_periodic_replica_writes_unit_cells_and_openmm_energies(tiny_boxes, tmp_path):
    from finegrain.datasets.simulate import SimulationConfig, run_replica

    d = _tiny_definition(tiny_boxes[0])
    cfg = SimulationConfig(system=d, ns=4e-6, stride_ps=0.002, equilibration_ps=0.0, platform="Reference")
    run_replica(cfg, 0, tmp_path)
    s = get_system(d)
    t = md.load(str(tmp_path / "replica_000.dcd"), top=s.md_topology)
    assert t.n_frames == 2 and np.allclose(t.unitcell_vectors, s.box_nm[None], atol=1e-5)
    # molecules whole, centres wrapped into the box
    mass = np.array([a.element.mass for a in s.md_topology.atoms])
    com = (mass[None, :, None] * t.xyz).reshape(2, 8, 21, 3).sum(2) / mass[:21].sum()
    assert (com >= -1e-4).all() and (com < s.box_nm[0, 0] + 1e-4).all()
    # recorded energies are OpenMM's PME energies of the frames (system built here, not by finegrain)
    pdb = app.PDBFile(str(tiny_boxes[0]))
    system = app.ForceField("charmm36.xml").createSystem(pdb.topology, nonbondedMethod=app.PME,
                                                         nonbondedCutoff=0.55 * u.nanometer,
                                                         switchDistance=0.45 * u.nanometer)
    obs = np.load(tmp_path / "replica_000.npz")
    for f in range(2):
        assert obs["potential_kj_mol"][f] == pytest.approx(_energy(system, t.xyz[f], s.box_nm), abs=0.5)


def test_periodic_simulation_ingests_with_boxes_and_refuses_a_boxless_file(stack, tiny_boxes, tmp_path):
    from finegrain.datasets.simulate import SimulationConfig, simulate

    d = _tiny_definition(tiny_boxes[0])
    sim = simulate(SimulationConfig(system=d, ns=4e-6, stride_ps=0.002, equilibration_ps=0.0, platform="Reference"),
                   tmp_path / "sim")
    meta = json.loads((sim / "metadata.json").read_text())
    s = get_system(d)
    assert meta["periodic"] and np.allclose(meta["box_nm"], s.box_nm) and meta["nonbonded"]["method"] == "PME"
    top, name, sources = sources_from_simulation(sim)
    man = ingest(top, sources, s.mapping("ring_isopropyl"), tmp_path / "shards", system=name)
    assert man.has_box and Manifest.load(tmp_path / "shards").has_box
    frames = read_frames(tmp_path / "shards")
    assert frames["box_nm"].shape == (2, 3, 3) and np.allclose(frames["box_nm"], s.box_nm[None], atol=1e-5)
    assert np.allclose(frames["cg_xyz_nm"], s.mapping("ring_isopropyl").map(frames["aa_xyz_nm"].astype(np.float64)),
                       atol=1e-5)
    # the same frames without unit cells: refused, naming the file, nothing written
    t = md.load(sources[0].path, top=top)
    t.unitcell_vectors = None
    t.save_dcd(str(tmp_path / "nobox.dcd"))
    bad = TrajectorySource("x", str(tmp_path / "nobox.dcd"), simulation=str(sim))
    with pytest.raises(IngestError, match=r"nobox\.dcd: the system is periodic but the file has no box"):
        ingest(top, [bad], s.mapping("ring_isopropyl"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # a box that changes between frames is recorded frame by frame
    t = md.load(sources[0].path, top=top)
    t.unitcell_lengths = t.unitcell_lengths * np.array([[1.0], [1.01]], dtype=np.float32)
    t.save_dcd(str(tmp_path / "npt.dcd"))
    ingest(top, [TrajectorySource("npt", str(tmp_path / "npt.dcd"))], s.mapping("ring_isopropyl"), tmp_path / "npt")
    boxes = read_frames(tmp_path / "npt")["box_nm"]
    assert np.allclose(np.diagonal(boxes, axis1=1, axis2=2), t.unitcell_lengths, atol=1e-5)
