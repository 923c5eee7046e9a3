"""Mapping-entropy estimators (README "Mapping entropy"): pure array functions.

Mapping entropy as in Hummerich, Bereau and Köthe, "Split-Flows: Measure
Transport and Information Loss Across Molecular Resolutions" (2025).

Conventions.  A CG map is a matrix ``C`` [n, N] (rows summing to one) acting
identically on x, y, z; coordinates in nm; entropies in nats per frame, and
per atomistic degree of freedom (divided by 3N).  For a linear map, p(x | y)
lives on the fibre {C+ y + N eta} of dimension d = 3 (N - rank C); H(X | Y)
is the differential entropy w.r.t. that fibre's Lebesgue measure in nm (it
shifts by d ln s if lengths are rescaled by s, so compare mappings through
S_map, which does not).

The fibre measure for S_map.  A fibre of a linear map is unbounded, so
"uniform over the fibre" needs a stated reference.  Here it is the
maximum-entropy fibre reference: the isotropic Gaussian on the fibre
about the anchor a(y) = C+ y + P B y (each atom at its assigned bead,
projected onto the fibre; P = I - C+ C, B the one-hot assignment) whose
width s matches the data's mean squared deviation from the anchor,
s^2 = E|x - a(y)|^2 / d.  Then

    S_map = E_y KL(p(. | y) || r_s(. | y)) = d/2 ln(2 pi e s^2) - H(X | Y) >= 0,

the gap between the widest spread the second moment allows and the true
conditional entropy, in the spirit of S_map = E[ln Omega(Y)] - H(X | Y).

Estimators:

- flow: E[-ln q(X | Y)] on held-out frames >= H(X | Y) (cross-entropy
  bound), hence a lower bound on S_map (:func:`flow_estimates`);
- Gaussian: the exact H(X | Y) and S_map of a Gaussian ensemble under a
  linear map (:func:`harmonic_ensemble_entropies`, :func:`gaussian_conditional_entropy`),
  and, for any data, the Gaussian bound from the linear-regression residual
  covariance on the fibre (an upper bound on H(X | Y); :func:`gaussian_bound_from_samples`);
- energy variance (Giulini et al. 2020): S_map ~ (beta^2 / 2) sum_R P(R) Var(U | R)
  over clusters R of CG configurations (:func:`giulini_smap`).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "KB_KJ_MOL_K", "fibre_dimension", "fibre_anchor", "kron3", "gaussian_conditional_entropy",
    "harmonic_ensemble_entropies", "sample_harmonic_ensemble", "anchor_msd", "smap_maxent",
    "gaussian_bound_from_samples", "flow_estimates", "cg_features", "giulini_smap", "per_dof",
]

#: Boltzmann constant in kJ/mol/K.
KB_KJ_MOL_K = 0.0083144626


def _matrix(mapping_matrix, n_atoms: int | None = None) -> np.ndarray:
    c = np.asarray(mapping_matrix, dtype=np.float64)
    if c.ndim != 2 or (n_atoms is not None and c.shape[1] != n_atoms):
        want = f"[n_beads, {n_atoms}]" if n_atoms is not None else "[n_beads, n_atoms]"
        raise ValueError(f"mapping_matrix: expected shape {want}, got {c.shape}")
    return c


def _null(c: np.ndarray) -> np.ndarray:
    _, s, vt = np.linalg.svd(c)
    rank = int(np.sum(s > s.max() * max(c.shape) * np.finfo(float).eps))
    return vt[rank:].T


def fibre_dimension(mapping_matrix) -> int:
    """d = 3 (N - rank C), the dimension of each fibre of ``mapping_matrix`` [n, N] in R^{3N}."""
    return 3 * _null(_matrix(mapping_matrix)).shape[1]


def per_dof(value: float, n_atoms: int) -> float:
    """nats per frame -> nats per atomistic degree of freedom (3N)."""
    return float(value) / (3 * int(n_atoms))


def kron3(mapping_matrix) -> np.ndarray:
    """C [n, N] -> C (x) I_3 [3n, 3N] acting on atom-major flattened xyz (x0, y0, z0, x1, ...)."""
    return np.kron(_matrix(mapping_matrix), np.eye(3))


def fibre_anchor(mapping_matrix, assignment) -> np.ndarray:
    """The anchor matrix A = C+ + P B [N, n]: a(y) = A y (nm), the prior/reference centre on the fibre."""
    c = _matrix(mapping_matrix)
    a = np.asarray(assignment, dtype=np.int64)
    if a.shape != (c.shape[1],) or a.min() < 0 or a.max() >= c.shape[0]:
        raise ValueError(f"assignment: expected [{c.shape[1]}] bead indices in [0, {c.shape[0]}), got {a.shape}")
    pinv = np.linalg.pinv(c)
    onehot = np.zeros((c.shape[1], c.shape[0]))
    onehot[np.arange(c.shape[1]), a] = 1.0
    return pinv + (np.eye(c.shape[1]) - pinv @ c) @ onehot


# ------------------------------------------------------------------------------------------ analytic
def gaussian_conditional_entropy(cov, map_matrix) -> float:
    """Exact H(X | Y) (nats, fibre Lebesgue measure) of X ~ N(mu, cov) in R^D, Y = A X.

    cov [D, D] symmetric positive definite; map_matrix A [m, D] of full row
    rank (e.g. :func:`kron3` of a CG map).  Coarea formula:
    H(X | Y) = H(X) - H(Y) + 1/2 ln det(A A^T); the same as the entropy of the
    conditional covariance of the fibre coordinates.
    """
    s = np.asarray(cov, dtype=np.float64)
    a = np.asarray(map_matrix, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"cov: expected a square matrix [D, D], got {s.shape}")
    if a.ndim != 2 or a.shape[1] != s.shape[0]:
        raise ValueError(f"map_matrix: expected shape [m, {s.shape[0]}], got {a.shape}")

    def h(m):
        sign, logdet = np.linalg.slogdet(2 * math.pi * math.e * m)
        if sign <= 0:
            raise ValueError("cov: not positive definite on the mapped/fibre space")
        return 0.5 * logdet

    return h(s) - h(a @ s @ a.T) + 0.5 * np.linalg.slogdet(a @ a.T)[1]


def harmonic_ensemble_entropies(precision, mapping_matrix, assignment) -> dict[str, float]:
    """Exact entropies of the harmonic ensemble p(x) ~ exp(-1/2 sum_c x_c^T K x_c) under y = C x.

    precision K [N, N] (nm^-2) symmetric positive semi-definite whose null
    space is at most the translations (e.g. a connected spring network: then
    p(x) is improper along the translation zero mode, but p(x | y) is proper
    because rows of C sum to one); mapping_matrix C [n, N]; assignment [N].
    Returns (nats per frame): ``h_cond`` = H(X | Y) = 3/2 ln det(2 pi e (N^T K N)^-1);
    ``smap`` = S_map w.r.t. the maxent fibre reference (module docstring);
    ``giulini`` = (beta^2/2) E_y Var(U | y) = d/4 (U = K-energy / beta: beta U | y
    is d/2 plus a chi^2_d / 2 variable); ``msd`` (nm^2) = E|x - a(y)|^2; ``dim`` = d.
    """
    k = np.asarray(precision, dtype=np.float64)
    c = _matrix(mapping_matrix)
    n_atoms = c.shape[1]
    if k.shape != (n_atoms, n_atoms):
        raise ValueError(f"precision: expected shape [{n_atoms}, {n_atoms}], got {k.shape}")
    null = _null(c)
    a_eta = null.T @ k @ null  # precision of the fibre coordinates given y (per xyz component)
    sign, logdet = np.linalg.slogdet(a_eta)
    if sign <= 0:
        raise ValueError("precision: not positive definite on the fibre (more zero modes than translations?)")
    dim = 3 * null.shape[1]
    h_cond = 1.5 * (null.shape[1] * math.log(2 * math.pi * math.e) - logdet)
    cov = _tethered_cov(k, c)  # any y-only tether leaves p(x | y), hence these expectations, unchanged
    resid = np.eye(n_atoms) - fibre_anchor(c, assignment) @ c  # x - a(Cx)
    msd = 3.0 * float(np.trace(resid @ cov @ resid.T))
    return {"h_cond": h_cond, "smap": smap_maxent(h_cond, msd, dim), "giulini": dim / 4.0, "msd": msd,
            "dim": float(dim)}


def _tethered_cov(precision: np.ndarray, c: np.ndarray, tether: float = 1.0) -> np.ndarray:
    """Covariance [N, N] (per component) of exp(-x^T K x / 2 - tether |mean bead|^2 / 2)."""
    w = c.mean(axis=0)  # the CG centroid is w . x
    return np.linalg.inv(precision + tether * np.outer(w, w))


def sample_harmonic_ensemble(precision, mapping_matrix, n_frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Frames (x [F, N, 3], y = C x [F, n, 3]) nm whose p(x | y) is that of the harmonic ensemble.

    The translation zero mode is tied by a Gaussian tether on the CG centroid
    (a function of y only), which leaves every conditional p(x | y) unchanged.
    """
    k = np.asarray(precision, dtype=np.float64)
    c = _matrix(mapping_matrix, k.shape[0])
    chol = np.linalg.cholesky(_tethered_cov(k, c))
    rng = np.random.default_rng(seed)
    x = np.einsum("ij,fjc->fic", chol, rng.standard_normal((int(n_frames), k.shape[0], 3)))
    return x, np.einsum("bi,fic->fbc", c, x)


