"""Bonded force-field terms with analytic gradients, as pure torch functions.

A term's atoms come in *slots*: slot c holds the coordinates of atom c of
every term, as a tuple ``(x, y, z)`` of tensors (nm) over frames and terms,
and the parameters broadcast against them (TorchForceField passes ``[M, B]``
coordinates of M terms in B frames with ``[M, 1]`` parameters; ``[B, M]``
with ``[M]`` works alike).  Each function returns ``(energy kJ/mol, grads)``
of that shape, where ``grads`` is a list with one such tuple per slot holding
dE/dx of that slot's atom (kJ/mol/nm), or None when ``want_grad`` is False.  Gradients are
the closed forms OpenMM's Reference platform uses (Blondel and Karplus 1996
for torsions); they are finite at degenerate geometries where the energy is
finite (coincident bonded atoms, collinear angles and torsions): there the
undefined direction gets a zero gradient.

Functional forms (as OpenMM):

* HarmonicBondForce      ``E = 1/2 k (r - r0)^2``
* HarmonicAngleForce     ``E = 1/2 k (theta - theta0)^2``
* PeriodicTorsionForce   ``E = k (1 + cos(n phi - phi0))`` (IUPAC sign of phi)

Pair terms (Lennard-Jones, Coulomb, OBC implicit solvent) are in
:mod:`~finegrain.platform.science.energies.pairs`.  ``C`` = :data:`ONE_4PI_EPS0`
kJ mol^-1 nm e^-2, from the CODATA-2018 constants OpenMM uses.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "ONE_4PI_EPS0",
    "OBC_OFFSET",
    "OBC_PROBE_RADIUS",
    "OBC_ALPHA_BETA_GAMMA",
    "Vec",
    "bond_terms",
    "angle_terms",
    "torsion_terms",
    "dihedral",
    "obc_prefactor",
    "soft_cap",
]

_EPSILON0 = 1e-6 * 8.8541878128e-12 / (1.602176634e-19**2 * 6.02214076e23)
#: Coulomb constant 1/(4 pi eps0) in kJ mol^-1 nm e^-2 (CODATA 2018, as OpenMM).
ONE_4PI_EPS0 = 1.0 / (4.0 * math.pi * _EPSILON0)
#: OBC dielectric offset (nm) subtracted from every atomic radius.
OBC_OFFSET = 0.009
#: Solvent probe radius (nm) of the ACE non-polar term.
OBC_PROBE_RADIUS = 0.14
#: OBC II tanh coefficients (Onufriev, Bashford, Case 2004, eq. 8).
OBC_ALPHA_BETA_GAMMA = (1.0, 0.8, 4.85)

_TINY = 1e-20  # nm^2: below this a squared length counts as zero (guards only)

#: A batch of 3-vectors as components (x, y, z), each e.g. [M, B].  Per-component
#: arithmetic keeps every intermediate a plain 2-d tensor (no slicing of
#: [B, M, 3] tensors), which is faster in eager mode and fuses under torch.compile.
Vec = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _sub(a: Vec, b: Vec) -> Vec:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def _dot(a: Vec, b: Vec) -> torch.Tensor:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a: Vec, b: Vec) -> Vec:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _scale(a: Vec, s: torch.Tensor) -> Vec:
    return (a[0] * s, a[1] * s, a[2] * s)


def _axpy(s: torch.Tensor, a: Vec, b: Vec) -> Vec:
    """s a + b."""
    return (s * a[0] + b[0], s * a[1] + b[1], s * a[2] + b[2])


def _neg(a: Vec) -> Vec:
    return (-a[0], -a[1], -a[2])


def _safe_sqrt(x2: torch.Tensor) -> torch.Tensor:
    """sqrt(x2), 0 where x2 ~ 0 (no NaN/inf anywhere downstream)."""
    ok = x2 > _TINY
    return torch.where(ok, torch.sqrt(torch.where(ok, x2, torch.ones_like(x2))), torch.zeros_like(x2))


def _safe_inv(x: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """1/x where ok, else 0."""
    return torch.where(ok, torch.reciprocal(torch.where(ok, x, torch.ones_like(x))), torch.zeros_like(x))


def _safe_atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """atan2(y, x), 0 at y = x = 0."""
    bad = (x * x + y * y) <= _TINY * _TINY
    return torch.atan2(torch.where(bad, torch.zeros_like(y), y), torch.where(bad, torch.ones_like(x), x))


# ----------------------------------------------------------------------------
# bonded terms
# ----------------------------------------------------------------------------
def bond_terms(x0: Vec, x1: Vec, length: torch.Tensor, k: torch.Tensor, want_grad: bool = True):
    """Harmonic bonds x0-x1. length nm; k kJ/mol/nm^2 (per term) -> (energy kJ/mol, [g0, g1] or None)."""
    d = _sub(x1, x0)
    r2 = _dot(d, d)
    r = _safe_sqrt(r2)
    stretch = r - length
    energy = 0.5 * k * stretch * stretch
    if not want_grad:
        return energy, None
    g1 = _scale(d, k * stretch * _safe_inv(r, r2 > _TINY))  # dE/dr * d/r
    return energy, [_neg(g1), g1]


def angle_terms(x0: Vec, x1: Vec, x2: Vec, theta0: torch.Tensor, k: torch.Tensor, want_grad: bool = True):
    """Harmonic angles x0-x1-x2 at x1. theta0 rad; k kJ/mol/rad^2 -> (energy kJ/mol, [g0, g1, g2] or None).

    theta = atan2(|u x v|, u . v) with u = x0 - x1, v = x2 - x1 (accurate near
    0 and pi); dtheta/du = (u x p) / (|u|^2 |p|), dtheta/dv = (p x v) / (|v|^2 |p|), p = u x v.
    """
    u, v = _sub(x0, x1), _sub(x2, x1)
    p = _cross(u, v)
    p2 = _dot(p, p)
    p_norm = _safe_sqrt(p2)
    theta = _safe_atan2(p_norm, _dot(u, v))
    delta = theta - theta0
    energy = 0.5 * k * delta * delta
    if not want_grad:
        return energy, None
    de = k * delta
    ok = p2 > _TINY * _TINY
    g0 = _scale(_cross(u, p), de * _safe_inv(_dot(u, u) * p_norm, ok))
    g2 = _scale(_cross(p, v), de * _safe_inv(_dot(v, v) * p_norm, ok))
    g1 = (-g0[0] - g2[0], -g0[1] - g2[1], -g0[2] - g2[2])
    return energy, [g0, g1, g2]


def _dihedral_parts(x0: Vec, x1: Vec, x2: Vec, x3: Vec):
    b1, b2, b3 = _sub(x1, x0), _sub(x2, x1), _sub(x3, x2)
    n1, n2 = _cross(b1, b2), _cross(b2, b3)
    b2_sq = _dot(b2, b2)
    b2_norm = _safe_sqrt(b2_sq)
    phi = _safe_atan2(b2_norm * _dot(b1, n2), _dot(n1, n2))
    return phi, (b1, b2, b3, n1, n2, b2_sq, b2_norm)


def dihedral(x0: Vec, x1: Vec, x2: Vec, x3: Vec) -> torch.Tensor:
    """Dihedral angles (rad, in (-pi, pi]) of the quadruples x0-x1-x2-x3, shaped like the components.

    IUPAC/OpenMM convention: with b1 = x1 - x0, b2 = x2 - x1, b3 = x3 - x2,
    phi = atan2(|b2| b1 . (b2 x b3), (b1 x b2) . (b2 x b3)); trans = pi.
    """
    return _dihedral_parts(x0, x1, x2, x3)[0]


def torsion_terms(x0: Vec, x1: Vec, x2: Vec, x3: Vec, periodicity: torch.Tensor, phase: torch.Tensor,
                  k: torch.Tensor, want_grad: bool = True):  # fmt: skip
    """Periodic torsions. periodicity (float); phase rad; k kJ/mol -> (energy kJ/mol, 4 grads or None).

    dphi/dx0 = -f1, dphi/dx3 = f4, dphi/dx1 = (1 + a) f1 + c f4,
    dphi/dx2 = -(1 + c) f4 - a f1 with f1 = |b2| n1/|n1|^2, f4 = |b2| n2/|n2|^2,
    a = b1.b2/|b2|^2, c = b3.b2/|b2|^2 (Blondel and Karplus 1996).
    """
    phi, (b1, b2, b3, n1, n2, b2_sq, b2_norm) = _dihedral_parts(x0, x1, x2, x3)
    arg = periodicity * phi - phase
    energy = k * (1.0 + torch.cos(arg))
    if not want_grad:
        return energy, None
    de = -k * periodicity * torch.sin(arg)
    n1_sq, n2_sq = _dot(n1, n1), _dot(n2, n2)
    f1 = _scale(n1, de * b2_norm * _safe_inv(n1_sq, n1_sq > _TINY * _TINY))
    f4 = _scale(n2, de * b2_norm * _safe_inv(n2_sq, n2_sq > _TINY * _TINY))
    inv_b2 = _safe_inv(b2_sq, b2_sq > _TINY)
    a, c = _dot(b1, b2) * inv_b2, _dot(b3, b2) * inv_b2
    g1 = _axpy(1.0 + a, f1, _scale(f4, c))
    g2 = _neg(_axpy(1.0 + c, f4, _scale(f1, a)))
    return energy, [_neg(f1), g1, g2, f4]


def obc_prefactor(solute_dielectric: float, solvent_dielectric: float) -> float:
    """-C (1/eps_solute - 1/eps_solvent) in kJ/mol nm e^-2; 0 if either is 0 (as OpenMM)."""
    if solute_dielectric == 0 or solvent_dielectric == 0:
        return 0.0
    return -ONE_4PI_EPS0 * (1.0 / solute_dielectric - 1.0 / solvent_dielectric)


# ----------------------------------------------------------------------------
# training safety
# ----------------------------------------------------------------------------
def soft_cap(u: torch.Tensor, u_max: float, mode: str = "log") -> torch.Tensor:
    """Cap energies u [B] (kJ/mol) at about u_max.

    mode "log" (default): identity for u <= u_max, u_max + log(1 + u - u_max)
    above (continuous with slope 1 at u_max, so C1; the gradient above the cap
    is grad(u) / (1 + u - u_max) ~ grad(log u): bounded, non-zero, and the
    ordering of frames is kept).
    mode "clamp": min(u, u_max) as in Shmilovich et al. (2022) (zero gradient above the cap).
    """
    if mode == "clamp":
        return torch.clamp(u, max=u_max)
    if mode != "log":
        raise ValueError(f"cap: expected 'log' or 'clamp', got {mode!r}")
    over = u > u_max
    excess = torch.where(over, u - u_max, torch.zeros_like(u))
    return torch.where(over, u_max + torch.log1p(excess), u)
