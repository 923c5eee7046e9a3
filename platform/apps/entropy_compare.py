"""Mapping-entropy comparison across CG mappings of the same AA data (``finegrain entropy compare``).

For each mapping: the AA frames of one shard folder are re-mapped
(:func:`remap_shards`, same trajectories and frames, new CG column), a flow
is trained on them (:mod:`finegrain.trainables.flow.train`, or reused from
an earlier comparison with the same data and settings), and three
estimators are computed (:mod:`finegrain.platform.science.metrics.entropy`):

- flow: held-out E[-ln q(X | Y)] (upper bound on H(X | Y)) and S_map (lower bound);
- gauss: the Gaussian (linear-regression residual) bound on H(X | Y) and its S_map;
- giulini: (beta^2 / 2) sum_R P(R) Var(U | R) over k-means clusters of CG
  frames, k doubled until the value moves by <= 5 %
  (:func:`~finegrain.platform.science.metrics.entropy_checks.giulini_converged`).

Two different quantities, labelled apart everywhere: ``smap_flow`` and
``smap_gauss`` are S_map' relative to the maximum-entropy Gaussian fibre
reference (see the entropy module); ``smap_giulini`` is Giulini's S_map
(uniform fibre reference, second-cumulant estimate).  Larger = more
atomistic information thrown away.  ``h_cond_flow`` (held-out upper bound on
H(X | Y), with a block-bootstrap 95 % CI) is logged for every mapping, and
nested mappings are checked against each other
(:func:`~finegrain.platform.science.metrics.entropy_checks.nested_flags`; a
violation tags the coarser flow ``entropy.under_trained``).

Refusals (InputError, exit 2 from the CLI): constrained data (X-H bonds
fixed: H(X | Y) = -inf), known from the manifest's ``constraints`` when it
carries them, else from the simulation's metadata.json next to the source
trajectories, and in any case from the data (X-H lengths that do not
fluctuate); and a split that leaves no held-out trajectory (the flow trains
on whole trajectories, so frames are never split by time: held-out frames
come from the test split, else the validation split, never from train).  MLflow: a parent
run in ``experiment`` (comparison plot, table) and one nested child run per
mapping (the flow's training run when trained here), params ``mapping``,
``n_beads``, ``fibre_dim``, entropies as metrics (nats per frame, ``*_per_dof``
per atomistic degree of freedom).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from finegrain.datasets.shards import Manifest, frame_schema, read_frames, sha256_file, split_trajectories
from finegrain.datasets.systems import get_system
from finegrain.platform.apps.entropy_config import CompareConfig
from finegrain.platform.science.errors import InputError
from finegrain.platform.science.frames import Frames
from finegrain.platform.science.metrics import entropy as ent
from finegrain.platform.science.metrics.entropy_checks import (
    CONSTRAINED_STD_NM, block_bootstrap_ci, chain_rule_link, fixed_length_xh_bonds, giulini_converged, nested_flags,
    nesting_matrix,
)
from finegrain.platform.science.metrics.plots import new_figure
from finegrain.platform.services.stack import stack_home
from finegrain.platform.services.tracking import Tracker
from finegrain.trainables.flow.train import fit_detailed
from finegrain.trainables.flow.train_config import FlowTrainConfig
from finegrain.trainables.protocol import load_backmapper

__all__ = ["CompareConfig", "CompareResult", "compare_mappings", "remap_shards", "estimate_mapping",
           "ranked_rows", "plot_comparison", "small_adp_comparison", "check_unconstrained", "heldout_split",
           "nested_checks"]

METRIC_KEYS = ("smap_flow", "smap_gauss", "smap_giulini", "h_cond_flow", "h_cond_gauss")


@dataclass
class CompareResult:
    rows: list[dict[str, Any]]
    parent_run_id: str | None
    plot: Path | None
    table: Path | None = None
    child_run_ids: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- data
def remap_shards(src: str | Path, mapping, out: str | Path) -> Path:
    """Write ``src``'s frames with their CG column recomputed by ``mapping`` into ``out``; returns ``out``.

    Same trajectories, frames, energies and forces; the manifest records the
    new mapping and the source data hash (``sources['aa_digest']``).  Reuses
    ``out`` when it already holds this remap of this source.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    src, out = Path(src), Path(out)
    man = Manifest.load(src)
    if mapping.n_atoms != man.n_atoms:
        raise ValueError(f"mapping '{mapping.name}': {mapping.n_atoms} atoms, the shards at {src} have {man.n_atoms}")
    if (out / "manifest.json").is_file():
        old = Manifest.load(out)
        if old.sources.get("aa_digest") == man.digest and old.mapping["matrix"] == mapping.to_dict()["matrix"]:
            return out
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "shards").mkdir(parents=True)
    schema = frame_schema(man.n_atoms, mapping.n_beads, box=man.has_box)
    shards = []
    for s in man.shards:
        table = pq.read_table(src / s.path)
        aa = table.column("aa_xyz_nm").combine_chunks().values.to_numpy(zero_copy_only=False)
        cg = mapping.map(aa.reshape(len(table), man.n_atoms, 3).astype(np.float64)).astype(np.float32)
        arr = pa.FixedSizeListArray.from_arrays(pa.array(cg.reshape(-1), type=pa.float32()), 3 * mapping.n_beads)
        table = table.set_column(table.schema.get_field_index("cg_xyz_nm"), schema.field("cg_xyz_nm"), arr)
        table = table.select(schema.names).cast(schema)
        pq.write_table(table, tmp / s.path)
        shards.append(type(s)(s.path, s.traj_id, s.first_frame, s.n_rows, sha256_file(tmp / s.path)))
    shutil.copy(src / man.topology_pdb, tmp / man.topology_pdb)
    new = Manifest(**{**man.__dict__, "mapping": mapping.to_dict(), "n_beads": mapping.n_beads, "shards": shards,
                      "sources": {**man.sources, "aa_digest": man.digest}})
    new.save(tmp)
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return out


