"""Evaluation metrics against independent references (scipy, deeptime's analytic MSM, mdtraj, hand formulas)."""

import io

import mdtraj as md
import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats

from finegrain.tests.helpers import replica_frames
from finegrain.datasets.systems import get_system
from finegrain.platform.science.metrics import (
    cg_rmsd,
    clash_fraction,
    diversity_rmsd,
    energy_metrics,
    evaluate_frames,
    frame_velocities,
    histogram_js,
    js_divergence,
    kl_divergence,
    ramachandran,
    velocity_metrics,
    wasserstein_1,
)
from finegrain.platform.science.metrics.kinetics import compare_msms, estimate_msm, kinetics_from_features, left_eigenvectors

#: evaluate_frames settings of the shipped systems (feature sets, lag, states) from the systems YAML
ADP = get_system("adp").evaluation_kwargs()
CLN = get_system("chignolin").evaluation_kwargs()


@pytest.fixture(scope="module")
def adp_ref(tmp_path_factory):
    """200 frames (1 ps apart) of ADP at 300 K, with OpenMM energies."""
    ref, traj, out = replica_frames(tmp_path_factory, "adp-metrics", ns=0.2, seed=11)
    top = ref.md_topology
    obs = np.load(out / "replica_000.npz")
    frames = {"aa_xyz_nm": traj.xyz.astype(np.float64), "energy_kj_mol": obs["potential_kj_mol"],
              "time_ps": obs["time_ps"], "traj_id": np.array(["r0"] * traj.n_frames)}
    return frames, top, ref.mapping("backbone6")


# -- divergences ---------------------------------------------------------------
def test_js_identical_zero_disjoint_ln2_and_equals_scipy():
    rng = np.random.default_rng(0)
    p = rng.random(50)
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence(3.0 * p, p) == pytest.approx(0.0, abs=1e-12)  # normalised
    a, b = np.r_[p, np.zeros(50)], np.r_[np.zeros(50), p]
    assert js_divergence(a, b) == pytest.approx(np.log(2.0), abs=1e-12)
    q = rng.random(50)
    # scipy's jensenshannon is the square root of the divergence (natural log)
    assert js_divergence(p, q) == pytest.approx(scipy.spatial.distance.jensenshannon(p, q) ** 2, rel=1e-9)
    edges = np.linspace(0.0, 1.0, 11)
    assert histogram_js(rng.random(500) * 0.5, 0.5 + rng.random(500) * 0.5, edges) == pytest.approx(np.log(2.0))
    with pytest.raises(ValueError, match="q"):
        js_divergence(p, q[:10])


def test_kl_with_pseudo_count_equals_scipy_entropy():
    rng = np.random.default_rng(1)
    p, q = rng.integers(0, 20, 40).astype(float), rng.integers(0, 20, 40).astype(float)
    q[:5] = 0  # empty bins stay finite thanks to the pseudo-count
    assert kl_divergence(p, q, 0.5) == pytest.approx(scipy.stats.entropy(p + 0.5, q + 0.5), rel=1e-10)
    assert kl_divergence(p, p) == pytest.approx(0.0, abs=1e-14)
    assert np.isinf(kl_divergence(np.ones(3), np.array([1.0, 0.0, 1.0]), pseudo_count=0.0))


def test_wasserstein_1_equals_scipy_and_shift():
    rng = np.random.default_rng(2)
    a, b = rng.normal(-90, 10, 300), rng.gamma(2.0, 8.0, 217) - 100
    assert wasserstein_1(a, b) == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=1e-10)
    m = energy_metrics(a, a + 10.0)  # a shifted distribution: W1 = shift, tail excess = shift
    assert m["w1_energy_kj_mol"] == pytest.approx(10.0, rel=1e-10)
    assert m["energy_p99_excess_kj_mol"] == pytest.approx(10.0, rel=1e-10)
    with pytest.raises(ValueError, match="bm_kj_mol"):
        energy_metrics(a, np.zeros((2, 2)))


