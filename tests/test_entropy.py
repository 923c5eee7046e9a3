"""Mapping-entropy estimators (platform/metrics/entropy.py) and ``finegrain entropy compare``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from finegrain.platform.metrics import entropy as ent

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


# ----------------------------------------------------------------------------- the comparison command
@pytest.mark.slow
def test_entropy_compare_cli_tiny_budget(stack, adp_shards, tmp_path):
    import mlflow
    from typer.testing import CliRunner

    from finegrain.platform.cli import app

    args = ["entropy", "compare", "--shards", str(adp_shards), "--mappings", "backbone6,ca", "--budget", "6",
            "--eval-frames", "6", "--probes", "1", "--clusters", "3", "--experiment", "test-entropy",
            "--set", "model.preset=smoke", "--set", "training.num_workers=0", "--set", "training.progress=false",
            "--set", "training.val_nll_frames=2", "--set", "training.val_steps=2",
            "--set", "data.fractions=[0.5, 0.5, 0.0]", "--set", f"training.work_dir={tmp_path / 'runs'}"]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "S_map flow" in res.output and "backbone6" in res.output and "ca" in res.output
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("test-entropy")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "entropy-compare"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["n_beads"] for r in children) == ["1", "6"]
    for r in children:
        for key in ("smap_flow", "smap_gauss", "smap_giulini", "h_cond_flow_per_dof", "smap_flow_per_dof"):
            assert math.isfinite(r.data.metrics[key]), key
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"mapping_entropy.png", "mapping_entropy.json"} <= arts
    again = CliRunner().invoke(app, args, catch_exceptions=False)  # same data and settings: flows reused
    assert again.exit_code == 0 and again.output.count("reusing") == 2, again.output