NO_CONSTRAINTS_HINT = ("simulate without them: `finegrain simulate SYSTEM --out DIR --no-constraints --timestep-fs 1` "
                       "(all bonds free needs a step <= 1 fs), then `finegrain ingest` that folder")


def _describe_rows(rows, atom_names=()) -> str:
    """'' for no rows; else "C constrained distances, e.g. atoms i-j (names) at r0 nm" from rows [[i, j, (r0_nm)], ...]."""
    rows = [list(r) for r in rows]
    if not rows:
        return ""
    r = rows[0]
    i, j = int(r[0]), int(r[1])
    names = f" ({atom_names[i]}-{atom_names[j]})" if max(i, j) < len(atom_names) else ""
    at = f" at {float(r[2]):.4f} nm" if len(r) > 2 else ""
    return f"{len(rows)} constrained distances, e.g. atoms {i}-{j}{names}{at}"


def declared_constraints(man, folder: str | Path | None = None) -> tuple[str | None, str]:
    """What the data's provenance says about bond constraints: (description, source).

    description: a non-empty string naming the constraints when the data are
    constrained, "" when declared free, None when nothing says.  Looks at the
    manifest's ``constraints`` ([[i, j, r0_nm], ...]; None = unknown) when it
    is known, else at the ``metadata.json`` of the ``finegrain simulate``
    folder each source trajectory came from (``constrained_pairs``, else
    ``constraints``: "HBonds" or null).
    """
    if man.constraints is not None:
        return _describe_rows(man.constraints, man.atom_names), "manifest"
    found = {}
    for key, src in sorted(man.sources.items()):
        meta = Path(str(src)).parent / "metadata.json"
        if key == "aa_digest" or meta in found or not meta.is_file():
            continue
        try:
            d = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        kind = d.get("constraints", d.get("config", {}).get("constraints"))
        kind = None if kind in (None, "", "None", "none") else kind
        rows = _describe_rows(d.get("constrained_pairs") or [], man.atom_names)
        found[meta] = ", ".join(x for x in (f"constraints={kind}" if kind else "", rows) if x)
    bad = {m: c for m, c in found.items() if c}
    if bad:
        meta, what = next(iter(bad.items()))
        return f"{what} in the simulation metadata {meta}", "simulation metadata"
    return ("" if found else None), ("simulation metadata" if found else "none")


