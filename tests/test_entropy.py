"""Mapping-entropy estimators (platform/metrics/entropy.py) and ``finegrain entropy compare``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from finegrain.platform.science.metrics import entropy as ent

N = 6


def spring_precision(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = np.zeros((N, N))
    for i, j in [(i, i + 1) for i in range(N - 1)] + [(i, i + 2) for i in range(N - 2)]:
        s = rng.uniform(50, 300)
        k[[i, j], [i, j]] += s
        k[i, j] -= s
        k[j, i] -= s
    return k


def pair_map() -> np.ndarray:
    c = np.zeros((3, N))
    for b in range(3):
        c[b, 2 * b:2 * b + 2] = 0.5
    return c


def slice_map() -> np.ndarray:
    c = np.zeros((2, N))
    c[0, 1] = c[1, 4] = 1.0
    return c


def test_harmonic_conditional_entropy_equals_the_coarea_formula():
    """Two independent routes: fibre precision N^T K N vs H(X) - H(Y) + 1/2 ln det(A A^T) of a tethered ensemble."""
    k = spring_precision()
    for c in (pair_map(), slice_map()):
        asg = np.argmax(c, axis=0) if (c > 0).sum(0).min() > 0 else np.array([0, 0, 0, 1, 1, 1])
        exact = ent.harmonic_ensemble_entropies(k, c, asg)
        assert exact["dim"] == ent.fibre_dimension(c) == 3 * (N - c.shape[0])
        for tether in (0.3, 5.0):  # a tether on the CG centroid only: p(x | y) unchanged
            cov = ent._tethered_cov(k, c, tether)
            coarea = ent.gaussian_conditional_entropy(np.kron(cov, np.eye(3)), ent.kron3(c))
            assert coarea == pytest.approx(exact["h_cond"], abs=1e-8)
        assert exact["giulini"] == exact["dim"] / 4
        assert exact["smap"] > 0


def test_sample_estimators_converge_to_the_exact_gaussian_answers():
    k, c = spring_precision(), pair_map()
    asg = np.argmax(c, axis=0)
    exact = ent.harmonic_ensemble_entropies(k, c, asg)
    x, y = ent.sample_harmonic_ensemble(k, c, 40_000, seed=3)
    assert np.allclose(np.einsum("bi,fic->fbc", c, x), y)
    assert ent.gaussian_bound_from_samples(x, y, c) == pytest.approx(exact["h_cond"], abs=0.05)
    assert ent.anchor_msd(x, y, c, asg) == pytest.approx(exact["msd"], rel=0.02)


def test_giulini_estimator_on_exact_fibres_is_d_over_4():
    """Frames drawn from p(x | y) for a few fixed y: (beta^2/2) Var(U | y) = d/4 exactly (chi^2_d / 2)."""
    k, c = spring_precision(), pair_map()
    null, pinv = ent._null(c), np.linalg.pinv(c)
    prec = null.T @ k @ null
    chol = np.linalg.cholesky(np.linalg.inv(prec))
    rng = np.random.default_rng(0)
    xs, labels = [], []
    for r in range(4):
        y = rng.normal(scale=0.2, size=(3, 3))
        base = pinv @ y
        mean_eta = -np.linalg.solve(prec, null.T @ k @ base)  # minimiser of the energy on the fibre
        eta = mean_eta[None] + np.einsum("ab,fbc->fac", chol, rng.standard_normal((20_000, null.shape[1], 3)))
        xs.append(base[None] + np.einsum("ia,fac->fic", null, eta))
        labels.append(np.full(20_000, r))
    x, labels = np.concatenate(xs), np.concatenate(labels)
    kt = ent.KB_KJ_MOL_K * 310.0
    u = 0.5 * np.einsum("fic,ij,fjc->f", x, k, x) * kt
    got = ent.giulini_smap(u, temperature_k=310.0, labels=labels)
    d = ent.fibre_dimension(c)
    assert got["n_clusters"] == 4
    assert got["smap"] == pytest.approx(d / 4, rel=0.03)  # Var(chi^2_9 / 2) = 4.5, 80 000 frames


def test_smap_ranks_nested_mappings_and_flow_estimates_are_consistent():
    k = spring_precision()
    fine, coarse = pair_map(), np.zeros((1, N)) + 1 / N
    s_fine = ent.harmonic_ensemble_entropies(k, fine, np.argmax(fine, 0))["smap"]
    s_coarse = ent.harmonic_ensemble_entropies(k, coarse, np.zeros(N, int))["smap"]
    assert 0 < s_fine < s_coarse
    est = ent.flow_estimates(np.array([1.0, 2.0, 3.0]), msd=0.05, dim=9, n_atoms=N)
    assert est["h_cond"] == 2.0 and est["h_cond_se"] == pytest.approx(1 / math.sqrt(3))
    assert est["smap"] == pytest.approx(4.5 * math.log(2 * math.pi * math.e * 0.05 / 9) - 2.0)
    assert est["smap_per_dof"] == pytest.approx(est["smap"] / 18)


def test_argument_errors_name_the_argument():
    with pytest.raises(ValueError, match="mapping_matrix"):
        ent.fibre_dimension(np.zeros(3))
    with pytest.raises(ValueError, match="cg_xyz"):
        ent.anchor_msd(np.zeros((2, N, 3)), np.zeros((2, 2, 3)), pair_map(), np.zeros(N, int))
    with pytest.raises(ValueError, match="energy_kj_mol"):
        ent.giulini_smap(np.array([1.0]), np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="precision"):
        ent.harmonic_ensemble_entropies(np.eye(3), pair_map(), np.zeros(N, int))
    with pytest.raises(ValueError, match="assignment"):
        ent.fibre_anchor(pair_map(), np.zeros(3, int))
    with pytest.raises(ValueError, match="nll"):
        ent.flow_estimates(np.array([np.nan]), 0.1, 3, N)


# ----------------------------------------------------------------------------- checks (issue 14, item 5)
def test_nested_mappings_obey_the_chain_rule_not_naive_monotonicity():
    """Exact Gaussian answers: H(X|Y_c) = H(X|Y_f) + H(Y_f|Y_c) + J; H(X|Y) rises as the map gets finer here."""
    from finegrain.platform.science.metrics import entropy_checks as ec

    k = spring_precision()
    sel_fine = np.zeros((3, N))
    sel_fine[0, 1] = sel_fine[1, 3] = sel_fine[2, 4] = 1.0
    for fine, g in ((pair_map(), np.array([[0.5, 0.5, 0.0]])), (sel_fine, np.array([[1.0, 0.0, 0.0]]))):
        coarse = g @ fine
        assert np.allclose(ec.nesting_matrix(coarse, fine), g) and ec.nesting_matrix(fine, coarse) is None
        h_f = ent.harmonic_ensemble_entropies(k, fine, np.argmax(np.abs(fine), 0))["h_cond"]
        h_c = ent.harmonic_ensemble_entropies(k, coarse, np.zeros(N, int))["h_cond"]
        cov_y = fine @ ent._tethered_cov(k, coarse) @ fine.T  # tether on a function of y_c: p(y_f | y_c) exact
        h_link = ent.gaussian_conditional_entropy(np.kron(cov_y, np.eye(3)), ent.kron3(g))
        jac = ec.fibre_jacobian(g, fine)
        assert h_c == pytest.approx(h_f + h_link + jac, abs=1e-8)
        assert h_f > h_c  # differential entropies in nm: the finer mapping has the LARGER H(X|Y)
        x, _ = ent.sample_harmonic_ensemble(k, coarse, 40_000, seed=5)
        assert ec.chain_rule_link(x, coarse, fine)["link"] == pytest.approx(h_link + jac, abs=0.02)
    assert ec.fibre_jacobian(np.array([[1.0, 0.0, 0.0]]), sel_fine) == 0.0
    assert ec.fibre_jacobian(np.array([[0.5, 0.5, 0.0]]), pair_map()) == pytest.approx(1.5 * math.log(4))


def test_nested_flags_on_constructed_numbers():
    from finegrain.platform.science.metrics.entropy_checks import nested_flags

    h = {"ca": -20.0, "backbone6": -10.0, "heavy": -5.0}
    hw = {"ca": 0.3, "backbone6": 0.4, "heavy": float("nan")}
    links = {("ca", "backbone6"): -12.0, ("backbone6", "heavy"): -4.0}
    got = {(c["coarse"], c["fine"]): c for c in nested_flags(h, hw, links)}
    ok, bad = got[("ca", "backbone6")], got[("backbone6", "heavy")]
    assert ok["excess"] == pytest.approx(2.0) and ok["margin"] == pytest.approx(0.5) and ok["violated"]
    assert bad["excess"] == pytest.approx(-1.0) and not bad["violated"]
    assert ok["naive_order_holds"] is False  # -10 > -20: never a flag by itself
    h2 = {**h, "ca": -21.6}  # excess 0.4 < margin 0.5: within the CI, not flagged
    assert not nested_flags(h2, hw, links)[1]["violated"] and nested_flags(h2, hw, links)[1]["coarse"] == "ca"


def _smooth_plus_noise(n_frames: int, sigma: float, seed: int = 0):
    """Two beads at distance d ~ U(0.3, 0.7) nm; U = 30 sin(3 pi d) + N(0, sigma^2) kJ/mol."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.3, 0.7, n_frames)
    y = np.zeros((n_frames, 2, 3))
    y[:, 1, 0] = d
    return 30.0 * np.sin(3 * np.pi * d) + rng.normal(0, sigma, n_frames), y


