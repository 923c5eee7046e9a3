"""Loss terms of the temporally coherent cVAE, eq. 3 of Shmilovich et al. (2022) (section 2.3).

For a single sample the paper defines

    L = L_VOX + L_AA + L_CG + L_EDM + lambda L_ENERGY + beta L_KLD
    L_VOX    = 1/(d^3 N) ||VOX_AA - VOX_AA^||_F^2
    L_AA     = 1/(3N)    ||AA - AA^||_F^2
    L_CG     = 1/(3n)    ||CG - f_cg(AA^)||_F^2
    L_EDM    = 1/(2N^2)  ||EDM_AA - EDM_AA^||_F^2
    L_ENERGY = (U_AA - U_AA^)^2,   U_AA^ capped at U_max (SI 4.1)
    L_KLD    = D_KL(q(z | x) || N(0, I))

Every function here returns the *batch mean* of the per-sample term, i.e. a
0-d tensor.  Units: coordinates nm (L_AA, L_CG: nm^2; L_EDM: nm^2 with EDM the
matrix of Euclidean distances |x_i - x_j|), energies kJ/mol (L_ENERGY:
(kJ/mol)^2); L_VOX and L_KLD are dimensionless (L_KLD in nats, summed over
latent dimensions).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = [
    "vox_loss", "aa_loss", "cg_loss", "edm_loss", "energy_loss", "kld_loss",
    "distance_matrix", "map_to_cg", "total_loss",
]

EnergyFn = Callable[[torch.Tensor], torch.Tensor]


def _same_shape(a: torch.Tensor, b: torch.Tensor, na: str, nb: str, shape_doc: str) -> None:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise ValueError(f"{na} and {nb} must be tensors of shape {shape_doc}")
    if a.shape != b.shape:
        raise ValueError(f"{na} and {nb} must have the same shape {shape_doc}, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")


def _xyz(x: torch.Tensor, name: str, shape_doc: str = "[B, N, 3]") -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must have shape {shape_doc} (nm), got {shape}")


def vox_loss(vox_pred: torch.Tensor, vox_target: torch.Tensor) -> torch.Tensor:
    """L_VOX: vox_pred, vox_target [B, N, d, d, d] -> mean over batch of ||.||_F^2 / (d^3 N)."""
    _same_shape(vox_pred, vox_target, "vox_pred", "vox_target", "[B, N, d, d, d]")
    if vox_pred.ndim != 5:
        raise ValueError(f"vox_pred must have shape [B, N, d, d, d], got {tuple(vox_pred.shape)}")
    return ((vox_pred - vox_target) ** 2).mean()


def aa_loss(xyz_pred: torch.Tensor, xyz_target: torch.Tensor) -> torch.Tensor:
    """L_AA: xyz_pred, xyz_target [B, N, 3] nm -> mean over batch of ||.||_F^2 / (3N), nm^2."""
    _xyz(xyz_pred, "xyz_pred")
    _same_shape(xyz_pred, xyz_target, "xyz_pred", "xyz_target", "[B, N, 3]")
    return ((xyz_pred - xyz_target) ** 2).mean()


def map_to_cg(xyz: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
    """f_cg for a linear CG map: xyz [B, N, 3] nm, mapping [n, N] -> [B, n, 3] nm (CG_I = sum_i M_Ii x_i)."""
    _xyz(xyz, "xyz")
    if not isinstance(mapping, torch.Tensor) or mapping.ndim != 2 or mapping.shape[1] != xyz.shape[1]:
        shape = tuple(mapping.shape) if isinstance(mapping, torch.Tensor) else type(mapping).__name__
        raise ValueError(f"mapping must have shape [n_beads, {xyz.shape[1]}], got {shape}")
    return torch.einsum("Ii,bic->bIc", mapping.to(xyz.dtype), xyz)


def cg_loss(xyz_pred: torch.Tensor, cg_target: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
    """L_CG: xyz_pred [B, N, 3], cg_target [B, n, 3] nm, mapping [n, N] -> mean of ||CG - M AA^||_F^2 / (3n).

    ``cg_target`` must be in the same frame as ``xyz_pred`` (same centring and
    rotation); with rows of ``mapping`` summing to 1 a common translation of
    AA and CG leaves the loss unchanged.
    """
    _xyz(cg_target, "cg_target", "[B, n, 3]")
    cg_pred = map_to_cg(xyz_pred, mapping)
    _same_shape(cg_pred, cg_target, "mapping @ xyz_pred", "cg_target", "[B, n, 3]")
    return ((cg_pred - cg_target) ** 2).mean()


def distance_matrix(xyz: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix: xyz [B, N, 3] nm -> [B, N, N] nm, D_ij = |x_i - x_j|.

    The diagonal is exactly 0 with zero gradient (sqrt is never taken at 0 on
    the diagonal; coincident distinct particles are clamped to 1e-12 nm^2).
    """
    _xyz(xyz, "xyz")
    sq = ((xyz[:, :, None, :] - xyz[:, None, :, :]) ** 2).sum(-1)
    eye = torch.eye(xyz.shape[1], dtype=torch.bool, device=xyz.device)
    sq = torch.where(eye, torch.ones_like(sq), sq.clamp_min(1e-12))
    return torch.where(eye, torch.zeros_like(sq), sq.sqrt())


