"""The leaderboard: the latest evaluation of every model on the same data, ranked by one composite.

Composite (lower is better, 0 = indistinguishable from a second reference run
on every term): the mean over the terms below of

    log10( max(1, value / max(floor, scale)) )

where ``floor`` is the metric's reference-vs-reference floor logged by the
evaluation (:mod:`finegrain.platform.science.metrics.floors`) and ``scale`` a
chemist's tolerance for metrics whose floor is round-off (a CG-RMSD of
0.005 nm, 0.1 % clashing residues). A model 10x above the floor on every
term scores 1. Terms: CG-RMSD, heavy-atom bond JS, angle JS, energy W1 and
p99 excess, clash score, and the velocity JS for temporal models (those that
backmap frames in sequence; frame-independent models are not judged on
time correlations they never claim).

Condensed phase (periodic systems, e.g. liquid cumene): where the evaluation
logged them (:func:`finegrain.platform.science.metrics.evaluate_frames`), two
more terms count, :data:`CONDENSED_TERMS`: the headline atom RDF distance
``aa_rdf_w1_nm`` (W1 of the intermolecular element-pair g(r), nm; tolerance
0.001 nm, a fifth of the RDF bin) and ``cg_js_force_magnitude``, the JS of the
CG-projected force magnitudes (nats; the 1e-4 tolerance of the other JS
terms). Molecules never log them, so their composite is unchanged. The bead
RDFs (``cg_rdf_*``) are left out on purpose: the CG beads are the model's
input, so a model that keeps them (every CG-consistent one, even one that
places atoms at random around the beads) scores 0 there, and the term would
only dilute the mean towards 0 without telling models apart.

A term whose value is 0 (or below its floor) scores log10(1) = 0, never -inf;
a missing or non-finite floor falls back to the tolerance alone.
"""

from __future__ import annotations

import json
import math

from finegrain.platform.apps.evaluation import EVAL_EXPERIMENT
from finegrain.platform.science.metrics import plots
from finegrain.platform.services.tracking import Tracker


__all__ = ["COMPOSITE_TERMS", "TEMPORAL_TERMS", "CONDENSED_TERMS", "composite_score", "leaderboard",
           "leaderboard_rows", "leaderboard_text", "log_leaderboard"]

#: term -> tolerance used where the floor is smaller (same unit as the metric).
COMPOSITE_TERMS = {"rmsd_cg_nm": 0.005, "js_bonds": 1e-4, "js_angles": 1e-4, "w1_energy_kj_mol": 0.1,
                   "energy_p99_excess_kj_mol": 1.0, "clash_score": 0.1}
TEMPORAL_TERMS = {"js_velocity": 1e-4}
#: Condensed-phase terms, counted where the evaluation logged them (periodic systems only); not ``cg_rdf_*``
#: (the beads are the input: a model that keeps them scores 0 there, see the module docstring).
CONDENSED_TERMS = {"aa_rdf_w1_nm": 1e-3, "cg_js_force_magnitude": 1e-4}
_SUFFIXES = ("", "_ci_lo", "_ci_hi", "_floor", "_floor_ci_lo", "_floor_ci_hi")
#: Shown under the composite, each with its interval and floor.
SHOWN = ("rmsd_cg_nm", "js_bonds", "js_angles", "js_dihedrals", "mae_constrained_bond_nm", "bond_score",
         "w1_energy_kj_mol", "energy_p99_excess_kj_mol", "clash_score", *CONDENSED_TERMS, "kl_fes", "its_ratio_1",
         "js_velocity", "diversity_score", "n_frames", "frames_per_s")


def composite_score(metrics: dict, temporal: bool) -> tuple[float, dict[str, float]]:
    """(composite, {term: log10 ratio}) of one evaluation's metrics (see the module docstring); terms
    missing from ``metrics`` are left out of the mean, NaN when none is there (so the condensed-phase terms
    count only where logged)."""
    terms = {**COMPOSITE_TERMS, **CONDENSED_TERMS, **(TEMPORAL_TERMS if temporal else {})}
    parts = {}
    for name, scale in terms.items():
        value = metrics.get(name)
        if value is None or not math.isfinite(value):
            continue
        floor = metrics.get(f"{name}_floor")
        ref = max(floor if floor is not None and math.isfinite(floor) else 0.0, scale)
        parts[name] = math.log10(max(1.0, value / ref))
    return (sum(parts.values()) / len(parts) if parts else math.nan), parts