def test_k_doubling_converges_to_the_known_fibre_variance():
    """Var(U | R) = sigma^2 exactly, so S_map = beta^2 sigma^2 / 2; 20 clusters leak the CG part of U."""
    from finegrain.platform.science.metrics.entropy_checks import giulini_converged

    sigma, t = 2.5, 300.0
    truth = 0.5 * (sigma / (ent.KB_KJ_MOL_K * t)) ** 2
    u, y = _smooth_plus_noise(20_000, sigma)
    got = giulini_converged(u, y, t, k_start=20, tol=0.05)
    assert got["converged"] and got["rel_change"] <= 0.05
    assert got["rel_change"] == pytest.approx(abs(got["smap_2k"] - got["smap_k"]) / got["smap_2k"])
    assert got["smap"] == got["smap_2k"] and got["k2"] == 2 * got["k"] > 20
    assert got["smap"] == pytest.approx(truth, rel=0.06)
    assert got["history"][0][0] == 20 and got["history"][0][1] > 1.2 * truth
    few = giulini_converged(*_smooth_plus_noise(300, sigma, seed=1), t, k_start=20)  # 30 clusters at most
    assert not few["converged"] and few["k2"] <= 30 and few["smap"] > truth
    one = giulini_converged(u, y[:, :1], t)  # one bead: no invariant CG feature, one cluster is exact
    assert one["converged"] and one["clusters"] == 1 and one["rel_change"] == 0.0