# ------------------------------------------------------------------------------------------ from data
def anchor_msd(aa_xyz, cg_xyz, mapping_matrix, assignment) -> float:
    """E|x - a(y)|^2 over frames (nm^2): aa_xyz [F, N, 3], cg_xyz [F, n, 3]; x projected onto its fibre."""
    x, y, c = _frames(aa_xyz, cg_xyz, mapping_matrix)
    pinv = np.linalg.pinv(c)
    x = x - np.einsum("ib,fbc->fic", pinv, np.einsum("bi,fic->fbc", c, x) - y)
    r = x - np.einsum("ib,fbc->fic", fibre_anchor(c, assignment), y)
    return float(np.mean(np.sum(r * r, axis=(1, 2))))


def smap_maxent(h_cond: float, msd: float, dim: int) -> float:
    """S_map = d/2 ln(2 pi e msd / d) - H(X | Y) (nats): KL to the maxent fibre reference of width msd/d."""
    if dim <= 0:
        return 0.0
    if msd <= 0:
        raise ValueError(f"msd: expected > 0 nm^2 for a fibre of dimension {dim}, got {msd}")
    return 0.5 * dim * math.log(2 * math.pi * math.e * msd / dim) - float(h_cond)


def gaussian_bound_from_samples(aa_xyz, cg_xyz, mapping_matrix, ridge: float = 1e-10) -> float:
    """Upper bound on H(X | Y) (nats per frame): the Gaussian entropy of the linear-regression residual.

    Frames are centred on their CG centroid; fibre coordinates eta = N^T x are
    regressed on y (with intercept, xyz mixed: [3(N-n)] on [3n]); H(X | Y) <=
    H(eta - L y) <= 1/2 ln det(2 pi e Cov(residual)).  Exact for Gaussian
    ensembles.  aa_xyz [F, N, 3], cg_xyz [F, n, 3] nm; needs F well above 3N.
    """
    x, y, c = _frames(aa_xyz, cg_xyz, mapping_matrix)
    f = x.shape[0]
    cen = y.mean(axis=1, keepdims=True)
    eta = np.einsum("ia,fic->fac", _null(c), x - cen).reshape(f, -1)
    if eta.shape[1] == 0:
        return 0.0
    feats = np.concatenate([(y - cen).reshape(f, -1), np.ones((f, 1))], axis=1)
    coef, *_ = np.linalg.lstsq(feats, eta, rcond=None)
    res = eta - feats @ coef
    dof = max(f - feats.shape[1], 1)
    cov = res.T @ res / dof + ridge * np.eye(eta.shape[1])
    sign, logdet = np.linalg.slogdet(2 * math.pi * math.e * cov)
    if sign <= 0 or f <= eta.shape[1]:
        raise ValueError(f"aa_xyz: {f} frames are too few for a {eta.shape[1]}-dimensional fibre covariance")
    return 0.5 * logdet