def check_unconstrained(folder: str | Path, max_frames: int = 200) -> None:
    """Raise InputError (one line, naming the constraint and the fix) when ``folder``'s data are constrained.

    Provenance first (:func:`declared_constraints`), then the data: X-H
    bonds whose length std across up to ``max_frames`` frames of the first
    shards is below :data:`~finegrain.platform.science.metrics.entropy_checks.CONSTRAINED_STD_NM`
    (at least half of them, so a rare stiff bond does not count).
    """
    import pyarrow.parquet as pq

    folder = Path(folder)
    man = Manifest.load(folder)
    what, source = declared_constraints(man, folder)
    if what:
        raise InputError(f"shards {folder}: constrained data ({what}; from the {source}); with bonds "
                         f"constrained H(X|Y) -> -inf and mapping entropies are meaningless; {NO_CONSTRAINTS_HINT}")
    chunks, n = [], 0
    for s in man.shards:
        if n >= max_frames:
            break
        col = pq.read_table(folder / s.path, columns=["aa_xyz_nm"]).column("aa_xyz_nm").combine_chunks()
        chunks.append(col.values.to_numpy(zero_copy_only=False).reshape(-1, man.n_atoms, 3))
        n += len(chunks[-1])
    if n < 3:
        return
    fixed, std = fixed_length_xh_bonds(np.concatenate(chunks)[:max_frames], _hydrogens(folder, man))
    if std.size and len(fixed) * 2 >= std.size:
        i, j = map(int, fixed[0])
        raise InputError(f"shards {folder}: constrained data ({len(fixed)} of {std.size} X-H bond lengths do not "
                         f"fluctuate, std < {CONSTRAINED_STD_NM:g} nm, e.g. atoms {i}-{j}: X-H bonds constrained); "
                         f"then H(X|Y) -> -inf and mapping entropies are meaningless; {NO_CONSTRAINTS_HINT}")


def _hydrogens(folder: Path, man) -> np.ndarray:
    """is_hydrogen [N] from the folder's topology PDB (elements), else from atom names."""
    try:
        import mdtraj as md

        top = md.load_topology(str(folder / man.topology_pdb))
        if top.n_atoms == man.n_atoms:
            return np.array([a.element is not None and a.element.symbol == "H" for a in top.atoms])
    except Exception:  # no or unreadable topology: fall back on names
        pass
    return np.array([name.strip().upper().startswith("H") for name in man.atom_names])


def heldout_split(man, fractions, seed: int, folder: str | Path = "") -> tuple[list[str], str, list[str]]:
    """(held-out trajectory ids, split name, training ids) of the flow's trajectory split.

    Held-out = the test split, else the validation split; never training
    trajectories.  Raises InputError when the split leaves none (e.g. fewer
    than 3 trajectories with the default fractions): the flow trains on whole
    trajectories, so there is no honest held-out set then.
    """

    splits = split_trajectories(man, tuple(fractions), seed)
    for name in ("test", "validation"):
        if splits[name]:
            if set(splits[name]) & set(splits["train"]):  # cannot happen with split_trajectories; guard anyway
                raise RuntimeError(f"split {name} shares trajectories with train")
            return list(splits[name]), name, list(splits["train"])
    raise InputError(f"shards {folder}: the flow's split (data.fractions={list(fractions)}, data.seed={seed}) of "
                     f"{man.n_trajectories} trajectories leaves no held-out trajectory, and H(X|Y) must be scored on "
                     f"trajectories the flow never trained on; simulate >= 3 replicas (`finegrain simulate ... "
                     f"--replicas 3`) or give validation/test a trajectory (e.g. --set 'data.fractions=[0.5, 0.5, 0.0]')")


def _recorded_train_ids(backmapper) -> set[str] | None:
    """Training trajectory ids the backmapper recorded (``Backmapper.recorded_split``), else None."""
    rec = backmapper.recorded_split()
    return None if rec is None else set(map(str, rec["train"]))


