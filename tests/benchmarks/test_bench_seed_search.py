"""Seeding the cVAE's chains: the closest bank frame after optimal superposition (run on demand: make bench).

M first CG frames against a bank of F training CG frames (ADP backbone6 beads:
the reference structure plus 0.05 nm noise), as ``CVAEBackmapper.seed_frames``
does it: every RMSD from the singular values of the 3x3 correlation matrices
(one matrix product, closed-form eigenvalues), a rotation only for each best
match.  Baseline in the same run: per query, the Kabsch rotation of every bank
frame (batched SVD) and the RMSD of the superposed frames.  Both must pick the
same frames.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from finegrain.datasets.systems import get_system
from finegrain.platform.science.superposition import kabsch_rotations, pairwise_superposed_rmsd

pytestmark = pytest.mark.benchmark


def _per_query(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    best = []
    for q in queries:
        rot = kabsch_rotations(bank, q)
        aligned = np.einsum("fij,fnj->fni", rot, bank - bank.mean(1, keepdims=True))
        best.append(int(((aligned - (q - q.mean(0))) ** 2).sum((1, 2)).argmin()))
    return np.array(best)


def _seconds(fn) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(3):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def test_bench_seed_search():
    ref = get_system("adp")
    mapping = ref.mapping("backbone6")
    rng = np.random.default_rng(0)
    bank = mapping.map(ref.positions_nm[None] + 0.05 * rng.normal(size=(1024, ref.n_atoms, 3)))
    queries = bank[rng.integers(0, len(bank), 1000)] + 0.01 * rng.normal(size=(1000, mapping.n_beads, 3)) + 1.0
    t_loop, best_loop = _seconds(lambda: _per_query(queries, bank))
    t_fast, best_fast = _seconds(lambda: pairwise_superposed_rmsd(queries, bank).argmin(axis=1))
    print(f"\nseed search, {len(queries)} queries x {len(bank)} bank frames of {mapping.n_beads} beads")
    print(f"{'per-query Kabsch (baseline)':<36}{t_loop:>8.3f} s{1.0:>8.1f}x")
    print(f"{'pairwise_superposed_rmsd':<36}{t_fast:>8.3f} s{t_loop / t_fast:>8.1f}x")
    np.testing.assert_array_equal(best_fast, best_loop)
