"""The internal-coordinate family: Z-matrix geometry against mdtraj, the MADE's autoregressive masks,
normalised densities, refusals, and training on Ray Train with MLflow.

Budget: a few seconds of torch per test plus one in-process Ray Train run of 30 steps.
"""

from __future__ import annotations

import math

import mdtraj as md
import numpy as np
import pytest
import torch

from finegrain.tests.helpers import train_with_cli
from finegrain.platform.services.tracking import Tracker
from finegrain.datasets.systems import get_system
from finegrain.platform.science.mapping import CGMapping
from finegrain.platform.science.errors import InputError
from finegrain.trainables.ic import ConditionalIC, ICConfig, build_zmatrix
from finegrain.trainables.ic.zmatrix import internal_coordinates, place, random_rotations


@pytest.fixture(scope="module")
def adp(adp_sim):
    top = md.load_topology(str(adp_sim / "topology.pdb"))
    xyz = np.concatenate([md.load(str(p), top=top).xyz for p in sorted(adp_sim.glob("replica_*.dcd"))])
    return top, xyz.astype(np.float64)


def test_internal_coordinates_match_mdtraj_and_the_build_is_exact(adp):
    top, xyz = adp
    mapping = get_system("adp").mapping("backbone6")
    zm = build_zmatrix(top, mapping)
    assert sorted(zm.order.tolist() + zm.anchors.tolist()) == list(range(top.n_atoms))
    traj = md.Trajectory(xyz, top)
    ic = internal_coordinates(torch.as_tensor(xyz), zm).numpy()
    i, (j, k, l_) = zm.order, zm.refs.T
    np.testing.assert_allclose(ic[..., 0], md.compute_distances(traj, np.c_[i, j]), atol=1e-6)
    np.testing.assert_allclose(ic[..., 1], md.compute_angles(traj, np.c_[i, j, k]), atol=1e-5)
    ref = md.compute_dihedrals(traj, np.c_[i, j, k, l_])
    np.testing.assert_allclose(np.angle(np.exp(1j * (ic[..., 2] - ref))), 0.0, atol=1e-4)
    back = place(torch.as_tensor(ic), torch.as_tensor(mapping.map(xyz)), zm).numpy()
    assert np.abs(back - xyz).max() < 1e-9  # float64 round trip: exact, bead atoms on their beads