# ----------------------------------------------------------------------------------------- estimators
def estimate_mapping(backmapper, heldout: Frames | dict, all_frames: Frames | dict,
                     cfg: CompareConfig) -> dict[str, float]:
    """All estimators for one mapping: nats per frame and per atomistic dof (``*_per_dof``).

    heldout / all_frames: :class:`~finegrain.platform.science.frames.Frames` (or
    :func:`~finegrain.datasets.shards.read_frames` dicts) with aa_xyz_nm [F, N, 3],
    cg_xyz_nm [F, n, 3] and, for all_frames, energy_kj_mol [F], sorted by
    (traj_id, frame).  ``h_cond_flow_ci_low/high``: block-bootstrap 95 % CI of
    the held-out bound (blocks of consecutive scored frames).  Energy
    variance: ``giulini_*`` report the k-doubling check (k, 2k, both values,
    relative change, converged 0/1); ``smap_giulini`` is the value at the
    finest k (an upper bound in expectation when not converged).
    """

    c = np.asarray(backmapper.mapping.matrix)
    n_atoms = c.shape[1]
    assignment = backmapper.bead_assignment
    dim = ent.fibre_dimension(c)
    rng = np.random.default_rng(cfg.seed)
    heldout, all_frames = Frames.from_dict(heldout), Frames.from_dict(all_frames)
    for name, fr in (("heldout", heldout), ("all_frames", all_frames)):
        if fr.aa_xyz_nm is None or fr.cg_xyz_nm is None:
            raise ValueError(f"{name}: needs aa_xyz_nm [F, N, 3] and cg_xyz_nm [F, n, 3]")
    aa, cg = heldout.aa_xyz_nm, heldout.cg_xyz_nm
    pick = np.sort(rng.permutation(len(aa))[: cfg.eval_frames])
    out: dict[str, float] = {"fibre_dim": float(dim), "n_eval_frames": float(len(pick))}
    msd = ent.anchor_msd(aa, cg, c, assignment)
    nll = -backmapper.log_likelihood(aa[pick], cg[pick], seed=cfg.seed, divergence=cfg.divergence,
                                     n_probes=cfg.n_probes, method="rk4", steps=cfg.ode_steps)
    fl = ent.flow_estimates(nll, msd, dim, n_atoms)
    _, lo, hi = block_bootstrap_ci(nll, n_blocks=20, seed=cfg.seed)
    out.update({"h_cond_flow": fl["h_cond"], "h_cond_flow_se": fl["h_cond_se"], "h_cond_flow_ci_low": lo,
                "h_cond_flow_ci_high": hi, "smap_flow": fl["smap"], "msd_anchor_nm2": msd})
    a_all, c_all = all_frames.aa_xyz_nm, all_frames.cg_xyz_nm
    try:
        hg = ent.gaussian_bound_from_samples(a_all, c_all, c)
        out["h_cond_gauss"] = hg
        out["smap_gauss"] = ent.smap_maxent(hg, ent.anchor_msd(a_all, c_all, c, assignment), dim)
    except ValueError:  # too few frames for the fibre covariance
        out["h_cond_gauss"] = out["smap_gauss"] = float("nan")
    energy = np.asarray(np.nan if all_frames.energy_kj_mol is None else all_frames.energy_kj_mol, dtype=np.float64)
    if np.all(np.isfinite(energy)) and energy.size >= 2:
        g = giulini_converged(energy, c_all, cfg.temperature_k, k_start=cfg.n_clusters, tol=cfg.giulini_tol,
                              seed=cfg.seed)
        out.update({"smap_giulini": g["smap"], "giulini_clusters": g["clusters"], "giulini_k": g["k"],
                    "giulini_k2": g["k2"], "giulini_smap_k": g["smap_k"], "giulini_smap_2k": g["smap_2k"],
                    "giulini_rel_change": g["rel_change"], "giulini_converged": float(g["converged"])})
    else:
        out["smap_giulini"] = float("nan")
    for k in METRIC_KEYS:
        out[f"{k}_per_dof"] = ent.per_dof(out[k], n_atoms)
    for k in ("h_cond_flow_ci_low", "h_cond_flow_ci_high"):
        out[f"{k}_per_dof"] = ent.per_dof(out[k], n_atoms)
    return out


def nested_checks(matrices: dict[str, np.ndarray], rows: list[dict[str, Any]], aa_xyz) -> list[dict]:
    """The H(X | Y) consistency check of every nested pair of mappings (see ``entropy_checks``).

    matrices: mapping -> C [n, N]; rows: comparison rows (``h_cond_flow``,
    ``h_cond_flow_ci_low/high``, nats/frame); aa_xyz [F, N, 3] nm: the
    held-out AA frames (the link H(Y_f | Y_c) is bounded on them).
    Returns :func:`~finegrain.platform.science.metrics.entropy_checks.nested_flags` rows.
    """

    by = {r["mapping"]: r for r in rows}
    links = {}
    for coarse, cc in matrices.items():
        for fine, cf in matrices.items():
            if coarse != fine and nesting_matrix(cc, cf) is not None:
                try:
                    links[(coarse, fine)] = chain_rule_link(aa_xyz, cc, cf)["link"]
                except ValueError:  # too few frames for the link's covariance
                    continue
    h = {m: r["h_cond_flow"] for m, r in by.items()}
    hw = {m: 0.5 * (r["h_cond_flow_ci_high"] - r["h_cond_flow_ci_low"]) for m, r in by.items()}
    return nested_flags(h, hw, links)