# -- kinetics --------------------------------------------------------------------
def test_msm_recovers_double_well_timescales():
    from deeptime.data import double_well_discrete

    dw = double_well_discrete()
    exact = dw.analytic_msm.timescales(3)  # in simulation steps (the exact transition matrix, lag 1 step)
    dtraj = dw.dtraj  # 100k frames, one every 10 steps
    for lag in (1, 3):
        its = compare_msms([dtraj], [dtraj], lag, 100, dt=10.0)
        np.testing.assert_allclose(its["its_ref"], exact, rtol=0.10)
        np.testing.assert_allclose(its["its_ratio"], 1.0, rtol=1e-12)
        np.testing.assert_allclose(its["evec_cos"], 1.0, rtol=1e-12)
    # the slowest process is the same one as in the exact model (cosine of left eigenvectors)
    msm = estimate_msm([dtraj], 1, 100)
    est = left_eigenvectors(msm, 1, 100)[1]
    exact_vec = np.real(dw.analytic_msm.eigenvectors_left(2)[1])
    cos = abs(est @ exact_vec) / (np.linalg.norm(est) * np.linalg.norm(exact_vec))
    assert cos > 0.99
    # whole pipeline from continuous features: k-means on the reference, shared states
    rng = np.random.default_rng(3)
    x = dtraj + rng.uniform(-0.4, 0.4, dtraj.size)
    kin = kinetics_from_features([x[:, None]], [x[:, None]], 1, 50, dt=10.0)
    assert kin["centres"].shape == (50, 1)
    np.testing.assert_allclose(kin["its_ref"][0], exact[0], rtol=0.10)
    # a faster copy (every 2nd frame is dropped, time step unchanged) has half the timescales
    fast = kinetics_from_features([x[:, None]], [x[::2, None]], 2, 50, dt=10.0, lag_bm=1, dt_bm=10.0)
    assert fast["its_ratio"][0] == pytest.approx(0.5, rel=0.1)


# -- geometry --------------------------------------------------------------------
def _hand_dihedral(p0, p1, p2, p3):
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1n = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - np.sum(b0 * b1n, -1, keepdims=True) * b1n
    w = b2 - np.sum(b2 * b1n, -1, keepdims=True) * b1n
    return np.arctan2(np.sum(np.cross(b1n, v) * w, -1), np.sum(v * w, -1))


def test_ramachandran_equals_mdtraj_and_hand_formula(adp_ref):
    frames, top, _ = adp_ref
    phi, psi = ramachandran(frames["aa_xyz_nm"], top)
    traj = md.Trajectory(frames["aa_xyz_nm"].astype(np.float32), top)
    np.testing.assert_allclose(phi, md.compute_phi(traj)[1], atol=1e-6)
    np.testing.assert_allclose(psi, md.compute_psi(traj)[1], atol=1e-6)
    idx = {str(a): a.index for a in top.atoms}
    x = frames["aa_xyz_nm"]
    hand_phi = _hand_dihedral(*(x[:, idx[n]] for n in ("ACE1-C", "ALA2-N", "ALA2-CA", "ALA2-C")))
    hand_psi = _hand_dihedral(*(x[:, idx[n]] for n in ("ALA2-N", "ALA2-CA", "ALA2-C", "NME3-N")))
    np.testing.assert_allclose(phi[:, 0], hand_phi, atol=1e-5)
    np.testing.assert_allclose(psi[:, 0], hand_psi, atol=1e-5)


def test_clash_fraction_on_constructed_frames(adp_ref):
    frames, top, _ = adp_ref
    x = frames["aa_xyz_nm"][:4].copy()
    assert clash_fraction(x, top) == 0.0  # equilibrium frames have no clash
    idx = {str(a): a.index for a in top.atoms}
    i, j = idx["ACE1-CH3"], idx["NME3-C"]  # heavy atoms far apart in the bond graph
    x[:, j] = x[:, i] + np.array([0.05, 0.0, 0.0])
    assert clash_fraction(x, top) == 1.0
    y = frames["aa_xyz_nm"][:4].copy()
    y[2, j] = y[2, i] + np.array([0.0, 0.05, 0.0])
    assert clash_fraction(y, top) == 0.25
    z = frames["aa_xyz_nm"][:1].copy()  # a bonded pair (C=O) pushed together is not a non-bonded clash
    z[0, idx["ACE1-O"]] = z[0, idx["ACE1-C"]] + np.array([0.05, 0.0, 0.0])
    assert clash_fraction(z, top) == 0.0