def flow_estimates(nll, msd: float, dim: int, n_atoms: int) -> dict[str, float]:
    """Flow-based estimates from held-out -ln q(x | y) values ``nll`` [F] (nats, fibre measure in nm).

    Returns h_cond (upper bound on H(X | Y)), its standard error, smap (lower
    bound on S_map w.r.t. the maxent reference of mean squared deviation
    ``msd`` nm^2) and both per atomistic dof.
    """
    nll = np.asarray(nll, dtype=np.float64)
    if nll.ndim != 1 or nll.size == 0 or not np.all(np.isfinite(nll)):
        raise ValueError(f"nll: expected a non-empty finite array [F], got shape {nll.shape}")
    h = float(nll.mean())
    se = float(nll.std(ddof=1) / math.sqrt(nll.size)) if nll.size > 1 else float("nan")
    s = smap_maxent(h, msd, dim)
    return {"h_cond": h, "h_cond_se": se, "smap": s, "h_cond_per_dof": per_dof(h, n_atoms),
            "smap_per_dof": per_dof(s, n_atoms)}


# ------------------------------------------------------------------------------------------ Giulini
def cg_features(cg_xyz) -> np.ndarray:
    """Rotation/translation-invariant CG features: bead-pair distances [F, n(n-1)/2] nm ([F, 0] for one bead)."""
    y = np.asarray(cg_xyz, dtype=np.float64)
    if y.ndim != 3 or y.shape[-1] != 3:
        raise ValueError(f"cg_xyz: expected shape [F, n_beads, 3], got {y.shape}")
    i, j = np.triu_indices(y.shape[1], k=1)
    return np.linalg.norm(y[:, i] - y[:, j], axis=-1)


