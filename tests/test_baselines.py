"""Baseline backmappers: exact fibre points, training statistics, restrained minimisation, persistence."""

from pathlib import Path

import mdtraj as md
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from finegrain.datasets.shards import read_frames
from finegrain.tests.helpers import replica_frames
from finegrain.platform.science.metrics import clash_fraction, internal_js
from finegrain.platform.science.metrics.structure import bonded_terms
from finegrain.platform.science.errors import InputError
from finegrain.trainables.baselines import EnergyMinimisationBackmapper, fit_nullspace
from finegrain.trainables.protocol import load_backmapper

#: Null-space baseline vs its training data: every bond's mean length within 0.02 nm.
BOND_MEAN_TOL_NM = 0.02
#: EM baseline: restrained sites (mapped bead positions) within 0.02 nm of the CG with k = 1e5 kJ/mol/nm^2.
RESTRAINT_TOL_NM = 0.02


@pytest.fixture(scope="module")
def adp(tmp_path_factory):
    """300 frames of ADP (1 ps apart): the first 200 train, the last 100 give held-out CG frames."""
    ref, traj, _ = replica_frames(tmp_path_factory, "adp-baselines", ns=0.3, seed=5)
    top, x = ref.md_topology, traj.xyz.astype(np.float64)
    return {"system": ref, "top": top, "mapping": ref.mapping("backbone6"), "train": x[:200], "test": x[200:]}


@pytest.fixture(scope="module")
def nullspace(adp):
    return fit_nullspace(adp["train"], adp["mapping"], adp["top"])


def _bond_lengths(x, top):
    b = bonded_terms(top)["bonds"]
    return np.linalg.norm(x[..., b[:, 0], :] - x[..., b[:, 1], :], axis=-1)


def _energies(system, xyz):
    import openmm as mm
    import openmm.unit as u

    ctx = mm.Context(system.create_system(constraints=None), mm.VerletIntegrator(0.001),
                     mm.Platform.getPlatformByName("Reference"))
    out = []
    for frame in xyz:
        ctx.setPositions(frame * u.nanometer)
        out.append(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole))
    return np.array(out)


@pytest.mark.parametrize("mode", ["full", "diagonal", "conditional"])
def test_nullspace_output_maps_back_exactly_for_rotated_translated_input(adp, mode):
    mapping = adp["mapping"]
    model = fit_nullspace(adp["train"], mapping, adp["top"], mode=mode)
    y = mapping.map(adp["test"][:20])
    rot = Rotation.random(20, random_state=2).as_matrix()
    shift = np.random.default_rng(3).uniform(-5.0, 5.0, (20, 1, 3))
    y_moved = np.einsum("tbj,tij->tbi", y, rot) + shift
    out = model.backmap_xyz(y_moved, n_samples=3, seed=4)
    assert out.shape == (3, 20, 22, 3)
    assert np.abs(mapping.map(out) - y_moved[None]).max() < 1e-6
    # equivariance: the same draw for the unmoved input, rotated and shifted, is the same structure
    base = model.backmap_xyz(y, n_samples=3, seed=4)
    np.testing.assert_allclose(np.einsum("stij,tkj->stik", base, rot) + shift[None], out, atol=1e-9)
    assert np.abs(out[0] - out[1]).max() > 1e-3  # samples differ


def test_nullspace_bond_lengths_close_to_training(adp, nullspace):
    top, mapping = adp["top"], adp["mapping"]
    out = nullspace.backmap_xyz(mapping.map(adp["test"]), n_samples=2, seed=0).reshape(-1, 22, 3)
    train = _bond_lengths(adp["train"], top)
    ours = _bond_lengths(out, top)
    assert np.abs(ours.mean(0) - train.mean(0)).max() < BOND_MEAN_TOL_NM
    # an unfitted fibre sampler (isotropic eta, 0.1 nm, the bare x = C+ y + N eta construction) is far worse
    naive = mapping.sample_fibre(np.repeat(mapping.map(adp["test"]), 2, axis=0), scale=0.1, seed=0)
    naive_err = np.abs(_bond_lengths(naive, top).mean(0) - train.mean(0)).mean()
    assert np.abs(ours.mean(0) - train.mean(0)).mean() < naive_err / 3
    assert internal_js(adp["train"], out, top, "angles")["js"] < internal_js(adp["train"], naive, top, "angles")["js"] / 2


def test_em_lowers_energy_and_keeps_sites_on_the_cg(adp):
    system, mapping = adp["system"], adp["mapping"]
    model = EnergyMinimisationBackmapper(adp["top"], mapping, "adp")
    y = mapping.map(adp["test"][::25])  # 4 held-out CG frames
    start = model.place(y, n_samples=2, seed=1)
    assert np.abs(mapping.map(start) - y[None]).max() < 1e-9  # placement is on the fibre
    out = model.backmap_xyz(y, n_samples=2, seed=1)
    np.testing.assert_array_equal(out, model.minimise(start, y))  # backmap = place + minimise
    e0 = _energies(system, start.reshape(-1, 22, 3))
    e1 = _energies(system, out.reshape(-1, 22, 3))
    assert np.all(e1 < e0)
    # relaxed structures are as low in energy as equilibrium frames (minimised: lower than their mean)
    e_ref = _energies(system, adp["test"][::25])
    assert e1.max() < e_ref.mean() + 20.0
    dev = np.linalg.norm(mapping.map(out) - y[None], axis=-1)
    assert dev.max() < RESTRAINT_TOL_NM
    assert clash_fraction(out.reshape(-1, 22, 3), adp["top"]) == 0.0


