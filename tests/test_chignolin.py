"""Chignolin = CLN025 (YYDPETGTWY) from PDB 5AWL in ff14SB + GB-neck2: the built system against the shipped
PDB file and OpenMM, the folded fraction against a numpy Kabsch RMSD, and deterministic folded / unfolded
starting states (identical coordinates in two fresh processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mdtraj as md
import numpy as np
import pytest

from finegrain.datasets import peptides
from finegrain.datasets.systems import get_system

REPO = Path(__file__).resolve().parents[1]
#: unfold protocol of the tests: 0.1 ps (50 steps) and 20 minimiser iterations instead of 20 ps and convergence
QUICK = {"temperature_k": 800.0, "ps": 0.1, "timestep_fs": 2.0, "seed": 2011, "max_iterations": 20}


@pytest.fixture(scope="module")
def chig():
    return get_system("chignolin")


def kabsch_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD (nm) of point sets a, b [n, 3] after optimal rotation and translation (independent of mdtraj)."""
    a, b = a - a.mean(0), b - b.mean(0)
    u, s, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    s[-1] *= d
    return float(np.sqrt(max((a**2).sum() + (b**2).sum() - 2.0 * s.sum(), 0.0) / len(a)))


def test_chignolin_is_cln025_from_5awl_in_ff14sb_gbn2(chig):
    import openmm as mm
    import openmm.app as app
    import openmm.unit as u

    top = chig.md_topology
    assert "".join(r.code for r in top.residues) == "YYDPETGTWY"
    assert chig.n_atoms == 166 and top.n_residues == 10  # 93 heavy atoms of 5AWL + 73 H (pH 7, charged termini)
    assert sum(1 for a in top.atoms if a.element.symbol != "H") == 93
    # heavy atoms exactly where the 5AWL records put them (Angstrom -> nm)
    heavy = {}
    for line in (REPO / "datasets" / "data" / "cln025_5awl.pdb").read_text().splitlines():
        if line.startswith("ATOM") and line[76:78].strip() != "H":
            heavy[(int(line[22:26]) - 1, line[12:16].strip())] = [float(line[30 + 8 * k:38 + 8 * k]) / 10 for k in range(3)]
    assert len(heavy) == 93
    got = {(a.residue.index, a.name): chig.positions_nm[a.index] for a in top.atoms if a.element.symbol != "H"}
    assert set(got) == set(heavy)
    assert max(np.abs(got[k] - heavy[k]).max() for k in heavy) < 1e-9
    assert heavy[(0, "CA")] == pytest.approx([2.4935, 2.0652, 1.0774])  # 5AWL TYR 1 CA
    # the CLN025 hairpin: backbone hydrogen bonds Asp3 N-H...O Thr8, Gly7 N-H...O Asp3, Tyr10 N-H...O Tyr1
    hb = md.baker_hubbard(md.Trajectory(chig.positions_nm[None], top), periodic=False)
    pairs = {(str(top.atom(d)), str(top.atom(a))) for d, _, a in hb}
    assert {("ASP3-N", "THR8-O"), ("GLY7-N", "ASP3-O"), ("TYR10-N", "TYR1-O")} <= pairs
    # the system is OpenMM's ff14SB + GB-neck2 (CustomGBForce), net charge -2
    system = chig.create_system(constraints=None)
    names = sorted(type(f).__name__ for f in system.getForces())
    assert "CustomGBForce" in names and "GBSAOBCForce" not in names
    nb = next(f for f in system.getForces() if isinstance(f, mm.NonbondedForce))
    charge = sum(nb.getParticleParameters(i)[0].value_in_unit(u.elementary_charge) for i in range(chig.n_atoms))
    assert charge == pytest.approx(-2.0, abs=1e-6)
    direct = app.ForceField("amber14-all.xml", "implicit/gbn2.xml").createSystem(
        chig.topology, nonbondedMethod=app.NoCutoff, constraints=None)

    def energy(s):
        ctx = mm.Context(s, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
        ctx.setPositions(chig.positions_nm * u.nanometer)
        return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)

    assert energy(system) == pytest.approx(energy(direct), abs=1e-8)


