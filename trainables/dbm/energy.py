"""Local potential energy of one CG bead's atoms with their environment: the DeepBackmap energy prior.

Stieffenhofer, Wand and Bereau, "Adversarial reverse mapping of equilibrated
condensed-phase molecular structures", Mach. Learn.: Sci. Technol. 1 (2020),
regularise the generator with the prior ``C_pot = sum_t lambda_t e_t``: the
bond, angle, dihedral and Lennard-Jones energies of the atoms of the current
bead (the atoms the generator just placed) with their local environment
(atoms of other beads within a cutoff).  :class:`LocalEnergy` computes these
``e_t`` batched and differentiably in torch from a plain-array parameter set
(:mod:`finegrain.platform.science.energies.parameters`; no OpenMM needed).

Exactness: moving only a bead's atoms changes the full potential energy
(bonds, angles, periodic torsions, Lennard-Jones; no Coulomb) by exactly the
change of the local energy, provided ``env`` holds every other atom within
the cutoff.  Units: nm, rad, kJ/mol.
"""

from __future__ import annotations

import numpy as np
import torch

from finegrain.platform.science.energies.terms import angle_terms, bond_terms, torsion_terms
from finegrain.platform.science.errors import InputError

__all__ = ["LocalEnergy", "pair_parameters", "REQUIRED_KEYS"]

#: Parameter keys :class:`LocalEnergy` reads.
REQUIRED_KEYS = ("bond_idx", "bond_length", "bond_k", "angle_idx", "angle_theta0", "angle_k", "torsion_idx",
                 "torsion_periodicity", "torsion_phase", "torsion_k", "nb_sigma", "nb_epsilon", "exc_idx",
                 "exc_sigma", "exc_epsilon")
#: Bonded kinds: (name, index key, parameter keys in the order the term function takes them).
_BONDED = (("bond", "bond_idx", ("bond_length", "bond_k")),
           ("angle", "angle_idx", ("angle_theta0", "angle_k")),
           ("torsion", "torsion_idx", ("torsion_periodicity", "torsion_phase", "torsion_k")))
_TERM_FN = {"bond": bond_terms, "angle": angle_terms, "torsion": torsion_terms}
_WIDTH = {"bond": 2, "angle": 3, "torsion": 4}


def _exception_keys(params: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted keys min(i,j) * n + max(i,j) of the exceptions [E], the order that sorts them [E])."""
    idx = np.asarray(params["exc_idx"], dtype=np.int64).reshape(-1, 2)
    keys = np.minimum(idx[:, 0], idx[:, 1]) * n + np.maximum(idx[:, 0], idx[:, 1])
    order = np.argsort(keys, kind="stable")
    return keys[order], order


def pair_parameters(params: dict[str, np.ndarray], i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lennard-Jones (sigma nm, epsilon kJ/mol) of the atom pairs (i, j) (integer arrays of one shape).

    A pair listed in ``exc_idx`` (either order) takes ``exc_sigma``/``exc_epsilon`` (epsilon 0: excluded,
    e.g. 1-2 and 1-3 pairs); any other pair is combined by Lorentz-Berthelot,
    sigma = (s_i + s_j) / 2, epsilon = sqrt(e_i e_j), as OpenMM's NonbondedForce.
    """
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    s, e = np.asarray(params["nb_sigma"], np.float64), np.asarray(params["nb_epsilon"], np.float64)
    sigma, eps = 0.5 * (s[i] + s[j]), np.sqrt(e[i] * e[j])
    keys, order = _exception_keys(params, len(s))
    if keys.size:
        q = np.minimum(i, j) * len(s) + np.maximum(i, j)
        pos = np.clip(np.searchsorted(keys, q), 0, keys.size - 1)
        hit = keys[pos] == q
        sigma = np.where(hit, np.asarray(params["exc_sigma"], np.float64)[order][pos], sigma)
        eps = np.where(hit, np.asarray(params["exc_epsilon"], np.float64)[order][pos], eps)
    return sigma, eps


def _pad(rows: list[np.ndarray], width: int, fill, dtype) -> np.ndarray:
    """Stack variable-length rows [m_b, ...] into [n_rows, max m_b (>= 1), ...] padded with ``fill``."""
    m = max([len(r) for r in rows] + [1])
    out = np.full((len(rows), m, *([width] if width else [])), fill, dtype=dtype)
    for b, r in enumerate(rows):
        out[b, : len(r)] = r
    return out


