"""Checks around the mapping-entropy estimators (issue 14, item 5): pure array functions.

- :func:`fixed_length_xh_bonds`: X-H bonds whose length does not fluctuate
  across frames (a constrained simulation; there H(X | Y) = -inf).
- :func:`block_bootstrap_ci`: a confidence interval of a per-frame mean,
  resampling contiguous blocks of frames (autocorrelation kept inside blocks).
- :func:`giulini_converged`: the energy-variance S_map with the CG clustering
  refined by doubling k until the value moves by <= ``tol`` (relative).
- :func:`nesting_matrix`, :func:`chain_rule_link`, :func:`nested_flags`: the
  consistency check of H(X | Y) bounds between nested mappings.

Nested mappings and H(X | Y).  For y_c = G y_f (the coarse beads a linear
function of the fine ones), the chain rule on the fibres reads, exactly,

    H(X | Y_c) = H(X | Y_f) + H(Y_f | Y_c) + J,   J = 3/2 ln det(N_G^T (C_f C_f^T)^-1 N_G)

with N_G an orthonormal basis of null(G) and all entropies differential, on
the fibre Lebesgue measure in nm (J = 0 for atom-selection mappings).  The
information-theoretic "a finer mapping cannot have a larger H(X | Y)" holds
for discrete entropies only: H(Y_f | Y_c) is a differential entropy in nm and
is negative whenever the extra beads are localised to below ~0.24 nm per
coordinate (1/2 ln(2 pi e s^2) < 0 for s < 0.242 nm), which bonded atoms are.
So the true H(X | Y) of ADP's ``ca`` mapping lies *below* backbone5's, and
the literal monotonicity test would flag correct numbers.  What does hold,
and is testable with upper bounds only: q_c(x | y_c) = q_f(x | y_f) g(y_f | y_c)
is a valid conditional density on the coarse fibre for any model g, so

    H(X | Y_c) <= U_f + G_fc + J

(U_f the fine flow's held-out bound, G_fc the Gaussian regression bound on
H(Y_f | Y_c)).  A coarse flow whose own bound U_c exceeds that composite
bound (beyond the combined CI) is demonstrably under-trained.
"""

from __future__ import annotations

import math

import numpy as np

from finegrain.platform.science.metrics.entropy import _null, gaussian_bound_from_samples, giulini_smap

__all__ = ["CONSTRAINED_STD_NM", "fixed_length_xh_bonds", "block_bootstrap_ci", "giulini_converged",
           "nesting_matrix", "fibre_jacobian", "chain_rule_link", "nested_flags"]

#: An X-H bond whose length std across frames is below this (nm) is constrained.
#: Free X-H bonds at 300 K fluctuate by ~0.003 nm (k ~ 3e5 kJ/mol/nm^2);
#: SHAKE/CCMA-constrained ones by ~1e-6 nm (tolerance and float32 storage).
CONSTRAINED_STD_NM = 1e-4


