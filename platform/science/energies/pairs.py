"""Pair terms without cutoff (Lennard-Jones, Coulomb, OBC implicit solvent), with analytic gradients.

Every pair quantity is a dense, symmetric ``[B, N, N]`` matrix over all atom
pairs of B frames: no index lists, so each term is a handful of elementwise
operations and row sums that vectorise (and fuse under ``torch.compile``).
The gradient of a pair energy ``E = sum_{i<j} e(r_ij)`` is assembled from the
pair weights ``G_ij = e'(r_ij) / r_ij`` as ``dE/dx_i = sum_j G_ij (x_i - x_j)``
(row sums).  The Born-radius chain rule gives ordered-pair weights ``A_ij``
(from ``dE/dB_i dB_i/dI_ij``) that act on both atoms; their share
``sum_j A_ji (x_i - x_j)`` is taken as a column sum, never by transposing a
``[B, N, N]`` matrix (a transposed read costs inductor a third of the kernel).

Functional forms (OpenMM Reference platform):

* NonbondedForce, NoCutoff: ``E = 4 eps ((s/r)^12 - (s/r)^6) + C q_i q_j / r``
  with Lorentz-Berthelot ``s = (s_i + s_j)/2``, ``eps = sqrt(eps_i eps_j)``;
  exceptions replace the pair's parameters (``chargeProd``, ``s``, ``eps``).
* GBSAOBCForce (OBC II, ``alpha, beta, gamma = 1.0, 0.8, 4.85``, dielectric
  offset 0.009 nm, probe radius 0.14 nm, ACE non-polar term): with
  ``rho_i = radius_i - 0.009`` and ``s_j = rho_j scale_j``, for every ordered
  pair j != i with ``rho_i < r + s_j``:
  ``L = 1/max(rho_i, |r - s_j|)``, ``U = 1/(r + s_j)``,
  ``I_ij = L - U + r/4 (U^2 - L^2) + ln(U/L)/(2r) + s_j^2/(4r) (L^2 - U^2)``
  ``[+ 2 (1/rho_i - L)`` if ``rho_i < s_j - r``], ``psi_i = rho_i/2 sum_j I_ij``,
  ``1/B_i = 1/rho_i - tanh(alpha psi - beta psi^2 + gamma psi^3) / radius_i``;
  polar ``= P (sum_{i<j} q_i q_j / f_ij + sum_i q_i^2 / (2 B_i))`` with
  ``f_ij = sqrt(r^2 + B_i B_j exp(-r^2 / (4 B_i B_j)))`` and
  ``P = -C (1/eps_solute - 1/eps_solvent)``; non-polar
  ``= 4 pi gamma_SA sum_i (radius_i + 0.14)^2 (radius_i / B_i)^6`` over B_i > 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from finegrain.platform.science.energies.terms import (
    OBC_ALPHA_BETA_GAMMA,
    OBC_OFFSET,
    OBC_PROBE_RADIUS,
    ONE_4PI_EPS0,
    obc_prefactor,
)

__all__ = ["PAIR_TERMS", "pair_tables", "pair_energies"]

#: Order of the energies pair_energies returns.
PAIR_TERMS = ("lj", "coulomb", "solvation")


def pair_tables(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Dense per-pair and per-atom parameters of a parameter set (see parameters.py), float64.

    Returns {"eye" [N, N] identity, "sig6", "eps4", "qq" [N, N] (nm^6, kJ/mol,
    kJ/mol nm; exceptions substituted, zero on the diagonal), "rho", "s", "radius" [N] nm,
    "qgb" [N, N] P q_i q_j off the diagonal, "self_gb" [N] P q_i^2 / 2,
    "ace" [N] 4 pi gamma_SA (radius + 0.14)^2 (kJ/mol)}.  Both symmetric
    entries of an exception pair are replaced.
    """
    n = int(p["n_atoms"])
    off = 1.0 - np.eye(n)
    q, s, e = p["nb_charge"], p["nb_sigma"], p["nb_epsilon"]
    sig = 0.5 * (s[:, None] + s[None, :])
    eps = np.sqrt(e[:, None] * e[None, :])
    qq = ONE_4PI_EPS0 * q[:, None] * q[None, :]
    exc = p["exc_idx"].reshape(-1, 2)
    for a, b in ((exc[:, 0], exc[:, 1]), (exc[:, 1], exc[:, 0])):
        sig[a, b], eps[a, b], qq[a, b] = p["exc_sigma"], p["exc_epsilon"], ONE_4PI_EPS0 * p["exc_charge_prod"]
    prefactor = obc_prefactor(*(float(v) for v in p["gb_dielectrics"]))
    rho = p["gb_radius"] - OBC_OFFSET
    return {
        "eye": np.eye(n),  # a table, not torch.eye in the graph: inductor vectorises the distance loop then
        "sig6": off * sig**6,
        "eps4": off * 4.0 * eps,
        "qq": off * qq,
        "rho": rho,
        "s": rho * p["gb_scale"],
        "radius": p["gb_radius"].astype(np.float64),
        "qgb": off * prefactor * np.outer(p["gb_charge"], p["gb_charge"]),
        "self_gb": 0.5 * prefactor * p["gb_charge"] ** 2,
        "ace": 4.0 * math.pi * float(p["gb_surface_area_energy"]) * (p["gb_radius"] + OBC_PROBE_RADIUS) ** 2,
    }


