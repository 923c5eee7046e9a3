"""Reference systems and user-defined systems from YAML."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import mdtraj as md
import numpy as np
import openmm as mm
import openmm.unit as u
import pytest

from finegrain.datasets.systems import UnknownSystemError, available_systems, get_system

OPENMMTOOLS = Path(importlib.util.find_spec("openmmtools").submodule_search_locations[0]) / "data"


def _energy(system, positions_nm):
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions_nm * u.nanometer)
    return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)


def test_builtin_systems_and_their_force_fields():
    assert set(available_systems()) >= {"adp", "chignolin"}
    adp = get_system("adp")
    assert adp.n_atoms == 22 and set(adp.mapping_specs) == {"backbone6", "backbone5", "ca", "heavy"}
    forces = {type(f).__name__ for f in adp.create_system().getForces()}
    assert {"HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "NonbondedForce", "GBSAOBCForce"} <= forces
    # independent reference: the same force field applied by OpenMM's own app layer
    import openmm.app as app

    pdb = app.PDBFile(str(OPENMMTOOLS / "alanine-dipeptide-gbsa" / "alanine-dipeptide.pdb"))
    ref = app.ForceField("amber99sbildn.xml", "amber99_obc.xml").createSystem(pdb.topology, nonbondedMethod=app.NoCutoff)
    assert _energy(adp.create_system(constraints=None), adp.positions_nm) == pytest.approx(
        _energy(ref, adp.positions_nm), rel=1e-9)


def test_chignolin_is_cln025_from_5awl_and_relaxed():
    chig = get_system("chignolin")
    top = chig.md_topology
    assert "".join(r.code for r in top.residues) == "YYDPETGTWY"
    assert chig.n_atoms == 166  # charged termini, pH 7 protonation
    # minimised: finite, negative potential energy and no bond far from its equilibrium length
    assert _energy(chig.create_system(constraints=None), chig.positions_nm) < 0
    traj = md.Trajectory(chig.positions_nm[None], top)
    d = md.compute_distances(traj, [[b[0].index, b[1].index] for b in top.bonds])
    assert 0.09 < d.min() and d.max() < 0.16


def test_user_system_from_pdb_and_from_prmtop(tmp_path):
    shutil.copy(OPENMMTOOLS / "alanine-dipeptide-gbsa" / "alanine-dipeptide.pdb", tmp_path / "pep.pdb")
    (tmp_path / "pep.yaml").write_text(
        "name: pep\ntopology: pep.pdb\nforcefield: [amber99sbildn.xml, amber99_obc.xml]\n"
        "mappings:\n  ca: {per_atom: {select: 'name CA'}}\n"
    )
    pep = get_system(str(tmp_path / "pep.yaml"))
    assert pep.name == "pep" and pep.n_atoms == 22 and pep.mapping("ca").n_beads == 1
    assert _energy(pep.create_system(None), pep.positions_nm) == pytest.approx(
        _energy(get_system("adp").create_system(None), get_system("adp").positions_nm), rel=1e-9)
    # prmtop + inpcrd (the Amber files openmmtools ships), implicit solvent from the YAML
    for f in ("alanine-dipeptide.prmtop", "alanine-dipeptide.crd"):
        shutil.copy(OPENMMTOOLS / "alanine-dipeptide-gbsa" / f, tmp_path / f)
    (tmp_path / "amber.yaml").write_text(
        "topology: alanine-dipeptide.prmtop\ncoordinates: alanine-dipeptide.crd\nimplicit_solvent: OBC1\n"
    )
    amber = get_system(str(tmp_path / "amber.yaml"))
    assert amber.name == "amber" and amber.n_atoms == 22
    assert any("GB" in type(f).__name__ for f in amber.create_system().getForces())  # OBC1 via CustomGBForce


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("topology: missing.pdb\nforcefield: [amber99sbildn.xml]\n", "missing.pdb not found"),
        ("topology: pep.pdb\n", "needs 'forcefield'"),
        ("description: nothing\n", "needs one of"),
        ("sequence: GXZ\nforcefield: [amber99sbildn.xml]\n", "unknown residue letter 'X'"),
    ],
)
def test_bad_user_systems_are_named(tmp_path, yaml_text, message):
    shutil.copy(OPENMMTOOLS / "alanine-dipeptide-gbsa" / "alanine-dipeptide.pdb", tmp_path / "pep.pdb")
    (tmp_path / "bad.yaml").write_text(yaml_text)
    with pytest.raises(UnknownSystemError, match=message):
        get_system(str(tmp_path / "bad.yaml"))
    with pytest.raises(UnknownSystemError, match="unknown system 'nope'"):
        get_system("nope")


def test_cli_ingest_of_user_files_with_a_yaml_mapping(stack, adp_sim, tmp_path):
    traj = md.load(str(adp_sim / "replica_001.dcd"), top=str(adp_sim / "topology.pdb"))
    traj[:30].save_xtc(str(tmp_path / "a.xtc"))
    traj[30:].save_dcd(str(tmp_path / "b.dcd"))
    (tmp_path / "m.yaml").write_text("beads:\n  - {name: P, select: 'resname ACE', weights: mass}\n"
                                     "  - {name: Q, atoms: ['ALA2-CA', 'ALA2-CB']}\n")
    exe = Path(sys.executable).parent / "finegrain"
    r = subprocess.run([str(exe), "ingest", "--top", str(adp_sim / "topology.pdb"), "--traj", str(tmp_path / "a.xtc"),
                        "--traj", str(tmp_path / "b.dcd"), "--mapping", str(tmp_path / "m.yaml"), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    from finegrain.datasets.shards import Manifest, read_frames

    man = Manifest.load(tmp_path / "out")
    assert man.n_frames == 50 and man.n_trajectories == 2 and man.mapping["bead_names"] == ["P", "Q"]
    frames = read_frames(tmp_path / "out")
    got = frames["aa_xyz_nm"][frames["traj_id"] == "b-001"]
    np.testing.assert_array_equal(got, md.load(str(tmp_path / "b.dcd"), top=str(adp_sim / "topology.pdb")).xyz)
    ca_cb = got[:, [8, 10]].astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(frames["cg_xyz_nm"][frames["traj_id"] == "b-001"][:, 1], ca_cb, atol=1e-6)
