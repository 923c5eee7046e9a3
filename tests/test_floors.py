"""Noise floors and block-bootstrap intervals against two independent OpenMM runs of ADP.

References: a second simulation with another seed (the floor the halves must reproduce), and
synthetic backmaps with a known defect (0.005 nm Gaussian noise on every atom).
"""

from __future__ import annotations

import mdtraj as md
import numpy as np
import pytest

from finegrain.datasets.simulate import SimulationConfig, run_replica
from finegrain.datasets.systems import get_system
from finegrain.platform.science.metrics import evaluate_frames
from finegrain.platform.science.metrics.floors import block_indices, reference_halves, score_with_floor, take_frames

SCORES = ("js_bonds", "js_angles", "js_dihedrals", "w1_energy_kj_mol")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two independent 400-frame ADP runs (1 ps apart, seeds 21 and 22), with OpenMM energies."""
    system = get_system("adp")
    top, mapping = system.md_topology, system.mapping("backbone6")
    runs = []
    for seed in (21, 22):
        out = tmp_path_factory.mktemp(f"adp-floor-{seed}")
        run_replica(SimulationConfig("adp", ns=0.4, equilibration_ps=5.0, seed=seed), 0, out)
        traj = md.load(str(out / "replica_000.dcd"), top=top)
        obs = np.load(out / "replica_000.npz")
        x = traj.xyz.astype(np.float64)
        runs.append({"aa_xyz_nm": x, "cg_xyz_nm": mapping.map(x), "energy_kj_mol": obs["potential_kj_mol"],
                     "time_ps": obs["time_ps"], "traj_id": np.full(len(x), f"seed{seed}")})

    def score(r, b):
        return evaluate_frames(r, b, top, mapping, **system.evaluation_kwargs(), make_figures=False)[0]

    return runs, score


def _first(d: dict, n: int) -> dict:
    return take_frames(d, np.arange(n))


def test_halves_floor_matches_the_floor_between_independent_runs(two_runs):
    """The floor from one run's two halves (200 vs 200 frames) brackets, within its 95 % interval, the
    same metric between the first 200 frames of two independent runs."""
    (a, b), score = two_runs
    halves = score_with_floor(score, a, a, n_boot=20)
    independent = score(_first(a, 200), _first(b, 200))
    for k in SCORES:
        lo, hi = halves[f"{k}_floor_ci_lo"], halves[f"{k}_floor_ci_hi"]
        assert lo <= independent[k] <= hi, (k, independent[k], lo, hi)
        assert lo <= halves[f"{k}_floor"] <= hi


def test_a_noisy_backmap_scores_far_above_the_floor_and_the_reference_itself_below_it(two_runs):
    (a, b), score = two_runs
    rng = np.random.default_rng(3)
    noisy = dict(a, aa_xyz_nm=a["aa_xyz_nm"] + rng.normal(0.0, 0.005, a["aa_xyz_nm"].shape))
    noisy.pop("energy_kj_mol")  # energies of the noisy frames are not known: left out
    m = score_with_floor(score, a, noisy, n_boot=20)
    assert m["js_bonds_over_floor"] > 10 and m["js_bonds_ci_lo"] > m["js_bonds_floor_ci_hi"]
    # the reference itself: every divergence is 0, below any floor
    same = score_with_floor(score, a, a, n_boot=0)
    assert all(same[k] == pytest.approx(0.0, abs=1e-12) and same[f"{k}_floor"] > 0 for k in SCORES)


def test_an_independent_second_reference_is_the_floor_when_given(two_runs):
    (a, b), score = two_runs
    m = score_with_floor(score, a, a, second_reference=b, n_boot=0)
    direct = score(a, b)
    for k in SCORES:
        assert m[f"{k}_floor"] == pytest.approx(direct[k], rel=1e-12)


def test_blocks_stay_inside_trajectories_and_keep_the_frame_count():
    frames = {"aa_xyz_nm": np.zeros((50, 2, 3)), "traj_id": np.array(["a"] * 30 + ["b"] * 20),
              "time_ps": np.r_[np.arange(30.0), np.arange(20.0)]}
    rows, labels = block_indices(frames, 7, np.random.default_rng(0))
    assert rows.size == 50 and labels.size == 50
    for lab in np.unique(labels):
        r = rows[labels == lab]
        assert np.all(np.diff(r) == 1) and len(set(frames["traj_id"][r])) == 1  # consecutive, one trajectory
    ha, hb = reference_halves(frames)
    assert {tuple(np.unique(ha["traj_id"])), tuple(np.unique(hb["traj_id"]))} == {("a",), ("b",)}
    one = {k: v[:30] for k, v in frames.items()}
    ha, hb = reference_halves(one)  # one trajectory: first and second half in time
    assert ha["time_ps"].max() < hb["time_ps"].min() and len(ha["time_ps"]) == 15