def _born_radii(r, inv_r, inv_r2, off, rho, s, radius, want_grad: bool):
    """OBC II Born radii [B, N] (nm) from pair distances r [B, N, N] (off [N, N]: 0 on the ignored diagonal).

    With want_grad also returns (dB/dpsi * rho/2 [B, N], dI_ij/dr [B, N, N]),
    the factors that carry dE/dB_i back to the pair distances.
    """
    alpha, beta, gamma = OBC_ALPHA_BETA_GAMMA
    rho_i, s_j = rho[:, None], s[None, :]
    active = (rho_i < r + s_j).to(r.dtype) * off
    inside = (rho_i < s_j - r).to(r.dtype)
    u = torch.reciprocal(r + s_j)
    r_s = r - s_j
    den = torch.maximum(rho_i.expand_as(r), torch.abs(r_s))
    low = torch.reciprocal(den)
    log_ul = torch.log(den * u)
    diff_sq = low * low - u * u
    s2 = s_j * s_j
    lever = r - s2 * inv_r
    integral = (low - u) - 0.25 * diff_sq * lever + 0.5 * inv_r * log_ul + 2.0 * inside * (1.0 / rho_i - low)
    psi = 0.5 * rho * (integral * active).sum(-1)
    t = torch.tanh(psi * (alpha - psi * (beta - gamma * psi)))
    born = torch.reciprocal(torch.reciprocal(rho) - t / radius)
    if not want_grad:
        return born, None
    d_den = torch.where(torch.abs(r_s) > rho_i, torch.sign(r_s), torch.zeros_like(r_s))
    d_low, d_u = -low * low * d_den, -u * u
    d_integral = (
        (d_low - d_u)
        - 0.5 * (low * d_low - u * d_u) * lever
        - 0.25 * diff_sq * (1.0 + s2 * inv_r2)
        + 0.5 * inv_r * (d_den * low - u)
        - 0.5 * inv_r2 * log_ul
        - 2.0 * inside * d_low
    )
    dborn_dpsi = born * born * (1.0 - t * t) * (alpha - psi * (2.0 * beta - 3.0 * gamma * psi)) / radius
    return born, (dborn_dpsi * 0.5 * rho, d_integral * active)


