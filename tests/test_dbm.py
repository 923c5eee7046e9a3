"""DeepBackmap (family ``dbm``): environments against the voxel module, local frames against geometry, the
placement order honoured at inference, periodic backmapping in the shipped cumene box, transfer refusals,
and training on a real Ray Train worker group logged to a real MLflow server."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from finegrain.datasets.systems import get_system
from finegrain.platform.science.energies.parameters import empty_parameters
from finegrain.platform.science.errors import InputError
from finegrain.platform.science.voxels import voxelize
from finegrain.platform.services.tracking import Tracker
from finegrain.tests.helpers import train_with_cli
from finegrain.trainables.dbm.backmapper import DBMBackmapper
from finegrain.trainables.dbm.config import DBMConfig
from finegrain.trainables.dbm.environment import local_frames, minimum_image, render, to_global, to_local
from finegrain.trainables.dbm.model import DBMNetworks
from finegrain.trainables.dbm.recipe import DBMRecipe


def _model(topology, mapping, **overrides) -> DBMBackmapper:
    torch.manual_seed(0)
    recipe = DBMRecipe.from_topology(topology, mapping)
    nets = DBMNetworks(DBMConfig.smoke(channels=4, noise_dim=4, **overrides), recipe.type_names,
                       recipe.bead_type_names)
    return DBMBackmapper(topology, mapping, nets, empty_parameters(topology.n_atoms), recipe=recipe)


@pytest.fixture(scope="module")
def cumene():
    ref = get_system("cumene")
    return {"ref": ref, "mapping": ref.mapping("three_bead"), "xyz": ref.positions_nm.astype(np.float64),
            "box": np.asarray(ref.box_nm, np.float64)}


def test_render_is_the_sum_of_voxelized_channels():
    """Each channel is the sum of its particles' Gaussians: against voxels.voxelize particle by particle."""
    rng = np.random.default_rng(0)
    local = torch.as_tensor(rng.uniform(-0.7, 0.7, (3, 9, 3)))
    w = torch.as_tensor(rng.integers(0, 2, (3, 9, 5)).astype(np.float64))
    got = render(local, w, 8, 1.2, 0.02, chunk=2)
    vox = voxelize(local, 8, 1.2, 0.02)  # [B, P, d, d, d]
    expected = torch.einsum("bpc,bpxyz->bcxyz", w, vox)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_local_frames_point_z_at_the_axis_bead_through_the_box(cumene):
    rng = np.random.default_rng(1)
    cg = cumene["mapping"].map(cumene["xyz"])[None].repeat(4, 0)
    edges = np.diag(cumene["box"])
    cg = cg + edges * rng.integers(-1, 2, cg.shape)  # beads wrapped by whole box vectors
    recipe = DBMRecipe.from_topology(cumene["ref"].md_topology, cumene["mapping"])
    bead = torch.as_tensor(rng.choice(recipe.n_beads, 4))
    box = torch.as_tensor(np.tile(edges, (4, 1)))
    angle = torch.as_tensor(rng.uniform(0, 2 * np.pi, 4))
    cg_t = torch.as_tensor(cg)
    centre, rot = local_frames(cg_t, bead, torch.as_tensor(np.array(recipe.axis_bead)), box, angle)
    torch.testing.assert_close(rot @ rot.mT, torch.eye(3, dtype=rot.dtype).expand(4, 3, 3))
    assert torch.allclose(torch.linalg.det(rot), torch.ones(4, dtype=rot.dtype))
    for k in range(4):
        d = cg[k, recipe.axis_bead[int(bead[k])]] - cg[k, int(bead[k])]
        d -= edges * np.round(d / edges)  # independent minimum image
        np.testing.assert_allclose(rot[k, 2].numpy(), d / np.linalg.norm(d), atol=1e-12)
    # local <-> global round trip keeps the image nearest the centre
    x = torch.as_tensor(cg[:, :5])
    back = to_global(to_local(x, centre, rot, box), centre, rot)
    torch.testing.assert_close(minimum_image(back - x, box), torch.zeros_like(x), atol=1e-12, rtol=0)


