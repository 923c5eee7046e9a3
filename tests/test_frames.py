"""The frame container: checks naming the field, dict round trip, aligned subsets, same metrics as the dicts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from finegrain.datasets.systems import get_system
from finegrain.platform.science.errors import InputError
from finegrain.platform.science.frames import FRAME_KEYS, Frames
from finegrain.platform.science.metrics import evaluate_frames
from finegrain.platform.science.metrics.floors import take_frames

ADP = get_system("adp")


def _walk(n_frames: int, seed: int, scale: float = 0.004) -> np.ndarray:
    """An AR(1) walk of ADP around its template [T, N, 3] nm: slow, correlated motion."""
    rng = np.random.default_rng(seed)
    x = np.empty((n_frames, ADP.n_atoms, 3))
    noise = np.zeros((ADP.n_atoms, 3))
    for t in range(n_frames):
        noise = 0.9 * noise + scale * rng.standard_normal(noise.shape)
        x[t] = ADP.positions_nm + noise
    return x


@pytest.fixture(scope="module")
def adp_dicts():
    """Reference and backmapped frames dicts of ADP: two 150-frame trajectories, 1 ps apart, energies,
    and a backmap with K = 2 samples; plus topology and mapping."""
    mapping = ADP.mapping("backbone6")
    x = np.concatenate([_walk(150, 1), _walk(150, 2)])
    rng = np.random.default_rng(3)
    tid = np.repeat(np.array(["r0", "r1"]), 150)
    ref = {"aa_xyz_nm": x, "cg_xyz_nm": mapping.map(x), "traj_id": tid, "time_ps": np.tile(np.arange(150.0), 2),
           "frame": np.tile(np.arange(150), 2), "energy_kj_mol": rng.normal(-50.0, 5.0, 300)}
    samples = np.stack([x + rng.normal(0.0, 0.01, x.shape) for _ in range(2)])
    bm = {"aa_xyz_nm": samples[0], "cg_xyz_nm": ref["cg_xyz_nm"], "samples": samples,
          "energy_kj_mol": rng.normal(-45.0, 6.0, 300)}
    return ref, bm, ADP.md_topology, mapping


def _small(t: int = 4, n: int = 5, n_beads: int = 2) -> dict:
    rng = np.random.default_rng(0)
    return {"aa_xyz_nm": rng.random((t, n, 3)), "cg_xyz_nm": rng.random((t, n_beads, 3)),
            "traj_id": np.array(["a"] * (t // 2) + ["b"] * (t - t // 2)), "time_ps": np.arange(t, dtype=float),
            "energy_kj_mol": rng.random(t), "frame": np.arange(t), "samples": rng.random((3, t, n, 3)),
            "box_nm": np.broadcast_to(np.diag(rng.uniform(2.0, 3.0, 3)), (t, 3, 3)).copy()}


# -- checks --------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value, match", [
    ("traj_id", np.array(["a"] * 3), r"traj_id: expected shape \[4\]"),
    ("time_ps", np.arange(5.0), r"time_ps: expected shape \[4\]"),
    ("energy_kj_mol", np.zeros((4, 1)), r"energy_kj_mol: expected shape \[4\]"),
    ("cg_xyz_nm", np.zeros((3, 2, 3)), "cg_xyz_nm: holds 3 frames, the other fields 4"),
    ("samples", np.zeros((3, 5, 5, 3)), "samples: holds 5 frames per sample, the other fields 4"),
    ("samples", np.zeros((3, 4, 6, 3)), "samples: has 6 atoms per frame, aa_xyz_nm has 5"),
    ("box_nm", np.zeros((4, 3)), r"box_nm: expected finite box vectors \[4, 3, 3\]"),
    ("box_nm", np.full((4, 3, 3), np.nan), r"box_nm: expected finite box vectors"),
])
def test_mismatched_frame_counts_name_the_field(key, value, match):
    d = _small()
    d[key] = value
    with pytest.raises(InputError, match=match):
        Frames.from_dict(d)


@pytest.mark.parametrize("key, shape", [("aa_xyz_nm", (4, 5, 2)), ("cg_xyz_nm", (4, 2, 4)), ("aa_xyz_nm", (4, 15)),
                                        ("samples", (3, 4, 5, 2))])
def test_wrong_last_dimension_names_the_field(key, shape):
    d = _small()
    d[key] = np.zeros(shape)
    with pytest.raises(InputError, match=f"{key}: expected shape"):
        Frames.from_dict(d)


@pytest.mark.parametrize("key, where", [("aa_xyz_nm", "frame 2, atom 3"), ("cg_xyz_nm", "frame 2, bead 1"),
                                        ("samples", "sample 1, frame 2, atom 3")])
def test_non_finite_coordinates_name_the_field_frame_and_particle(key, where):
    d = _small()
    bad = d[key].copy()
    if key == "samples":
        bad[1, 2, 3, 0] = np.nan
    else:
        bad[2, 3 if key == "aa_xyz_nm" else 1, 1] = np.inf
    d[key] = bad
    with pytest.raises(InputError, match=f"{key}: non-finite coordinate at {where}"):
        Frames.from_dict(d)
    assert isinstance(InputError("x"), ValueError)


def test_topology_and_mapping_must_fit_the_coordinates(adp_dicts):
    ref, _, top, mapping = adp_dicts
    with pytest.raises(InputError, match="topology: has 22 atoms, the coordinates have 5"):
        Frames.from_dict(_small(), topology=top)
    with pytest.raises(InputError, match="mapping: 'backbone6' has 6 beads, cg_xyz_nm has 5"):
        Frames(aa_xyz_nm=ref["aa_xyz_nm"], cg_xyz_nm=ref["cg_xyz_nm"][:, :5], mapping=mapping)
    with pytest.raises(InputError, match="frames: no per-frame field"):
        Frames(topology=top)


def test_energies_may_be_unknown_nan():
    d = _small()
    d["energy_kj_mol"] = np.full(4, np.nan)
    assert np.isnan(Frames.from_dict(d).energy_kj_mol).all()


# -- dict edges ------------------------------------------------------------------------------------
def test_from_dict_to_dict_round_trip_keeps_the_arrays():
    d = _small()
    fr = Frames.from_dict({**d, "system": "adp", "data_hash": "abc", "constraints": None, "samples": d["samples"]})
    out = fr.to_dict()
    assert set(out) == set(FRAME_KEYS) == set(d)
    for k, v in d.items():
        assert out[k] is v  # no copy, no dtype change
    assert fr.n_frames == 4 and fr.n_atoms == 5
    partial = Frames.from_dict({"aa_xyz_nm": d["aa_xyz_nm"], "traj_id": None})
    assert partial.to_dict().keys() == {"aa_xyz_nm"} and partial.traj_id is None
    again = Frames.from_dict(Frames.from_dict(out).to_dict())
    assert all(np.array_equal(again.to_dict()[k], d[k]) for k in d)


def test_subset_keeps_every_field_aligned():
    d = _small(t=10)
    fr = Frames.from_dict(d)
    for index in (np.array([7, 2, 2, 9]), np.arange(10) % 3 == 0, slice(3, 8)):
        sub = fr.subset(index)
        for k in FRAME_KEYS:
            expect = d[k][:, index] if k == "samples" else d[k][index]
            np.testing.assert_array_equal(getattr(sub, k), expect, err_msg=k)
        assert sub.n_frames == d["aa_xyz_nm"][index].shape[0]
    assert fr.subset(4).n_frames == 1
    # the floors' resampling gives the same frames from Frames as from the dict
    rows, labels = np.array([1, 2, 3, 8, 9]), np.array(["0.0"] * 3 + ["0.1"] * 2)
    from_dict, from_frames = take_frames(d, rows, labels), take_frames(fr, rows, labels)
    for k in FRAME_KEYS:
        np.testing.assert_array_equal(getattr(from_frames, k), from_dict[k], err_msg=k)


# -- the metrics see the same frames ---------------------------------------------------------------
def test_evaluate_frames_gives_the_same_metrics_from_frames_as_from_dicts(adp_dicts):
    ref, bm, top, mapping = adp_dicts
    kw = {**ADP.evaluation_kwargs(), "make_figures": False, "seed": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_dicts, _ = evaluate_frames(ref, bm, top, mapping, **kw)
        fr_ref = Frames.from_dict(ref, topology=top, mapping=mapping)
        fr_bm = Frames.from_dict(bm)
        from_frames, _ = evaluate_frames(fr_ref, fr_bm, top, mapping, **kw)
        carried, _ = evaluate_frames(fr_ref, fr_bm, **kw)  # topology and mapping from the reference Frames
    assert {"rmsd_cg_nm", "js_bonds", "w1_energy_kj_mol", "kl_fes", "js_velocity", "diversity_rmsd_nm"} <= set(from_dicts)
    assert from_frames == from_dicts
    assert carried == from_dicts


def test_evaluate_frames_names_the_argument_of_a_bad_dict(adp_dicts):
    ref, bm, top, mapping = adp_dicts
    with pytest.raises(InputError, match=r"backmapped: time_ps: expected shape \[300\]"):
        evaluate_frames(ref, {**bm, "time_ps": np.arange(3.0)}, top, mapping, make_figures=False)
    with pytest.raises(ValueError, match="backmapped: needs 'aa_xyz_nm'"):
        evaluate_frames(ref, Frames(cg_xyz_nm=bm["cg_xyz_nm"]), top, mapping, make_figures=False)