def test_block_bootstrap_ci_covers_the_mean_and_widens_with_autocorrelation():
    from finegrain.platform.science.metrics.entropy_checks import block_bootstrap_ci

    rng = np.random.default_rng(0)
    white = rng.normal(size=2000)
    m, lo, hi = block_bootstrap_ci(white, seed=1)
    assert lo < 0 < hi and m == pytest.approx(white.mean())
    assert hi - lo == pytest.approx(2 * 1.96 / math.sqrt(2000), rel=0.35)
    ar = np.zeros(2000)
    for i in range(1, 2000):  # AR(1), rho = 0.95: effective sample ~ 2000 / 39
        ar[i] = 0.95 * ar[i - 1] + rng.normal() * math.sqrt(1 - 0.95 ** 2)
    _, lo2, hi2 = block_bootstrap_ci(ar, seed=1)
    assert hi2 - lo2 > 3 * (hi - lo)


def _write_shards(folder, xyz, meta_constraints="absent"):
    """A real shard folder (one trajectory) from xyz [F, N, 3]; optionally a simulate metadata.json beside its source."""
    import json

    import pyarrow.parquet as pq

    from finegrain.datasets.shards import Manifest, ShardInfo, frames_table, sha256_file

    (folder / "shards").mkdir(parents=True)
    (folder / "sim").mkdir()
    if meta_constraints != "absent":
        (folder / "sim" / "metadata.json").write_text(json.dumps({"constraints": meta_constraints}))
    f, n = xyz.shape[:2]
    table = frames_table("toy", "t0", np.arange(f), np.arange(f, dtype=float), xyz, xyz.mean(1, keepdims=True))
    pq.write_table(table, folder / "shards" / "t0.parquet")
    info = ShardInfo("shards/t0.parquet", "t0", 0, f, sha256_file(folder / "shards" / "t0.parquet"))
    Manifest("toy", {"name": "com", "matrix": [[1 / n] * n]}, n, 1, ["C1", "H1", "O1", "H2"][:n], ["MOL"] * n, f, 1,
             {"t0": f}, [info], {"t0": str(folder / "sim" / "t0.dcd")}, topology_pdb="none.pdb").save(folder)
    return folder