def test_ca_rmsd_and_folded_fraction_match_numpy_kabsch(chig):
    ref = peptides.reference_structure()
    ca = ref.topology.select("name CA")
    folded = ref.xyz[0].astype(np.float64)
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))  # a proper rotation
    moved = folded @ q.T + np.array([1.0, -2.0, 0.5])  # 5AWL rotated and shifted: RMSD 0, folded
    extended = folded.copy()  # CAs on a straight line 0.38 nm apart: unfolded
    extended[ca] = np.outer(np.arange(10) * 0.38, [1.0, 0.0, 0.0])
    near = folded.copy()  # small noise on the CAs: RMSD ~0.05 nm, folded
    near[ca] += rng.normal(0.0, 0.03, (10, 3))
    frames = np.stack([folded, moved, extended, near])
    traj = md.Trajectory(frames.astype(np.float32), ref.topology)
    expected = np.array([kabsch_rmsd(f[ca], folded[ca]) for f in frames])
    got = peptides.ca_rmsd_nm(traj)
    assert got.shape == (4,)
    np.testing.assert_allclose(got, expected, atol=5e-4)  # mdtraj computes in float32
    assert expected[2] > 0.4 and expected[3] < 0.1
    assert peptides.folded_fraction(traj) == pytest.approx(3 / 4)
    assert peptides.folded_fraction(traj, cutoff_nm=expected[3] - 1e-3) == pytest.approx(2 / 4)
    # the built system's topology (OpenMM atom order) gives the same numbers
    assert peptides.ca_rmsd_nm(md.Trajectory(chig.positions_nm[None], chig.md_topology))[0] < 1e-3
    with pytest.raises(ValueError, match="C-alphas"):
        peptides.ca_rmsd_nm(traj.atom_slice(ca[:5]))
    with pytest.raises(ValueError, match="no frames"):
        peptides.folded_fraction(traj[:0])


def test_replicas_alternate_folded_and_unfolded_starts(chig, tmp_path, monkeypatch):
    monkeypatch.setenv("FINEGRAIN_CACHE", str(tmp_path))
    assert [peptides.start_kind(r) for r in range(4)] == ["folded", "unfolded", "folded", "unfolded"]
    spec = {"alternate": ["folded", "unfolded"], "unfold": QUICK}
    x0, k0 = peptides.starting_positions(chig, 0, spec)
    x1, k1 = peptides.starting_positions(chig, 1, spec)
    x3, k3 = peptides.starting_positions(chig, 3, spec)
    assert (k0, k1, k3) == ("folded", "unfolded", "unfolded")
    assert x0 is chig.positions_nm
    assert x1.shape == (166, 3) and np.isfinite(x1).all() and not np.array_equal(x1, x3)  # states 0 and 1 differ
    cached = sorted(tmp_path.glob("starting_states/*.npy"))
    assert len(cached) == 2
    assert np.array_equal(peptides.starting_positions(chig, 1, spec)[0], x1)  # read back from the cache
    # the built-in definition alternates too (replica 0: the 5AWL structure itself)
    x, kind = chig.starting_positions(0)
    assert kind == "folded" and np.array_equal(x, chig.positions_nm)
    assert get_system("adp").starting_positions(1)[1] == "given"
    with pytest.raises(ValueError, match=r"RMSD .* < 5.0 nm after 0.04 ps"):  # the hot run stops at max_ps
        peptides.unfolded_positions(chig.topology, chig.positions_nm, chig.definition["forcefield"], 0, ps=0.02,
                                    max_ps=0.05, min_ca_rmsd_nm=5.0, cache=False)
    with pytest.raises(ValueError, match="unknown keys"):
        peptides.starting_positions(chig, 1, {"unfld": {}})
    with pytest.raises(ValueError, match="alternate"):
        peptides.start_kind(0, ["misfolded"])


SCRIPT = """
import sys, numpy as np
from finegrain.datasets import peptides
from finegrain.datasets.systems import get_system
s = get_system("chignolin")
u = peptides.unfolded_positions(s.topology, s.positions_nm, s.definition["forcefield"], 1, cache=False, **{quick})
np.save(sys.argv[1], np.concatenate([s.positions_nm, u]))
"""


def test_system_and_unfolded_state_are_identical_across_processes(tmp_path):
    outs = []
    for k in range(2):
        path = tmp_path / f"p{k}.npy"
        subprocess.run([sys.executable, "-c", SCRIPT.format(quick=QUICK), str(path)], check=True, cwd=tmp_path,
                       timeout=300)
        outs.append(np.load(path))
    assert outs[0].shape == (2 * 166, 3)
    assert np.array_equal(outs[0], outs[1])  # bit for bit
    assert np.abs(outs[0][166:] - outs[0][:166]).max() > 0.01  # the hot run moved the atoms
