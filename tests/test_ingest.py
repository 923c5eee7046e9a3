"""Ingest to Parquet with Ray Data: round trip, manifest, temporal pairs, bad input."""

import hashlib
import shutil

import mdtraj as md
import numpy as np
import pyarrow.parquet as pq
import pytest

from finegrain.datasets.ingest import IngestError, TrajectorySource, ingest, sources_from_simulation
from finegrain.datasets.systems import get_system
from finegrain.platform.science.mapping import MappingError
from finegrain.datasets.shards import (
    Manifest,
    iter_pair_batches,
    pair_dataset,
    read_frames,
    split_trajectories,
    temporal_pairs,
    unflatten_pair_batch,
)


@pytest.fixture(scope="module")
def loaded(adp_sim):
    """The simulated trajectories as mdtraj loads them (the independent reference)."""
    top, _, sources = sources_from_simulation(adp_sim)
    return {s.traj_id: md.load(s.path, top=top) for s in sources}


def test_parquet_round_trip_is_bit_identical(adp_shards, adp_sim, loaded):
    frames = read_frames(adp_shards)
    mapping = get_system("adp").mapping("backbone6")
    for traj_id, traj in loaded.items():
        rows = frames["traj_id"] == traj_id
        np.testing.assert_array_equal(frames["aa_xyz_nm"][rows], traj.xyz)  # bit-identical float32
        np.testing.assert_array_equal(frames["frame"][rows], np.arange(traj.n_frames))
        expected_cg = mapping.map(traj.xyz.astype(np.float64)).astype(np.float32)
        np.testing.assert_array_equal(frames["cg_xyz_nm"][rows], expected_cg)
        obs = np.load(adp_sim / f"replica_{int(traj_id[-3:]):03d}.npz")
        np.testing.assert_array_equal(frames["energy_kj_mol"][rows], obs["potential_kj_mol"])
        np.testing.assert_array_equal(frames["time_ps"][rows], obs["time_ps"])


def test_manifest_counts_and_hashes(adp_shards, loaded):
    man = Manifest.load(adp_shards)
    assert man.n_trajectories == len(loaded) == 2
    assert man.n_frames == sum(t.n_frames for t in loaded.values()) == 100
    assert man.trajectories == {k: t.n_frames for k, t in loaded.items()}
    top = next(iter(loaded.values())).topology
    assert man.atom_names == [a.name for a in top.atoms] and man.n_atoms == 22 and man.n_beads == 6
    assert man.mapping["bead_names"] == ["C1", "N2", "CA2", "C2", "N3", "CB2"]
    assert len(man.shards) == 6  # 50 frames per trajectory in shards of 20
    for s in man.shards:
        path = adp_shards / s.path
        assert hashlib.sha256(path.read_bytes()).hexdigest() == s.sha256
        table = pq.read_table(path)
        assert table.num_rows == s.n_rows
        assert set(table.column("traj_id").to_pylist()) == {s.traj_id}  # a shard holds one trajectory
        assert table.schema.field("aa_xyz_nm").type.list_size == 66
    man.verify(adp_shards)
    first = adp_shards / man.shards[0].path
    original = first.read_bytes()
    first.write_bytes(b"corrupt")
    try:
        with pytest.raises(ValueError, match="sha256 differs"):
            man.verify(adp_shards)
    finally:  # the fixture is shared by other tests
        first.write_bytes(original)


def test_no_temporal_pair_crosses_a_trajectory(loaded):
    # two trajectories with identical frame indices, interleaved order
    frames = {"traj_id": [], "frame": [], "aa_xyz_nm": [], "cg_xyz_nm": []}
    for tid, traj in loaded.items():
        frames["traj_id"] += [tid] * traj.n_frames
        frames["frame"] += list(range(traj.n_frames))
        frames["aa_xyz_nm"].append(traj.xyz)
        frames["cg_xyz_nm"].append(traj.xyz[:, :6])
    frames = {k: np.concatenate(v) if k.endswith("nm") else np.asarray(v) for k, v in frames.items()}
    perm = np.random.default_rng(0).permutation(len(frames["frame"]))
    frames = {k: v[perm] for k, v in frames.items()}
    for lag in (1, 3):
        p = temporal_pairs(frames, lag)
        assert len(p["frame"]) == sum(t.n_frames - lag for t in loaded.values())
        for tid, f, prev, cur in zip(p["traj_id"], p["frame"], p["aa_prev"], p["aa"]):
            np.testing.assert_array_equal(prev, loaded[tid].xyz[f - lag])
            np.testing.assert_array_equal(cur, loaded[tid].xyz[f])


