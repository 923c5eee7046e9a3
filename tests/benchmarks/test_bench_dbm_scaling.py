"""DeepBackmap's cost per frame against the number of molecules, and its frames/s beside the EM baseline
(run on demand: make bench).

Boxes of 125, 250 and 375 cumene molecules (one, two and three copies of the shipped box side by side: the
same density; three_bead mapping) are backmapped with one untrained model of each size (timing does not depend on the
weights); a least-squares line cost = a + b * M is fitted and its relative residuals printed (linear
scaling: residuals of a few per cent, and cost/M roughly constant). Then ADP frames/s of the same
architecture beside the energy-minimisation baseline (placement + OpenMM minimisation), in the same run.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from finegrain.datasets.systems import get_system
from finegrain.platform.science.energies.parameters import empty_parameters
from finegrain.platform.science.mapping import CGMapping
from finegrain.trainables.dbm.backmapper import DBMBackmapper
from finegrain.trainables.dbm.config import DBMConfig
from finegrain.trainables.dbm.model import DBMNetworks
from finegrain.trainables.dbm.recipe import DBMRecipe

pytestmark = pytest.mark.benchmark
TILES = (1, 2, 3)
CONFIG = dict(channels=16, blocks=1, gibbs_sweeps=1, n_candidates=2)


def _model(topology, mapping) -> DBMBackmapper:
    torch.manual_seed(0)
    recipe = DBMRecipe.from_topology(topology, mapping)
    nets = DBMNetworks(DBMConfig(**CONFIG), recipe.type_names, recipe.bead_type_names)
    return DBMBackmapper(topology, mapping, nets, empty_parameters(topology.n_atoms), recipe=recipe)


def _seconds(fn, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def test_dbm_cost_is_linear_in_the_number_of_molecules():
    ref = get_system("cumene")
    one = ref.mapping("three_bead")
    xyz = ref.positions_nm.astype(np.float64)
    edge = np.diag(np.asarray(ref.box_nm, np.float64))
    costs, sizes = [], []
    for k in TILES:  # k copies of the shipped box side by side along x: the same density, k x 125 molecules
        import mdtraj as md

        top = md.Topology()
        for _ in range(k):
            top = top.join(ref.md_topology)
        x = np.concatenate([xyz + np.array([i * edge[0], 0, 0]) for i in range(k)])
        matrix = np.kron(np.eye(k), one.matrix)
        mapping = CGMapping(f"three_bead/x{k}", matrix, tuple(f"{n}" for _ in range(k) for n in one.bead_names))
        bm = _model(top, mapping)
        cg = mapping.map(x)[None]
        box = np.diag(edge * np.array([k, 1, 1]))[None]
        costs.append(_seconds(lambda: bm.backmap_in_box(cg, box, seed=0), 1))
        sizes.append(125 * k)
        print(f"DBM {sizes[-1]:4d} molecules ({top.n_atoms} atoms, {mapping.n_beads} beads): {costs[-1]:.2f} s/frame, "
              f"{1e3 * costs[-1] / sizes[-1]:.1f} ms per molecule")
    slope, intercept = np.polyfit(sizes, costs, 1)
    fit = intercept + slope * np.asarray(sizes)
    print(f"fit: cost = {intercept:.3f} s + {1e3 * slope:.2f} ms x molecules; relative residuals "
          f"{np.round((np.asarray(costs) - fit) / fit, 3).tolist()}")
    assert slope > 0


def test_dbm_frames_per_second_beside_the_em_baseline():
    from finegrain.trainables.baselines import EnergyMinimisationBackmapper

    ref = get_system("adp")
    mapping = ref.mapping("backbone6")
    rng = np.random.default_rng(0)
    x = ref.positions_nm.astype(np.float64)[None] + rng.normal(0, 0.005, (64, ref.n_atoms, 3))
    cg = mapping.map(x)
    dbm = _model(ref.md_topology, mapping)
    em = EnergyMinimisationBackmapper(ref.md_topology, mapping, "adp")  # template placement + minimisation
    n = 32
    t_dbm = _seconds(lambda: dbm.backmap_xyz(cg[:n], seed=0), 1)
    t_em = _seconds(lambda: em.backmap_xyz(cg[:n], seed=0), 1)
    for model in (dbm, em):  # both give whole frames (what the timing measured)
        assert np.isfinite(model.backmap_xyz(cg[:2], seed=0)).all()
    print(f"ADP {n} frames: DBM {n / t_dbm:.1f} frames/s, EM {n / t_em:.1f} frames/s, DBM/EM {t_em / t_dbm:.2f}x")
