"""A liquid of one species: the mapping splits into identical molecule blocks, and the null-space baseline fits
one molecule's model on every copy and applies it to each molecule in its own body frame.

The toy liquid is three copies of alanine dipeptide (simulated in-process with OpenMM), each moved by its own
rigid motion; the independent reference is the single-molecule model fitted on the stacked copies.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import block_diag

from finegrain.platform.science.mapping import CGMapping, MappingError, molecule_blocks
from finegrain.tests.assertions import move, random_rigid_motion
from finegrain.tests.helpers import replica_frames
from finegrain.trainables.baselines import NullSpaceBackmapper, fit_nullspace
from finegrain.trainables.protocol import load_backmapper

R = 3  # molecules


@pytest.fixture(scope="module")
def liquid(tmp_path_factory):
    ref, traj, _ = replica_frames(tmp_path_factory, "adp-liquid", ns=0.06, seed=8)
    one = ref.mapping("backbone6")
    top = ref.md_topology
    for _ in range(R - 1):
        top = top.join(ref.md_topology)
    matrix = block_diag(*[one.matrix] * R)
    names = tuple(f"{b}_{k}" for k in range(R) for b in one.bead_names)
    mapping = CGMapping("backbone6xR", matrix, names)
    x1 = traj.xyz.astype(np.float64)  # [F, 22, 3]
    # molecule k of frame f is frame (f + 7k) mod F, rigidly moved: copies differ in pose and conformation
    copies = [move(np.roll(x1, 7 * k, axis=0), *random_rigid_motion(10 + k, max_shift_nm=2.0)) for k in range(R)]
    x = np.concatenate(copies, axis=1)  # [F, 3 * 22, 3]
    return {"one": one, "top": top, "mapping": mapping, "x": x, "x1_stack": np.concatenate(copies, axis=0),
            "n1": ref.n_atoms}


def test_blocks_are_found_and_beads_spanning_molecules_are_named(liquid):
    blocks = molecule_blocks(liquid["mapping"], liquid["top"])
    n1 = liquid["n1"]
    assert blocks.n_molecules == R
    np.testing.assert_array_equal(blocks.atoms, np.arange(R * n1).reshape(R, n1))
    np.testing.assert_array_equal(blocks.beads, np.arange(R * 6).reshape(R, 6))
    np.testing.assert_array_equal(blocks.molecule.matrix, liquid["one"].matrix)
    # a bead averaging atoms of two molecules
    bad = liquid["mapping"].matrix.copy()
    bad[0] = 0.0
    bad[0, [0, n1]] = 0.5
    with pytest.raises(MappingError, match="bead 'C1_0' spans molecules"):
        molecule_blocks(CGMapping("bad", bad, liquid["mapping"].bead_names), liquid["top"])
    # molecules mapped differently
    other = liquid["mapping"].matrix.copy()
    row = np.flatnonzero(other[6])  # molecule 1's first bead: move its weight to a neighbouring atom
    other[6] = 0.0
    other[6, row[0] + 1] = 1.0
    with pytest.raises(MappingError, match="molecule 1 .* is not mapped like molecule 0"):
        molecule_blocks(CGMapping("other", other, liquid["mapping"].bead_names), liquid["top"])


def test_molecule_wise_fit_is_the_single_molecule_fit_on_the_stacked_copies(liquid, tmp_path):
    wise = fit_nullspace(liquid["x"], liquid["mapping"], liquid["top"], molecule_wise=True)
    single = fit_nullspace(liquid["x1_stack"], liquid["one"], liquid["top"].subset(range(liquid["n1"])))
    for name in ("y_ref", "mean_y", "mean_eta", "coupling", "chol"):
        np.testing.assert_allclose(getattr(wise, name), getattr(single, name), rtol=1e-9, atol=1e-12, err_msg=name)
    # backmapping: each molecule gets the single-molecule model's answer for its own beads (same noise order)
    y = liquid["mapping"].map(liquid["x"][:4])
    out = wise.backmap_xyz(y, n_samples=2, seed=3)
    assert out.shape == (2, 4, R * liquid["n1"], 3)
    np.testing.assert_allclose(liquid["mapping"].map(out), np.broadcast_to(y, (2, *y.shape)), atol=1e-9)
    mean = wise.sample(y, noise_scale=0.0)[0]
    for k in range(R):
        own = single.sample(y[:, 6 * k:6 * (k + 1)], noise_scale=0.0)[0]
        np.testing.assert_allclose(mean[:, k * liquid["n1"]:(k + 1) * liquid["n1"]], own, atol=1e-9)
    # moving one molecule moves only its atoms, rigidly (each molecule in its own body frame)
    rot, shift = random_rigid_motion(1, max_shift_nm=1.0)
    y2 = y.copy()
    y2[:, 6:12] = move(y[:, 6:12], rot, shift)
    mean2 = wise.sample(y2, noise_scale=0.0)[0]
    n1 = liquid["n1"]
    np.testing.assert_allclose(mean2[:, :n1], mean[:, :n1], atol=1e-12)
    np.testing.assert_allclose(mean2[:, n1:2 * n1], move(mean[:, n1:2 * n1], rot, shift), atol=1e-9)
    # the saved folder round-trips the mode
    again = load_backmapper(wise.save(tmp_path / "wise"))
    assert isinstance(again, NullSpaceBackmapper) and again.molecule_wise
    np.testing.assert_allclose(again.backmap_xyz(y, n_samples=2, seed=3), out, atol=0)
