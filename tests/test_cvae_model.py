"""The cVAE of Shmilovich et al. (2022): shapes, config (Table 1), loss terms (eq. 3) and a tiny overfit run."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from finegrain.platform.science.voxels import apply_rotation, mean_centre, random_rotations
from finegrain.trainables.cvae import (
    CVAE,
    CVAEConfig,
    aa_loss,
    cg_loss,
    distance_matrix,
    edm_loss,
    energy_loss,
    kld_loss,
    total_loss,
    vox_loss,
)

N_ATOMS, N_BEADS = 22, 6  # alanine dipeptide, 6-bead mapping
BEAD_ATOMS = [0, 4, 8, 10, 14, 18]


def slice_mapping(dtype=torch.float32) -> torch.Tensor:
    m = torch.zeros(N_BEADS, N_ATOMS, dtype=dtype)
    m[torch.arange(N_BEADS), torch.tensor(BEAD_ATOMS)] = 1.0
    return m


def frames(batch: int, seed: int, spread: float = 0.9, dtype=torch.float32):
    """Random mean-centred AA(t) in a (spread nm)^3 box, CG(t) by slicing, AA(t-1) = AA(t) + 0.02 nm noise."""
    g = torch.Generator().manual_seed(seed)
    aa = mean_centre((torch.rand(batch, N_ATOMS, 3, generator=g, dtype=dtype) - 0.5) * spread)
    prev = aa + 0.02 * torch.randn(batch, N_ATOMS, 3, generator=g, dtype=dtype)
    return aa, aa[:, BEAD_ATOMS], prev


# ----------------------------------------------------------------------------- config
def test_table1_presets():
    adp, cln = CVAEConfig.adp(), CVAEConfig.chignolin()
    assert (adp.batch_size, adp.learning_rate, adp.n_grid, adp.grid_width, adp.sigma) == (32, 1.398e-4, 12, 1.8, 0.05398)
    assert (adp.d_latent, adp.d_hidden_encoder, adp.d_hidden_decoder) == (32, 32, 32)
    assert (adp.beta_schedule, adp.beta_k, adp.beta_tau, adp.beta_n_cycles, adp.beta_cycle_length) == (
        "cyclic", 0.0025, 10_000, 4, 25_000)
    assert (adp.u_max, adp.t_lambda0, adp.lambda_initial, adp.lambda_final, adp.n_lambda, adp.w_clip) == (
        None, 200_000, 1e-6, 1.0, 1_250_000, 0.1)
    assert (cln.batch_size, cln.learning_rate, cln.n_grid, cln.grid_width, cln.sigma) == (32, 4.233e-4, 12, 5.5, 0.3076)
    assert (cln.d_latent, cln.d_hidden_encoder, cln.d_hidden_decoder) == (64, 32, 64)
    assert (cln.beta_schedule, cln.beta_constant, cln.u_max, cln.t_lambda0) == ("constant", 1.0, 1e5, 750_000)
    assert (cln.lambda_initial, cln.lambda_final, cln.n_lambda, cln.w_clip) == (1e-6, 1.0, 1_250_000, 0.1)
    assert not adp.frame_based and CVAEConfig.adp(frame_based=True).frame_based
    # teacher forcing as in the paper (clean AA(t-1)); the schedules are written for Table 1's step counts
    assert adp.prev_noise_nm == 0.0 and cln.prev_noise_nm == 0.0
    assert (adp.schedule_steps, adp.max_steps, cln.schedule_steps, cln.max_steps) == (
        14_800_000, 14_800_000, 9_400_000, 9_400_000)
    assert CVAEConfig.from_dict(adp.to_dict()) == adp


@pytest.mark.parametrize("field,value", [
    ("sigma", -0.1), ("n_grid", 0), ("d_latent", 12), ("learning_rate", float("nan")),
    ("beta_schedule", "linear"), ("u_max", 0.0), ("encoder_strides", (3,)), ("frame_based", 1),
    ("batch_size", 2.0), ("prev_noise_nm", -0.01), ("prev_noise_nm", float("inf")), ("prev_noise_nm", None),
    ("schedule_steps", 1.5), ("schedule_steps", -3),
])
def test_config_validation_names_field(field, value):
    with pytest.raises(ValueError, match=field):
        CVAEConfig.smoke(**{field: value})
    with pytest.raises(ValueError, match="bogus"):
        CVAEConfig.from_dict({"bogus": 1})


# ----------------------------------------------------------------------------- model
def test_paper_adp_architecture_numbers():
    """SI 4.1 / Fig. 11: input 12^3 x 50, encoder ends at 3^3 x 32 = 864 features, ~1.2M parameters."""
    model = CVAE(CVAEConfig.adp(), N_ATOMS, N_BEADS)
    assert model.encoder[0][0].in_channels == 50
    assert model.encoder_grid == 3 and model.fc_mu.in_features == 864
    assert model.fc_mu.out_features == model.fc_logvar.out_features == 32
    assert model.condition_net[0][0].in_channels == 28
    assert model.latent_channels == 4  # z reshaped to 2 x 2 x 2 x 4
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - 1.2e6) < 0.1 * 1.2e6
    aa, cg, prev = frames(1, 0)
    out = model(aa, cg, prev)
    assert out.vox_pred.shape == (1, 22, 12, 12, 12)


def test_shapes_smoke_adp():
    cfg = CVAEConfig.smoke()
    torch.manual_seed(0)
    model = CVAE(cfg, N_ATOMS, N_BEADS)
    aa, cg, prev = frames(3, 1)
    out = model(aa, cg, prev)
    d = cfg.n_grid
    assert out.vox_pred.shape == out.vox_target.shape == (3, N_ATOMS, d, d, d)
    assert out.xyz_pred.shape == (3, N_ATOMS, 3)
    assert out.mu.shape == out.logvar.shape == out.z.shape == (3, cfg.d_latent)
    assert 0.0 < out.vox_pred.min().item() and out.vox_pred.max().item() < 1.0  # sigmoid
    mu, logvar = model.encode(aa, cg, prev)
    assert mu.shape == (3, cfg.d_latent)
    # the public encode/decode path reproduces forward's shared-condition path
    torch.testing.assert_close(mu, out.mu)
    torch.testing.assert_close(logvar, out.logvar)
    torch.testing.assert_close(model.decode(out.z, cg, prev), out.vox_pred)
    torch.testing.assert_close(model.backmap_step(out.z, cg, prev), out.xyz_pred)
    z = torch.randn(5, cfg.d_latent)
    aa5, cg5, prev5 = frames(5, 2)
    assert model.decode(z, cg5, prev5).shape == (5, N_ATOMS, d, d, d)
    assert model.backmap_step(z, cg5, prev5).shape == (5, N_ATOMS, 3)


def test_frame_based_drops_previous_frame_channels():
    full = CVAE(CVAEConfig.smoke(), N_ATOMS, N_BEADS)
    frame = CVAE(CVAEConfig.smoke(frame_based=True), N_ATOMS, N_BEADS)
    assert full.encoder[0][0].in_channels == 2 * N_ATOMS + N_BEADS == 50
    assert frame.encoder[0][0].in_channels == N_ATOMS + N_BEADS == 28
    assert full.condition_net[0][0].in_channels == N_ATOMS + N_BEADS
    assert frame.condition_net[0][0].in_channels == N_BEADS
    aa, cg, _ = frames(2, 3)
    out = frame(aa, cg)  # no AA(t-1) needed
    assert out.xyz_pred.shape == (2, N_ATOMS, 3)
    with pytest.raises(ValueError, match="aa_prev"):
        full(aa, cg)


@pytest.mark.parametrize("args,arg", [
    (lambda a, c, p: (a[:, :21], c, p), "aa_t"),
    (lambda a, c, p: (a, c[:, :5], p), "cg_t"),
    (lambda a, c, p: (a, c, p[:1]), "aa_prev"),
    (lambda a, c, p: (a, c, p[..., :2]), "aa_prev"),
])
def test_model_bad_input(args, arg):
    model = CVAE(CVAEConfig.smoke(), N_ATOMS, N_BEADS)
    with pytest.raises(ValueError, match=arg):
        model(*args(*frames(2, 4)))
    with pytest.raises(ValueError, match="z"):
        model.decode(torch.zeros(2, 7), *frames(2, 4)[1:])


def test_reparameterize_statistics():
    mu = torch.tensor([[1.0, -2.0]]).expand(40000, 2)
    logvar = torch.tensor([[0.0, np.log(0.25)]], dtype=torch.float32).expand(40000, 2)
    z = CVAE.reparameterize(mu, logvar, torch.Generator().manual_seed(0))
    # SE of the mean: std / sqrt(n) <= 0.005; of the std: std / sqrt(2n) <= 0.0036
    torch.testing.assert_close(z.mean(0), torch.tensor([1.0, -2.0]), rtol=0, atol=0.025)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 0.5]), rtol=0, atol=0.018)


# ----------------------------------------------------------------------------- losses
def test_reconstruction_terms_match_eq3_by_hand():
    gen = torch.Generator().manual_seed(5)
    b, d = 3, 4
    vp, vt = torch.rand(2, b, N_ATOMS, d, d, d, generator=gen, dtype=torch.float64)
    xp, xt = torch.randn(2, b, N_ATOMS, 3, generator=gen, dtype=torch.float64)
    cgt = torch.randn(b, N_BEADS, 3, generator=gen, dtype=torch.float64)
    m = slice_mapping(torch.float64)
    vpn, vtn, xpn, xtn, cgn = (t.numpy() for t in (vp, vt, xp, xt, cgt))
    ref_vox = np.mean([np.sum((vpn[i] - vtn[i]) ** 2) / (d ** 3 * N_ATOMS) for i in range(b)])
    ref_aa = np.mean([np.sum((xpn[i] - xtn[i]) ** 2) / (3 * N_ATOMS) for i in range(b)])
    ref_cg = np.mean([np.sum((cgn[i] - xpn[i][BEAD_ATOMS]) ** 2) / (3 * N_BEADS) for i in range(b)])

    def edm(x):
        return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))

    ref_edm = np.mean([np.sum((edm(xpn[i]) - edm(xtn[i])) ** 2) / (2 * N_ATOMS ** 2) for i in range(b)])
    assert vox_loss(vp, vt).item() == pytest.approx(ref_vox, rel=1e-12)
    assert aa_loss(xp, xt).item() == pytest.approx(ref_aa, rel=1e-12)
    assert cg_loss(xp, cgt, m).item() == pytest.approx(ref_cg, rel=1e-12)
    assert edm_loss(xp, xt).item() == pytest.approx(ref_edm, rel=1e-10)


def test_edm_loss_rigid_motion_invariant_and_gradient_finite():
    gen = torch.Generator().manual_seed(6)
    xp, xt = torch.randn(2, 4, N_ATOMS, 3, generator=gen, dtype=torch.float64)
    r1, r2 = random_rotations(4, generator=gen, dtype=torch.float64), random_rotations(4, generator=gen, dtype=torch.float64)
    moved_p = apply_rotation(xp, r1) + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    moved_t = apply_rotation(xt, r2) - 0.7
    base = edm_loss(xp, xt).item()
    assert base > 0.1
    assert edm_loss(moved_p, moved_t).item() == pytest.approx(base, rel=1e-12)
    x = xp.clone().requires_grad_()
    edm_loss(x, xt).backward()
    assert torch.isfinite(x.grad).all()
    assert torch.count_nonzero(distance_matrix(xp).diagonal(dim1=1, dim2=2)) == 0
    assert torch.autograd.gradcheck(lambda y: edm_loss(y, xt[:1, :5]), (xp[:1, :5].clone().requires_grad_(),))


def test_kld_zero_for_standard_normal_and_closed_form():
    zeros = torch.zeros(5, 8, dtype=torch.float64)
    assert kld_loss(zeros, zeros).item() == 0.0
    mu = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, np.log(0.5), np.log(2.0)], [1.0, -1.0, 0.2]], dtype=torch.float64)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    ref = torch.distributions.kl_divergence(q, p).sum(-1).mean().item()
    assert kld_loss(mu, logvar).item() == pytest.approx(ref, rel=1e-12)
    # first sample by hand: 0.5 * sum(var + mu^2 - 1 - log var)
    by_hand = 0.5 * ((1 + 0.25 - 1 - 0) + (0.5 + 1 - 1 - np.log(0.5)) + (2 + 4 - 1 - np.log(2)))
    assert kld_loss(mu[:1], logvar[:1]).item() == pytest.approx(by_hand, rel=1e-12)


def harmonic_energy(x: torch.Tensor) -> torch.Tensor:
    """U = 100 kJ/mol/nm^2 * sum |x|^2, [B, N, 3] -> [B]."""
    return 100.0 * (x ** 2).sum(dim=(1, 2))


def test_energy_loss_cap():
    xp = torch.tensor([[[1.0, 0.0, 0.0]], [[3.0, 0.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    u_t = torch.tensor([50.0, 50.0], dtype=torch.float64)  # U(xp) = [100, 900]
    assert energy_loss(xp, harmonic_energy, u_target=u_t).item() == pytest.approx((50 ** 2 + 850 ** 2) / 2)
    capped = energy_loss(xp, harmonic_energy, u_target=u_t, u_max=500.0)  # min(900, 500) = 500
    assert capped.item() == pytest.approx((50 ** 2 + 450 ** 2) / 2)
    capped.backward()
    assert xp.grad[1].abs().sum().item() == 0.0          # capped sample: no gradient
    assert xp.grad[0, 0, 0].item() == pytest.approx(2 * 50 / 2 * 200.0)  # d/dx (U-50)^2/2 = (U-50) * 200 x
    xt = torch.tensor([[[0.5, 0.5, 0.0]], [[0.0, 0.0, 0.0]]], dtype=torch.float64)  # U = [50, 0]
    ref = ((50 - 100) ** 2 + (0 - 900) ** 2) / 2
    assert energy_loss(xp, harmonic_energy, xyz_target=xt).item() == pytest.approx(ref)


def test_total_loss_combines_terms():
    gen = torch.Generator().manual_seed(7)
    vp, vt = torch.rand(2, 2, N_ATOMS, 4, 4, 4, generator=gen, dtype=torch.float64)
    xp, xt = 0.3 * torch.randn(2, 2, N_ATOMS, 3, generator=gen, dtype=torch.float64)
    cgt = xt[:, BEAD_ATOMS] + 0.01
    mu, logvar = torch.randn(2, 2, 8, generator=gen, dtype=torch.float64)
    m = slice_mapping(torch.float64)
    total, terms = total_loss(vp, vt, xp, xt, cgt, m, mu, logvar, lam=0.25, beta=0.5,
                              energy_fn=harmonic_energy, u_max=1e3)
    parts = (vox_loss(vp, vt) + aa_loss(xp, xt) + cg_loss(xp, cgt, m) + edm_loss(xp, xt)
             + 0.25 * energy_loss(xp, harmonic_energy, xyz_target=xt, u_max=1e3) + 0.5 * kld_loss(mu, logvar))
    assert total.item() == pytest.approx(parts.item(), rel=1e-12)
    assert terms["total"] == pytest.approx(parts.item(), rel=1e-12)
    assert set(terms) == {"vox", "aa", "cg", "edm", "energy", "kld", "total", "lambda", "beta"}

    def never(_):
        raise AssertionError("energy_fn must not run while lambda == 0")

    total0, terms0 = total_loss(vp, vt, xp, xt, cgt, m, mu, logvar, lam=0.0, beta=0.5, energy_fn=never)
    assert "energy" not in terms0
    assert total0.item() == pytest.approx(parts.item() - 0.25 * terms["energy"], rel=1e-12)
    with pytest.raises(ValueError, match="beta"):
        total_loss(vp, vt, xp, xt, cgt, m, mu, logvar, lam=0.0, beta=-1.0)


# ----------------------------------------------------------------------------- overfit
def test_tiny_model_overfits_four_frames():
    """150 Adam steps (lr 3e-3) on 4 fixed frames with the smoke config, lambda = 0 (the
    paper's first t_lambda0 steps) and the smoke cyclic beta schedule: the total loss
    must fall by more than 20x and L_AA by more than 5x (observed ~190x and ~60x; ~3 s
    on 2 CPU cores)."""
    torch.manual_seed(0)
    cfg = CVAEConfig.smoke()
    model = CVAE(cfg, N_ATOMS, N_BEADS)
    aa, cg, prev = frames(4, 1)
    m = slice_mapping()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = time.perf_counter()
    history = []
    for step in range(150):
        out = model(aa, cg, prev)
        loss, terms = total_loss(out.vox_pred, out.vox_target, out.xyz_pred, aa, cg, m, out.mu, out.logvar,
                                 lam=0.0, beta=cfg.beta_at(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(terms)
    assert time.perf_counter() - start < 60
    assert all(np.isfinite(h["total"]) for h in history)
    assert history[0]["total"] / history[-1]["total"] > 20
    assert history[0]["aa"] / history[-1]["aa"] > 5