def test_cg_rmsd_exact_mapping_zero_and_analytic_offset(adp_ref):
    frames, _, mapping = adp_ref
    x = frames["aa_xyz_nm"][:10]
    y = mapping.map(x)
    assert cg_rmsd(x, y, mapping) == pytest.approx(0.0, abs=1e-12)
    y2 = y.copy()
    y2[3, 1, 0] += 0.1  # one bead of one frame off by 0.1 nm
    assert cg_rmsd(x, y2, mapping) == pytest.approx(0.1 / np.sqrt(10 * mapping.n_beads), rel=1e-9)
    with pytest.raises(ValueError, match="cg_xyz"):
        cg_rmsd(x, y[:, :3], mapping)


def test_velocities_and_diversity_analytic():
    n = 5
    t = np.arange(6, dtype=float)
    x = np.zeros((12, n, 3))
    x[:6, :, 0] = 0.3 * t[:, None]          # trajectory a: 0.3 nm/ps along x
    x[6:, :, 1] = 5.0 + 0.3 * t[:, None]    # trajectory b starts far away: no difference across the boundary
    tid = np.array(["a"] * 6 + ["b"] * 6)
    v = frame_velocities(x, tid, np.r_[t, t])
    assert v.shape == (2 * 5 * n,)
    np.testing.assert_allclose(v, 0.3)
    m = velocity_metrics(v, 2.0 * v)
    assert m["velocity_scale_factor"] == pytest.approx(0.5)
    assert m["js_velocity_rescaled"] == pytest.approx(0.0, abs=1e-12) and m["js_velocity"] > 0.5
    base = np.random.default_rng(4).normal(size=(7, n, 3))
    samples = np.stack([base + np.array([0.1 * k, 0.0, 0.0]) for k in range(3)])
    assert diversity_rmsd(samples) == pytest.approx((0.1 + 0.2 + 0.1) / 3, rel=1e-12)
    with pytest.raises(ValueError, match="samples"):
        diversity_rmsd(samples[:1])


# -- the whole suite -----------------------------------------------------------------
def test_reference_against_itself_gives_zero_divergences(adp_ref):
    frames, top, mapping = adp_ref
    samples = np.stack([frames["aa_xyz_nm"], frames["aa_xyz_nm"] + 0.01])
    metrics, figures = evaluate_frames(frames, {**frames, "samples": samples}, top, mapping, **ADP)
    for name, value in metrics.items():
        if name.startswith(("js_", "kl_", "w1_", "mae_", "mean_bond", "energy_p99", "energy_mean", "rmsd_cg")):
            assert value == pytest.approx(0.0, abs=1e-12), name
    for i in (1, 2, 3):
        assert metrics[f"its_ratio_{i}"] == pytest.approx(1.0, abs=1e-12)
        assert metrics[f"evec_cos_{i}"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["msm_lag_ps"] == 5.0 and metrics["velocity_scale_factor"] == pytest.approx(1.0)
    assert metrics["clash_fraction"] == 0.0 and metrics["diversity_rmsd_nm"] == pytest.approx(0.01 * np.sqrt(3))
    assert {"js_bonds", "js_angles", "js_dihedrals", "kl_fes", "w1_energy_kj_mol", "js_velocity"} <= set(metrics)
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())
    assert {"bonds", "angles", "energy", "fes_ramachandran", "fes_omega", "implied_timescales", "velocities"} <= set(figures)
    for name, fig in figures.items():  # every figure renders on the Agg canvas
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=50)
        assert buf.tell() > 1000, name


