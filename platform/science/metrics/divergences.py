"""Distances between distributions: histograms, Jensen-Shannon, Kullback-Leibler, Wasserstein-1.

All logarithms are natural: divergences are in nats. The Jensen-Shannon
divergence of two histograms lies in [0, ln 2]; 0 for identical and ln 2 for
disjoint supports.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "FES_PSEUDO_COUNT",
    "clipped_histogram",
    "js_divergence",
    "kl_divergence",
    "histogram_js",
    "wasserstein_1",
]

#: Pseudo-count added to *every* bin of both free-energy histograms before the
#: KL divergence (Jeffreys / Krichevsky-Trofimov estimate of bin probabilities,
#: p_i = (n_i + 0.5) / (N + 0.5 B)): keeps KL finite where the backmapped data
#: leave a bin empty, and is the same for both histograms, so identical data
#: still give exactly 0.
FES_PSEUDO_COUNT = 0.5


def clipped_histogram(values, edges) -> np.ndarray:
    """Counts of ``values`` (any shape, flattened) on fixed bin ``edges`` [B + 1].

    Values below ``edges[0]`` / above ``edges[-1]`` are counted in the first /
    last bin, so nothing is silently dropped (a badly backmapped bond of 0.5 nm
    still lands in the histogram, in its last bin). Non-finite values are
    dropped. Returns float64 counts [B].
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"edges: expected a strictly increasing 1-D array of >= 2 bin edges, got shape {edges.shape}")
    v = v[np.isfinite(v)]
    counts, _ = np.histogram(np.clip(v, edges[0], edges[-1]), bins=edges)
    return counts.astype(np.float64)


def _as_distribution(h, argument: str) -> np.ndarray:
    h = np.asarray(h, dtype=np.float64).ravel()
    if h.size == 0 or not np.all(np.isfinite(h)) or np.any(h < 0):
        raise ValueError(f"{argument}: expected finite non-negative histogram weights, got shape {h.shape}")
    total = h.sum()
    if total <= 0:
        raise ValueError(f"{argument}: histogram is empty (all weights zero)")
    return h / total


def js_divergence(p, q) -> float:
    """Jensen-Shannon divergence (nats) between two histograms of the same shape.

    p, q : non-negative weights (counts or probabilities), any shape, normalised
    here. JS = 0.5 KL(p || m) + 0.5 KL(q || m), m = (p + q) / 2; 0 <= JS <= ln 2.
    """
    p_arr, q_arr = np.asarray(p), np.asarray(q)
    if p_arr.shape != q_arr.shape:
        raise ValueError(f"q: expected the shape of p {p_arr.shape}, got {q_arr.shape}")
    p_n, q_n = _as_distribution(p_arr, "p"), _as_distribution(q_arr, "q")
    m = 0.5 * (p_n + q_n)
    out = 0.0
    for a in (p_n, q_n):
        nz = a > 0
        out += 0.5 * float(np.sum(a[nz] * np.log(a[nz] / m[nz])))
    return float(min(max(out, 0.0), np.log(2.0)))


def kl_divergence(p_counts, q_counts, pseudo_count: float = FES_PSEUDO_COUNT) -> float:
    """KL(p || q) in nats between two count histograms of the same shape.

    ``pseudo_count`` is added to every bin of both histograms before
    normalising (see :data:`FES_PSEUDO_COUNT`); it must be > 0 unless q covers
    every bin p occupies.
    """
    p_arr, q_arr = np.asarray(p_counts, dtype=np.float64), np.asarray(q_counts, dtype=np.float64)
    if p_arr.shape != q_arr.shape:
        raise ValueError(f"q_counts: expected the shape of p_counts {p_arr.shape}, got {q_arr.shape}")
    if pseudo_count < 0:
        raise ValueError(f"pseudo_count: must be >= 0, got {pseudo_count}")
    p_n = _as_distribution(p_arr + pseudo_count, "p_counts")
    q_n = _as_distribution(q_arr + pseudo_count, "q_counts")
    nz = p_n > 0
    if np.any(q_n[nz] == 0):
        return float("inf")
    return float(max(np.sum(p_n[nz] * np.log(p_n[nz] / q_n[nz])), 0.0))


def histogram_js(a, b, edges) -> float:
    """JS divergence (nats) of samples ``a`` and ``b`` histogrammed on fixed ``edges``."""
    return js_divergence(clipped_histogram(a, edges), clipped_histogram(b, edges))


def wasserstein_1(a, b) -> float:
    """Wasserstein-1 (earth mover's) distance between two 1-D samples, in their unit.

    W1 = integral |F_a(x) - F_b(x)| dx over the empirical CDFs; a, b : [M], [K]
    finite values (e.g. potential energies in kJ/mol).
    """
    a = np.sort(np.asarray(a, dtype=np.float64).ravel())
    b = np.sort(np.asarray(b, dtype=np.float64).ravel())
    for name, arr in (("a", a), ("b", b)):
        if arr.size == 0 or not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: expected a non-empty 1-D array of finite values, got {arr.size} values")
    support = np.concatenate([a, b])
    support.sort()
    widths = np.diff(support)
    cdf_a = np.searchsorted(a, support[:-1], side="right") / a.size
    cdf_b = np.searchsorted(b, support[:-1], side="right") / b.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * widths))