def test_ray_data_pairs_and_splits(stack, tmp_path, adp_sim, loaded):
    top, system, sources = sources_from_simulation(adp_sim)
    out = tmp_path / "shards"
    man = ingest(top, sources, get_system(system).mapping("backbone6"), out, system=system, chunk_frames=16)
    splits = split_trajectories(man, (0.5, 0.5, 0.0), seed=0)
    assert sorted(splits["train"] + splits["validation"]) == sorted(loaded) and not splits["test"]
    ds = pair_dataset(out, "train", lag=2, fractions=(0.5, 0.5, 0.0))
    (tid,) = splits["train"]
    ref = loaded[tid].xyz
    n = 0
    for batch in ds.iter_torch_batches(batch_size=8):
        prev, cg, cur = unflatten_pair_batch(batch, 22, 6)
        for f, p, c in zip(batch["frame"].numpy(), prev.numpy(), cur.numpy()):
            np.testing.assert_array_equal(p, ref[f - 2])  # pairs span shard edges (16 frames)
            np.testing.assert_array_equal(c, ref[f])
        n += len(batch["frame"])
    assert n == ref.shape[0] - 2
    batches = list(iter_pair_batches(out, "validation", lag=1, batch_size=10, fractions=(0.5, 0.5, 0.0)))
    assert sum(b[0].shape[0] for b in batches) == 49 and batches[0][1].shape[1:] == (6, 3)

    # global shuffle: the same pairs, both trajectories interleaved from the start, the same order every run
    def rows(seed):
        ds = pair_dataset(out, "train", lag=1, fractions=(1.0, 0.0, 0.0), shuffle_seed=seed)
        b = ds.take_batch(batch_size=10**6, batch_format="numpy")
        return b["frame"], unflatten_pair_batch(b, 22, 6)[2]

    frame, aa = rows(3)
    again, _ = rows(3)
    np.testing.assert_array_equal(frame, again)
    assert len(frame) == sum(t.n_frames - 1 for t in loaded.values()) == 98
    traj_of = [next(t for t, x in loaded.items() if np.array_equal(x.xyz[f], a)) for f, a in zip(frame, aa)]
    assert set(traj_of[:20]) == set(loaded)  # both trajectories within the first 20 rows
    assert np.abs(np.diff(frame[:20])).mean() > 5  # and not in time order
    assert not np.array_equal(frame, rows(4)[0])  # another seed, another order


# -- bad input: a clear error naming the file/frame/atom, and nothing left behind ----------

def _write(traj, path):
    traj.save(str(path))
    return str(path)


@pytest.fixture()
def ref_traj(loaded):
    return next(iter(loaded.values()))