def test_distorted_backmapping_is_detected(adp_ref):
    frames, top, mapping = adp_ref
    rng = np.random.default_rng(5)
    noisy = frames["aa_xyz_nm"] + rng.normal(0.0, 0.02, frames["aa_xyz_nm"].shape)
    metrics, _ = evaluate_frames(frames, {"aa_xyz_nm": noisy, "energy_kj_mol": frames["energy_kj_mol"] + 50.0},
                                 top, mapping, **ADP, make_figures=False)
    assert metrics["js_bonds"] > 0.3 and metrics["mae_bond_nm"] > 0.01
    assert metrics["rmsd_cg_nm"] == pytest.approx(0.02 * np.sqrt(3), rel=0.15)
    assert metrics["w1_energy_kj_mol"] == pytest.approx(50.0)
    # temporally incoherent: the reference frames in random order keep every static distribution ...
    shuffled = frames["aa_xyz_nm"][rng.permutation(len(noisy))]
    metrics, _ = evaluate_frames(frames, {"aa_xyz_nm": shuffled}, top, mapping, **ADP, make_figures=False)
    assert metrics["js_bonds"] == pytest.approx(0.0, abs=1e-12) and metrics["kl_fes"] == pytest.approx(0.0, abs=1e-12)
    # ... but not the frame-to-frame velocities
    assert metrics["js_velocity"] > 0.05 and metrics["velocity_scale_factor"] < 0.8
    assert metrics["its_ratio_1"] < 0.8  # and the slow process decorrelates within the lag


def test_chignolin_tica_branch_self_consistent():
    ref = get_system("chignolin")
    top, mapping = ref.md_topology, ref.mapping("ca")
    rng = np.random.default_rng(6)
    x = np.empty((300, ref.n_atoms, 3))
    noise = np.zeros((ref.n_atoms, 3))
    for t in range(300):  # an AR(1) walk around the template: slow, correlated motion
        noise = 0.9 * noise + 0.005 * rng.standard_normal(noise.shape)
        x[t] = ref.positions_nm + noise
    frames = {"aa_xyz_nm": x, "time_ps": np.arange(300.0)}
    metrics, figures = evaluate_frames(frames, dict(frames), top, mapping, **{**CLN, "lag_ps": 3.0})
    assert metrics["kl_fes"] == 0.0 and metrics["tica_lag_ps"] == 3.0
    assert metrics["its_ratio_1"] == pytest.approx(1.0) and metrics["evec_cos_1"] == pytest.approx(1.0)
    assert "fes_backbone" in figures and "implied_timescales" in figures
    with pytest.warns(UserWarning, match="MSM skipped"):  # the default 4 ns lag is longer than the data
        metrics, _ = evaluate_frames(frames, dict(frames), top, mapping, **CLN, make_figures=False)
    assert "its_ratio_1" not in metrics and "kl_fes" in metrics


def test_bad_arguments_are_named(adp_ref):
    frames, top, mapping = adp_ref
    with pytest.raises(ValueError, match="backmapped"):
        evaluate_frames(frames, {"aa_xyz_nm": frames["aa_xyz_nm"][:, :5]}, top, mapping, **ADP)
    with pytest.raises(ValueError, match="time_ps"):
        frame_velocities(frames["aa_xyz_nm"], time_ps=np.zeros(3))


# -- constrained bonds and FlowBack-comparable scores ---------------------------------
def _adp_constraints():
    """ADP's HBonds constraint record from OpenMM's System: (pairs [C, 2], r0 [C] nm)."""
    from finegrain.datasets.simulate import constraint_record

    rows = constraint_record(get_system("adp").create_system(constraints="HBonds"))
    return np.array([r[:2] for r in rows], dtype=int), np.array([r[2] for r in rows])


def _place_h(x, pairs, length_nm, top):
    """Copy of frames x [F, N, 3] with each constrained H moved along its X-H direction to ``length_nm`` [C]."""
    y = x.copy()
    is_h = np.array([a.element.symbol == "H" for a in top.atoms])
    for (i, j), r in zip(pairs, length_nm):
        heavy, h = (j, i) if is_h[i] else (i, j)
        u = x[:, h] - x[:, heavy]
        y[:, h] = x[:, heavy] + r * u / np.linalg.norm(u, axis=-1, keepdims=True)
    return y


def test_openmm_hbond_constraints_are_the_x_h_bonds(adp_ref):
    _, top, _ = adp_ref
    pairs, r0 = _adp_constraints()
    x_h = {tuple(sorted((a.index, b.index))) for a, b in top.bonds if (a.element.symbol == "H") != (b.element.symbol == "H")}
    assert len(x_h) == 12 and {tuple(p) for p in pairs.tolist()} == x_h
    assert np.all((r0 > 0.09) & (r0 < 0.11))  # amber X-H lengths (C-H 0.109, N-H 0.101 nm)