def test_constrained_data_are_refused_from_metadata_or_from_the_data(tmp_path):
    from finegrain.platform.apps.entropy_compare import check_unconstrained, declared_constraints
    from finegrain.platform.science.metrics.entropy_checks import fixed_length_xh_bonds
    from finegrain.platform.science.errors import InputError

    rng = np.random.default_rng(0)
    base = np.array([[0.0, 0, 0], [0.109, 0, 0], [0.0, 0.14, 0], [0.0, 0.14, 0.096]])  # C, H1, O, H2 (nm)
    free = base + rng.normal(0, 0.004, (40, 4, 3))
    fixed = free.copy()
    for h, x in ((1, 0), (3, 2)):  # rigid X-H: the H at the bond length r0 along a fluctuating direction
        v = fixed[:, h] - fixed[:, x]
        fixed[:, h] = fixed[:, x] + v / np.linalg.norm(v, axis=1, keepdims=True) * np.linalg.norm(base[h] - base[x])
    is_h = np.array([False, True, False, True])
    pairs, std = fixed_length_xh_bonds(fixed, is_h)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (2, 3)] and std.max() < 1e-5
    assert len(fixed_length_xh_bonds(free, is_h)[0]) == 0

    check_unconstrained(_write_shards(tmp_path / "free", free, None))  # declared free, data free: no error
    for name, xyz, meta in (("meta", free, "HBonds"), ("data", fixed, "absent"), ("both", fixed, None)):
        with pytest.raises(InputError, match="constrain") as err:
            check_unconstrained(_write_shards(tmp_path / name, xyz, meta))
        msg = str(err.value)
        assert "\n" not in msg and "--no-constraints" in msg and "1 fs" in msg
        assert ("HBonds" in msg) == (meta == "HBonds")

    from finegrain.datasets.shards import Manifest

    man = Manifest.load(tmp_path / "free")  # declared free by its simulation's metadata
    man.constraints = [[0, 1, 0.109], [2, 3, 0.096]]  # the manifest's record wins over the metadata
    assert declared_constraints(man) == ("2 constrained distances, e.g. atoms 0-1 (C1-H1) at 0.1090 nm", "manifest")
    man.constraints = []
    assert declared_constraints(man) == ("", "manifest")


def test_heldout_split_never_returns_training_trajectories(tmp_path):
    from finegrain.platform.apps.entropy_compare import heldout_split
    from finegrain.datasets.shards import Manifest
    from finegrain.platform.science.errors import InputError

    def man(n):
        return Manifest("toy", {}, 1, 1, ["C"], ["M"], n, n, {f"t{i}": 1 for i in range(n)}, [])

    with pytest.raises(InputError, match="no held-out trajectory"):
        heldout_split(man(2), (0.8, 0.1, 0.1), 0)
    ids, name, train = heldout_split(man(2), (0.5, 0.5, 0.0), 0)
    assert name == "validation" and len(ids) == 1 and not set(ids) & set(train)
    for seed in range(5):
        ids, name, train = heldout_split(man(5), (0.6, 0.2, 0.2), seed)
        assert name == "test" and ids and not set(ids) & set(train)