def _min_image(d: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
    """Minimum-image displacements d [B, ..., 3] in an orthorhombic box [B, 3] (unchanged without a box)."""
    if box is None:
        return d
    edge = box.reshape(box.shape[0], *([1] * (d.dim() - 2)), 3)
    return d - edge * torch.round(d / edge)


class LocalEnergy:
    """Energy (kJ/mol) of the interactions that involve a moving set of atoms (one CG bead's atoms).

    params : a parameter set (:mod:`finegrain.platform.science.energies.parameters`; at least
        :data:`REQUIRED_KEYS`), e.g. from ``extract_parameters(system)`` or ``load_parameters(path)``.
    bead_atoms : [n_beads, L] int, the moving set of each bead, padded with -1.
    lj_cutoff_nm : plain Lennard-Jones cutoff (no shift, switch or dispersion correction).

    Per term t in :data:`TERMS`, ``e_t`` of item b is the sum of: every bond, angle and torsion with at
    least one atom in bead b's set; the LJ pairs (i < j) within the set (exceptions applied); the LJ pairs
    of a set atom with an ``env`` atom (:func:`pair_parameters`).  No Coulomb.
    """

    TERMS = ("bond", "angle", "torsion", "lj")

    def __init__(self, params: dict[str, np.ndarray], bead_atoms: np.ndarray, *, lj_cutoff_nm: float = 1.0):
        if not isinstance(params, dict) or any(k not in params for k in REQUIRED_KEYS):
            missing = [k for k in REQUIRED_KEYS if not isinstance(params, dict) or k not in params]
            raise InputError(f"params: missing keys {missing}")
        if np.asarray(params["nb_sigma"]).ndim != 1:
            raise InputError(f"params: nb_sigma must be [n_atoms], got shape {np.asarray(params['nb_sigma']).shape}")
        n = int(np.asarray(params["nb_sigma"]).shape[0])
        atoms = np.asarray(bead_atoms)
        if atoms.ndim != 2 or not np.issubdtype(atoms.dtype, np.integer):
            raise InputError(f"bead_atoms: expected an int array [n_beads, L], got {atoms.dtype} {atoms.shape}")
        if atoms.size and (atoms.min() < -1 or atoms.max() >= n):
            raise InputError(f"bead_atoms: atom indices must lie in [0, {n}) (-1 pads)")
        if not lj_cutoff_nm > 0:
            raise InputError(f"lj_cutoff_nm: expected > 0, got {lj_cutoff_nm}")
        sets = [np.unique(r[r >= 0]) for r in atoms]
        if any(len(s) != int((r >= 0).sum()) for s, r in zip(sets, atoms)):
            raise InputError("bead_atoms: an atom is listed twice in one bead")
        self.n_atoms, self.n_beads, self.lj_cutoff_nm = n, atoms.shape[0], float(lj_cutoff_nm)
        t: dict[str, torch.Tensor] = {"bead_atoms": torch.as_tensor(atoms.astype(np.int64))}
        for name, key, pkeys in _BONDED:
            idx = np.asarray(params[key], dtype=np.int64)
            if idx.ndim != 2 or idx.shape[1] != _WIDTH[name]:
                raise InputError(f"params: {key} has shape {idx.shape}, expected [M, {_WIDTH[name]}]")
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise InputError(f"params: {key} holds atom indices outside [0, {n})")
            vals = [np.asarray(params[p], np.float64).reshape(-1) for p in pkeys]
            if any(len(v) != len(idx) for v in vals):
                raise InputError(f"params: {', '.join(pkeys)} must have one entry per row of {key}")
            rows = [np.flatnonzero(np.isin(idx, s).any(1)) for s in sets]
            t[f"{name}_idx"] = torch.as_tensor(_pad([idx[r] for r in rows], idx.shape[1], 0, np.int64))
            for p, v in zip(pkeys, vals):  # padding: k = 0 -> exactly zero energy and gradient
                t[p] = torch.as_tensor(_pad([v[r] for r in rows], 0, 0.0, np.float64))
        exc = np.asarray(params["exc_idx"])
        if exc.ndim != 2 or exc.shape[1] != 2 or (exc.size and (exc.min() < 0 or exc.max() >= n)):
            raise InputError(f"params: exc_idx must be [E, 2] atom indices in [0, {n}), got shape {exc.shape}")
        for k in ("nb_epsilon", "exc_sigma", "exc_epsilon"):
            if np.asarray(params[k]).shape != ((n,) if k.startswith("nb") else (len(exc),)):
                raise InputError(f"params: {k} has shape {np.asarray(params[k]).shape}, expected one per "
                                 f"{'atom (as nb_sigma)' if k.startswith('nb') else 'row of exc_idx'}")
        pairs, sig, eps = [], [], []
        for s in sets:  # intra-bead LJ pairs i < j, excluded pairs (epsilon 0) dropped
            i, j = np.triu_indices(len(s), 1)
            ps, pe = pair_parameters(params, s[i], s[j])
            keep = pe != 0
            pairs.append(np.stack([s[i], s[j]], 1)[keep]), sig.append(ps[keep]), eps.append(pe[keep])
        t["intra_idx"] = torch.as_tensor(_pad(pairs, 2, 0, np.int64))
        t["intra_sigma"] = torch.as_tensor(_pad(sig, 0, 0.0, np.float64))
        t["intra_epsilon"] = torch.as_tensor(_pad(eps, 0, 0.0, np.float64))
        keys, order = _exception_keys(params, n)
        t["exc_keys"] = torch.as_tensor(np.concatenate([keys, [n * n]]))  # sentinel above every key: never empty
        t["exc_s"] = torch.as_tensor(np.concatenate([np.asarray(params["exc_sigma"], np.float64)[order], [0.0]]))
        t["exc_e"] = torch.as_tensor(np.concatenate([np.asarray(params["exc_epsilon"], np.float64)[order], [0.0]]))
        t["nb_s"] = torch.as_tensor(np.asarray(params["nb_sigma"], np.float64))
        t["nb_e"] = torch.as_tensor(np.asarray(params["nb_epsilon"], np.float64))
        self._t = t

    def to(self, device) -> "LocalEnergy":
        """Move every table to ``device`` (in place; the device of the call's tensors); returns self."""
        self._t = {k: v.to(device) for k, v in self._t.items()}
        return self

    def _check(self, bead, xyz, env, box) -> None:
        if not torch.is_tensor(xyz) or xyz.dim() != 3 or xyz.shape[1:] != (self.n_atoms, 3) \
                or xyz.dtype not in (torch.float32, torch.float64):
            raise InputError(f"xyz: expected a float tensor [B, {self.n_atoms}, 3] (nm), got "
                             f"{getattr(xyz, 'dtype', type(xyz))} {tuple(getattr(xyz, 'shape', ()))}")
        b = xyz.shape[0]
        if not torch.is_tensor(bead) or bead.shape != (b,) or bead.dtype != torch.int64:
            raise InputError(f"bead: expected a LongTensor [{b}], got {getattr(bead, 'dtype', type(bead))} "
                             f"{tuple(getattr(bead, 'shape', ()))}")
        if b and (int(bead.min()) < 0 or int(bead.max()) >= self.n_beads):
            raise InputError(f"bead: bead indices must lie in [0, {self.n_beads})")
        if not torch.is_tensor(env) or env.dim() != 2 or env.shape[0] != b or env.dtype != torch.int64:
            raise InputError(f"env: expected a LongTensor [{b}, P] (-1 padded), got "
                             f"{getattr(env, 'dtype', type(env))} {tuple(getattr(env, 'shape', ()))}")
        if env.numel() and (int(env.min()) < -1 or int(env.max()) >= self.n_atoms):
            raise InputError(f"env: atom indices must lie in [0, {self.n_atoms}) (-1 pads)")
        if box is not None and (not torch.is_tensor(box) or box.shape != (b, 3)):
            raise InputError(f"box: expected a tensor [{b}, 3] of orthorhombic edges (nm) or None, got "
                             f"{tuple(getattr(box, 'shape', ()))}")

    def __call__(self, bead: torch.Tensor, xyz: torch.Tensor, env: torch.Tensor,
                 box: torch.Tensor | None = None, known: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Energies {term: [B]} (kJ/mol) of item b's bead ``bead[b]`` in the frame ``xyz[b]``.

        bead : LongTensor [B] bead indices.  xyz : [B, n_atoms, 3] nm, float32/64 (the dtype of the result).
        env : LongTensor [B, P] atoms outside the bead that pair with its atoms in the LJ term, -1 padded
            (atoms of the bead listed there are ignored: their pairs are in the intra-bead sum).
        box : [B, 3] orthorhombic box edges (nm): all displacements use the minimum image; None: no box.
        known : [B, n_atoms] bool, the atoms that exist yet (an autoregressive sampler's placed atoms): a bonded
            term with an atom not known adds 0. None: every atom is known.
        Differentiable w.r.t. xyz; padded entries add exactly 0 and no NaN gradients.
        """
        self._check(bead, xyz, env, box)
        t, dt = self._t, xyz.dtype
        box = None if box is None else box.to(dt)
        rows = torch.arange(xyz.shape[0], device=xyz.device)[:, None]
        out: dict[str, torch.Tensor] = {}
        for name, _, pkeys in _BONDED:
            idx = t[f"{name}_idx"][bead]  # [B, M, k]
            pos = xyz[rows, idx.flatten(1)].reshape(*idx.shape, 3)  # [B, M, k, 3]
            if box is not None:  # make each term whole: its atoms as minimum images of slot 0
                pos = pos[:, :, :1] + _min_image(pos - pos[:, :, :1], box)
            slots = [(pos[..., c, 0], pos[..., c, 1], pos[..., c, 2]) for c in range(idx.shape[2])]
            energy, _ = _TERM_FN[name](*slots, *(t[p][bead].to(dt) for p in pkeys), want_grad=False)
            if known is not None:
                energy = torch.where(known[rows, idx.flatten(1)].reshape(idx.shape).all(-1), energy,
                                     torch.zeros_like(energy))
            out[name] = energy.sum(1)
        out["lj"] = self._intra_lj(bead, xyz, box, rows) + self._env_lj(bead, xyz, env, box, rows)
        return out

    def _lj(self, d: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Sum over the last axis of 4 eps ((s/r)^12 - (s/r)^6), d [..., 3]; 0 where invalid or r >= cutoff."""
        r2 = (d * d).sum(-1)
        use = valid & (r2 < self.lj_cutoff_nm**2)
        sr2 = sigma * sigma / torch.where(use, r2, torch.ones_like(r2))  # guard r = 0 in padding
        sr6 = sr2 * sr2 * sr2
        return torch.where(use, 4.0 * eps * (sr6 * sr6 - sr6), torch.zeros_like(r2)).flatten(1).sum(1)

    def _intra_lj(self, bead, xyz, box, rows) -> torch.Tensor:
        t, dt = self._t, xyz.dtype
        idx, eps = t["intra_idx"][bead], t["intra_epsilon"][bead].to(dt)  # [B, Q, 2], [B, Q]
        d = _min_image(xyz[rows, idx[..., 1]] - xyz[rows, idx[..., 0]], box)
        return self._lj(d, t["intra_sigma"][bead].to(dt), eps, eps != 0)

    def _env_lj(self, bead, xyz, env, box, rows) -> torch.Tensor:
        t, dt = self._t, xyz.dtype
        a = t["bead_atoms"][bead]  # [B, L]
        valid = (a[:, :, None] >= 0) & (env[:, None, :] >= 0)  # [B, L, P]
        valid = valid & ~(env[:, None, :, None] == a[:, None, None, :]).any(-1)  # env atoms in the bead: skip
        i, j = a.clamp(min=0), env.clamp(min=0)
        d = _min_image(xyz[rows, j][:, None] - xyz[rows, i][:, :, None], box)  # [B, L, P, 3]
        si, sj = t["nb_s"].to(dt)[i][:, :, None], t["nb_s"].to(dt)[j][:, None, :]
        ei, ej = t["nb_e"].to(dt)[i][:, :, None], t["nb_e"].to(dt)[j][:, None, :]
        sigma, eps = 0.5 * (si + sj), torch.sqrt(ei * ej)
        ii, jj = i[:, :, None], j[:, None, :]
        q = torch.minimum(ii, jj) * self.n_atoms + torch.maximum(ii, jj)
        keys = t["exc_keys"]
        pos = torch.searchsorted(keys, q.flatten()).clamp(max=keys.numel() - 1).reshape(q.shape)
        hit = keys[pos] == q
        sigma = torch.where(hit, t["exc_s"].to(dt)[pos], sigma)
        eps = torch.where(hit, t["exc_e"].to(dt)[pos], eps)
        return self._lj(d, sigma, eps, valid & (eps != 0))

    def total(self, bead: torch.Tensor, xyz: torch.Tensor, env: torch.Tensor, box: torch.Tensor | None = None,
              weights: dict[str, float] | None = None) -> torch.Tensor:
        """C_pot = sum_t lambda_t e_t [B] (kJ/mol); weights {term: lambda_t} (missing terms: 1; None: all 1)."""
        unknown = set(weights or {}) - set(self.TERMS)
        if unknown:
            raise InputError(f"weights: unknown terms {sorted(unknown)} (known: {', '.join(self.TERMS)})")
        e = self(bead, xyz, env, box)
        return sum((weights or {}).get(k, 1.0) * e[k] for k in self.TERMS)