def test_adp_backmaps_every_atom_near_its_bead_reproducibly():
    ref = get_system("adp")
    mapping = ref.mapping("backbone6")
    bm = _model(ref.md_topology, mapping)
    cg = mapping.map(ref.positions_nm.astype(np.float64))[None].repeat(3, 0)
    out = bm.backmap_xyz(cg, n_samples=2, seed=4)
    assert out.shape == (2, 3, ref.n_atoms, 3) and np.isfinite(out).all()
    np.testing.assert_array_equal(out, bm.backmap_xyz(cg, n_samples=2, seed=4))
    # an atom is placed inside its bead's cube (half-width grid_width / 2, cell centres h/2 inside the faces)
    owner = np.asarray(bm.recipe.atom_bead)
    half = bm.config.grid_width / 2 - bm.config.voxel_nm / 2
    assert np.linalg.norm(out - cg[None, :, owner], axis=-1).max() <= math.sqrt(3) * half + 1e-6


def test_cumene_box_backmaps_with_the_box_and_refuses_what_it_cannot(cumene):
    ref, mapping = cumene["ref"], cumene["mapping"]
    bm = _model(ref.md_topology, mapping, gibbs_sweeps=0, n_candidates=1)
    bm.info["periodic"] = True
    cg = mapping.map(cumene["xyz"])[None]
    box = cumene["box"][None]
    out = bm.backmap_in_box(cg, box, seed=0)
    assert out.shape == (1, 1, ref.n_atoms, 3) and np.isfinite(out).all()
    edges = np.diag(cumene["box"])
    d = out[0, 0] - cg[0, np.asarray(bm.recipe.atom_bead)]
    d -= edges * np.round(d / edges)
    assert np.abs(d).max() <= bm.config.grid_width / 2
    with pytest.raises(InputError, match="box_nm: this DeepBackmap model was trained on a periodic box"):
        bm.backmap_xyz(cg)
    tilted = box.copy()
    tilted[0, 1, 0] = 0.3
    with pytest.raises(InputError, match="box_nm: frame 0 has box .* orthorhombic"):
        bm.backmap_in_box(cg, tilted)
    with pytest.raises(InputError, match=r"box_nm: expected box vectors \[1, 3, 3\]"):
        bm.backmap_in_box(cg, box[:, :2])


def test_transfer_needs_every_atom_type_the_model_was_trained_on(cumene):
    """Networks built for ADP's types cannot place cumene's aromatic carbons: the error names the first
    atom whose type they never saw; a model transfers to another box of its own molecule."""
    adp = get_system("adp")
    bm = _model(adp.md_topology, adp.mapping("backbone6"))
    ref = cumene["ref"]
    with pytest.raises(InputError, match=r"CUM1-\w+.*type 'C"):
        bm.for_topology(ref.md_topology, cumene["mapping"], empty_parameters(ref.n_atoms))
    liquid = _model(ref.md_topology, cumene["mapping"])
    moved = liquid.for_topology(ref.md_topology, cumene["mapping"], empty_parameters(ref.n_atoms))
    assert moved.nets is liquid.nets and moved.info["transferred_from"] is None


def test_adp_dbm_trains_on_ray_train_logs_to_mlflow_and_reloads(stack, adp_shards, tmp_path):
    """`finegrain train` on the shipped smoke config: a real Ray Train worker group and MLflow run."""
    from finegrain.datasets.shards import read_frames
    from finegrain.trainables.persistence import load_backmapper_from_uri

    sets = [f"data.shards={adp_shards}", "data.fractions=[0.5, 0.5, 0.0]", "training.max_steps=8",
            "training.eval_every=4", "training.checkpoint_every=4", "training.log_every=2",
            "training.progress=false", f"training.work_dir={tmp_path}", "tracking.experiment=test-dbm"]
    lines = train_with_cli("adp_dbm_smoke.yaml", sets)
    run = Tracker(stack.mlflow_uri).client.get_run(lines["run id"])
    assert run.data.tags["family"] == "dbm" and run.data.tags["mapping"] == "backbone6"
    metrics = run.data.metrics
    assert {"critic_loss", "wasserstein", "gradient_penalty", "placement_error_nm", "val_placement_error_nm",
            "val_bond_error_nm", "bond_error_nm", "generator_adversarial", "energy_prior"} <= set(metrics)
    assert 0 < metrics["val_bond_error_nm"] < 0.5
    assert 0 < metrics["val_placement_error_nm"] < 1.0
    bm = load_backmapper_from_uri(lines["model uri"], Tracker(stack.mlflow_uri))
    assert bm.family == "dbm" and not bm.periodic
    assert np.asarray(bm.energy_parameters["bond_k"]).size > 0  # the force field's prior travelled with it
    fr = read_frames(adp_shards)
    xyz = bm.backmap_xyz(fr["cg_xyz_nm"][:3], n_samples=2, seed=3)
    assert xyz.shape == (2, 3, bm.topology.n_atoms, 3) and np.isfinite(xyz).all()
    np.testing.assert_array_equal(xyz, bm.backmap_xyz(fr["cg_xyz_nm"][:3], n_samples=2, seed=3))


