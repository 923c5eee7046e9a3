"""Evaluation figures (matplotlib, Agg canvas): reference vs backmapped.

Every function returns a ``matplotlib.figure.Figure`` attached to an Agg
canvas; nothing goes through pyplot, so no global figure registry fills up
and no display is needed. The caller logs them (``mlflow.log_figure``) or
saves them (``fig.savefig``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from finegrain.platform.science.metrics.fes import free_energy_kt

__all__ = [
    "new_figure",
    "plot_energy_histograms",
    "plot_internal_distributions",
    "plot_fes_pair",
    "plot_implied_timescales",
    "plot_velocity_distributions",
    "plot_rdfs",
]

REF_STYLE = {"color": "black", "label": "reference"}
BM_STYLE = {"color": "tab:red", "label": "backmapped"}


def new_figure(width: float = 6.0, height: float = 4.0):
    """A Figure on an Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _density(counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / (total * np.diff(edges)) if total > 0 else counts


def plot_energy_histograms(ref_kj_mol, bm_kj_mol, bins: int = 60, labels: Sequence[str] = ("reference", "backmapped")):
    """Potential-energy distributions (kJ/mol), shared bins from the pooled 0.5-99.5 % range."""
    ref = np.asarray(ref_kj_mol, np.float64)
    bm = np.asarray(bm_kj_mol, np.float64)
    ref, bm = ref[np.isfinite(ref)], bm[np.isfinite(bm)]
    fig = new_figure()
    ax = fig.add_subplot()
    pooled = np.concatenate([ref, bm])
    if pooled.size:
        lo, hi = np.percentile(pooled, [0.5, 99.5])
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        for data, style, label in ((ref, REF_STYLE, labels[0]), (bm, BM_STYLE, labels[1])):
            if data.size:
                c, _ = np.histogram(np.clip(data, edges[0], edges[-1]), edges)
                ax.stairs(_density(c.astype(float), edges), edges, color=style["color"], label=label)
    ax.set_xlabel("potential energy (kJ/mol)")
    ax.set_ylabel("density")
    ax.legend()
    return fig


def plot_internal_distributions(ref_counts: dict, bm_counts: dict, edges, kind: str, max_classes: int = 12):
    """Per-class distributions of bonds (nm) / angles / dihedrals (degrees), the most populous classes first.

    ref_counts / bm_counts : {class: counts [B]} on ``edges`` [B + 1] (as returned
    by :func:`finegrain.platform.science.metrics.structure.internal_js`).
    """
    classes = sorted(ref_counts, key=lambda c: -ref_counts[c].sum())[:max_classes]
    n = max(1, len(classes))
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig = new_figure(3.0 * cols, 2.4 * rows)
    x = np.asarray(edges, np.float64)
    unit = "nm"
    if kind != "bonds":
        x, unit = np.degrees(x), "deg"
    for k, cls in enumerate(classes):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.stairs(_density(ref_counts[cls], x), x, **REF_STYLE)
        if cls in bm_counts:
            ax.stairs(_density(bm_counts[cls], x), x, **BM_STYLE)
        ax.set_title(cls, fontsize=9)
        ax.set_xlabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.locator_params(axis="x", nbins=4)
        if k == 0:
            ax.legend(fontsize=7)
    fig.suptitle(kind)
    return fig


def plot_fes_pair(ref_counts, bm_counts, edges_x, edges_y, axis_labels: Sequence[str] = ("phi (rad)", "psi (rad)"),
                  titles: Sequence[str] = ("reference", "backmapped"), vmax_kt: float = 8.0):
    """Free-energy surfaces -ln p (kT) side by side on the same bins and colour scale."""
    fig = new_figure(10.0, 4.2)
    axes = [fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)]
    mesh = None
    for ax, counts, title in zip(axes, (ref_counts, bm_counts), titles):
        f = free_energy_kt(counts)
        mesh = ax.pcolormesh(edges_x, edges_y, f.T, vmin=0.0, vmax=vmax_kt, cmap="viridis", shading="flat")
        ax.set_title(title)
        ax.set_xlabel(axis_labels[0])
        ax.set_ylabel(axis_labels[1])
    if mesh is not None:
        fig.colorbar(mesh, ax=axes, label="free energy (kT)")
    return fig


def plot_implied_timescales(its_ref, its_bm, unit: str = "ps", lag: float | None = None):
    """Implied timescales per process, reference vs backmapped (log scale); the lag as a line."""
    ref = np.asarray(its_ref, np.float64)
    bm = np.asarray(its_bm, np.float64)
    fig = new_figure()
    ax = fig.add_subplot()
    idx = np.arange(1, ref.size + 1)
    ax.plot(idx - 0.05, ref, "o", **REF_STYLE)
    ax.plot(idx[: bm.size] + 0.05, bm, "s", **BM_STYLE)
    if lag is not None:
        ax.axhline(lag, color="grey", ls="--", label="lag")
    finite = np.concatenate([ref[np.isfinite(ref) & (ref > 0)], bm[np.isfinite(bm) & (bm > 0)]])
    if finite.size:
        ax.set_yscale("log")
    ax.set_xticks(idx)
    ax.set_xlabel("process")
    ax.set_ylabel(f"implied timescale ({unit})")
    ax.legend()
    return fig


