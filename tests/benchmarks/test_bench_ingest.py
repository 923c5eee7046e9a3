"""Ingest and shard->batch throughput (run on demand: make bench).

Ratios are against baselines measured in the same run:
- ingest: Ray Data ingest vs a plain per-file loop (mdtraj load + numpy map + pyarrow write);
- batches: Ray Data pair batches and in-process pair batches vs reading the
  DCD files with mdtraj and pairing in numpy.
"""

import time

import torch  # noqa: F401  (imported before timing: the in-process path would pay its import)

import mdtraj as md
import numpy as np
import pyarrow.parquet as pq
import pytest

from finegrain.datasets.ingest import TrajectorySource, ingest
from finegrain.datasets.systems import get_system
from finegrain.datasets.shards import frames_table, iter_pair_batches, pair_dataset, temporal_pairs

pytestmark = pytest.mark.benchmark
N_TRAJ, N_FRAMES = 8, 5000


@pytest.fixture(scope="module")
def files(adp_sim, tmp_path_factory):
    """8 ADP trajectories of 5000 frames (simulated frames tiled with small noise)."""
    base = md.load(str(adp_sim / "replica_000.dcd"), top=str(adp_sim / "topology.pdb"))
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("bench-ingest")
    out = []
    for i in range(N_TRAJ):
        xyz = np.tile(base.xyz, (N_FRAMES // base.n_frames + 1, 1, 1))[:N_FRAMES]
        xyz = xyz + rng.normal(scale=1e-3, size=xyz.shape).astype(np.float32)
        path = folder / f"t{i}.dcd"
        md.Trajectory(xyz, base.topology).save_dcd(str(path))
        out.append(str(path))
    return str(adp_sim / "topology.pdb"), out


def _rate(n, seconds):
    return n / seconds


def test_bench_ingest_and_batches(stack, files, tmp_path):
    top, paths = files
    mapping = get_system("adp").mapping("backbone6")
    n = N_TRAJ * N_FRAMES

    t = time.perf_counter()
    for i, p in enumerate(paths):
        traj = md.load(p, top=top)
        cg = np.einsum("bi,fic->fbc", mapping.matrix, traj.xyz.astype(np.float64))
        table = frames_table("adp", f"t{i}", np.arange(traj.n_frames), traj.time, traj.xyz, cg)
        pq.write_table(table, tmp_path / f"plain{i}.parquet")
    plain = _rate(n, time.perf_counter() - t)

    sources = [TrajectorySource(f"t{i}", p) for i, p in enumerate(paths)]
    t = time.perf_counter()
    ingest(top, sources, mapping, tmp_path / "shards", system="adp", chunk_frames=2500)
    ray_rate = _rate(n, time.perf_counter() - t)

    t = time.perf_counter()
    pairs = 0
    for p in paths:
        traj = md.load(p, top=top)
        pr = temporal_pairs({"traj_id": np.zeros(traj.n_frames), "frame": np.arange(traj.n_frames),
                             "aa_xyz_nm": traj.xyz, "cg_xyz_nm": traj.xyz[:, :6]}, 1)
        pairs += len(pr["frame"])
    plain_pairs = _rate(pairs, time.perf_counter() - t)

    t = time.perf_counter()
    got = sum(b[0].shape[0] for b in iter_pair_batches(tmp_path / "shards", "train", batch_size=256,
                                                       fractions=(1.0, 0.0, 0.0)))
    inproc = _rate(got, time.perf_counter() - t)

    t = time.perf_counter()
    ds = pair_dataset(tmp_path / "shards", "train", fractions=(1.0, 0.0, 0.0))
    got_ray = sum(len(b["frame"]) for b in ds.iter_torch_batches(batch_size=256))
    ray_batches = _rate(got_ray, time.perf_counter() - t)
    assert got == got_ray == pairs

    rows = [
        ("ingest: plain mdtraj+numpy+pyarrow loop", plain, 1.0),
        ("ingest: finegrain (Ray Data, checked, hashed)", ray_rate, ray_rate / plain),
        ("pairs: plain mdtraj + numpy pairing", plain_pairs, 1.0),
        ("pairs: shards -> torch batches, in-process", inproc, inproc / plain_pairs),
        ("pairs: shards -> torch batches, Ray Data", ray_batches, ray_batches / plain_pairs),
    ]
    print(f"\n{n} frames of ADP (22 atoms), {N_TRAJ} trajectories")
    for name, rate, ratio in rows:
        print(f"{name:48s} {rate:12.0f} frames/s   x{ratio:5.2f}")
