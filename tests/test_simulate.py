"""OpenMM simulation job: reproducibility, physics sanity, files, bad input."""

import json

import mdtraj as md
import numpy as np
import pytest

from finegrain.datasets.simulate import SimulationConfig, choose_platform, replica_seed, run_replica, simulate


def test_replicas_are_written_and_physically_sane(adp_sim):
    meta = json.loads((adp_sim / "metadata.json").read_text())
    assert meta["system"] == "adp" and meta["platform"] == "Reference" and meta["n_atoms"] == 22
    assert meta["forcefield"] == ["amber99sbildn.xml", "amber99_obc.xml"]
    assert {"openmm", "mdtraj", "ray"} <= set(meta["versions"])
    for rep in meta["replicas"]:
        traj = md.load(str(adp_sim / rep["trajectory"]), top=str(adp_sim / "topology.pdb"))
        obs = np.load(adp_sim / rep["observables"])
        assert traj.n_frames == rep["n_frames"] == 50 == len(obs["potential_kj_mol"])
        assert np.isfinite(traj.xyz).all() and np.isfinite(obs["forces_kj_mol_nm"]).all()
        np.testing.assert_allclose(np.diff(obs["time_ps"]), 1.0)  # frames every 1 ps
        # H-bond constraints hold in the written frames (amber X-H = 0.1010 / 0.1090 nm)
        top = traj.topology
        hb = [(b[0].index, b[1].index) for b in top.bonds if "H" in (b[0].element.symbol, b[1].element.symbol)]
        d = md.compute_distances(traj, hb)
        assert np.abs(d - np.median(d, axis=0)).max() < 2e-4
    seeds = [r["seed"] for r in meta["replicas"]]
    assert len(set(seeds)) == 2 and seeds == [replica_seed(7, 0), replica_seed(7, 1)]


def test_energies_and_forces_match_openmm_recomputed(adp_sim):
    """The stored U and F equal a fresh OpenMM evaluation of the stored frames."""
    import openmm as mm
    import openmm.unit as u

    from finegrain.datasets.systems import get_system

    system = get_system("adp").create_system()
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    traj = md.load(str(adp_sim / "replica_000.dcd"), top=str(adp_sim / "topology.pdb"))
    obs = np.load(adp_sim / "replica_000.npz")
    for i in (0, 17, 49):
        ctx.setPositions(traj.xyz[i].astype(np.float64) * u.nanometer)
        st = ctx.getState(getEnergy=True, getForces=True)
        e = st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
        f = st.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
        # frames are stored as float32 Angstrom (DCD): allow for that rounding only
        assert abs(e - obs["potential_kj_mol"][i]) < 0.05
        np.testing.assert_allclose(f, obs["forces_kj_mol_nm"][i], atol=5.0)


def test_same_seed_same_trajectory_and_target_temperature(tmp_path):
    cfg = SimulationConfig("adp", ns=0.2, seed=3, equilibration_ps=2.0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        summary = run_replica(cfg, 0, tmp_path / name)
    a = md.load(str(tmp_path / "a" / "replica_000.dcd"), top=md.load_topology(_pdb(tmp_path)))
    b = md.load(str(tmp_path / "b" / "replica_000.dcd"), top=a.topology)
    np.testing.assert_array_equal(a.xyz, b.xyz)
    temps = np.load(tmp_path / "a" / "replica_000.npz")["temperature_k"]
    assert abs(temps.mean() - 300.0) / 300.0 < 0.10
    assert summary["n_frames"] == 200
    (tmp_path / "c").mkdir()
    run_replica(SimulationConfig("adp", ns=0.2, seed=4, equilibration_ps=2.0), 0, tmp_path / "c")
    c = md.load(str(tmp_path / "c" / "replica_000.dcd"), top=a.topology)
    assert not np.array_equal(a.xyz, c.xyz)


def test_unconstrained_run_lets_bonds_to_hydrogen_vibrate(tmp_path):
    """HBonds keeps every X-H length at its force-field value; constraints=None (1 fs) lets them vibrate."""
    lengths = {}
    for name, kwargs in (("hbonds", {}), ("free", {"constraints": None, "timestep_fs": 1.0})):
        (tmp_path / name).mkdir()
        run_replica(SimulationConfig("adp", ns=0.02, seed=5, equilibration_ps=1.0, **kwargs), 0, tmp_path / name)
        traj = md.load(str(tmp_path / name / "replica_000.dcd"), top=md.load_topology(_pdb(tmp_path)))
        xh = [[b[0].index, b[1].index] for b in traj.topology.bonds if "H" in (b[0].element.symbol, b[1].element.symbol)]
        lengths[name] = md.compute_distances(traj, np.array(xh))
    assert lengths["hbonds"].std(axis=0).max() < 1e-5  # float32 DCD round-off only
    assert lengths["free"].std(axis=0).min() > 1e-3  # C-H stretch: ~0.003 nm thermal spread at 300 K


def _pdb(tmp_path):
    from finegrain.datasets.systems import get_system

    ref = get_system("adp")
    path = tmp_path / "top.pdb"
    md.Trajectory(ref.positions_nm[None].astype(np.float32), ref.md_topology).save_pdb(str(path))
    return str(path)


def test_platform_choice_by_size():
    assert choose_platform(22) == "Reference"
    assert choose_platform(5000) == "CPU"
    assert choose_platform(22, "CPU") == "CPU"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ns": 0}, r"ns\n.*greater than 0"),
        ({"replicas": 0}, r"replicas\n.*greater than or equal to 1"),
        ({"stride_ps": 0.003}, "not a whole number"),
        ({"platform": "GPU"}, r"platform\n.*'auto', 'Reference', 'CPU', 'CUDA' or 'OpenCL'"),
        ({"constraints": None}, "timestep_fs: 2.0 fs is unstable with free X-H bonds"),
        ({"constraints": "AllBonds"}, r"constraints\n.*'HBonds'"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimulationConfig("adp", **kwargs)


def test_unknown_system_fails_before_anything_is_written(stack, tmp_path):
    from finegrain.datasets.systems import UnknownSystemError

    with pytest.raises(UnknownSystemError, match="unknown system 'nope'"):
        simulate(SimulationConfig("nope"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