def test_transfer_is_a_declared_capability(cumene):
    """Only families that declare Family.transfers move onto another system; dbm brings the target's force field."""
    from finegrain.trainables.protocol import FAMILIES

    adp = get_system("adp")
    mapping = adp.mapping("backbone6")
    x = adp.positions_nm.astype(np.float64)[None].repeat(4, 0)
    ic = FAMILIES["ic"].load_conformance().build(adp.md_topology, mapping, x, "float32", "adp")
    with pytest.raises(InputError, match="family 'ic' cannot backmap another topology.*families that transfer: dbm"):
        ic.for_system("cumene", "three_bead")
    liquid = _model(cumene["ref"].md_topology, cumene["mapping"])
    moved = liquid.for_system("cumene", "three_bead")
    assert moved.periodic and moved.info["system"] == "cumene"
    # the prior's Lennard-Jones comes from CHARMM's tabulated force: every atom has a positive epsilon
    assert (np.asarray(moved.energy_parameters["nb_epsilon"]) > 0).all()
    assert [FAMILIES[f].transfers for f in FAMILIES] == [f == "dbm" for f in FAMILIES]


def test_bond_error_is_zero_on_the_reference_and_mdtraj_on_a_moved_atom():
    """The training/validation bond error against an independent mdtraj computation."""
    import mdtraj as md

    from finegrain.trainables.dbm.objective import DBMObjective
    from finegrain.trainables.dbm.sampler import Placer

    ref = get_system("adp")
    mapping = ref.mapping("backbone6")
    bm = _model(ref.md_topology, mapping)
    x = torch.as_tensor(ref.positions_nm, dtype=torch.float32)[None].repeat(2, 1, 1)
    cg = torch.as_tensor(mapping.map(ref.positions_nm.astype(np.float64)), dtype=torch.float32)[None].repeat(2, 1, 1)
    placer = Placer(bm.nets, bm.recipe, *bm.recipe.require_types(bm.nets.atom_types, bm.nets.bead_types, "t"))
    obj = DBMObjective(bm.nets, placer, None)
    bead = torch.tensor([0, 2])
    ctx = placer.context(x, cg, None, bead, torch.tensor([0.3, 1.1]), torch.ones(2, ref.n_atoms, dtype=torch.bool),
                         reference=True)
    assert float(obj.bond_error(ctx, ctx.own_ref, x, None).abs().max()) < 1e-6
    moved = ctx.own_ref.clone()
    moved[:, 0] += torch.tensor([0.02, -0.01, 0.015])  # the first atom of each bead, in its local frame
    got = obj.bond_error(ctx, moved, x, None).numpy()
    for k, b in enumerate(bead.tolist()):
        atom = int(bm.recipe.bead_atoms[b, 0])
        y = ref.positions_nm.astype(np.float64).copy()
        y[atom] = (ctx.centre[k] + moved[k, 0] @ ctx.rot[k]).numpy()
        touch = [(a.index, c.index) for a, c in ref.md_topology.bonds
                 if bm.recipe.atom_bead[a.index] == b or bm.recipe.atom_bead[c.index] == b]
        d = [md.compute_distances(md.Trajectory(z[None], ref.md_topology), touch)[0] for z in (y, ref.positions_nm)]
        np.testing.assert_allclose(got[k], np.abs(d[0] - d[1]).mean(), atol=2e-6)