def ranked_rows(rows: list[dict[str, Any]], key: str = "smap_flow") -> list[dict[str, Any]]:
    """Rows sorted by ``key`` ascending (least information lost first), with a ``rank`` field."""
    order = sorted(rows, key=lambda r: (math.isnan(r[key]), r[key]))
    return [{**r, "rank": i + 1} for i, r in enumerate(order)]


def plot_comparison(rows: list[dict[str, Any]]):
    """Three panels per mapping (Agg Figure), one quantity each, nats per atomistic dof.

    (a) S_map' w.r.t. the maxent Gaussian fibre reference (flow lower bound,
    Gaussian estimate); (b) Giulini's energy-variance S_map at the k reached
    by the doubling check (hatched: not converged, an upper bound); (c)
    H(X | Y) upper bounds (flow with its 95 % CI, Gaussian).
    """

    fig = new_figure(14, 4)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    x = np.arange(len(rows))
    for i, (k, label) in enumerate((("smap_flow", "flow (lower bound)"), ("smap_gauss", "Gaussian"))):
        ax1.bar(x + (i - 0.5) * 0.4, [r[f"{k}_per_dof"] for r in rows], 0.4, label=label)
    ax1.set_title("S_map' (maxent Gaussian fibre reference)", fontsize=9)
    for xi, r in zip(x, rows):
        conv = r.get("giulini_converged", 0.0) == 1.0
        ax2.bar(xi, r["smap_giulini_per_dof"], 0.5, color="tab:green", hatch=None if conv else "//",
                label=None if xi else "energy variance")
        if math.isfinite(r.get("giulini_k2", float("nan"))):
            ax2.annotate(f"k={r['giulini_k2']:.0f}{'' if conv else ' (not conv.)'}", (xi, r["smap_giulini_per_dof"]),
                         ha="center", va="bottom", fontsize=7)
    ax2.set_title("S_map (Giulini energy variance, uniform reference)", fontsize=9)
    hf = np.array([r["h_cond_flow_per_dof"] for r in rows])
    err = np.array([[r["h_cond_flow_per_dof"] - r["h_cond_flow_ci_low_per_dof"],
                     r["h_cond_flow_ci_high_per_dof"] - r["h_cond_flow_per_dof"]] for r in rows]).T
    ax3.bar(x - 0.2, hf, 0.4, yerr=np.nan_to_num(err), capsize=3, label="flow E[-ln q] (95 % CI)")
    ax3.bar(x + 0.2, [r["h_cond_gauss_per_dof"] for r in rows], 0.4, label="Gaussian bound")
    for xi, r in zip(x, rows):
        if r.get("under_trained"):
            ax3.annotate("under-trained", (xi - 0.2, hf[xi]), ha="center", va="top", fontsize=7, color="red")
    ax3.set_title("H(X|Y) upper bounds (fibre measure in nm)", fontsize=9)
    for ax in (ax1, ax2, ax3):
        ax.set_ylabel("nats per atomistic dof")
        ax.set_xticks(x, [f"{r['mapping']}\n({r['n_beads']} beads)" for r in rows])
        ax.legend(fontsize=7)
    return fig


# ----------------------------------------------------------------------------------------- driver
def _flow_config(cfg: CompareConfig, shards: Path, mapping_name: str, parent: str | None):
    base = FlowTrainConfig.from_yaml(cfg.flow_config, []) if cfg.flow_config else None
    data = base.model_dump(mode="json") if base else {"data": {"shards": str(shards)}}
    data["data"]["shards"] = str(shards)
    data.setdefault("training", {})["max_steps"] = cfg.budget
    track = {**data.get("tracking", {}), "experiment": cfg.experiment, "run_name": mapping_name}
    data["tracking"] = track
    out = FlowTrainConfig.from_dict(data).with_overrides(list(cfg.overrides))
    if parent and "parent_run_id" in type(out.tracking).model_fields:
        out.tracking.parent_run_id = parent  # assigned, not parsed: a run id is not YAML
    return out