def leaderboard(system: str, tracker: Tracker, experiment: str | None = None, data_hash: str | None = None,
                evaluation: str | None = None) -> list[dict]:
    """Latest evaluation of every model label on the same data (MLflow ``search_runs``), best first.

    data_hash : which data set (default: that of the most recent evaluation of ``system``).
    Rows: {model_label, family, temporal, run_id, model_uri, data_hash, composite, terms, and each
    SHOWN metric with its ``_floor`` (None where not logged)}.
    """
    client = tracker.client
    exp = client.get_experiment_by_name(experiment or EVAL_EXPERIMENT)
    if exp is None:
        return []
    filt = f"tags.system = '{system}'"
    if evaluation:
        filt += f" and tags.evaluation = '{evaluation}'"
    runs = client.search_runs([exp.experiment_id], filter_string=filt, order_by=["attributes.start_time DESC"],
                              max_results=1000)
    runs = [r for r in runs if "model_label" in r.data.tags]
    if not runs:
        return []
    data_hash = data_hash or runs[0].data.tags.get("data_hash")
    rows: dict[str, dict] = {}
    for r in runs:
        t, m = r.data.tags, r.data.metrics
        if t.get("data_hash") != data_hash or t.get("model_label") in rows:
            continue
        temporal = t.get("temporal") == "true"
        comp, parts = composite_score(m, temporal)
        rows[t["model_label"]] = {"model_label": t["model_label"], "family": t.get("family"), "temporal": temporal,
                                  "run_id": r.info.run_id, "model_uri": t.get("model_uri"), "data_hash": data_hash,
                                  "composite": comp, "terms": parts,
                                  **{f"{k}{suffix}": m.get(f"{k}{suffix}") for k in SHOWN for suffix in _SUFFIXES}}
    return sorted(rows.values(), key=lambda row: (not math.isfinite(row["composite"]), row["composite"]))


def _ci(row: dict, k: str) -> str:
    lo, hi = row.get(f"{k}_ci_lo"), row.get(f"{k}_ci_hi")
    return "" if lo is None or hi is None else f" [{lo:.2g}, {hi:.2g}]"


def _cell(row: dict, k: str) -> str:
    v, f = row.get(k), row.get(f"{k}_floor")
    if v is None:
        return "-"
    ratio = f" {v / f:.2g}x" if f is not None and f > 0 and k not in ("bond_score", "diversity_score",
                                                                       "its_ratio_1") else ""
    return f"{v:.3g}{_ci(row, k)}{ratio}"


def leaderboard_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, body) of the leaderboard as text cells: one row per metric, one column per model, and a
    column with the reference floor of each metric (the same data for every model). The condensed-phase
    rows appear only where some model logged them (a molecule's table is unchanged)."""
    header = ["metric", "floor [95 % CI]"] + [r["model_label"] for r in rows]
    body = [["composite (see docs)", "0"] + [f"{r['composite']:.3f}" for r in rows]]
    for k in SHOWN:
        if k in CONDENSED_TERMS and all(r.get(k) is None and r.get(f"{k}_floor") is None for r in rows):
            continue
        first = next((r for r in rows if r.get(f"{k}_floor") is not None), None)
        floor = "-" if first is None else (f"{first[f'{k}_floor']:.3g}" + _ci({k: 0, **{
            f"{k}_ci_lo": first.get(f"{k}_floor_ci_lo"), f"{k}_ci_hi": first.get(f"{k}_floor_ci_hi")}}, k))
        body.append([k, floor] + [_cell(r, k) for r in rows])
    return header, body


def leaderboard_text(rows: list[dict], system: str) -> str:
    """A plain-text table (for the MLflow artifact)."""
    header, body = leaderboard_rows(rows)
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
    lines = [f"finegrain leaderboard: {system}" + (f" (data {rows[0]['data_hash']})" if rows else "")]
    for line in [header, *body]:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))))
    lines.append("cells: value [95 % CI] value/floor; composite: mean log10 of the ratios, 0 = at the floor")
    return "\n".join(lines)


def log_leaderboard(rows: list[dict], system: str, tracker: Tracker, experiment: str | None = None) -> str | None:
    """Log the leaderboard (leaderboard.txt, leaderboard.json, plots/leaderboard.png) as one MLflow run named
    ``leaderboard-<system>`` in the evaluation experiment; returns its run id (None without rows)."""

    if not rows:
        return None
    client = tracker.client
    name = experiment or EVAL_EXPERIMENT
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
    run = client.create_run(exp_id, run_name=f"leaderboard-{system}",
                            tags={"leaderboard": system, "data_hash": rows[0]["data_hash"]})
    client.log_text(run.info.run_id, leaderboard_text(rows, system), "leaderboard.txt")
    client.log_text(run.info.run_id, json.dumps(rows, indent=1, default=str), "leaderboard.json")
    fig = plots.plot_leaderboard([r["model_label"] for r in rows], [r["terms"] for r in rows],
                                 [r["composite"] for r in rows])
    client.log_figure(run.info.run_id, fig, "plots/leaderboard.png")
    client.set_terminated(run.info.run_id)
    return run.info.run_id
