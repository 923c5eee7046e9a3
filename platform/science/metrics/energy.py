"""Potential-energy metrics (kJ/mol): distribution distance and high-energy tail.

Energies are given as arrays (computed by OpenMM or finegrain.platform.science.energies
by the caller); these functions never evaluate a force field.
"""

from __future__ import annotations

import numpy as np

from finegrain.platform.science.metrics.divergences import wasserstein_1

__all__ = ["TAIL_PERCENTILE", "energy_metrics", "tail_excess"]

#: The "high-energy tail" (Shmilovich et al. (2022), fig. 3): excess of this percentile of the
#: backmapped energies over the same percentile of the reference.
TAIL_PERCENTILE = 99.0


def _energies(e, argument: str) -> np.ndarray:
    arr = np.asarray(e, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{argument}: expected energies of shape [n_frames] (kJ/mol), got {arr.shape}")
    return arr


def tail_excess(ref_kj_mol, bm_kj_mol, percentile: float = TAIL_PERCENTILE) -> float:
    """P_q(backmapped) - P_q(reference) in kJ/mol, q = ``percentile`` (finite values only)."""
    ref = _energies(ref_kj_mol, "ref_kj_mol")
    bm = _energies(bm_kj_mol, "bm_kj_mol")
    ref, bm = ref[np.isfinite(ref)], bm[np.isfinite(bm)]
    if ref.size == 0 or bm.size == 0:
        return float("nan")
    return float(np.percentile(bm, percentile) - np.percentile(ref, percentile))


def energy_metrics(ref_kj_mol, bm_kj_mol) -> dict[str, float]:
    """Compare potential-energy distributions.

    ref_kj_mol [F], bm_kj_mol [G] (kJ/mol). Non-finite backmapped energies
    (exploded structures) are excluded from the distances and reported as a
    fraction. Returns ``w1_energy_kj_mol`` (Wasserstein-1), ``energy_p99_excess_kj_mol``
    (:func:`tail_excess`), ``energy_mean_diff_kj_mol`` (mean bm - mean ref) and
    ``energy_nonfinite_fraction``.
    """
    ref = _energies(ref_kj_mol, "ref_kj_mol")
    bm = _energies(bm_kj_mol, "bm_kj_mol")
    ok_ref, ok_bm = ref[np.isfinite(ref)], bm[np.isfinite(bm)]
    out = {"energy_nonfinite_fraction": float(1.0 - ok_bm.size / bm.size)}
    if ok_ref.size == 0 or ok_bm.size == 0:
        return out
    out["w1_energy_kj_mol"] = wasserstein_1(ok_ref, ok_bm)
    out["energy_p99_excess_kj_mol"] = tail_excess(ok_ref, ok_bm)
    out["energy_mean_diff_kj_mol"] = float(ok_bm.mean() - ok_ref.mean())
    return out
