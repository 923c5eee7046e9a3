"""Optimal rigid superposition (Kabsch) of point sets, as pure numpy functions.

Coordinates are nm; every function centres its inputs on their unweighted
centroids itself.  The RMSD after optimal superposition comes from the
singular values of the 3x3 correlation matrix H = P^T Q alone:
``n rmsd^2 = |P|^2 + |Q|^2 - 2 (s1 + s2 + sign(det H) s3)`` (Kabsch 1978;
the sign keeps the superposition a proper rotation), so a query can be
compared with thousands of frames without forming a rotation for each.
Only numpy: the cVAE's inference path also runs where mdtraj is absent
(``mdtraj.rmsd`` is the reference in the tests).
"""

from __future__ import annotations

import numpy as np

__all__ = ["kabsch_rotations", "pairwise_superposed_rmsd", "superposed_rmsd"]


def _centred(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(axis=-2, keepdims=True)


def kabsch_rotations(mobile, target) -> np.ndarray:
    """Rotations R [F, 3, 3] (det +1) with (mobile_f - centroid) R^T ~ (target_f - centroid).

    mobile [F, n, 3]; target [n, 3] (one for all) or [F, n, 3].  With two
    points only their axes are aligned (the spin about the axis is arbitrary);
    with one, or coincident points, R is the identity.
    """
    p = _centred(mobile)
    q = np.broadcast_to(_centred(target), p.shape)
    f = p.shape[0]
    u, _, vt = np.linalg.svd(np.einsum("fni,fnj->fij", p, q))  # H = sum_n p_n q_n^T
    diag = np.ones((f, 3))
    diag[:, 2] = np.where(np.linalg.det(np.einsum("fji,fkj->fik", vt, u)) < 0, -1.0, 1.0)  # det(V U^T)
    return np.einsum("fji,fj,fkj->fik", vt, diag, u)  # V D U^T


def _det3(h: np.ndarray) -> np.ndarray:
    """Determinants of 3x3 matrices given components first, h [3, 3, ...] (cofactor expansion)."""
    return (
        h[0, 0] * (h[1, 1] * h[2, 2] - h[1, 2] * h[2, 1])
        - h[0, 1] * (h[1, 0] * h[2, 2] - h[1, 2] * h[2, 0])
        + h[0, 2] * (h[1, 0] * h[2, 1] - h[1, 1] * h[2, 0])
    )


def _sym3_eigenvalues(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues (largest, middle, smallest) of symmetric 3x3 matrices a [3, 3, ...] (components first).

    The trigonometric solution of the characteristic cubic (Smith 1961): a
    few elementwise operations instead of one LAPACK call per matrix.
    """
    q = (a[0, 0] + a[1, 1] + a[2, 2]) / 3.0
    d0, d1, d2 = a[0, 0] - q, a[1, 1] - q, a[2, 2] - q
    p = np.sqrt((d0 * d0 + d1 * d1 + d2 * d2 + 2.0 * (a[0, 1] ** 2 + a[0, 2] ** 2 + a[1, 2] ** 2)) / 6.0)
    shifted = a.copy()
    shifted[0, 0], shifted[1, 1], shifted[2, 2] = d0, d1, d2
    det_b = _det3(shifted) / np.where(p > 0, p, 1.0) ** 3  # det((a - q I) / p), in [-2, 2]
    phi = np.arccos(np.clip(0.5 * det_b, -1.0, 1.0)) / 3.0
    largest = q + 2.0 * p * np.cos(phi)
    smallest = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)
    return largest, 3.0 * q - largest - smallest, smallest


def pairwise_superposed_rmsd(queries, frames, chunk: int = 256) -> np.ndarray:
    """RMSD (nm) after optimal superposition of every query onto every frame.

    queries [M, n, 3], frames [F, n, 3] nm -> [M, F] nm.  Evaluated ``chunk``
    queries at a time (memory ~ chunk * F * 300 bytes).
    """
    a, b = _centred(queries), _centred(frames)
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:] or a.shape[2] != 3:
        raise ValueError(f"queries, frames: expected [M, n, 3] and [F, n, 3], got {a.shape} and {b.shape}")
    n, n_frames = a.shape[1], b.shape[0]
    norms_a, norms_b = (a * a).sum((1, 2)), (b * b).sum((1, 2))
    b_cols = b.transpose(1, 0, 2).reshape(n, n_frames * 3)  # [n, F 3]
    out = np.empty((a.shape[0], n_frames))
    for start in range(0, a.shape[0], chunk):
        block = a[start : start + chunk]
        m = block.shape[0]
        # H_mf = sum_n a_mn b_fn^T as one matrix product, laid out components first: h[i, j] is [m, F]
        h = (block.transpose(0, 2, 1).reshape(m * 3, n) @ b_cols).reshape(m, 3, n_frames, 3)
        h = np.ascontiguousarray(h.transpose(1, 3, 0, 2))
        hth = np.empty_like(h)  # H^T H, whose eigenvalues are the squared singular values of H
        for i in range(3):
            for j in range(i, 3):
                hth[i, j] = hth[j, i] = h[0, i] * h[0, j] + h[1, i] * h[1, j] + h[2, i] * h[2, j]
        s1, s2, s3 = (np.sqrt(np.maximum(e, 0.0)) for e in _sym3_eigenvalues(hth))
        sign = np.where(_det3(h) < 0, -1.0, 1.0)
        msd = (norms_a[start : start + chunk, None] + norms_b[None] - 2.0 * (s1 + s2 + sign * s3)) / n
        out[start : start + chunk] = np.sqrt(np.maximum(msd, 0.0))
    return out


def superposed_rmsd(a, b) -> np.ndarray:
    """RMSD (nm) after optimal superposition of frame f of ``a`` onto frame f of ``b``: [F].

    a, b [F, n, 3] nm (or one frame [n, 3] each); ``mdtraj.rmsd`` frame by frame.
    From the singular values of each H_f = P_f^T Q_f, as :func:`pairwise_superposed_rmsd`.
    """
    p, q = _centred(a), _centred(b)
    if p.ndim == 2:
        p, q = p[None], q[None]
    if p.shape != q.shape or p.ndim != 3 or p.shape[2] != 3:
        raise ValueError(f"a, b: expected equal shapes [F, n, 3], got {np.shape(a)} and {np.shape(b)}")
    h = np.einsum("fni,fnj->ijf", p, q)  # components first: h[i, j] is [F]
    hth = np.einsum("kif,kjf->ijf", h, h)
    s1, s2, s3 = (np.sqrt(np.maximum(e, 0.0)) for e in _sym3_eigenvalues(hth))
    sign = np.where(_det3(h) < 0, -1.0, 1.0)
    msd = ((p * p).sum((1, 2)) + (q * q).sum((1, 2)) - 2.0 * (s1 + s2 + sign * s3)) / p.shape[1]
    return np.sqrt(np.maximum(msd, 0.0))
