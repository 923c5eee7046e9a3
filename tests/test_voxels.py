"""Tests for finegrain.platform.voxels (paper 001, eqs. 1 and 2).

Round-trip error of collapse(voxelize(x)), derived analytically
----------------------------------------------------------------
eq. 1 is separable, exp(-|x - mu|^2 / 2s^2) = prod_axes exp(-(x_a - mu_a)^2 / 2s^2),
so the 3-D density-weighted average (eq. 2) equals the 1-D weighted average
along each axis.  On an infinite 1-D grid x_j = x_0 + j h (h = grid_width /
(d - 1)), Poisson summation of g(u) = exp(-u^2 / 2s^2), whose Fourier transform
is G(nu) = sqrt(2 pi) s exp(-2 pi^2 s^2 nu^2), and of u g(u) (transform
-2 pi i s^2 nu G(nu)) gives, with q = exp(-2 pi^2 s^2 / h^2) and
theta = 2 pi (x_0 - mu) / h,

    collapse - mu = delta(mu) = (4 pi s^2 / h) sum_k k q^(k^2) sin(k theta)
                                / (1 + 2 sum_k q^(k^2) cos(k theta)),   k >= 1,

    |delta| <= delta_max = (4 pi s^2 / h) sum_k k q^(k^2) / (1 - 2 sum_k q^(k^2)).

The finite grid drops the terms farther than D = |mu - edge| from mu; for
D >= 6 s they weigh < exp(-18) ~ 1.5e-8 relative to the sum, times a lever arm
of order s (< 0.12 nm here): < 2e-9 nm.  So the round trip must match
mu + delta(mu) to 1e-8 nm (float64; observed <= 2e-12) and stay within
delta_max.  For Table 1's ADP grid (d = 12, r_grid = 1.8 nm,
s = 0.05398 nm; s/h = 0.33) delta_max = 0.034 nm: the paper's grid cannot
reproduce an isolated Gaussian exactly; a wider s/h shrinks it
exponentially (d = 16, r_grid = 1.8, s = 0.1: delta_max ~ 1e-6 nm).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from finegrain.platform.voxels import (
    apply_rotation,
    collapse,
    grid_points,
    mean_centre,
    random_rotations,
    voxelize,
)


def poisson_offset(mu: np.ndarray, n_grid: int, width: float, sigma: float, kmax: int = 8) -> np.ndarray:
    """delta(mu) of the module docstring (infinite-grid centroid bias), nm."""
    h = width / (n_grid - 1)
    q = math.exp(-2 * math.pi ** 2 * sigma ** 2 / h ** 2)
    theta = 2 * math.pi * (-width / 2 - mu) / h
    num = sum(k * q ** (k * k) * np.sin(k * theta) for k in range(1, kmax))
    den = 1 + 2 * sum(q ** (k * k) * np.cos(k * theta) for k in range(1, kmax))
    return 4 * math.pi * sigma ** 2 / h * num / den


def delta_max(n_grid: int, width: float, sigma: float, kmax: int = 8) -> float:
    h = width / (n_grid - 1)
    q = math.exp(-2 * math.pi ** 2 * sigma ** 2 / h ** 2)
    s1 = sum(k * q ** (k * k) for k in range(1, kmax))
    s0 = sum(q ** (k * k) for k in range(1, kmax))
    return 4 * math.pi * sigma ** 2 / h * s1 / (1 - 2 * s0)


GRIDS = [(12, 1.8, 0.05398), (8, 1.6, 0.12), (16, 1.8, 0.1)]  # Table 1 ADP, smoke preset, fine


@pytest.mark.parametrize("n_grid,width,sigma", GRIDS)
def test_round_trip_matches_poisson_sum(n_grid, width, sigma):
    gen = torch.Generator().manual_seed(0)
    half = width / 2 - 6 * sigma  # >= 6 sigma from every edge
    xyz = (torch.rand(3, 50, 3, generator=gen, dtype=torch.float64) * 2 - 1) * half
    back = collapse(voxelize(xyz, n_grid, width, sigma), n_grid, width)
    expected = xyz.numpy() + poisson_offset(xyz.numpy(), n_grid, width, sigma)
    np.testing.assert_allclose(back.numpy(), expected, rtol=0, atol=1e-8)
    err = (back - xyz).abs().max().item()
    bound = delta_max(n_grid, width, sigma)
    assert err <= bound + 1e-8
    if bound > 1e-3:  # the bound is attained, not loose: 150 random points come close
        assert err > 0.5 * bound


def test_adp_grid_bound_value():
    # the number quoted in the module docstring
    assert delta_max(12, 1.8, 0.05398) == pytest.approx(0.0342, abs=5e-4)


def test_round_trip_float32():
    n_grid, width, sigma = 16, 1.8, 0.1
    gen = torch.Generator().manual_seed(1)
    xyz = (torch.rand(4, 20, 3, generator=gen) * 2 - 1) * (width / 2 - 6 * sigma)
    back = collapse(voxelize(xyz, n_grid, width, sigma), n_grid, width)
    assert back.dtype == torch.float32
    # delta_max ~ 1e-6 nm plus float32 round-off of ~4096-term sums (~1e-6 nm)
    assert (back - xyz).abs().max().item() < delta_max(n_grid, width, sigma) + 2e-5


def test_points_on_grid_nodes_collapse_exactly():
    # theta = 0 mod 2 pi -> delta = 0: a particle on a grid node is recovered exactly
    n_grid, width, sigma = 12, 1.8, 0.05398
    g = grid_points(n_grid, width, dtype=torch.float64)
    xyz = torch.stack([g[[4, 5, 6]], g[[6, 7, 5]]])[None]  # [1, 2, 3]
    back = collapse(voxelize(xyz, n_grid, width, sigma), n_grid, width)
    torch.testing.assert_close(back, xyz, rtol=0, atol=1e-12)


def test_voxelize_matches_bruteforce_eq1():
    n_grid, width, sigma = 6, 1.2, 0.2
    xyz = torch.tensor([[[0.1, -0.2, 0.3], [0.0, 0.05, -0.4]]], dtype=torch.float64)
    g = np.linspace(-width / 2, width / 2, n_grid)
    X, Y, Z = np.meshgrid(g, g, g, indexing="ij")
    pts = np.stack([X, Y, Z], -1)  # [d, d, d, 3]
    ref = np.stack([np.exp(-((pts - p) ** 2).sum(-1) / (2 * sigma ** 2)) for p in xyz[0].numpy()])
    vox = voxelize(xyz, n_grid, width, sigma)
    assert vox.shape == (1, 2, n_grid, n_grid, n_grid)
    np.testing.assert_allclose(vox[0].numpy(), ref, rtol=1e-12, atol=0)
    np.testing.assert_allclose(grid_points(n_grid, width, dtype=torch.float64).numpy(), g, rtol=0, atol=1e-15)


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
