"""Tests for finegrain.platform.science.voxels (Shmilovich et al. (2022), eqs. 1 and 2, DeepBackmap convention).

Convention under test (module docstring of finegrain.platform.science.voxels):
density exp(-|x - mu|^2 / sigma) with sigma in nm^2 (std s = sqrt(sigma / 2)),
evaluated at the centres g[i] = -w/2 + (i + 1/2) h, h = w / d, of the d cells
tiling [-w/2, w/2] per axis.

Round-trip error of collapse(voxelize(x)), derived analytically
----------------------------------------------------------------
The density is separable, exp(-|x - mu|^2 / sigma) = prod_axes exp(-(x_a - mu_a)^2 / sigma),
so the 3-D density-weighted average (eq. 2) equals the 1-D weighted average
along each axis.

Infinite grid.  On x_j = x_0 + j h (all integers j), Poisson summation of
g(u) = exp(-u^2 / sigma), whose Fourier transform is
G(nu) = sqrt(pi sigma) exp(-pi^2 sigma nu^2), and of u g(u) (transform
-i pi sigma nu G(nu)) gives, with q = exp(-pi^2 sigma / h^2) and
theta = 2 pi (x_0 - mu) / h,

    Z_inf = (sqrt(pi sigma) / h) (1 + 2 sum_k q^(k^2) cos(k theta)),
    delta(mu) = (2 pi sigma / h) sum_k k q^(k^2) sin(k theta)
                / (1 + 2 sum_k q^(k^2) cos(k theta)),                   k >= 1,
    |delta| <= delta_max = (2 pi sigma / h) sum_k k q^(k^2) / (1 - 2 sum_k q^(k^2)).

Finite grid.  The d points drop the nodes beyond the faces; on the side
facing +x the first dropped node lies D_+ = w/2 + h/2 - mu from mu (D_- =
w/2 + h/2 + mu on the other side).  With (D + m h)^2 >= D^2 + 2 D m h and
r = exp(-2 D h / sigma), the dropped weight and lever arm are bounded by

    T0 <= sum_sides exp(-D^2 / sigma) / (1 - r),
    T1 <= sum_sides exp(-D^2 / sigma) (D / (1 - r) + h r / (1 - r)^2),

and collapse - mu - delta(mu) = (delta T0 - T1_signed) / (Z_inf - T0), so

    |collapse - mu - delta(mu)| <= (delta_max T0 + T1) / (Z_low - T0),
    Z_low = (sqrt(pi sigma) / h) (1 - 2 sum_k q^(k^2)).

Shipped presets (d, w nm, sigma nm^2 -> s nm, h nm): Table-1 ADP (12, 1.8,
0.05398 -> 0.164, 0.15), Table-1 CLN (12, 5.5, 0.3076 -> 0.392, 0.458), smoke
(8, 1.6, 0.035 -> 0.132, 0.2).  Their delta_max is 1e-10, 2e-6 and 2e-4 nm;
the error that remains is the pull of the faces, largest for the atoms
farthest from the centre.  Eq. 1 read literally (exp(-d^2 / 2 sigma^2) with
sigma = 0.05398 nm on linspace(-0.9, 0.9, 12)) is the same formula with
sigma' = 2 * 0.05398^2 and h = 1.8 / 11: delta_max = 0.034 nm, bond scale.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from finegrain.platform.science.voxels import (
    apply_rotation,
    collapse,
    grid_points,
    mean_centre,
    random_rotations,
    voxelize,
)
from finegrain.trainables.cvae.config import CVAEConfig


def _q(sigma: float, h: float) -> float:
    return math.exp(-math.pi ** 2 * sigma / h ** 2)


def poisson_offset(mu: np.ndarray, x0: float, h: float, sigma: float, kmax: int = 8) -> np.ndarray:
    """delta(mu) of the module docstring (infinite-grid centroid bias along one axis), nm."""
    q = _q(sigma, h)
    theta = 2 * math.pi * (x0 - mu) / h
    num = sum(k * q ** (k * k) * np.sin(k * theta) for k in range(1, kmax))
    den = 1 + 2 * sum(q ** (k * k) * np.cos(k * theta) for k in range(1, kmax))
    return 2 * math.pi * sigma / h * num / den


def delta_max(h: float, sigma: float, kmax: int = 8) -> float:
    q = _q(sigma, h)
    s1 = sum(k * q ** (k * k) for k in range(1, kmax))
    s0 = sum(q ** (k * k) for k in range(1, kmax))
    return 2 * math.pi * sigma / h * s1 / (1 - 2 * s0)


def truncation_bound(mu: np.ndarray, n_grid: int, width: float, sigma: float) -> np.ndarray:
    """Bound on |collapse - mu - delta(mu)| per axis from the finite grid (module docstring), nm."""
    h = width / n_grid
    q = _q(sigma, h)
    z_low = math.sqrt(math.pi * sigma) / h * (1 - 2 * sum(q ** (k * k) for k in range(1, 8)))
    t0 = np.zeros_like(mu)
    t1 = np.zeros_like(mu)
    for d in (width / 2 + h / 2 - mu, width / 2 + h / 2 + mu):
        assert (d > 0).all()
        e, r = np.exp(-d ** 2 / sigma), np.exp(-2 * d * h / sigma)
        t0 += e / (1 - r)
        t1 += e * (d / (1 - r) + h * r / (1 - r) ** 2)
    return (delta_max(h, sigma) * t0 + t1) / (z_low - t0)


PRESETS = {"adp": CVAEConfig.adp(), "chignolin": CVAEConfig.chignolin(), "smoke": CVAEConfig.smoke()}
# (n_grid, grid_width nm, sigma nm^2): the shipped presets, plus a coarse grid (s / h = 1/3,
# delta_max = 0.03 nm) on which the infinite-grid term dominates and is checked for tightness
GRIDS = [(c.n_grid, c.grid_width, c.sigma) for c in PRESETS.values()] + [(12, 1.8, 0.005)]


def test_presets_keep_table1_sigma_and_document_std():
    adp, cln, smoke = PRESETS["adp"], PRESETS["chignolin"], PRESETS["smoke"]
    assert (adp.n_grid, adp.grid_width, adp.sigma) == (12, 1.8, 0.05398)  # Table 1, as printed
    assert (cln.n_grid, cln.grid_width, cln.sigma) == (12, 5.5, 0.3076)
    assert adp.gaussian_std == pytest.approx(0.1643, abs=1e-4) and adp.grid_spacing == pytest.approx(0.15)
    assert cln.gaussian_std == pytest.approx(0.3922, abs=1e-4) and cln.grid_spacing == pytest.approx(5.5 / 12)
    assert smoke.gaussian_std == pytest.approx(0.1323, abs=1e-4) and smoke.grid_spacing == pytest.approx(0.2)


def test_grid_points_are_cell_centres():
    for n_grid, width in ((12, 1.8), (8, 1.6), (5, 2.0)):
        h = width / n_grid
        g = grid_points(n_grid, width, dtype=torch.float64).numpy()
        np.testing.assert_allclose(g, -width / 2 + (np.arange(n_grid) + 0.5) * h, rtol=0, atol=1e-15)
        np.testing.assert_allclose(g, -g[::-1], rtol=0, atol=1e-15)  # symmetric about 0
        np.testing.assert_allclose(np.diff(g), h, rtol=0, atol=1e-15)
    assert grid_points(8, 1.6).dtype == torch.float32


@pytest.mark.parametrize("n_grid,width,sigma", GRIDS)
def test_round_trip_within_analytic_bound(n_grid, width, sigma):
    h = width / n_grid
    gen = torch.Generator().manual_seed(0)
    half = 0.3 * width  # the centred molecules reach 0.29 w (ADP, smoke grid) at most
    xyz = (torch.rand(3, 50, 3, generator=gen, dtype=torch.float64) * 2 - 1) * half
    back = collapse(voxelize(xyz, n_grid, width, sigma), n_grid, width).numpy()
    mu = xyz.numpy()
    x0 = -width / 2 + h / 2
    resid = np.abs(back - mu - poisson_offset(mu, x0, h, sigma))
    assert (resid <= truncation_bound(mu, n_grid, width, sigma) + 1e-12).all()
    err = np.abs(back - mu).max()
    bound = delta_max(h, sigma) + truncation_bound(np.array(half), n_grid, width, sigma)
    assert err <= bound + 1e-12
    if delta_max(h, sigma) > 1e-3:  # the infinite-grid bound is attained, not loose: 150 points come close
        assert err > 0.5 * delta_max(h, sigma)


def test_preset_bounds_and_literal_eq1_value():
    # the numbers quoted in the module docstring
    for c, dmax in ((PRESETS["adp"], 1e-9), (PRESETS["chignolin"], 1e-5), (PRESETS["smoke"], 2e-4)):
        assert delta_max(c.grid_spacing, c.sigma) < dmax
    # eq. 1 read literally: exp(-d^2 / 2 s^2), s = 0.05398 nm, on linspace(-0.9, 0.9, 12)
    assert delta_max(1.8 / 11, 2 * 0.05398 ** 2) == pytest.approx(0.0342, abs=5e-4)
    assert delta_max(PRESETS["adp"].grid_spacing, PRESETS["adp"].sigma) < 1e-9


@pytest.fixture(scope="module")
def centred_structures():
    """Real ADP and chignolin coordinates, centred on their CG beads as the cVAE centres a
    training triplet (trainables/cvae/train.py: prepare_triplet), in the reference orientation
    and 64 uniformly random ones (training rotates every triplet), float64 [65, N, 3] nm."""
    from finegrain.datasets.systems import get_system

    out = {}
    rot = random_rotations(64, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for name, mapping in (("adp", "backbone6"), ("chignolin", "ca")):
        system = get_system(name)
        x = system.positions_nm[None]
        cg = torch.as_tensor(system.mapping(mapping).map(x), dtype=torch.float64)
        xc = mean_centre(torch.as_tensor(x, dtype=torch.float64), reference=cg)
        out[name] = torch.cat([xc, apply_rotation(xc.expand(64, -1, -1), rot)])
    return out


@pytest.mark.parametrize("preset,system", [("adp", "adp"), ("smoke", "adp"), ("chignolin", "chignolin")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_round_trip_on_real_structures_every_preset(centred_structures, preset, system, dtype):
    c = PRESETS[preset]
    xyz = centred_structures[system].to(dtype)
    back = collapse(voxelize(xyz, c.n_grid, c.grid_width, c.sigma), c.n_grid, c.grid_width)
    assert back.dtype == dtype
    err = (back - xyz).double().norm(dim=-1)  # [frames, atoms], nm
    per_frame_mean = err.mean(dim=1)
    assert per_frame_mean.max().item() < 0.005, (preset, per_frame_mean.max().item())
    assert err.max().item() < 0.005, (preset, err.max().item())
    if dtype == torch.float64:  # and within the analytic bound, atom by atom and axis by axis
        mu = xyz.numpy()
        h = c.grid_spacing
        bound = delta_max(h, c.sigma) + truncation_bound(mu, c.n_grid, c.grid_width, c.sigma)
        assert (np.abs(back.numpy() - mu) <= bound + 1e-12).all()


def test_round_trip_float32():
    n_grid, width, sigma = 16, 1.8, 0.03
    gen = torch.Generator().manual_seed(1)
    xyz = (torch.rand(4, 20, 3, generator=gen) * 2 - 1) * (0.3 * width)
    back = collapse(voxelize(xyz, n_grid, width, sigma), n_grid, width)
    assert back.dtype == torch.float32
    h = width / n_grid
    bound = delta_max(h, sigma) + truncation_bound(np.array(0.3 * width), n_grid, width, sigma)
    # plus float32 round-off of ~4096-term sums (~1e-6 nm)
    assert (back - xyz).abs().max().item() < bound + 2e-5


def test_points_on_nodes_and_at_the_centre_collapse_exactly():
    # theta = 0 mod 2 pi -> delta = 0: a particle on a grid node is recovered exactly
    # (coarse grid, so the dropped nodes weigh < exp(-100))
    n_grid, width, sigma = 12, 1.8, 0.005
    g = grid_points(n_grid, width, dtype=torch.float64)
    xyz = torch.stack([g[[4, 5, 6]], g[[6, 7, 5]]])[None]  # [1, 2, 3]
    back = collapse(voxelize(xyz, n_grid, width, sigma), n_grid, width)
    torch.testing.assert_close(back, xyz, rtol=0, atol=1e-12)
    # the cell-centred grid is symmetric about 0: the origin is a fixed point for any sigma
    for c in PRESETS.values():
        zero = torch.zeros(1, 1, 3, dtype=torch.float64)
        back = collapse(voxelize(zero, c.n_grid, c.grid_width, c.sigma), c.n_grid, c.grid_width)
        assert back.abs().max().item() < 1e-15


def test_voxelize_matches_bruteforce_eq1():
    n_grid, width, sigma = 6, 1.2, 0.08
    xyz = torch.tensor([[[0.1, -0.2, 0.3], [0.0, 0.05, -0.4]]], dtype=torch.float64)
    h = width / n_grid
    g = np.array([-0.5, -0.3, -0.1, 0.1, 0.3, 0.5])  # cell centres of 6 cells of 0.2 nm on [-0.6, 0.6]
    X, Y, Z = np.meshgrid(g, g, g, indexing="ij")
    pts = np.stack([X, Y, Z], -1)  # [d, d, d, 3]
    ref = np.stack([np.exp(-((pts - p) ** 2).sum(-1) / sigma) for p in xyz[0].numpy()])
    vox = voxelize(xyz, n_grid, width, sigma)
    assert vox.shape == (1, 2, n_grid, n_grid, n_grid) and h == pytest.approx(0.2)
    np.testing.assert_allclose(vox[0].numpy(), ref, rtol=1e-12, atol=0)
    np.testing.assert_allclose(grid_points(n_grid, width, dtype=torch.float64).numpy(), g, rtol=0, atol=1e-15)
    # sigma is exp's denominator: the density is exp(-1) one sqrt(sigma) from the particle
    one = voxelize(torch.tensor([[[g[2], g[3], g[3] - math.sqrt(sigma)]]], dtype=torch.float64), n_grid, width, sigma)
    assert one[0, 0, 2, 3, 3].item() == pytest.approx(math.exp(-1.0), rel=1e-12)


def test_collapse_of_two_point_density():
    # density 1 at node a, 3 at node b (same channel) -> (a + 3 b) / 4
    n_grid, width = 5, 2.0
    g = grid_points(n_grid, width, dtype=torch.float64)
    vox = torch.zeros(1, 1, n_grid, n_grid, n_grid, dtype=torch.float64)
    vox[0, 0, 0, 1, 2] = 1.0
    vox[0, 0, 4, 3, 2] = 3.0
    a = torch.stack([g[0], g[1], g[2]])
    b = torch.stack([g[4], g[3], g[2]])
    torch.testing.assert_close(collapse(vox, n_grid, width)[0, 0], (a + 3 * b) / 4, rtol=0, atol=1e-14)


def test_gradcheck_voxelize_collapse():
    n_grid, width, sigma = 4, 1.0, 0.3
    gen = torch.Generator().manual_seed(2)
    xyz = ((torch.rand(2, 2, 3, generator=gen, dtype=torch.float64) - 0.5) * 0.4).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: voxelize(x, n_grid, width, sigma), (xyz,))
    assert torch.autograd.gradcheck(lambda x: collapse(voxelize(x, n_grid, width, sigma), n_grid, width), (xyz,))
    vox = (torch.rand(2, 3, n_grid, n_grid, n_grid, generator=gen, dtype=torch.float64) + 0.05).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: collapse(v, n_grid, width), (vox,))


def test_rotations_orthonormal_det_one_and_deterministic():
    r = random_rotations(500, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert r.shape == (500, 3, 3) and r.dtype == torch.float64
    eye = torch.eye(3, dtype=torch.float64).expand(500, 3, 3)
    torch.testing.assert_close(r @ r.mT, eye, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(500, dtype=torch.float64), rtol=0, atol=1e-12)
    r2 = random_rotations(500, generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    torch.testing.assert_close(r2, r.float())


def test_rotations_haar_moments():
    """Moments of the Haar measure on SO(3); tolerances are 5 standard errors for n = 20000.

    u = R e is uniform on S^2: E[u] = 0 (SE sqrt(1/3n)), E[u u^T] = I/3 (SE sqrt(4/45n)).
    tr R is the character of the 3-d irreducible representation: E[tr R] = 0,
    E[(tr R)^2] = 1 and E[(tr R)^4] = 3 (SE of the mean of tr^2: sqrt(2/n)).
    """
    n = 20000
    r = random_rotations(n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    u = r[:, :, 2]  # R e_z
    assert u.mean(0).abs().max().item() < 5 * math.sqrt(1 / (3 * n))
    second = (u[:, :, None] * u[:, None, :]).mean(0)
    torch.testing.assert_close(second, torch.eye(3, dtype=torch.float64) / 3, rtol=0,
                               atol=5 * math.sqrt(4 / (45 * n)))
    tr = r.diagonal(dim1=1, dim2=2).sum(-1)
    assert abs(tr.mean().item()) < 5 / math.sqrt(n)
    assert abs((tr ** 2).mean().item() - 1.0) < 5 * math.sqrt(2 / n)


def test_apply_rotation_same_rotation_for_triplet():
    gen = torch.Generator().manual_seed(5)
    aa = torch.randn(3, 7, 3, generator=gen, dtype=torch.float64)
    cg = aa[:, [0, 3, 6]]
    r = random_rotations(3, generator=gen, dtype=torch.float64)
    ref = torch.einsum("bij,bpj->bpi", r, aa)
    torch.testing.assert_close(apply_rotation(aa, r), ref, rtol=0, atol=1e-13)
    # a slicing CG map commutes with the rotation when both get the same R
    torch.testing.assert_close(apply_rotation(cg, r), apply_rotation(aa, r)[:, [0, 3, 6]], rtol=0, atol=1e-13)
    # distances preserved; shared [3, 3] rotation broadcasts
    torch.testing.assert_close(torch.cdist(apply_rotation(aa, r[0]), apply_rotation(aa, r[0])),
                               torch.cdist(aa, aa), rtol=0, atol=1e-12)


def test_mean_centre():
    gen = torch.Generator().manual_seed(6)
    aa = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64) + 3.0
    c = mean_centre(aa)
    torch.testing.assert_close(c.mean(1), torch.zeros(2, 3, dtype=torch.float64), rtol=0, atol=1e-14)
    cg = aa[:, [1, 2]]
    c2 = mean_centre(aa, reference=cg)
    torch.testing.assert_close(c2, aa - cg.mean(1, keepdim=True), rtol=0, atol=0)


@pytest.mark.parametrize("call,arg", [
    (lambda: voxelize(torch.zeros(4, 3), 8, 1.0, 0.1), "xyz"),
    (lambda: voxelize(torch.zeros(1, 4, 2), 8, 1.0, 0.1), "xyz"),
    (lambda: voxelize(torch.zeros(1, 4, 3, dtype=torch.int64), 8, 1.0, 0.1), "xyz"),
    (lambda: voxelize(torch.full((1, 4, 3), float("nan")), 8, 1.0, 0.1), "xyz"),
    (lambda: voxelize(torch.zeros(1, 4, 3), 0, 1.0, 0.1), "n_grid"),
    (lambda: voxelize(torch.zeros(1, 4, 3), 1, 1.0, 0.1), "n_grid"),
    (lambda: voxelize(torch.zeros(1, 4, 3), 8, -1.0, 0.1), "grid_width"),
    (lambda: voxelize(torch.zeros(1, 4, 3), 8, 1.0, 0.0), "sigma"),
    (lambda: voxelize(torch.zeros(1, 4, 3), 8, 1.0, float("inf")), "sigma"),
    (lambda: collapse(torch.zeros(1, 4, 8, 8), 8, 1.0), "vox"),
    (lambda: collapse(torch.ones(1, 4, 8, 8, 7), 8, 1.0), "vox"),
    (lambda: collapse(torch.full((1, 1, 8, 8, 8), float("inf")), 8, 1.0), "vox"),
    (lambda: collapse(torch.ones(1, 1, 8, 8, 8), 8, 0.0), "grid_width"),
    (lambda: random_rotations(0), "batch_size"),
    (lambda: apply_rotation(torch.zeros(2, 4, 3), torch.eye(3).expand(3, 3, 3)), "rotation"),
    (lambda: apply_rotation(torch.zeros(2, 4), torch.eye(3)), "xyz"),
    (lambda: mean_centre(torch.zeros(2, 4, 3), reference=torch.zeros(3, 4, 3)), "reference"),
])
def test_bad_input_raises_value_error_naming_argument(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()