def edm_loss(xyz_pred: torch.Tensor, xyz_target: torch.Tensor) -> torch.Tensor:
    """L_EDM: xyz_pred, xyz_target [B, N, 3] nm -> mean over batch of ||EDM - EDM^||_F^2 / (2 N^2), nm^2."""
    _xyz(xyz_pred, "xyz_pred")
    _same_shape(xyz_pred, xyz_target, "xyz_pred", "xyz_target", "[B, N, 3]")
    diff = distance_matrix(xyz_pred) - distance_matrix(xyz_target)
    return (diff ** 2).mean() / 2.0


def energy_loss(xyz_pred: torch.Tensor, energy_fn: EnergyFn, *, u_target: torch.Tensor | None = None,
                xyz_target: torch.Tensor | None = None, u_max: float | None = None) -> torch.Tensor:
    """L_ENERGY = mean over batch of (U_AA - min(U_AA^, U_max))^2, (kJ/mol)^2.

    Parameters
    ----------
    xyz_pred : [B, N, 3] nm, reconstructed AA(t)
    energy_fn : callable, positions [B, N, 3] nm -> potential energies [B] kJ/mol
        (differentiable w.r.t. positions)
    u_target : [B] kJ/mol, optional; U_AA of the targets.  When None it is
        computed as ``energy_fn(xyz_target)`` without gradient.
    xyz_target : [B, N, 3] nm, needed only when ``u_target`` is None
    u_max : float kJ/mol or None
        SI 4.1: the reconstructed energy is clamped "to be at most U_max"
        (torch.clamp(max=U_max)); a clamped sample contributes no gradient.
    """
    _xyz(xyz_pred, "xyz_pred")
    b = xyz_pred.shape[0]
    if u_target is None:
        if xyz_target is None:
            raise ValueError("energy_loss needs u_target [B] (kJ/mol) or xyz_target [B, N, 3] (nm)")
        _same_shape(xyz_pred, xyz_target, "xyz_pred", "xyz_target", "[B, N, 3]")
        with torch.no_grad():
            u_target = energy_fn(xyz_target)
    if not isinstance(u_target, torch.Tensor) or u_target.shape != (b,):
        raise ValueError(f"u_target must have shape [{b}] (kJ/mol)")
    u_pred = energy_fn(xyz_pred)
    if not isinstance(u_pred, torch.Tensor) or u_pred.shape != (b,):
        raise ValueError(f"energy_fn must return energies of shape [{b}] (kJ/mol)")
    if u_max is not None:
        u_pred = u_pred.clamp(max=float(u_max))
    return ((u_target.to(u_pred.dtype) - u_pred) ** 2).mean()


def kld_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """L_KLD = D_KL(N(mu, diag exp(logvar)) || N(0, I)), summed over latent dims, mean over batch.

    mu, logvar [B, d_latent]; closed form -1/2 sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j)), nats.
    """
    _same_shape(mu, logvar, "mu", "logvar", "[B, d_latent]")
    if mu.ndim != 2:
        raise ValueError(f"mu must have shape [B, d_latent], got {tuple(mu.shape)}")
    return (-0.5 * (1.0 + logvar - mu ** 2 - logvar.exp()).sum(dim=1)).mean()


def total_loss(vox_pred: torch.Tensor, vox_target: torch.Tensor, xyz_pred: torch.Tensor,
               xyz_target: torch.Tensor, cg_target: torch.Tensor, mapping: torch.Tensor,
               mu: torch.Tensor, logvar: torch.Tensor, *, lam: float, beta: float,
               energy_fn: EnergyFn | None = None, u_target: torch.Tensor | None = None,
               u_max: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 3: L = L_VOX + L_AA + L_CG + L_EDM + lam L_ENERGY + beta L_KLD (batch means).

    Shapes as in the single-term functions: vox_* [B, N, d, d, d]; xyz_* [B, N, 3]
    nm; cg_target [B, n, 3] nm; mapping [n, N]; mu, logvar [B, d_latent].
    ``lam`` and ``beta`` come from the schedules (eqs. 5, 6).  L_ENERGY is
    evaluated only when ``lam > 0`` and ``energy_fn`` is given (avoids
    0 * inf = NaN from early, unphysical reconstructions); otherwise it is left
    out of the total and out of the log dict.

    Returns (total, terms): total is a 0-d tensor to back-propagate; terms maps
    "vox", "aa", "cg", "edm", ["energy"], "kld", "total", "lambda", "beta" to floats.
    """
    for name, v in (("lam", lam), ("beta", beta)):
        try:
            fv = float(v)
        except (TypeError, ValueError):
            fv = float("nan")
        if isinstance(v, bool) or not math.isfinite(fv) or fv < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    lam, beta = float(lam), float(beta)
    terms_t = {
        "vox": vox_loss(vox_pred, vox_target),
        "aa": aa_loss(xyz_pred, xyz_target),
        "cg": cg_loss(xyz_pred, cg_target, mapping),
        "edm": edm_loss(xyz_pred, xyz_target),
        "kld": kld_loss(mu, logvar),
    }
    total = terms_t["vox"] + terms_t["aa"] + terms_t["cg"] + terms_t["edm"] + beta * terms_t["kld"]
    if lam > 0 and energy_fn is not None:
        terms_t["energy"] = energy_loss(xyz_pred, energy_fn, u_target=u_target, xyz_target=xyz_target,
                                        u_max=u_max)
        total = total + lam * terms_t["energy"]
    terms = {k: float(v.detach()) for k, v in terms_t.items()}
    terms.update(total=float(total.detach()), **{"lambda": float(lam), "beta": float(beta)})
    return total, terms