def test_em_with_nullspace_placement(adp, nullspace):
    mapping = adp["mapping"]
    model = EnergyMinimisationBackmapper(adp["top"], mapping, "adp", placement=nullspace)
    y = mapping.map(adp["test"][:2])
    start = model.place(y, 1, seed=0)
    out = model.backmap_xyz(y, 1, seed=0)
    assert np.all(_energies(adp["system"], out[0]) < _energies(adp["system"], start[0]))
    assert np.linalg.norm(mapping.map(out) - y[None], axis=-1).max() < RESTRAINT_TOL_NM


def test_save_load_round_trip_same_outputs(adp, nullspace, tmp_path):
    mapping = adp["mapping"]
    y = mapping.map(adp["test"][:3])
    em = EnergyMinimisationBackmapper(adp["top"], mapping, "adp", placement=nullspace, k_restraint=5e4)
    for name, model in (("nullspace", nullspace), ("em", em)):
        folder = model.save(tmp_path / name)
        loaded = load_backmapper(folder)
        assert type(loaded) is type(model) and loaded.family == name
        np.testing.assert_array_equal(loaded.backmap_xyz(y, n_samples=2, seed=7), model.backmap_xyz(y, n_samples=2, seed=7))
    assert load_backmapper(tmp_path / "em").k_restraint == 5e4


def test_protocol_backmap_trajectory_and_bad_input(adp, nullspace):
    mapping = adp["mapping"]
    cg_top = md.Topology()
    res = cg_top.add_residue("CG", cg_top.add_chain())
    for name in mapping.bead_names:
        cg_top.add_atom(name, md.element.carbon, res)
    cg = md.Trajectory(mapping.map(adp["test"][:5]).astype(np.float32), cg_top)
    trajs = nullspace.backmap(cg, n_samples=2, seed=0)
    assert len(trajs) == 2 and trajs[0].n_atoms == 22 and trajs[0].n_frames == 5
    # M trajectories in one call (the protocol's default loops; Serve batches through it)
    many = nullspace.backmap_trajectories(np.stack([cg.xyz[:3], cg.xyz[2:5]]).astype(np.float64), 2, seed=4)
    assert many.shape == (2, 2, 3, 22, 3)
    expected = np.broadcast_to(np.stack([cg.xyz[:3], cg.xyz[2:5]])[:, None], many.shape[:3] + (6, 3))
    np.testing.assert_allclose(mapping.map(many), expected, atol=1e-6)
    with pytest.raises(InputError, match="beads"):
        nullspace.backmap_xyz(np.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match="mode"):
        fit_nullspace(adp["train"], mapping, adp["top"], mode="gmm")
    with pytest.raises(InputError, match="system"):
        EnergyMinimisationBackmapper(adp["top"], mapping, "chignolin").backmap_xyz(mapping.map(adp["test"][:1]))


@pytest.mark.slow
def test_baselines_are_trainers_too(stack, adp_shards, tmp_path):
    """`finegrain train` fits a baseline from its shipped config (the trainer protocol of every family); the
    model it logs is the one `fit_baseline` makes from the same split, to the last bit."""
    from finegrain.platform.services.tracking import Tracker
    from finegrain.tests.helpers import train_with_cli
    from finegrain.trainables.baseline_fit import fit_baseline
    from finegrain.trainables.persistence import load_backmapper_from_uri
    from finegrain.trainables.protocol import TRAINERS

    assert {"nullspace", "em"} <= set(TRAINERS)
    sets = [f"data.shards={adp_shards}", "data.fractions=[0.5, 0.5, 0.0]", f"training.work_dir={tmp_path}",
            "tracking.experiment=test-baselines"]
    lines = train_with_cli("adp_nullspace.yaml", sets)
    tracker = Tracker(stack.mlflow_uri)
    run = tracker.client.get_run(lines["run id"])
    assert run.data.tags["family"] == "nullspace" and run.info.status == "FINISHED"
    logged = load_backmapper_from_uri(lines["model uri"], tracker)
    direct, _ = fit_baseline("nullspace", adp_shards, fractions=(0.5, 0.5, 0.0))
    cg = direct.mapping.map(read_frames(adp_shards)["aa_xyz_nm"][:4].astype(np.float64))
    np.testing.assert_array_equal(logged.backmap_xyz(cg, n_samples=2, seed=1), direct.backmap_xyz(cg, n_samples=2, seed=1))
    assert (Path(lines["model folder"]) / "backmapper.json").is_file()