# ----------------------------------------------------------------------------- the comparison command
@pytest.fixture(scope="module")
def adp_free_shards(stack, tmp_path_factory):
    """Two short ADP replicas with every bond free (1 fs; what mapping entropies need), ingested with backbone6."""
    from finegrain.datasets.ingest import ingest, sources_from_simulation
    from finegrain.datasets.simulate import SimulationConfig, simulate
    from finegrain.datasets.systems import get_system

    base = tmp_path_factory.mktemp("adp-free")
    sim = simulate(SimulationConfig("adp", ns=0.05, replicas=2, seed=17, equilibration_ps=2.0, timestep_fs=1.0,
                                    constraints=None), base / "sim")
    top, system, sources = sources_from_simulation(sim)
    ingest(top, sources, get_system(system).mapping("backbone6"), base / "shards", system=system, chunk_frames=20)
    return base / "shards"


@pytest.mark.slow
def test_entropy_compare_refuses_constrained_shards(adp_shards, tmp_path):
    from typer.testing import CliRunner

    from finegrain.platform.apps.cli import app

    args = ["entropy", "compare", "--shards", str(adp_shards), "--mappings", "backbone6,ca", "--budget", "2",
            "--experiment", "test-entropy-refused", "--set", "data.fractions=[0.5, 0.5, 0.0]"]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 2, res.output
    err = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "constrain" in err[0] and "--no-constraints" in err[0], res.output
    assert "HBonds" in err[0] or "constrained distances, e.g. atoms" in err[0]  # metadata's name, or manifest rows


@pytest.mark.slow
def test_entropy_compare_cli_tiny_budget(stack, adp_free_shards, tmp_path):
    import mlflow
    from typer.testing import CliRunner

    from finegrain.platform.apps.cli import app

    adp_shards = adp_free_shards
    args = ["entropy", "compare", "--shards", str(adp_shards), "--mappings", "backbone6,ca", "--budget", "6",
            "--eval-frames", "6", "--probes", "1", "--clusters", "3", "--experiment", "test-entropy",
            "--set", "model.preset=smoke", "--set", "training.num_workers=0", "--set", "training.progress=false",
            "--set", "training.val_nll_frames=2", "--set", "training.val_steps=2",
            "--set", "data.fractions=[0.5, 0.5, 0.0]", "--set", f"training.work_dir={tmp_path / 'runs'}"]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "S_map flow" in res.output and "backbone6" in res.output and "ca" in res.output
    assert "k-doubling" in res.output and "nested ca within backbone6" in res.output
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("test-entropy")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "entropy-compare"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["entropy.nested_check"] in ("ok", "violated")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["n_beads"] for r in children) == ["1", "6"]
    for r in children:
        for key in ("smap_flow", "smap_gauss", "smap_giulini", "h_cond_flow_per_dof", "smap_flow_per_dof",
                    "h_cond_flow_ci_low", "h_cond_flow_ci_high", "giulini_rel_change", "giulini_converged"):
            assert math.isfinite(r.data.metrics[key]), key
        m = r.data.metrics
        assert m["h_cond_flow_ci_low"] <= m["h_cond_flow"] <= m["h_cond_flow_ci_high"]
        assert r.data.tags["entropy.heldout_split"] == "validation"
        assert r.data.tags["entropy.under_trained"] in ("true", "false")
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"mapping_entropy.png", "mapping_entropy.json"} <= arts
    again = CliRunner().invoke(app, args, catch_exceptions=False)  # same data and settings: flows reused
    assert again.exit_code == 0 and again.output.count("reusing") == 2, again.output