def giulini_smap(energy_kj_mol, cg_xyz=None, temperature_k: float = 300.0, n_clusters: int = 20,
                 labels=None, seed: int = 0, min_cluster: int = 2) -> dict[str, float]:
    """Energy-variance estimate of S_map (Giulini et al. 2020): (beta^2 / 2) sum_R P(R) Var(U | R), nats/frame.

    energy_kj_mol [F] (kJ/mol); clusters R: given ``labels`` [F], or deeptime
    k-means (``n_clusters``) on :func:`cg_features` of cg_xyz [F, n, 3] nm
    (one cluster when there is a single bead or fewer frames than clusters).
    Clusters with fewer than ``min_cluster`` frames are skipped (and P(R)
    renormalised).  Returns smap and the cluster count used.
    """
    u = np.asarray(energy_kj_mol, dtype=np.float64)
    if u.ndim != 1 or u.size < 2 or not np.all(np.isfinite(u)):
        raise ValueError(f"energy_kj_mol: expected a finite array [F >= 2], got shape {u.shape}")
    if temperature_k <= 0:
        raise ValueError(f"temperature_k: expected > 0 K, got {temperature_k}")
    beta = 1.0 / (KB_KJ_MOL_K * temperature_k)
    if labels is None:
        if cg_xyz is None:
            raise ValueError("cg_xyz: needed to cluster CG configurations when labels are not given")
        feats = cg_features(cg_xyz)
        if feats.shape[0] != u.size:
            raise ValueError(f"cg_xyz: {feats.shape[0]} frames, energy_kj_mol has {u.size}")
        if feats.shape[1] == 0 or n_clusters <= 1 or u.size < 2 * n_clusters:
            labels = np.zeros(u.size, dtype=int)
        else:
            from deeptime.clustering import KMeans

            state = np.random.get_state()  # deeptime's kmeans++ draws from numpy's global RNG: seed it, then restore
            np.random.seed(seed)
            try:
                km = KMeans(n_clusters=int(n_clusters), fixed_seed=int(seed), max_iter=200).fit(feats).fetch_model()
            finally:
                np.random.set_state(state)
            labels = km.transform(feats)
    labels = np.asarray(labels)
    if labels.shape != u.shape:
        raise ValueError(f"labels: expected shape {u.shape}, got {labels.shape}")
    total, weight, used = 0.0, 0, 0
    for r in np.unique(labels):
        ur = u[labels == r]
        if ur.size < min_cluster:
            continue
        total += ur.size * ur.var(ddof=1)
        weight += ur.size
        used += 1
    if weight == 0:
        raise ValueError("labels: every cluster has fewer than min_cluster frames")
    return {"smap": 0.5 * beta ** 2 * total / weight, "n_clusters": float(used)}


def _frames(aa_xyz, cg_xyz, mapping_matrix):
    x = np.asarray(aa_xyz, dtype=np.float64)
    y = np.asarray(cg_xyz, dtype=np.float64)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"aa_xyz: expected shape [F, N, 3], got {x.shape}")
    c = _matrix(mapping_matrix, x.shape[1])
    if y.shape != (x.shape[0], c.shape[0], 3):
        raise ValueError(f"cg_xyz: expected shape [{x.shape[0]}, {c.shape[0]}, 3], got {y.shape}")
    return x, y, c
