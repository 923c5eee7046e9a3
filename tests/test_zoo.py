"""Shipped models (``zoo:NAME``): listing, cards, clear refusals, and the shipped ADP model's quality on a
simulation it never saw, through the shipped ``finegrain backmap`` command, scored against OpenMM energies."""

from __future__ import annotations

import mdtraj as md
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from finegrain.datasets.systems import get_system
from finegrain.platform.apps import zoo
from finegrain.platform.science.errors import InputError


def cli():
    from finegrain.platform.apps.cli import app

    return app


def test_the_zoo_lists_its_models_with_complete_cards():
    assert {"adp-backbone6", "adp-ca"} <= set(zoo.names())
    out = CliRunner().invoke(cli(), ["zoo"])
    assert out.exit_code == 0, out.output
    assert "adp-backbone6" in out.output and "adp-ca" in out.output
    recipes = zoo.recipes()
    for name in ("adp-backbone6", "adp-ca"):
        c = zoo.card(name)
        assert c["recipe"] == recipes[name].model_dump()  # the card was made by the recipe that ships
        assert len(c["dataset_digest"]) >= 8 and c["training_split"]["train"]
        for score in ("rmsd_cg_nm", "js_bonds", "js_angles", "w1_energy_kj_mol", "energy_p99_excess_kj_mol"):
            assert {"value", "floor", "ci_lo", "ci_hi"} <= set(c["scores"][score]), (name, score)
        assert "make pretrained" in c["reproduce"]
        # weights are tensors only: they load without unpickling
        state = torch.load(zoo.folder(name) / "weights.pt", weights_only=True)
        assert state and all(isinstance(v, torch.Tensor) for v in state.values())


def test_an_unknown_zoo_name_is_refused_listing_the_names():
    from finegrain.platform.apps.serving import resolve_model
    from finegrain.trainables.persistence import load_backmapper_any

    for call in (lambda: load_backmapper_any("zoo:nope"), lambda: resolve_model("zoo:nope")):
        with pytest.raises(InputError, match="zoo:nope.*adp-backbone6.*adp-ca"):
            call()
    out = CliRunner().invoke(cli(), ["zoo", "show", "nope"])
    assert out.exit_code != 0


def test_shipped_adp_backbone6_on_a_simulation_it_never_saw(adp_sim, tmp_path):
    """`finegrain backmap --model zoo:adp-backbone6` on CG files of the test session's own ADP run (seed 7,
    not the zoo's seeds): beads exact, constrained bonds exact, heavy bonds and energies as OpenMM's."""
    from finegrain.platform.science.energies import energy_model

    top = md.load_topology(str(adp_sim / "topology.pdb"))
    ref = md.join([md.load(str(p), top=top) for p in sorted(adp_sim.glob("replica_*.dcd"))])
    mapping = get_system("adp").mapping("backbone6")
    cg = md.Trajectory(mapping.map(ref.xyz.astype(np.float64)).astype(np.float32), mapping.cg_topology())
    cg.save_dcd(str(tmp_path / "cg.dcd"))
    cg[0].save_pdb(str(tmp_path / "cg.pdb"))
    out = CliRunner().invoke(cli(), ["backmap", "--model", "zoo:adp-backbone6", "--top", str(tmp_path / "cg.pdb"),
                                     "--traj", str(tmp_path / "cg.dcd"), "--out", str(tmp_path / "aa.dcd"),
                                     "--seed", "0"])
    assert out.exit_code == 0, out.output
    bm = md.load(str(tmp_path / "aa.dcd"), top=top)
    assert bm.n_frames == ref.n_frames
    assert np.abs(mapping.map(bm.xyz.astype(np.float64)) - cg.xyz).max() < 1e-5  # beads exact (float32 files)
    bonds = np.array([(a.index, b.index) for a, b in top.bonds])
    heavy = np.array([a.element.symbol != "H" and b.element.symbol != "H" for a, b in top.bonds])
    d_bm, d_ref = md.compute_distances(bm, bonds), md.compute_distances(ref, bonds)
    assert np.abs(d_bm[:, ~heavy] - d_ref[:, ~heavy]).max() < 1e-4  # X-H held at the constrained length
    assert np.abs(d_bm[:, heavy].mean(0) - d_ref[:, heavy].mean(0)).max() < 0.002  # heavy bonds on average
    # energies with OpenMM itself: the backmapped ensemble is as hot as the reference, no outliers
    u = energy_model(get_system("adp"), backend="openmm")
    e_bm = u(torch.as_tensor(bm.xyz, dtype=torch.float64)).detach().numpy()
    e_ref = u(torch.as_tensor(ref.xyz, dtype=torch.float64)).detach().numpy()
    from scipy.stats import wasserstein_distance

    assert wasserstein_distance(e_bm, e_ref) < 10.0, (e_bm.mean(), e_ref.mean())
    assert np.percentile(e_bm, 99) < np.percentile(e_ref, 99) + 10.0 and e_bm.max() < e_ref.max() + 40.0
