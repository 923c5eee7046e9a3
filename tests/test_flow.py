"""Conditional flow matching (Hummerich et al., split-flows (2025)): geometry, symmetry, ODE solvers, divergences, likelihoods, training.

The Gaussian tests use a harmonic 6-atom "molecule" (springs, translation
zero mode) under two linear maps with exact answers from
:mod:`finegrain.platform.science.metrics.entropy`.  Budget: 400 Adam steps of a
2-layer, width-32 field per mapping (about 10 s each on one CPU core).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from finegrain.tests.helpers import train_with_cli
from finegrain.platform.services.tracking import Tracker
from finegrain.platform.science.metrics import entropy as ent
from finegrain.trainables.flow import (
    ConditionalFlow,
    FibreGeometry,
    FlowConfig,
    bead_assignment,
    fit_arrays,
    nll_arrays,
    odeint,
    trace_along,
)

N_ATOMS = 6
GAUSS_STEPS = 400
TINY = FlowConfig(hidden=32, layers=2, n_rbf=8, batch_size=128, learning_rate=3e-3)


def spring_precision(seed: int = 0) -> np.ndarray:
    """K [6, 6] nm^-2 of a chain with 1-2 and 1-3 springs (null space: translations only)."""
    rng = np.random.default_rng(seed)
    k = np.zeros((N_ATOMS, N_ATOMS))
    pairs = [(i, i + 1, rng.uniform(100, 300)) for i in range(N_ATOMS - 1)]
    pairs += [(i, i + 2, rng.uniform(20, 60)) for i in range(N_ATOMS - 2)]
    for i, j, s in pairs:
        k[i, i] += s
        k[j, j] += s
        k[i, j] -= s
        k[j, i] -= s
    return k


def mappings() -> dict[str, np.ndarray]:
    pairs = np.zeros((3, N_ATOMS))
    for b in range(3):
        pairs[b, 2 * b:2 * b + 2] = 0.5
    triples = np.zeros((2, N_ATOMS))
    triples[0, :3] = triples[1, 3:] = 1 / 3
    return {"pairs": pairs, "triples": triples}


def random_rotation(seed: int) -> torch.Tensor:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return torch.tensor(q, dtype=torch.float32)


def _chain_topology():
    import mdtraj as md

    top = md.Topology()
    res = top.add_residue("MOL", top.add_chain())
    for i in range(N_ATOMS):
        top.add_atom(f"C{i}", md.element.carbon, res)
    return top


@pytest.fixture(scope="module")
def trained():
    """One flow per mapping on 20 000 harmonic frames; held-out frames and exact answers."""
    torch.set_num_threads(1)
    k = spring_precision()
    out = {}
    for name, c in mappings().items():
        asg = bead_assignment(c)
        x, y = ent.sample_harmonic_ensemble(k, c, 20_000, seed=1)
        xt, yt = ent.sample_harmonic_ensemble(k, c, 300, seed=2)
        torch.manual_seed(0)
        flow = ConditionalFlow(TINY, c, asg)
        fit_arrays(flow, x, y, GAUSS_STEPS, seed=0)
        out[name] = {"flow": flow, "x": xt, "y": yt, "exact": ent.harmonic_ensemble_entropies(k, c, asg),
                     "c": c, "asg": asg, "train": (x, y)}
    return out


# ----------------------------------------------------------------------------- geometry
def test_prior_lies_on_fibre_and_matches_gaussian_density():
    c = mappings()["triples"]
    geo = FibreGeometry(c, bead_assignment(c), prior_width_nm=0.2).double()
    y = torch.randn(5, 2, 3, dtype=torch.float64)
    x0 = geo.sample_prior(y, torch.Generator().manual_seed(0))
    assert torch.allclose(torch.einsum("bi,fic->fbc", geo.matrix.double(), x0), y, atol=1e-6)
    # independent reference: the density of eta = N^T x, N(N^T B y, sigma^2 I) per component
    from scipy.stats import multivariate_normal

    basis = geo.basis.double().numpy().reshape(geo.dim, -1)  # [d, 3N] orthonormal fibre tangent vectors
    onehot = np.eye(2)[bead_assignment(c)]
    for f in range(5):
        eta = basis @ x0[f].numpy().reshape(-1)
        mean = basis @ (onehot @ y[f].numpy()).reshape(-1)
        ref = multivariate_normal(mean, 0.04 * np.eye(geo.dim)).logpdf(eta)
        assert float(geo.prior_log_prob(x0[f:f + 1], y[f:f + 1])) == pytest.approx(ref, abs=1e-5)  # float32 buffers


def test_bead_assignment_uses_weights_then_nearest_bead():
    c = np.zeros((2, 4))
    c[0, 0] = c[1, 2] = 1.0
    aa = np.array([[[0, 0, 0], [0.1, 0, 0], [1, 0, 0], [1.1, 0, 0]]], dtype=float)
    assert bead_assignment(c, aa, np.einsum("bi,fic->fbc", c, aa)).tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="aa_xyz, cg_xyz"):
        bead_assignment(c)


def test_velocity_is_rotation_and_translation_equivariant():
    c = mappings()["pairs"]
    torch.manual_seed(0)
    flow = ConditionalFlow(FlowConfig(hidden=16, layers=2, n_rbf=8), c, bead_assignment(c)).double()
    for p in flow.field.parameters():  # the output heads start at zero: give them values
        torch.nn.init.normal_(p, std=0.3)
    y = torch.randn(4, 3, 3, dtype=torch.float64) * 0.2
    x = flow.geometry.sample_prior(y)
    t = torch.rand(4, dtype=torch.float64)
    rot, shift = random_rotation(3).double(), torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    v = flow.velocity(x, t, y)
    v_rt = flow.velocity(x @ rot.T + shift, t, y @ rot.T + shift)
    assert v.abs().max() > 1e-3
    assert torch.allclose(v_rt, v @ rot.T, atol=1e-10)
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    v_m = flow.velocity(x @ mirror, t, y @ mirror)
    assert not torch.allclose(v_m, v @ mirror, atol=1e-6)  # chiral term: SE(3), not E(3)


def test_masked_prev_contributes_nothing():
    """Hidden AA(t-1): the field (random weights, biases included) ignores its values and equals prev=None."""
    c = mappings()["pairs"]
    torch.manual_seed(2)
    flow = ConditionalFlow(FlowConfig(hidden=16, layers=2, n_rbf=8, temporal=True, prev_dropout=1.0), c,
                           bead_assignment(c)).double()
    for p in flow.field.parameters():  # the output heads (coef weight and bias) start at zero: give them values
        torch.nn.init.normal_(p, std=0.3)
    y = torch.randn(3, 3, 3, dtype=torch.float64) * 0.2
    x = flow.geometry.sample_prior(y)
    t = torch.rand(3, dtype=torch.float64)
    prev_a, prev_b = flow.geometry.sample_prior(y), flow.geometry.sample_prior(y) + 0.5
    off = torch.zeros(3, dtype=torch.float64)
    v_none = flow.velocity(x, t, y)
    v_a, v_b = flow.velocity(x, t, y, prev_a, off), flow.velocity(x, t, y, prev_b, off)
    assert torch.equal(v_a, v_b) and torch.allclose(v_a, v_none, rtol=0, atol=1e-12)
    assert v_none.abs().max() > 1e-2
    on = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)  # per frame: rows 0, 2 see AA(t-1), row 1 does not
    w_a, w_b = flow.velocity(x, t, y, prev_a, on), flow.velocity(x, t, y, prev_b, on)
    assert torch.equal(w_a[1], v_a[1]) and torch.equal(w_b[1], v_a[1])
    assert (w_a[0] - w_b[0]).abs().max() > 1e-3 and (w_a[0] - v_a[0]).abs().max() > 1e-3  # used when shown
    # training with prev_dropout=1 (always hidden): the loss does not depend on AA(t-1) either
    aa = flow.geometry.sample_prior(y) + 1.0
    with torch.no_grad():
        losses = [flow.cfm_loss(aa, y + 1.0, p, generator=torch.Generator().manual_seed(4))
                  for p in (prev_a, prev_b, None)]
    assert float(losses[0]) == float(losses[1]) == pytest.approx(float(losses[2]), abs=1e-12)
    # and the frame-only log-density ignores it too (the ODE sees the same field at every step)
    lp = [flow.log_prob(aa, y, None, divergence="exact", steps=3)]
    flow.field.prev_emb.data.normal_()  # only the masked edges read prev_emb
    lp.append(flow.log_prob(aa, y, None, divergence="exact", steps=3))
    assert torch.equal(lp[0], lp[1])


# ----------------------------------------------------------------------------- ODE solvers
@pytest.mark.parametrize("method,steps,tol", [("euler", 2000, 2e-3), ("rk4", 20, 1e-7), ("dopri5", None, 1e-5)])
def test_odeint_solves_a_linear_system_both_directions(method, steps, tol):
    from scipy.linalg import expm

    a = np.array([[0.0, 1.0], [-4.0, -0.3]])
    y0 = np.array([[1.0, 0.0], [0.5, -1.0]])
    f = lambda t, y: y @ torch.tensor(a).T  # noqa: E731
    fwd, nfe = odeint(f, torch.tensor(y0), 0.0, 1.0, method, steps or 1, rtol=1e-8, atol=1e-10)
    assert np.allclose(fwd.numpy(), y0 @ expm(a).T, atol=tol)
    back, _ = odeint(f, fwd, 1.0, 0.0, method, steps or 1, rtol=1e-8, atol=1e-10)
    assert np.allclose(back.numpy(), y0, atol=tol * 10)
    assert nfe > 0
    with pytest.raises(ValueError, match="method"):
        odeint(f, torch.tensor(y0), 0.0, 1.0, "leapfrog")


def test_exact_trace_of_a_linear_field_on_the_fibre():
    c = mappings()["pairs"]
    geo = FibreGeometry(c, bead_assignment(c), 0.1).double()
    m = torch.randn(N_ATOMS, N_ATOMS, dtype=torch.float64)
    v_fn = lambda x: geo.tangent(torch.einsum("ij,bjc->bic", m, x))  # noqa: E731
    x = torch.randn(3, N_ATOMS, 3, dtype=torch.float64)
    null = ent._null(c)
    expected = 3 * np.trace(null.T @ m.numpy() @ null)  # tr(N^T M N) per xyz component
    got = trace_along(v_fn, x, geo.basis.double(), chunk_rows=4)
    assert torch.allclose(got, torch.full((3,), expected, dtype=torch.float64), atol=1e-9)


def test_exact_and_hutchinson_divergences_agree_in_expectation():
    c = mappings()["triples"]
    torch.manual_seed(1)
    flow = ConditionalFlow(FlowConfig(hidden=16, layers=2, n_rbf=8), c, bead_assignment(c)).double()
    for p in flow.field.parameters():
        torch.nn.init.normal_(p, std=0.3)
    y = torch.randn(2, 2, 3, dtype=torch.float64) * 0.2
    x = flow.geometry.sample_prior(y)
    v_fn = lambda xr: flow.velocity(xr, 0.4, y.repeat(xr.shape[0] // 2, 1, 1))  # noqa: E731
    exact = trace_along(v_fn, x, flow.geometry.basis.double())
    k = 4000  # one probe per row: k copies of the 2 frames
    probes = flow.geometry.probes((1, 2 * k), torch.Generator().manual_seed(0), torch.float64)
    single = trace_along(v_fn, x.repeat(k, 1, 1), probes).reshape(k, 2)
    mean, se = single.mean(dim=0), single.std(dim=0) / math.sqrt(k)
    assert torch.all((mean - exact).abs() < 4 * se + 1e-9), (mean, exact, se)


def test_dopri5_error_groups_keep_one_column_from_being_diluted():
    """A log-det-like column (integrand spiking at t = 1) next to 99 idle ones: normed alone it meets its tolerance."""
    rate, tol = 30.0, 1e-4
    f = lambda t, y: torch.cat([torch.zeros_like(y[:, :-1]),  # noqa: E731
                                torch.full_like(y[:, -1:], rate * math.exp(-rate * (1 - t)))], 1)
    y0 = torch.cat([torch.ones(1, 99), torch.zeros(1, 1)], 1).double()
    exact = 1 - math.exp(-rate)  # int_0^1 rate exp(-rate (1 - t)) dt
    err = {}
    for name, groups in (("pooled", None), ("split", (slice(0, 99), slice(99, 100)))):
        out, _ = odeint(f, y0, 0.0, 1.0, "dopri5", rtol=tol, atol=tol, error_groups=groups)
        assert torch.equal(out[:, :-1], y0[:, :-1])
        err[name] = abs(float(out[0, -1]) - exact)
    assert err["split"] < tol / 5, err
    assert err["pooled"] > tol, err  # the RMS over 100 columns hides the integrand's error (about 10x)
    with pytest.raises(ValueError, match="error_groups"):
        odeint(f, y0, 0.0, 1.0, "dopri5", error_groups=(slice(100, 101),))


# ----------------------------------------------------------------------------- the Gaussian benchmark
def test_flow_conditional_entropy_matches_the_analytic_gaussian(trained):
    for name, d in trained.items():
        nll = nll_arrays(d["flow"], d["x"], d["y"], batch=300, divergence="exact", method="rk4", steps=5)
        exact = d["exact"]["h_cond"]
        se = nll.std(ddof=1) / math.sqrt(len(nll))
        err_atom, err_fibre = (nll.mean() - exact) / (3 * N_ATOMS), (nll.mean() - exact) / d["exact"]["dim"]
        print(f"{name}: flow {nll.mean():.3f} +- {se:.3f}, exact {exact:.3f} nats/frame; "
              f"error {err_atom:.4f} per atomistic dof, {err_fibre:.4f} per fibre dof")
        assert abs(err_atom) < 0.05
        assert abs(err_fibre) < 0.05
        d["nll"] = nll


class ExactGaussianField(torch.nn.Module):
    """The exact CFM velocity of the harmonic ensemble (independent coupling, Gaussian path), in fibre coordinates.

    Per xyz component, eta = N^T x (N the null-space basis of C); target
    eta1 ~ N(mu(y), S) with S = (N^T K N)^-1, mu = -S N^T K C+ y; prior
    eta0 ~ N(m0(y), sigma^2 I), m0 = N^T B y.  Then E[eta1 - eta0 | eta_t] =
    (mu - m0) + (t S - (1 - t) sigma^2) S_t^-1 (eta_t - mean_t), S_t =
    (1 - t)^2 sigma^2 + t^2 S, which transports the prior onto the target
    exactly: the flow's log q(x | y) is the analytic Gaussian density.
    """

    def __init__(self, precision: np.ndarray, c: np.ndarray, assignment: np.ndarray, sigma_nm: float):
        super().__init__()
        null = ent._null(c)
        cov = np.linalg.inv(null.T @ precision @ null)
        self.null, self.cov = torch.tensor(null), torch.tensor(cov)
        self.mean_op = torch.tensor(-cov @ null.T @ precision @ np.linalg.pinv(c))
        self.prior_op = torch.tensor(null.T @ np.eye(c.shape[0])[assignment])
        self.s2 = sigma_nm ** 2

    def forward(self, x, t, y, prev=None, prev_mask=None):
        eta = torch.einsum("ia,bic->bac", self.null, x.double())
        mu, m0 = (torch.einsum("an,bnc->bac", op, y.double()) for op in (self.mean_op, self.prior_op))
        eye, tt = torch.eye(self.cov.shape[0], dtype=torch.float64), t.double()[:, None, None]
        cov_t = (1 - tt) ** 2 * self.s2 * eye + tt ** 2 * self.cov
        gain = (tt * self.cov - (1 - tt) * self.s2 * eye) @ torch.linalg.inv(cov_t)
        v = (mu - m0) + gain @ (eta - ((1 - tt) * m0 + tt * mu))
        return torch.einsum("ia,bac->bic", self.null, v).to(x.dtype)


def test_default_likelihood_is_adaptive_and_accurate_on_a_stiff_gaussian():
    """Springs x100 (fibre std 6-10 pm against a 0.1 nm prior): exact field, so the ODE error is the only error."""
    from scipy.stats import multivariate_normal

    from finegrain.platform.science.mapping import CGMapping
    from finegrain.trainables.flow import FlowBackmapper

    k, c = spring_precision() * 100, mappings()["triples"]
    asg = bead_assignment(c)
    x, y = ent.sample_harmonic_ensemble(k, c, 8, seed=3)
    flow = ConditionalFlow(TINY, c, asg)
    flow.field = ExactGaussianField(k, c, asg, TINY.prior_width_nm)
    null = ent._null(c)  # analytic reference: scipy's Gaussian density of eta per xyz component
    cov = np.linalg.inv(null.T @ k @ null)
    mean_op = -cov @ null.T @ k @ np.linalg.pinv(c)
    xc, yc = x - y.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    ref = np.array([sum(multivariate_normal(mean_op @ yc[f][:, j], cov).logpdf(null.T @ xc[f][:, j]) for j in range(3))
                    for f in range(len(x))])
    a, b = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    lp = {name: flow.log_prob(a, b, divergence="exact", **kw).double().numpy()
          for name, kw in (("default", {}), ("dopri5", dict(method="dopri5", rtol=TINY.rtol, atol=TINY.atol)),
                           ("rk4_200", dict(method="rk4", steps=200)), ("rk4_10", dict(steps=10)))}
    assert np.array_equal(lp["default"], lp["dopri5"])  # the default solver is the adaptive one, config tolerances
    assert np.abs(lp["rk4_200"] - ref).max() < 1e-3  # the fine fixed-step reference is right
    assert np.abs(lp["default"] - lp["rk4_200"]).max() < 0.01
    assert np.abs(lp["default"] - ref).max() < 0.01
    assert np.abs(lp["rk4_10"] - ref).mean() > 0.2  # what the old default gave: ~0.05-0.1 nat per fibre dof
    bm = FlowBackmapper(_chain_topology(), CGMapping("triples", c, ("B1", "B2")), flow)
    ll = bm.log_likelihood(x, y, divergence="exact")
    assert np.allclose(ll, lp["default"], rtol=0, atol=1e-6)


def test_adaptive_likelihood_of_the_trained_flow_matches_fine_rk4(trained):
    d = trained["triples"]
    a, b = (torch.tensor(arr[:4], dtype=torch.float32) for arr in (d["x"], d["y"]))
    ref = d["flow"].log_prob(a, b, divergence="exact", method="rk4", steps=200)
    got = d["flow"].log_prob(a, b, divergence="exact")
    assert float((got - ref).abs().max()) < 0.01


def test_estimators_rank_mappings_like_the_analytic_answer(trained):
    k = spring_precision()
    est = {}
    for name, d in trained.items():
        nll = d.get("nll")
        if nll is None:
            nll = nll_arrays(d["flow"], d["x"], d["y"], batch=300, divergence="exact", method="rk4", steps=5)
        x, y = d["train"]
        dim = int(d["exact"]["dim"])
        flow = ent.flow_estimates(nll, ent.anchor_msd(x, y, d["c"], d["asg"]), dim, N_ATOMS)
        gauss = ent.smap_maxent(ent.gaussian_bound_from_samples(x, y, d["c"]), ent.anchor_msd(x, y, d["c"], d["asg"]),
                                dim)
        kt = ent.KB_KJ_MOL_K * 300.0
        u = 0.5 * np.einsum("fic,ij,fjc->f", x, k, x) * kt  # kJ/mol at 300 K
        giu = ent.giulini_smap(u, y, 300.0, n_clusters=50)["smap"]
        est[name] = {"flow": flow["smap"], "gauss": gauss, "giulini": giu,
                     "exact": d["exact"]["smap"], "exact_giulini": d["exact"]["giulini"]}
        assert giu == pytest.approx(d["exact"]["giulini"], abs=0.35)  # d/4, plus within-cluster spread of E[U|y]
        assert gauss == pytest.approx(d["exact"]["smap"], abs=0.05)
    print(est)
    assert est["pairs"]["exact"] < est["triples"]["exact"]  # 3 beads keep more information than 2
    for key in ("flow", "gauss", "giulini"):
        assert est["pairs"][key] < est["triples"][key], key


def test_samples_map_back_and_likelihoods_are_finite_and_reproducible(trained):
    d = trained["triples"]
    flow, y = d["flow"], torch.tensor(d["y"][:16], dtype=torch.float32)
    for method in ("euler", "rk4", "dopri5"):
        x = flow.sample(y, generator=torch.Generator().manual_seed(0), method=method, steps=6)
        assert torch.allclose(torch.einsum("bi,fic->fbc", flow.geometry.matrix, x), y, atol=2e-5)
    lp1 = flow.log_prob(x, y, divergence="exact", steps=5)
    lp2 = flow.log_prob(x, y, divergence="exact", steps=5)
    assert torch.isfinite(lp1).all() and torch.equal(lp1, lp2)
    h1 = flow.log_prob(x, y, divergence="hutchinson", n_probes=2, generator=torch.Generator().manual_seed(3), steps=5)
    h2 = flow.log_prob(x, y, divergence="hutchinson", n_probes=2, generator=torch.Generator().manual_seed(3), steps=5)
    assert torch.equal(h1, h2)
    assert float((h1 - lp1).mean().abs()) < 1.0  # same quantity, unbiased probes
    adaptive = flow.log_prob(x, y, divergence="exact", method="dopri5", rtol=1e-5, atol=1e-6)
    assert torch.allclose(adaptive, lp1, atol=0.1)


def test_backmapper_round_trip_and_protocol(trained, tmp_path):
    from finegrain.platform.science.mapping import CGMapping
    from finegrain.trainables.flow import FlowBackmapper
    from finegrain.trainables.protocol import load_backmapper

    d = trained["pairs"]
    top = _chain_topology()
    mapping = CGMapping("pairs", d["c"], ("B1", "B2", "B3"))
    bm = FlowBackmapper(top, mapping, d["flow"], info={"note": "test"})
    loaded = load_backmapper(bm.save(tmp_path / "model"))
    assert isinstance(loaded, FlowBackmapper) and loaded.info == {"note": "test"}
    cg = d["y"][:4]
    a, b = bm.backmap_xyz(cg, n_samples=2, seed=5), loaded.backmap_xyz(cg, n_samples=2, seed=5)
    assert a.shape == (2, 4, N_ATOMS, 3) and np.allclose(a, b, atol=1e-6)
    assert np.allclose(np.einsum("bi,kfic->kfbc", d["c"], a), cg, atol=2e-5)
    ll = loaded.log_likelihood(d["x"][:4], cg, divergence="exact", steps=5)
    assert ll.shape == (4,) and np.allclose(ll, bm.log_likelihood(d["x"][:4], cg, divergence="exact", steps=5))
    from finegrain.platform.science.errors import InputError

    with pytest.raises(InputError, match="cg_xyz"):
        bm.backmap_xyz(np.zeros((2, 5, 3)))


def test_temporal_flow_trains_and_samples_autoregressively():
    """Training a temporal flow lowers its held-out NLL to near the exact conditional entropy.

    The harmonic frames are i.i.d., so AA(t-1) carries no information: the best
    expected NLL is h(x | y) of the analytic Gaussian. The untrained field is zero
    (the prior), ~4 nats worse; 150 Adam steps must close most of that gap.
    """
    k, c = spring_precision(), mappings()["pairs"]
    x, y = ent.sample_harmonic_ensemble(k, c, 400, seed=4)
    xv, yv = ent.sample_harmonic_ensemble(k, c, 257, seed=5)  # held out: 256 (AA(t-1), AA(t)) pairs
    exact = ent.harmonic_ensemble_entropies(k, c, bead_assignment(c))["h_cond"]
    torch.set_num_threads(1)  # tiny batches: threads cost more than they give (as the module fixture does)
    torch.manual_seed(0)
    flow = ConditionalFlow(FlowConfig(hidden=16, layers=2, n_rbf=8, batch_size=64, learning_rate=3e-3, temporal=True),
                           c, bead_assignment(c))

    def t32(a):
        return torch.tensor(a, dtype=torch.float32)

    def held_out_nll():
        lp = flow.eval().log_prob(t32(xv[1:]), t32(yv[1:]), t32(xv[:-1]), divergence="exact", method="rk4", steps=8)
        return float(-lp.mean())

    before = held_out_nll()
    losses = fit_arrays(flow, x[1:], y[1:], 150, prev=x[:-1])
    after = held_out_nll()
    assert np.all(np.isfinite(losses)) and np.mean(losses[-20:]) < 0.8 * np.mean(losses[:20])
    assert before > exact + 2.0  # the untrained flow is far from the answer ...
    assert after < before - 2.0 and abs(after - exact) < 0.6, (before, after, exact)  # ... the trained one is near it
    out = flow.sample(t32(y[:3]), prev=t32(x[:3]), steps=2)
    assert out.shape == (3, N_ATOMS, 3)
    assert torch.allclose(torch.einsum("bi,fic->fbc", flow.geometry.matrix, out), t32(y[:3]), atol=2e-5)
    frame_based = ConditionalFlow(FlowConfig(hidden=8, layers=1), c, bead_assignment(c))
    with pytest.raises(ValueError, match="prev"):
        frame_based.sample(t32(y[:1]), prev=t32(x[:1]))


def test_config_errors_name_the_key(tmp_path):
    from finegrain.trainables.flow.train_config import ConfigError, FlowTrainConfig

    with pytest.raises(ValueError, match="FlowConfig.prior_width_nm"):
        FlowConfig(prior_width_nm=0)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {shards: x}\nmodel: {preset: smoke}\n")
    with pytest.raises(ConfigError, match="model.hidden"):
        FlowTrainConfig.from_yaml(cfg, ["model.hidden=0"])
    with pytest.raises(ConfigError, match="model.wings"):
        FlowTrainConfig.from_yaml(cfg, ["model.wings=2"])
    with pytest.raises(ConfigError, match="training.max_steps"):
        FlowTrainConfig.from_yaml(cfg, ["training.max_steps=0"])
    ok = FlowTrainConfig.from_yaml(cfg, ["model.hidden=8"])
    assert ok.flow().hidden == 8 and ok.flat()["model.hidden"] == "8"
    assert ok.tracking.experiment == "flow"


# ----------------------------------------------------------------------------- Ray Train + MLflow
@pytest.mark.slow
def test_adp_flow_trains_in_process_and_logs_to_mlflow(stack, adp_shards, tmp_path):
    """`finegrain train` dispatches on the config's family (flow) and logs a loadable model."""
    from finegrain.datasets.shards import read_frames
    from finegrain.trainables.persistence import load_backmapper_from_uri

    sets = [f"data.shards={adp_shards}", "data.fractions=[0.5, 0.5, 0.0]", "training.num_workers=0",
            "training.max_steps=12", "training.eval_every=6", "training.checkpoint_every=6", "training.log_every=3",
            "training.val_nll_frames=4", "training.progress=false", f"training.work_dir={tmp_path}",
            "tracking.experiment=test-flow"]
    lines = train_with_cli("adp_flow_smoke.yaml", sets)
    run = Tracker(stack.mlflow_uri).client.get_run(lines["run id"])
    assert run.data.tags["family"] == "flow" and run.data.tags["mapping"] == "backbone6"
    assert {"train_total", "val_total", "val_nll", "val_nll_per_dof"} <= set(run.data.metrics)
    assert math.isfinite(run.data.metrics["val_nll"])
    assert run.data.params["model.preset"] == "smoke"
    bm = load_backmapper_from_uri(lines["model uri"], Tracker(stack.mlflow_uri))
    assert bm.family == "flow"
    fr = read_frames(adp_shards)
    xyz = bm.backmap_xyz(fr["cg_xyz_nm"][:3], n_samples=1, seed=0)
    assert np.allclose(bm.mapping.map(xyz), fr["cg_xyz_nm"][:3], atol=1e-4)
    assert np.all(np.isfinite(bm.log_likelihood(fr["aa_xyz_nm"][:2], fr["cg_xyz_nm"][:2], steps=2)))