def test_a_single_bead_build_is_exact_up_to_a_rotation_about_the_bead(adp):
    top, xyz = adp
    mapping = get_system("adp").mapping("ca")
    zm = build_zmatrix(top, mapping)
    assert zm.single_anchor and not zm.active[:2].all()
    ic = internal_coordinates(torch.as_tensor(xyz[:10]), zm)
    rot = random_rotations(10, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(10, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(10, dtype=torch.float64))
    back = place(ic, torch.as_tensor(mapping.map(xyz[:10])), zm, rotation=rot).numpy()
    np.testing.assert_allclose(mapping.map(back), mapping.map(xyz[:10]), atol=1e-12)
    def distances(x):
        return np.linalg.norm(x[:, :, None] - x[:, None, :], axis=-1)

    assert np.abs(distances(back) - distances(xyz[:10])).max() < 1e-9  # a rigid motion of the frame ...
    phi = [[4, 6, 8, 14], [6, 8, 14, 16], [1, 4, 6, 8]]
    np.testing.assert_allclose(md.compute_dihedrals(md.Trajectory(back, top), phi),  # ... and a proper one
                               md.compute_dihedrals(md.Trajectory(xyz[:10], top), phi), atol=1e-4)


def test_mappings_the_family_cannot_serve_are_refused_naming_the_beads(adp):
    top, _ = adp
    sel = {a.name: a.index for a in top.atoms if a.residue.name == "ALA"}
    cases = [  # (beads, what the error must say)
        ([{"name": "X", "atoms": [sel["N"], sel["CA"]]}, {"name": "Y", "atoms": [sel["C"]]},
          {"name": "Z", "atoms": [sel["CB"]]}], "bead X averages 2 atoms"),
        ([{"name": "X", "atoms": [sel["N"]]}, {"name": "Y", "atoms": [sel["CA"]]}], "two beads"),
        ([{"name": "X", "atoms": [sel["N"]]}, {"name": "Y", "atoms": [sel["CA"]]},
          {"name": "FAR", "atoms": [sel["O"]]}], "beads ['FAR'] are not bonded"),
    ]
    for beads, needle in cases:
        with pytest.raises(InputError) as err:
            build_zmatrix(top, CGMapping.from_spec({"beads": beads}, top, name="odd"))
        assert "mapping 'odd'" in str(err.value) and needle in str(err.value), str(err.value)


@pytest.fixture(scope="module")
def model(adp):
    top, xyz = adp
    mapping = get_system("adp").mapping("backbone6")
    torch.manual_seed(0)
    m = ConditionalIC(ICConfig.smoke(hidden=32), build_zmatrix(top, mapping)).double()
    m.fit_statistics(torch.as_tensor(xyz), torch.as_tensor(mapping.map(xyz)))
    with torch.no_grad():  # a network far from its start, so the masks are what keeps it autoregressive
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m, mapping, xyz


def test_each_conditional_depends_only_on_earlier_coordinates(model):
    m, mapping, xyz = model
    z = m.flat_ic(torch.as_tensor(xyz[:1]))
    cg = torch.as_tensor(mapping.map(xyz[:1]))

    def params(zz):
        logits, loc, scale = m._params(m._encode(zz), m.condition(cg))
        return torch.stack([logits, loc, scale], -1)[0].reshape(m.n_ic, -1)  # [D, 3K]

    jac = torch.autograd.functional.jacobian(params, z)[:, :, 0, :]  # [D, 3K, D]
    dep = jac.abs().sum(1) > 0  # dep[d, e]: coordinate d's density uses coordinate e
    free = ~m.fixed
    assert not dep[:, ~free].any()  # held coordinates enter as constants
    assert not torch.triu(dep[free][:, free]).any()  # never itself or a later one
    assert torch.tril(dep[free][:, free], -1).any()  # and it does use earlier ones


def _mixture_log_density(m, d, grid, logits, loc, scale):
    """log q(z_d = grid | its parameters), written out independently of the model's code."""
    w = np.exp(logits - logits.max())
    w /= w.sum()
    if bool(m.circular[d]):
        kappa = np.exp(np.clip(scale, math.log(1e-3), math.log(m.config.max_concentration)))
        from scipy.special import i0e
        dens = sum(w[c] * np.exp(kappa[c] * (np.cos(grid - loc[c]) - 1.0)) / (2 * math.pi * i0e(kappa[c]))
                   for c in range(len(w)))
    else:
        mu, sd = float(m.ic_mean[d]), float(m.ic_std[d])
        std = (m.config.min_scale + np.exp(np.clip(scale, -12.0, 4.0))) * sd
        dens = sum(w[c] * np.exp(-0.5 * ((grid - mu - sd * loc[c]) / std[c]) ** 2) / (std[c] * math.sqrt(2 * math.pi))
                   for c in range(len(w)))
    return np.log(dens)


def test_conditionals_are_normalised_and_log_prob_is_their_sum(model):
    """Quadrature of each q(z_d | z_<d, y) over z_d is 1; log q(z | y) is the sum of the conditionals."""
    m, mapping, xyz = model
    z0 = m.flat_ic(torch.as_tensor(xyz[:1]))
    cg = torch.as_tensor(mapping.map(xyz[:1]))
    with torch.no_grad():
        logits, loc, scale = (t[0].numpy() for t in m._params(m._encode(z0), m.condition(cg)))
    total = 0.0
    for d in torch.nonzero(~m.fixed).flatten().tolist():
        if bool(m.circular[d]):
            grid = np.linspace(-math.pi, math.pi, 40001)
        else:
            grid = float(m.ic_mean[d]) + float(m.ic_std[d]) * np.linspace(-80, 80, 400001)
        dens = np.exp(_mixture_log_density(m, d, grid, logits[d], loc[d], scale[d]))
        assert abs(np.trapezoid(dens, grid) - 1.0) < 1e-3, d
        total += float(_mixture_log_density(m, d, np.array([float(z0[0, d])]), logits[d], loc[d], scale[d])[0])
    assert float(m.log_prob_ic(z0, cg)[0]) == pytest.approx(total, rel=1e-9, abs=1e-9)


def test_adp_ic_trains_on_ray_train_logs_to_mlflow_and_backmaps_onto_the_beads(stack, adp_shards, tmp_path):
    """`finegrain train` on the shipped smoke config: a real Ray Train worker group and MLflow run."""
    from finegrain.datasets.shards import read_frames
    from finegrain.trainables.persistence import load_backmapper_from_uri

    sets = [f"data.shards={adp_shards}", "data.fractions=[0.5, 0.5, 0.0]", "training.max_steps=30",
            "training.eval_every=15", "training.checkpoint_every=15", "training.log_every=5",
            "model.batch_size=16", "training.progress=false", f"training.work_dir={tmp_path}",
            "tracking.experiment=test-ic"]
    lines = train_with_cli("adp_ic_smoke.yaml", sets)
    run = Tracker(stack.mlflow_uri).client.get_run(lines["run id"])
    assert run.data.tags["family"] == "ic" and run.data.tags["mapping"] == "backbone6"
    assert {"train_nll", "val_nll"} <= set(run.data.metrics) and math.isfinite(run.data.metrics["val_nll"])
    bm = load_backmapper_from_uri(lines["model uri"], Tracker(stack.mlflow_uri))
    assert bm.family == "ic" and bm.frames_independent
    fr = read_frames(adp_shards)
    xyz = bm.backmap_xyz(fr["cg_xyz_nm"][:5], n_samples=2, seed=3)
    assert np.abs(bm.mapping.map(xyz) - fr["cg_xyz_nm"][:5]).max() < 1e-6  # beads atoms exactly on the beads
    np.testing.assert_array_equal(xyz, bm.backmap_xyz(fr["cg_xyz_nm"][:5], n_samples=2, seed=3))
    # X-H bonds constrained in the simulation are held at their constrained length
    traj = md.Trajectory(xyz[0].astype(np.float32), bm.topology)
    h_bonds = [(a.index, b.index) for a, b in bm.topology.bonds if "H" in (a.element.symbol, b.element.symbol)]
    ref = md.compute_distances(md.Trajectory(fr["aa_xyz_nm"][:1], bm.topology), h_bonds)
    np.testing.assert_allclose(md.compute_distances(traj, h_bonds), np.repeat(ref, 5, 0), atol=2e-5)
    assert np.all(np.isfinite(bm.log_likelihood(fr["aa_xyz_nm"][:4], fr["cg_xyz_nm"][:4])))


def test_chignolin_backbone_beads_build_every_side_chain_exactly():
    """The 30-bead chignolin backbone mapping: 108 free atoms hang off one bonded chain; the round trip of
    the system's own structure is exact and its internal coordinates are mdtraj's."""
    system = get_system("chignolin")
    top, mapping = system.md_topology, system.mapping("backbone")
    zm = build_zmatrix(top, mapping)
    x = np.asarray(system.positions_nm, dtype=np.float64)[None]
    assert zm.n_free == top.n_atoms - 30 and zm.active.all()
    ic = internal_coordinates(torch.as_tensor(x), zm)
    i, (j, k, l_) = zm.order, zm.refs.T
    ref = md.compute_dihedrals(md.Trajectory(x, top), np.c_[i, j, k, l_])
    np.testing.assert_allclose(np.angle(np.exp(1j * (ic[..., 2].numpy() - ref))), 0.0, atol=1e-4)
    back = place(ic, torch.as_tensor(mapping.map(x)), zm).numpy()
    assert np.abs(back - x).max() < 1e-9


def test_every_shipped_ic_config_validates_and_bf16_autocast_trains(adp):
    """The shipped ic configs (CPU and GPU recipes) load; a bf16-autocast step (the GPU recipes' precision,
    also available on CPU) gives a loss within bfloat16 resolution of the float32 one."""
    from pathlib import Path

    from finegrain.trainables.ic.train_config import ICTrainConfig

    configs = sorted((Path(__file__).resolve().parents[1] / "trainables" / "configs").glob("*_ic*.yaml"))
    assert len(configs) >= 6
    precisions = {ICTrainConfig.from_yaml(p).training.precision for p in configs}
    assert precisions == {"32", "bf16-mixed"}
    top, xyz = adp
    mapping = get_system("adp").mapping("backbone6")
    torch.manual_seed(0)
    m = ConditionalIC(ICConfig.smoke(), build_zmatrix(top, mapping))
    aa, cg = torch.as_tensor(xyz, dtype=torch.float32), torch.as_tensor(mapping.map(xyz), dtype=torch.float32)
    m.fit_statistics(aa, cg)
    full = float(m.loss(aa, cg))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = m.loss(aa, cg)
    half.backward()
    assert abs(float(half) - full) < 0.05 * abs(full) + 1.0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())