def plot_velocity_distributions(ref_speeds, bm_speeds, edges, scale: float | None = None):
    """Per-atom finite-difference speed distributions (nm/ps); optionally the rescaled backmapped ones."""
    x = np.asarray(edges, np.float64)
    fig = new_figure()
    ax = fig.add_subplot()

    def counts(v):
        c, _ = np.histogram(np.clip(np.asarray(v, np.float64), x[0], x[-1]), x)
        return _density(c.astype(float), x)

    ax.stairs(counts(ref_speeds), x, **REF_STYLE)
    ax.stairs(counts(bm_speeds), x, **BM_STYLE)
    if scale is not None and np.isfinite(scale) and abs(scale - 1.0) > 1e-12:
        ax.stairs(counts(scale * np.asarray(bm_speeds, np.float64)), x, color="tab:blue", ls="--",
                  label=f"backmapped x {scale:.2f}")
    ax.set_xlabel("speed |dx/dt| (nm/ps)")
    ax.set_ylabel("density")
    ax.legend()
    return fig


def plot_rdfs(curves: dict, max_pairs: int = 12, labels: Sequence[str] = ("reference", "generated"),
              metrics: dict | None = None):
    """Radial distribution functions g(r), reference vs generated, one panel per type pair.

    curves : {"A-B": {"r": [B] nm, "reference": g [B], "generated": g [B]}} (as returned by
    :func:`finegrain.platform.science.metrics.rdf.rdf_metrics`); at most ``max_pairs`` panels, in
    the order given. metrics : optional; ``rdf_w1_nm_<A-B>`` (with its ``_floor``) goes in the title.
    """
    names = list(curves)[:max_pairs]
    n = max(1, len(names))
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig = new_figure(3.0 * cols, 2.4 * rows)
    for k, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, k + 1)
        c = curves[name]
        r = np.asarray(c["r"], np.float64)
        ax.axhline(1.0, color="tab:grey", lw=0.8, ls=":")
        ax.plot(r, np.asarray(c["reference"], np.float64), color=REF_STYLE["color"], label=labels[0])
        if c.get("generated") is not None:
            ax.plot(r, np.asarray(c["generated"], np.float64), color=BM_STYLE["color"], label=labels[1])
        title = name
        w1 = (metrics or {}).get(f"rdf_w1_nm_{name}")
        if w1 is not None:
            floor = (metrics or {}).get(f"rdf_w1_nm_{name}_floor")
            title += f"  W1 {w1:.3g} nm" + (f" (floor {floor:.2g})" if floor is not None else "")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("r (nm)", fontsize=8)
        ax.set_ylabel("g(r)", fontsize=8)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend(fontsize=7)
    fig.suptitle("radial distribution functions")
    return fig


def plot_scores_vs_floors(metrics: dict, names: Sequence[str]):
    """Each score as a multiple of its noise floor (log axis), with its 95 % interval and the floor's.

    metrics : evaluation metrics holding ``m``, ``m_floor`` and optionally ``m_ci_lo/hi``,
    ``m_floor_ci_lo/hi`` (see finegrain.platform.science.metrics.floors); names without a positive
    floor are left out. A bar at 1 is as good as a second reference run.
    """
    rows = [n for n in names if n in metrics and metrics.get(f"{n}_floor", 0) > 0]
    fig = new_figure(7.0, 0.45 * max(len(rows), 1) + 1.2)
    ax = fig.add_subplot(1, 1, 1)
    for y, n in enumerate(rows):
        f = metrics[f"{n}_floor"]
        ratio = max(metrics[n] / f, 1e-3)
        lo, hi = (metrics.get(f"{n}_ci_lo", metrics[n]), metrics.get(f"{n}_ci_hi", metrics[n]))
        ax.barh(y, ratio, color="tab:blue", alpha=0.7)
        ax.errorbar(ratio, y, xerr=[[max(ratio - max(lo / f, 1e-3), 0)], [max(hi / f - ratio, 0)]], color="k",
                    capsize=3)
        flo, fhi = metrics.get(f"{n}_floor_ci_lo", f) / f, metrics.get(f"{n}_floor_ci_hi", f) / f
        ax.fill_betweenx([y - 0.4, y + 0.4], max(flo, 1e-3), max(fhi, 1e-3), color="tab:grey", alpha=0.3)
    ax.axvline(1.0, color="tab:grey", ls="--", lw=1)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xscale("log")
    ax.set_xlabel("score / reference noise floor (grey: floor's 95 % interval)")
    ax.set_title("scores against the reference-vs-reference floor")
    return fig


def plot_leaderboard(labels: Sequence[str], terms: Sequence[dict], composite: Sequence[float]):
    """Models (rows, best first) x composite terms: log10(score / floor) as a heat map, with the composite."""
    names = sorted({k for t in terms for k in t})
    grid = np.array([[t.get(k, np.nan) for k in names] for t in terms], dtype=np.float64).reshape(len(terms), -1)
    fig = new_figure(1.1 * max(len(names), 3) + 3.0, 0.5 * max(len(labels), 1) + 1.6)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=max(1.0, float(np.nanmax(grid)) if grid.size else 1.0),
                   aspect="auto")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), [f"{lab}  ({c:.2f})" for lab, c in zip(labels, composite)])
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label="log10(score / reference floor)")
    ax.set_title("leaderboard (composite in brackets; 0 = at the noise floor)")
    return fig