def _reuse_key(train_cfg) -> str:
    flat = {k: v for k, v in train_cfg.flat().items() if not k.startswith(("tracking.", "data.shards",
                                                                            "training.progress"))}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]


def compare_mappings(cfg: CompareConfig, tracker: Tracker, echo: Callable[[str], None] = print) -> CompareResult:
    """Train (or reuse) one flow per mapping on the same AA frames, estimate, log to MLflow; see module doc."""

    src = Path(cfg.shards).resolve()
    man = Manifest.load(src)
    system = get_system(cfg.system)
    mappings = {name: system.mapping(name) for name in cfg.mappings}  # fail early on an unknown name
    check_unconstrained(src)  # before anything is trained or logged
    tcfg0 = _flow_config(cfg, src, cfg.mappings[0], None)
    held_ids, split, train_ids = heldout_split(man, tcfg0.data.fractions, tcfg0.data.seed, src)
    work = Path(cfg.work_dir or stack_home() / "entropy").resolve() / man.digest
    parent = tracker.start_run(cfg.experiment, {"system": cfg.system, "mappings": ",".join(cfg.mappings),
                                                 "budget": cfg.budget, "eval_frames": cfg.eval_frames,
                                                 "divergence": cfg.divergence, "n_probes": cfg.n_probes,
                                                 "n_clusters": cfg.n_clusters, "temperature_k": cfg.temperature_k,
                                                 "giulini_tol": cfg.giulini_tol, "heldout_split": split},
                                {"dataset_digest": man.digest, "system": cfg.system, "kind": "entropy-compare"},
                                run_name=f"compare-{cfg.system}")
    rows, children, heldout_aa = [], {}, None
    try:
        for name, mapping in mappings.items():
            shards = remap_shards(src, mapping, work / name / "shards")
            tcfg = _flow_config(cfg, shards, name, parent)
            model_dir = work / name / f"flow-{_reuse_key(tcfg)}"
            if cfg.reuse and (model_dir / "backmapper.json").is_file():
                bm = load_backmapper(model_dir)
                child = tracker.start_run(cfg.experiment, {**tcfg.flat(), "reused_model": str(model_dir)},
                                           {"mlflow.parentRunId": parent, "family": "flow", "mapping": name,
                                            "system": cfg.system, "dataset_digest": man.digest},
                                           run_name=name)
                tracker.end_run(child)
                echo(f"{name}: reusing {model_dir}")
            else:
                echo(f"{name}: training a flow ({cfg.budget} steps, {mapping.n_beads} beads)")
                res = fit_detailed(tcfg)
                bm, child = res.backmapper, res.run_id
                bm.save(model_dir)
            client = tracker.client
            client.set_tag(child, "mlflow.parentRunId", parent)
            client.set_tag(child, "aa_dataset_digest", man.digest)
            for key, val in (("n_beads", mapping.n_beads), ("comparison.mapping", name)):
                try:
                    client.log_param(child, key, val)
                except Exception:  # already logged with the same value by the trainer
                    pass
            recorded = _recorded_train_ids(bm)
            if recorded is not None and recorded & set(held_ids):
                raise RuntimeError(f"{name}: held-out trajectories {sorted(recorded & set(held_ids))} were "
                                   f"training data of {model_dir}")
            fr_all = Frames.from_dict(read_frames(shards), mapping=mapping)
            heldout = Frames.from_dict(read_frames(shards, held_ids), mapping=mapping)
            heldout_aa = heldout.aa_xyz_nm if heldout_aa is None else heldout_aa
            est = estimate_mapping(bm, heldout, fr_all, cfg)
            client.log_batch(child, metrics=[_metric(k, v) for k, v in est.items() if math.isfinite(v)])
            client.set_tag(child, "entropy.heldout_split", split)
            client.set_tag(child, "entropy.heldout_trajectories", ",".join(held_ids))
            row = {"mapping": name, "n_beads": mapping.n_beads, "run_id": child, "heldout_split": split, **est}
            rows.append(row)
            children[name] = child
            conv = "converged" if est.get("giulini_converged") == 1.0 else "NOT converged (upper bound)"
            echo(f"{name}: H(X|Y) flow bound {est['h_cond_flow']:.2f} [{est['h_cond_flow_ci_low']:.2f}, "
                 f"{est['h_cond_flow_ci_high']:.2f}] nats/frame on {len(held_ids)} held-out ({split}) trajectories; "
                 f"S_map flow' (maxent-Gaussian ref.) {est['smap_flow']:.3f}, Gaussian' {est['smap_gauss']:.3f}; "
                 f"S_map energy variance {est['smap_giulini']:.3f} nats/frame")
            if "giulini_k" in est:
                echo(f"{name}: energy-variance k-doubling: S(k={est['giulini_k']:.0f}) = {est['giulini_smap_k']:.3f}, "
                     f"S(2k={est['giulini_k2']:.0f}) = {est['giulini_smap_2k']:.3f}, relative change "
                     f"{100 * est['giulini_rel_change']:.1f} % (tolerance {100 * cfg.giulini_tol:.0f} %): {conv}")
        checks = nested_checks({n: np.asarray(m.matrix) for n, m in mappings.items()}, rows, heldout_aa)
        flagged = sorted({c["coarse"] for c in checks if c["violated"]})
        for c in checks:
            verdict = "VIOLATED: under-trained" if c["violated"] else "ok"
            echo(f"nested {c['coarse']} within {c['fine']}: H(X|Y_c) bound {c['h_coarse']:.2f} vs composite "
                 f"{c['h_fine'] + c['link']:.2f} (fine bound + Gaussian H(Y_f|Y_c)), excess {c['excess']:.2f} "
                 f"+- {c['margin']:.2f}: {verdict} ({c['coarse']})")
        for r in rows:
            r["under_trained"] = r["mapping"] in flagged
            tracker.client.set_tag(r["run_id"], "entropy.under_trained", str(r["under_trained"]).lower())
        rows = ranked_rows(rows)
        plot_path, table_path = _log_parent(parent, rows, tracker, checks, flagged)
        tracker.end_run(parent)
    except BaseException:
        tracker.end_run(parent, failed=True)
        raise
    return CompareResult(rows, parent, plot_path, table_path, children)