# ------------------------------------------------------------------------------------------ constraints
def fixed_length_xh_bonds(aa_xyz, is_hydrogen, tol_nm: float = CONSTRAINED_STD_NM,
                          max_frames: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """X-H pairs [M, 2] (H bonded to its nearest non-H atom in frame 0) and their length std [M] (nm).

    aa_xyz [F, N, 3] nm (F >= 3; at most ``max_frames`` evenly spaced frames
    are used); is_hydrogen [N] bool.  Returns only the pairs whose std is
    below ``tol_nm`` first, then all pairs' std: ``(fixed_pairs, std_all)``.
    """
    x = np.asarray(aa_xyz, dtype=np.float64)
    h = np.asarray(is_hydrogen, dtype=bool)
    if x.ndim != 3 or x.shape[-1] != 3 or x.shape[0] < 3:
        raise ValueError(f"aa_xyz: expected shape [F >= 3, N, 3], got {x.shape}")
    if h.shape != (x.shape[1],):
        raise ValueError(f"is_hydrogen: expected shape [{x.shape[1]}], got {h.shape}")
    hyd, heavy = np.flatnonzero(h), np.flatnonzero(~h)
    if hyd.size == 0 or heavy.size == 0:
        return np.zeros((0, 2), dtype=int), np.zeros(0)
    x = x[np.unique(np.linspace(0, x.shape[0] - 1, min(max_frames, x.shape[0])).astype(int))]
    d0 = np.linalg.norm(x[0][hyd][:, None] - x[0][heavy][None], axis=-1)  # [H, X]
    pairs = np.stack([heavy[np.argmin(d0, axis=1)], hyd], axis=1)
    std = np.linalg.norm(x[:, pairs[:, 0]] - x[:, pairs[:, 1]], axis=-1).std(axis=0)
    return pairs[std < tol_nm], std


# ------------------------------------------------------------------------------------------ CIs
def block_bootstrap_ci(values, n_blocks: int = 20, n_boot: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of ``values`` [F] (in frame order) by a moving-free block bootstrap.

    The F values are cut into ``min(n_blocks, F)`` contiguous blocks; each
    replicate draws that many blocks with replacement and takes the
    frame-weighted mean; the interval is the percentile interval at ``level``.
    Units: those of ``values``.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"values: expected a non-empty finite array [F], got shape {v.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level: expected in (0, 1), got {level}")
    blocks = np.array_split(v, min(int(n_blocks), v.size))
    if len(blocks) < 2:
        return float(v.mean()), float("nan"), float("nan")
    sums = np.array([b.sum() for b in blocks])
    sizes = np.array([b.size for b in blocks], dtype=np.float64)
    draw = np.random.default_rng(seed).integers(0, len(blocks), size=(int(n_boot), len(blocks)))
    boot = sums[draw].sum(axis=1) / sizes[draw].sum(axis=1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(boot, a)), float(np.quantile(boot, 1 - a))


# ------------------------------------------------------------------------------------------ energy variance
def giulini_converged(energy_kj_mol, cg_xyz, temperature_k: float = 300.0, k_start: int = 20,
                      tol: float = 0.05, min_frames_per_cluster: int = 10, seed: int = 0) -> dict:
    """The energy-variance S_map (nats/frame) with k-means over CG features refined until it converges.

    energy_kj_mol [F] kJ/mol; cg_xyz [F, n, 3] nm.  The rule, the same for
    every mapping: evaluate :func:`~finegrain.platform.science.metrics.entropy.giulini_smap`
    at k and 2k clusters, starting at ``k_start``; converged when
    |S(2k) - S(k)| <= tol |S(2k)|; else k <- 2k, while 2k clusters keep
    >= ``min_frames_per_cluster`` frames on average (k_start is lowered to
    fit that).  A single bead has no rotation-invariant CG feature: its
    configuration space modulo rigid motions is one point, so one cluster
    is exact and the check passes trivially.

    Coarser clusters add Var(E[U | R] within cluster) >= 0, so an unconverged
    value is (in expectation) an upper bound on the finely resolved one.
    Passing the check is necessary, not sufficient: k-means on bead-pair
    distances separates conformational basins long before it resolves the
    CG-internal vibrations, so the value can plateau with their energy still
    inside Var(U | R) (1000 free ADP frames: 20 -> 40 clusters moved every
    mapping by < 1 %, at 15.4-15.8 nats, while the harmonic fibre-only value
    d/4 is 15.75 / 12.75 / 12 / 9 for ca / backbone5 / backbone6 / heavy).
    Returns smap (value at the finest k evaluated), k and k2 (last pair compared),
    smap_k, smap_2k, rel_change, converged (bool), clusters (actually used
    at k2), history [(k, smap), ...].
    """
    u = np.asarray(energy_kj_mol, dtype=np.float64)
    if k_start < 1:
        raise ValueError(f"k_start: expected >= 1, got {k_start}")
    if not 0 < tol < 1:
        raise ValueError(f"tol: expected in (0, 1), got {tol}")
    k_max = u.size // max(int(min_frames_per_cluster), 1)  # the finest clustering the data resolve
    k = max(1, min(int(k_start), k_max // 2))

    def at(kk: int) -> dict:
        return giulini_smap(u, cg_xyz, temperature_k, n_clusters=kk, seed=seed)

    history, cur = [], at(k)
    history.append((k, cur["smap"]))
    while True:
        nxt = at(2 * k)
        history.append((2 * k, nxt["smap"]))
        rel = abs(nxt["smap"] - cur["smap"]) / max(abs(nxt["smap"]), 1e-300)
        converged = rel <= tol
        if converged or 4 * k > k_max:
            break
        k, cur = 2 * k, nxt
    return {"smap": nxt["smap"], "k": float(k), "k2": float(2 * k), "smap_k": cur["smap"],
            "smap_2k": nxt["smap"], "rel_change": float(rel), "converged": bool(converged),
            "clusters": nxt["n_clusters"], "history": history}


# ------------------------------------------------------------------------------------------ nested mappings
def nesting_matrix(coarse, fine, tol: float = 1e-8) -> np.ndarray | None:
    """G [n_c, n_f] with C_coarse = G C_fine (the coarse beads a linear function of the fine ones), else None.

    coarse [n_c, N], fine [n_f, N] mapping matrices.  None also when the
    coarse mapping is not strictly coarser (rank C_c >= rank C_f).
    """
    c, f = np.asarray(coarse, dtype=np.float64), np.asarray(fine, dtype=np.float64)
    if c.ndim != 2 or f.ndim != 2 or c.shape[1] != f.shape[1]:
        raise ValueError(f"coarse, fine: expected [n_c, N] and [n_f, N], got {c.shape} and {f.shape}")
    if np.linalg.matrix_rank(c) >= np.linalg.matrix_rank(f):
        return None
    g = c @ np.linalg.pinv(f)
    return g if np.abs(g @ f - c).max() <= tol * max(1.0, np.abs(c).max()) else None


def fibre_jacobian(g, fine) -> float:
    """J = 3/2 ln det(N_G^T (C_f C_f^T)^-1 N_G) (nats): the fibre-measure term of the chain rule (0 for selections)."""
    g, f = np.asarray(g, dtype=np.float64), np.asarray(fine, dtype=np.float64)
    n = _null(g)
    if n.shape[1] == 0:
        return 0.0
    sign, logdet = np.linalg.slogdet(n.T @ np.linalg.inv(f @ f.T) @ n)
    if sign <= 0:
        raise ValueError("fine: C_f C_f^T is singular on null(G)")
    return 1.5 * float(logdet)


def chain_rule_link(aa_xyz, coarse, fine) -> dict[str, float]:
    """Upper bound on H(X | Y_c) - H(X | Y_f) = H(Y_f | Y_c) + J (nats/frame) from frames aa_xyz [F, N, 3] nm.

    H(Y_f | Y_c) is bounded by the Gaussian regression residual entropy
    (:func:`~finegrain.platform.science.metrics.entropy.gaussian_bound_from_samples`
    with the fine beads as "atoms" and G as the map).  Returns link
    (= gauss + jacobian), gauss, jacobian; raises ValueError when the
    mappings are not nested.
    """
    g = nesting_matrix(coarse, fine)
    if g is None:
        raise ValueError("coarse, fine: the coarse mapping is not a linear function of the fine one")
    f = np.asarray(fine, dtype=np.float64)
    y_f = np.einsum("bi,fic->fbc", f, np.asarray(aa_xyz, dtype=np.float64))
    y_c = np.einsum("cb,fbk->fck", g, y_f)
    gauss = gaussian_bound_from_samples(y_f, y_c, g)
    jac = fibre_jacobian(g, f)
    return {"link": gauss + jac, "gauss": gauss, "jacobian": jac}


def nested_flags(h: dict[str, float], half_width: dict[str, float], links: dict[tuple[str, str], float]) -> list[dict]:
    """Flag coarse-mapping flows whose H(X | Y) bound exceeds the composite bound from a finer mapping.

    h: mapping -> held-out flow bound U (nats/frame); half_width: mapping ->
    half-width of its CI (nats; NaN counts as 0); links: (coarse, fine) ->
    upper bound on H(Y_f | Y_c) + J (:func:`chain_rule_link`).  For each pair:
    excess = U_c - (U_f + link), margin = sqrt(hw_c^2 + hw_f^2), violated =
    excess > margin (the coarse flow is under-trained).  Also reports
    ``naive_order_holds`` (U_f <= U_c), which is NOT expected for differential
    entropies in nm (module docstring) and is never a flag by itself.
    """
    out = []
    for (coarse, fine), link in sorted(links.items()):
        hw = [0.0 if not math.isfinite(half_width.get(m, float("nan"))) else half_width[m] for m in (coarse, fine)]
        excess = h[coarse] - (h[fine] + link)
        margin = math.hypot(*hw)
        out.append({"coarse": coarse, "fine": fine, "h_coarse": h[coarse], "h_fine": h[fine], "link": link,
                    "excess": excess, "margin": margin, "violated": bool(excess > margin),
                    "naive_order_holds": bool(h[fine] <= h[coarse])})
    return out

