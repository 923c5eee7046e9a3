"""Refinement (``--refine N``): batched CG-restrained minimisation with the torch force field, checked with
OpenMM's energies and forces; refined models are their own leaderboard row; bad input names the flag."""

from __future__ import annotations

import mdtraj as md
import numpy as np
import pytest
import torch

from finegrain.datasets.systems import get_system
from finegrain.trainables.refine import K_RESTRAINT, refine
from finegrain.platform.science.errors import InputError


@pytest.fixture(scope="module")
def frames(adp_sim):
    top = md.load_topology(str(adp_sim / "topology.pdb"))
    x = md.load(str(adp_sim / "replica_000.dcd"), top=top).xyz[:8].astype(np.float64)
    mapping = get_system("adp").mapping("backbone6")
    noisy = x + 0.01 * np.random.default_rng(0).normal(size=x.shape)  # hot: ~800 kJ/mol above the frames
    return mapping, noisy, mapping.map(x)


def test_refinement_minimises_the_restrained_energy_as_openmm_measures_it(frames):
    from finegrain.platform.science.energies import energy_model

    mapping, x0, y = frames
    u = energy_model(get_system("adp"), backend="openmm")

    def restrained(x):  # OpenMM's energy and forces plus the restraint, independently of the torch force field
        p = torch.as_tensor(x).requires_grad_(True)
        e = u(p) + 0.5 * K_RESTRAINT * ((torch.einsum("bn,fnk->fbk", torch.as_tensor(mapping.matrix), p)
                                         - torch.as_tensor(y)) ** 2).sum((-1, -2))
        g, = torch.autograd.grad(e.sum(), p)
        return e.detach().numpy(), g.norm(dim=-1).pow(2).mean(-1).sqrt().numpy()  # [F] kJ/mol, RMS force

    x1 = refine(x0[None], y, mapping, "adp", 150)[0]
    e0, f0 = restrained(x0)
    e1, f1 = restrained(x1)
    assert np.all(e1 < e0 - 300.0), (e0, e1)
    assert np.all(f1 < f0 / 10), (f0, f1)
    assert np.abs(mapping.map(x1) - y).max() < 0.01  # beads kept by the restraint
    np.testing.assert_array_equal(refine(x0, y, mapping, "adp", 0), x0)


def test_refinement_refuses_what_it_cannot_do_naming_the_flag(frames):
    mapping, x0, y = frames
    for system in (None, "no-such-system"):
        with pytest.raises(InputError, match="--refine"):
            refine(x0, y, mapping, system, 5)
    with pytest.raises(InputError, match="--refine"):
        refine(x0, y, mapping, "adp", -1)
    with pytest.raises(InputError, match="cg_xyz"):
        refine(x0, y[:3], mapping, "adp", 5)


def test_a_refined_model_is_scored_as_its_own_leaderboard_row(adp_shards, tmp_path):
    import json

    from finegrain.platform.apps.evaluation import evaluate

    res = evaluate("zoo:adp-backbone6", adp_shards, out=tmp_path, bootstrap=0, min_frames=50, refine=5)
    tags = json.loads(res.report.read_text())["tags"]
    assert tags["model_label"] == "zoo:adp-backbone6+refine5" and tags["refine_steps"] == "5"