def _metric(key: str, value: float):
    import time

    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), 0)


def _log_parent(parent: str, rows: list[dict], tracker: Tracker, checks: list[dict] = (),
                flagged: list[str] = ()) -> tuple[Path, Path]:
    import tempfile

    client = tracker.client
    tmp = Path(tempfile.mkdtemp(prefix="entropy-compare-"))
    fig = plot_comparison(rows)
    plot = tmp / "mapping_entropy.png"
    fig.savefig(plot, dpi=120)
    table = tmp / "mapping_entropy.json"
    table.write_text(json.dumps({"rows": rows, "nested_checks": list(checks)}, indent=1, default=float))
    client.log_artifact(parent, str(plot))
    client.log_artifact(parent, str(table))
    for r in rows:
        for key in ("smap_flow_per_dof", "h_cond_flow", "h_cond_flow_ci_low", "h_cond_flow_ci_high"):
            if math.isfinite(r[key]):
                client.log_metric(parent, f"{r['mapping']}.{key}", r[key])
    client.set_tag(parent, "ranking", ",".join(r["mapping"] for r in rows))
    client.set_tag(parent, "entropy.nested_check", ("violated" if flagged else "ok") if checks else "no nested pair")
    client.set_tag(parent, "entropy.under_trained", ",".join(flagged) or "none")
    return plot, table


def small_adp_comparison(shards: str | Path, tracker: Tracker, budget: int = 300,
                         mappings: tuple[str, ...] = ("backbone6", "ca"), echo: Callable[[str], None] = print,
                         **kwargs) -> CompareResult:
    """A small ADP comparison for the demo: smoke-sized flows, in-process training, Hutchinson likelihoods.

    Splits trajectories half/half (train/validation), so two replicas leave
    one held-out trajectory.
    """
    over = ("model.preset=smoke", "training.num_workers=0", "training.progress=false", "training.eval_every=100000",
            "training.checkpoint_every=100000", "data.fractions=[0.5, 0.5, 0.0]",  # 2 replicas: one held out
            *kwargs.pop("overrides", ()))
    cfg = CompareConfig(shards=Path(shards), system="adp", mappings=tuple(mappings), budget=budget, overrides=over,
                        eval_frames=kwargs.pop("eval_frames", 64), **kwargs)
    return compare_mappings(cfg, tracker, echo=echo)