def _assert_refused(tmp_path, top, sources, message, mapping=None):
    out = tmp_path / "out"
    mapping = mapping or get_system("adp").mapping("backbone6")
    with pytest.raises((IngestError, MappingError), match=message):
        ingest(top, sources, mapping, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_bad_inputs_are_refused_cleanly(stack, tmp_path, adp_sim, ref_traj):
    top = str(adp_sim / "topology.pdb")
    # atom count mismatch
    short = _write(ref_traj.atom_slice(range(21)), tmp_path / "short.dcd")
    _assert_refused(tmp_path, top, [TrajectorySource("a", short)], r"short\.dcd.*atom")
    # NaN in frame 3, atom 5
    bad = ref_traj[:10]
    bad.xyz[3, 5, 1] = np.nan
    nan = _write(bad, tmp_path / "nan.dcd")
    _assert_refused(tmp_path, top, [TrajectorySource("a", nan)], r"nan\.dcd.*frame 3, atom 5")
    # Angstrom where nm is expected (and the opposite)
    ang = ref_traj[:5]
    ang.xyz *= 10
    _assert_refused(tmp_path, top, [TrajectorySource("a", _write(ang, tmp_path / "ang.dcd"))], r"ang\.dcd.*Angstrom")
    tiny = ref_traj[:5]
    tiny.xyz /= 10
    _assert_refused(tmp_path, top, [TrajectorySource("a", _write(tiny, tmp_path / "tiny.dcd"))], r"tiny\.dcd.*too short")
    # truncated DCD (mdtraj alone would load it short) and truncated XTC
    full = _write(ref_traj, tmp_path / "full.dcd")
    data = open(full, "rb").read()
    (tmp_path / "trunc.dcd").write_bytes(data[: len(data) // 2])
    _assert_refused(tmp_path, top, [TrajectorySource("a", str(tmp_path / "trunc.dcd"))], r"trunc\.dcd.*truncated")
    xtc = _write(ref_traj, tmp_path / "full.xtc")
    (tmp_path / "trunc.xtc").write_bytes(open(xtc, "rb").read()[:700])
    _assert_refused(tmp_path, top, [TrajectorySource("a", str(tmp_path / "trunc.xtc"))], r"trunc\.xtc")
    # empty and missing files
    (tmp_path / "empty.dcd").write_bytes(b"")
    _assert_refused(tmp_path, top, [TrajectorySource("a", str(tmp_path / "empty.dcd"))], r"empty\.dcd.*(unreadable|no frames)")
    _assert_refused(tmp_path, top, [TrajectorySource("a", str(tmp_path / "missing.dcd"))], r"missing\.dcd.*not found")
    # a good file next to a bad one: still nothing written
    _assert_refused(tmp_path, top, [TrajectorySource("ok", full), TrajectorySource("b", nan)], r"nan\.dcd")


def test_unknown_atom_names_in_a_mapping_are_named(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text("beads:\n  - {name: X, atoms: ['ALA2-CQ']}\n")
    from finegrain.platform.science.mapping import CGMapping

    with pytest.raises(MappingError, match="unknown atom name 'ALA2-CQ'"):
        CGMapping.from_yaml(spec, get_system("adp").md_topology)


def test_cli_ingest_reports_errors_in_one_line(stack, tmp_path, adp_sim):
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "finegrain"
    r = subprocess.run([str(exe), "ingest", str(adp_sim), "--mapping", "nope", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown mapping 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([str(exe), "ingest", str(adp_sim), "--mapping", "heavy", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert Manifest.load(tmp_path / "o").n_beads == 10
    shutil.rmtree(tmp_path / "o")


# -- constraints: read from the simulation, carried in the manifest, never guessed ----------

def test_manifest_carries_the_simulations_constraints(adp_shards, adp_sim, tmp_path):
    import json

    from finegrain.datasets.ingest import constraints_from_simulation
    from finegrain.datasets.simulate import constraint_record

    man = Manifest.load(adp_shards)
    meta = json.loads((adp_sim / "metadata.json").read_text())
    assert meta["constraints"] == "HBonds" and man.constraints == meta["constrained_pairs"]
    # OpenMM's HBonds constraint count equals the number of X-H bonds of ADP (counted from elements)
    top = md.load_topology(str(adp_shards / man.topology_pdb))
    x_h = {tuple(sorted((a.index, b.index))) for a, b in top.bonds if (a.element.symbol == "H") != (b.element.symbol == "H")}
    system = get_system("adp").create_system(constraints="HBonds")
    assert system.getNumConstraints() == len(x_h) == 12 == len(man.constraints)
    assert man.constraints == constraint_record(system)
    pairs, r0 = man.constraint_arrays()
    assert {tuple(p) for p in pairs.tolist()} == x_h
    xyz = read_frames(adp_shards)["aa_xyz_nm"].astype(np.float64)
    d = np.linalg.norm(xyz[:, pairs[:, 0]] - xyz[:, pairs[:, 1]], axis=-1)
    assert np.abs(d - r0).max() < 1e-5  # the shards' frames do hold them at r0 (float32 storage)
    # round trip, and an older manifest without the field loads as "unknown"
    man.save(tmp_path)
    assert Manifest.load(tmp_path).constraints == man.constraints
    old = json.loads((adp_shards / "manifest.json").read_text())
    del old["constraints"]
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    assert Manifest.load(tmp_path).constraints is None and Manifest.load(tmp_path).constraint_arrays() is None
    # an older simulation folder: "HBonds" without the pairs is unknown; no constraints is known-empty
    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "metadata.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "constrained_pairs"}))
    assert constraints_from_simulation(sim) is None
    (sim / "metadata.json").write_text(json.dumps({**meta, "constraints": None, "constrained_pairs": []}))
    assert constraints_from_simulation(sim) == []


def test_external_trajectories_have_no_constraints_unless_given(stack, tmp_path, adp_sim):
    top, system, sources = sources_from_simulation(adp_sim)
    external = [TrajectorySource(s.traj_id, s.path) for s in sources]  # no simulation folder: nothing known
    mapping = get_system(system).mapping("backbone6")
    assert ingest(top, external[:1], mapping, tmp_path / "a", system=system).constraints is None
    given = [[0, 1, 0.109], [6, 7, 0.101]]
    assert ingest(top, external[:1], mapping, tmp_path / "b", system=system, constraints=given).constraints == given
    with pytest.raises(IngestError, match="constraints"):
        ingest(top, external[:1], mapping, tmp_path / "c", constraints=[[0, 99, 0.1]])
    with pytest.raises(IngestError, match="different constraint records"):
        ingest(top, [sources[0], external[1]], mapping, tmp_path / "d")
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