def pair_energies(pos: torch.Tensor, tables: dict[str, torch.Tensor], *, nonbonded: bool, gbsa: bool,
                  r_min: float | None = None, grad: str | None = None):  # fmt: skip
    """Lennard-Jones, Coulomb and OBC solvation energies of frames pos [B, N, 3] (nm).

    tables: :func:`pair_tables` as tensors of pos's dtype/device.
    nonbonded / gbsa: whether the system has the NonbondedForce / GBSAOBCForce.
    r_min (nm): if given, pair distances below r_min are replaced by the smooth
    floor r_eff = (r_min^2 + r^2) / (2 r_min) (>= r_min/2; equal value and
    slope at r = r_min): the training-safety mode, in which overlapping atoms
    give large but finite energies and gradients that still push them apart.
    grad: None (energies only), "terms" (dE_t/dx of each term) or "total"
    (d(sum_t E_t)/dx: one pair-weight reduction instead of three).
    Returns (energies [B, 3] kJ/mol in :data:`PAIR_TERMS` order, gradients
    [B, T, N, 3] kJ/mol/nm with T = 3 ("terms") or 1 ("total"), or None).
    """
    want_grad = grad is not None
    eye = tables["eye"]
    d = [c[:, :, None] - c[:, None, :] for c in pos.unbind(-1)]  # x_i - x_j per component, [B, N, N] each
    r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2] + eye  # unit diagonal keeps 1/r finite; every diagonal weight is 0
    inv_r = weight = torch.rsqrt(r2)  # weight = (d r_eff / d r) / r
    r = r2 * inv_r
    if r_min is not None:  # pairs farther than r_min keep exactly the values above
        near = r2 < r_min * r_min
        r_floor = (r_min * r_min + r2) / (2.0 * r_min)
        r = torch.where(near, r_floor, r)
        inv_r = torch.where(near, torch.reciprocal(r_floor), inv_r)
        weight = torch.where(near, torch.full_like(r, 1.0 / r_min), weight)
    inv_r2 = inv_r * inv_r
    zero = pos.new_zeros(pos.shape[0])
    energies, de_dr = [zero, zero, zero], [None, None, None]
    born_w = None  # ordered-pair weights of the Born-radius chain rule, which act on i and on j
    if nonbonded:
        s6 = tables["sig6"] * (inv_r2 * inv_r2 * inv_r2)
        lj = tables["eps4"] * (s6 * s6 - s6)
        coulomb = tables["qq"] * inv_r
        energies[0], energies[1] = 0.5 * lj.sum((1, 2)), 0.5 * coulomb.sum((1, 2))
        if want_grad:
            de_dr[0] = tables["eps4"] * (6.0 * s6 - 12.0 * s6 * s6) * inv_r
            de_dr[1] = -coulomb * inv_r
    if gbsa:
        born, carry = _born_radii(r, inv_r, inv_r2, 1.0 - eye, tables["rho"], tables["s"], tables["radius"], want_grad)
        inv_born = torch.reciprocal(born)
        bb = born[:, :, None] * born[:, None, :]
        r_sq = r * r
        x_bb = 0.25 * r_sq * (inv_born[:, :, None] * inv_born[:, None, :])  # r^2 / (4 B_i B_j)
        ex = torch.exp(-x_bb)
        inv_f = torch.rsqrt(r_sq + bb * ex)
        polar = tables["qgb"] * inv_f
        ratio = tables["radius"] * inv_born
        ratio3 = ratio * ratio * ratio
        nonpolar = torch.where(born > 0, tables["ace"] * ratio3 * ratio3, torch.zeros_like(born))
        energies[2] = 0.5 * polar.sum((1, 2)) + (tables["self_gb"] * inv_born).sum(-1) + nonpolar.sum(-1)
        if want_grad:
            polar_f2 = polar * inv_f * inv_f  # q q / f^3
            de_dborn = (
                -0.5 * (polar_f2 * ex * (1.0 + x_bb) * born[:, None, :]).sum(-1)
                - (tables["self_gb"] * inv_born + 6.0 * nonpolar) * inv_born
            )
            chain = (de_dborn * carry[0])[:, :, None] * carry[1]  # dE/dI_ij dI_ij/dr, ordered pairs
            de_dr[2] = -polar_f2 * r * (1.0 - 0.25 * ex) + chain
            born_w = chain * weight
    energies = torch.stack(energies, -1)
    if not want_grad:
        return energies, None
    if grad == "total":
        pair_w, born_ws = [sum(g for g in de_dr if g is not None) * weight], [born_w]
    else:
        pair_w, born_ws = [torch.zeros_like(r) if g is None else g * weight for g in de_dr], [None, None, born_w]
    grads = []
    for w, w_born in zip(pair_w, born_ws):  # dE/dx_i = sum_j w_ij (x_i - x_j) + sum_j w_born_ji (x_i - x_j)
        g = [(w * c).sum(-1) for c in d]
        if w_born is not None:  # a column sum: no transposed [B, N, N] read
            g = [g_c - (w_born * c).sum(1) for g_c, c in zip(g, d)]
        grads.append(torch.stack(g, -1))
    return energies, torch.stack(grads, 1)