def test_constrained_bonds_never_enter_the_js_and_are_scored_by_mae(adp_ref):
    from finegrain.platform.science.metrics.structure import constrained_bond_mae, internal_js

    frames, top, mapping = adp_ref
    x = frames["aa_xyz_nm"]
    pairs, r0 = _adp_constraints()
    exact = _place_h(x, pairs, r0, top)
    assert constrained_bond_mae(exact, (pairs, r0)) == pytest.approx(0.0, abs=1e-12)
    assert constrained_bond_mae(x, (pairs, r0)) < 1e-5  # the simulation held them (float32 DCD)
    off = _place_h(x, pairs, r0 + 0.004, top)  # every X-H 0.004 nm too long
    assert constrained_bond_mae(off, (pairs, r0)) == pytest.approx(0.004, rel=1e-9)
    rows = np.c_[pairs, r0]  # the manifest's [i, j, r0] rows are accepted as well
    m, _ = evaluate_frames(frames, {"aa_xyz_nm": off}, top, mapping, **ADP, constraints=rows, make_figures=False)
    assert m["mae_constrained_bond_nm"] == pytest.approx(0.004, rel=1e-9)
    assert m["mae_constrained_bond_nm_ref"] < 1e-5
    # moving only the H atoms leaves the (heavy-atom) bond JS exactly at zero; no X-H class is reported
    assert m["js_bonds"] == pytest.approx(0.0, abs=1e-12)
    assert not any(k.startswith("js_bond_") and "H" in k for k in m)
    assert {"js_bond_C-C", "js_bond_C-N", "js_bond_C-O"} <= set(m)
    # without the record the same X-H shift dominates the JS (delta functions one bin apart and more)
    m0, _ = evaluate_frames(frames, {"aa_xyz_nm": off}, top, mapping, **ADP, make_figures=False)
    assert m0["js_bonds"] > 0.3 and "mae_constrained_bond_nm" not in m0 and m0["js_bond_C-H"] > 0.5
    # the JS excluding constraints is the JS over the remaining bonds only (mdtraj topology without H)
    res = internal_js(x[:100], off[100:], top, "bonds", exclude=pairs)
    heavy = top.select("not element H")
    sub = internal_js(x[:100, heavy], off[100:, heavy], top.subset(heavy), "bonds")
    assert res["js"] == pytest.approx(sub["js"], rel=1e-12) and set(res["per_class"]) == set(sub["per_class"])
    with pytest.raises(ValueError, match="constraints"):
        evaluate_frames(frames, frames, top, mapping, **ADP, constraints=np.c_[pairs, r0][:, :2], make_figures=False)
    with pytest.raises(ValueError, match="constraints"):
        evaluate_frames(frames, frames, top, mapping, **ADP, constraints=(pairs + 100, r0), make_figures=False)


def test_heavy_bond_js_of_noisy_copy_far_above_the_reference_floor(adp_ref):
    """Reference + 0.005 nm Gaussian noise vs the floor of two halves of the reference."""
    frames, top, _ = adp_ref
    from finegrain.platform.science.metrics.structure import BOND_EDGES_NM, internal_js, term_classes

    x = frames["aa_xyz_nm"]
    pairs, _ = _adp_constraints()
    floor = internal_js(x[:100], x[100:], top, "bonds", exclude=pairs)["js"]
    noisy = x + np.random.default_rng(8).normal(0.0, 0.005, x.shape)
    js = internal_js(x, noisy, top, "bonds", exclude=pairs)["js"]
    assert js > 5.0 * floor and floor < 0.03
    # independent: scipy's Jensen-Shannon distance^2 per heavy-bond class, weighted by bond count
    bonds = np.array(sorted(tuple(sorted((a.index, b.index))) for a, b in top.bonds
                            if a.element.symbol != "H" and b.element.symbol != "H"))
    classes = np.array(term_classes(top, bonds))
    lo, hi = BOND_EDGES_NM[0], BOND_EDGES_NM[-1]

    def hist(xyz, cols):
        d = np.linalg.norm(xyz[:, bonds[cols, 0]] - xyz[:, bonds[cols, 1]], axis=-1).ravel()
        return np.histogram(np.clip(d, lo, np.nextafter(hi, lo)), BOND_EDGES_NM)[0].astype(float)

    expected = sum(scipy.spatial.distance.jensenshannon(hist(x, c), hist(noisy, c)) ** 2 * c.sum()
                   for c in (classes == k for k in set(classes))) / len(bonds)
    assert js == pytest.approx(expected, rel=1e-6)


def test_bond_score_identity_and_stretched_fraction(adp_ref):
    from finegrain.platform.science.metrics.structure import bond_score

    frames, top, _ = adp_ref
    x = frames["aa_xyz_nm"]
    assert bond_score(x, x, top) == pytest.approx(1.0, abs=1e-3)
    stretched = x.copy()
    stretched[:50] *= 1.5  # a quarter of the frames with every bond 50 % too long
    bonds = np.array([[a.index, b.index] for a, b in top.bonds])
    d = lambda y: np.linalg.norm(y[:, bonds[:, 0]] - y[:, bonds[:, 1]], axis=-1)  # noqa: E731
    r = d(x).mean(axis=0)
    expected = np.mean(np.abs(d(stretched) - r) < 0.1 * r)
    assert bond_score(x, stretched, top) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.75 * bond_score(x, x, top), abs=1e-3)
    assert bond_score(x, x * 1.2, top) == 0.0  # every bond 20 % long


def test_clash_score_counts_residues_in_heavy_contacts(adp_ref):
    from finegrain.platform.science.metrics.structure import clash_score

    frames, top, _ = adp_ref
    x = frames["aa_xyz_nm"][:20].copy()
    assert clash_score(x, top) == 0.0
    idx = {str(a): a.index for a in top.atoms}
    i, j = idx["ACE1-CH3"], idx["NME3-C"]
    x[:5, i] = x[:5, j] + np.array([0.05, 0.0, 0.0])  # 5 of 20 frames: ACE and NME in contact, ALA not
    assert clash_score(x, top) == pytest.approx(100.0 * (5 * 2) / (20 * 3))
    y = frames["aa_xyz_nm"][:20].copy()
    y[:, idx["ACE1-H1"]] = y[:, idx["NME3-C"]]  # a hydrogen on a heavy atom is not a heavy-atom contact
    assert clash_score(y, top) == 0.0


def test_diversity_score_against_mdtraj_rmsd(adp_ref):
    from finegrain.platform.science.metrics.structure import diversity_score

    frames, top, _ = adp_ref
    x = frames["aa_xyz_nm"][:15]
    rng = np.random.default_rng(9)
    s = np.stack([x + rng.normal(0.0, 0.01, x.shape) for _ in range(3)])

    def rmsd(a, b):  # mdtraj superposes, frame by frame
        return np.array([md.rmsd(md.Trajectory(a[f:f + 1], top), md.Trajectory(b[f:f + 1], top))[0]
                         for f in range(len(a))])

    between = np.mean([rmsd(s[a], s[b]).mean() for a, b in ((0, 1), (0, 2), (1, 2))])
    to_ref = np.mean([rmsd(s[k], x).mean() for k in range(3)])
    assert diversity_score(s, x) == pytest.approx(1.0 - between / to_ref, rel=1e-4)
    assert diversity_score(s, x) == pytest.approx(1.0 - np.sqrt(2.0), abs=0.05)  # independent errors
    assert diversity_score(np.stack([s[0], s[0]]), x) == pytest.approx(1.0)  # identical samples
    m, _ = evaluate_frames({"aa_xyz_nm": x}, {"aa_xyz_nm": s[0], "samples": s}, top, adp_ref[2], **ADP,
                           make_figures=False)
    assert m["diversity_score"] == pytest.approx(diversity_score(s, x)) and "diversity_rmsd_nm" in m
    with pytest.raises(ValueError, match="ref_xyz"):
        diversity_score(s, x[:3])
