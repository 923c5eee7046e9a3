"""Mapping-entropy comparison across CG mappings of the same AA data (``finegrain entropy compare``).

For each mapping: the AA frames of one shard folder are re-mapped
(:func:`remap_shards`, same trajectories and frames, new CG column), a flow
is trained on them (:mod:`finegrain.trainables.flow.train`, or reused from
an earlier comparison with the same data and settings), and three
estimators are computed (:mod:`finegrain.platform.metrics.entropy`):

- flow: held-out E[-ln q(X | Y)] (upper bound on H(X | Y)) and S_map (lower bound);
- gauss: the Gaussian (linear-regression residual) bound on H(X | Y) and its S_map;
- giulini: (beta^2 / 2) sum_R P(R) Var(U | R) over k-means clusters of CG frames.

S_map is relative to the maximum-entropy fibre reference (see the entropy
module): larger = more atomistic information thrown away.  MLflow: a parent
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

__all__ = ["CompareConfig", "CompareResult", "compare_mappings", "remap_shards", "estimate_mapping",
           "ranked_rows", "plot_comparison", "small_adp_comparison"]

METRIC_KEYS = ("smap_flow", "smap_gauss", "smap_giulini", "h_cond_flow", "h_cond_gauss")


@dataclass(frozen=True)
class CompareConfig:
    """Settings of one comparison.  budget: training steps per flow; eval_frames: held-out frames scored."""

    shards: Path
    system: str = "adp"
    mappings: tuple[str, ...] = ("backbone6", "backbone5", "ca", "heavy")
    budget: int = 2000
    flow_config: Path | None = None
    overrides: tuple[str, ...] = ()
    experiment: str = "entropy-compare"
    work_dir: Path | None = None
    eval_frames: int = 256
    divergence: str = "hutchinson"
    n_probes: int = 4
    ode_steps: int = 10
    n_clusters: int = 20
    temperature_k: float = 300.0
    reuse: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.mappings:
            raise ValueError("mappings: expected at least one mapping name")
        if self.budget < 1:
            raise ValueError(f"budget: expected >= 1 training step, got {self.budget}")
        if self.eval_frames < 2:
            raise ValueError(f"eval_frames: expected >= 2, got {self.eval_frames}")
        if self.divergence not in ("exact", "hutchinson"):
            raise ValueError(f"divergence: expected exact or hutchinson, got {self.divergence!r}")


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

    from finegrain.platform.shards import Manifest, frame_schema, sha256_file

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
    schema = frame_schema(man.n_atoms, mapping.n_beads)
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


def _heldout_frames(shards: Path, fractions, seed: int) -> tuple[dict, str]:
    from finegrain.platform.shards import Manifest, read_frames, split_trajectories

    splits = split_trajectories(Manifest.load(shards), tuple(fractions), seed)
    for name in ("test", "validation", "train"):
        if splits[name]:
            return read_frames(shards, splits[name]), name
    raise ValueError(f"shards {shards}: no trajectory")


# ----------------------------------------------------------------------------------------- estimators
def estimate_mapping(backmapper, heldout: dict, all_frames: dict, cfg: CompareConfig) -> dict[str, float]:
    """All estimators for one mapping: nats per frame and per atomistic dof (``*_per_dof``).

    heldout / all_frames: :func:`~finegrain.platform.shards.read_frames` columns
    (aa_xyz_nm [F, N, 3], cg_xyz_nm [F, n, 3], energy_kj_mol [F]).
    """
    from finegrain.platform.metrics import entropy as ent

    c = np.asarray(backmapper.mapping.matrix)
    n_atoms = c.shape[1]
    assignment = backmapper.flow.geometry.assignment.cpu().numpy()
    dim = ent.fibre_dimension(c)
    rng = np.random.default_rng(cfg.seed)
    aa, cg = heldout["aa_xyz_nm"], heldout["cg_xyz_nm"]
    pick = np.sort(rng.permutation(len(aa))[: cfg.eval_frames])
    out: dict[str, float] = {"fibre_dim": float(dim), "n_eval_frames": float(len(pick))}
    msd = ent.anchor_msd(aa, cg, c, assignment)
    nll = -backmapper.log_likelihood(aa[pick], cg[pick], seed=cfg.seed, divergence=cfg.divergence,
                                     n_probes=cfg.n_probes, method="rk4", steps=cfg.ode_steps)
    fl = ent.flow_estimates(nll, msd, dim, n_atoms)
    out.update({"h_cond_flow": fl["h_cond"], "h_cond_flow_se": fl["h_cond_se"], "smap_flow": fl["smap"],
                "msd_anchor_nm2": msd})
    a_all, c_all = all_frames["aa_xyz_nm"], all_frames["cg_xyz_nm"]
    try:
        hg = ent.gaussian_bound_from_samples(a_all, c_all, c)
        out["h_cond_gauss"] = hg
        out["smap_gauss"] = ent.smap_maxent(hg, ent.anchor_msd(a_all, c_all, c, assignment), dim)
    except ValueError:  # too few frames for the fibre covariance
        out["h_cond_gauss"] = out["smap_gauss"] = float("nan")
    energy = np.asarray(all_frames["energy_kj_mol"], dtype=np.float64)
    if np.all(np.isfinite(energy)) and energy.size >= 2:
        g = ent.giulini_smap(energy, c_all, cfg.temperature_k, n_clusters=cfg.n_clusters, seed=cfg.seed)
        out["smap_giulini"], out["giulini_clusters"] = g["smap"], g["n_clusters"]
    else:
        out["smap_giulini"] = float("nan")
    for k in METRIC_KEYS:
        out[f"{k}_per_dof"] = ent.per_dof(out[k], n_atoms)
    return out


def ranked_rows(rows: list[dict[str, Any]], key: str = "smap_flow") -> list[dict[str, Any]]:
    """Rows sorted by ``key`` ascending (least information lost first), with a ``rank`` field."""
    order = sorted(rows, key=lambda r: (math.isnan(r[key]), r[key]))
    return [{**r, "rank": i + 1} for i, r in enumerate(order)]


def plot_comparison(rows: list[dict[str, Any]]):
    """Bar chart of S_map per atomistic dof (three estimators) and H(X|Y) bounds per mapping (Agg Figure)."""
    from finegrain.platform.plots import new_figure

    fig = new_figure(10, 4)
    ax1, ax2 = fig.subplots(1, 2)
    names = [r["mapping"] for r in rows]
    x = np.arange(len(rows))
    for i, (k, label) in enumerate((("smap_flow", "flow"), ("smap_gauss", "Gaussian"),
                                    ("smap_giulini", "energy variance"))):
        ax1.bar(x + (i - 1) * 0.27, [r[f"{k}_per_dof"] for r in rows], 0.27, label=label)
    ax1.set_ylabel("S_map (nats per atomistic dof)")
    for i, (k, label) in enumerate((("h_cond_flow", "flow E[-ln q]"), ("h_cond_gauss", "Gaussian bound"))):
        ax2.bar(x + (i - 0.5) * 0.4, [r[f"{k}_per_dof"] for r in rows], 0.4, label=label)
    ax2.set_ylabel("H(X|Y) upper bounds (nats per dof, nm)")
    for ax in (ax1, ax2):
        ax.set_xticks(x, [f"{n}\n({r['n_beads']} beads)" for n, r in zip(names, rows)])
        ax.legend(fontsize=8)
    return fig


# ----------------------------------------------------------------------------------------- driver
def _flow_config(cfg: CompareConfig, shards: Path, mapping_name: str, parent: str | None):
    from finegrain.trainables.flow.train_config import FlowTrainConfig

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


def compare_mappings(cfg: CompareConfig, echo: Callable[[str], None] = print) -> CompareResult:
    """Train (or reuse) one flow per mapping on the same AA frames, estimate, log to MLflow; see module doc."""
    import mlflow

    from finegrain.datasets.systems import get_system
    from finegrain.platform import tracking
    from finegrain.platform.shards import Manifest, read_frames
    from finegrain.platform.stack import stack_home, tracking_uri
    from finegrain.trainables.flow.train import fit_detailed
    from finegrain.trainables.protocol import load_backmapper

    src = Path(cfg.shards).resolve()
    man = Manifest.load(src)
    system = get_system(cfg.system)
    mappings = {name: system.mapping(name) for name in cfg.mappings}  # fail early on an unknown name
    work = Path(cfg.work_dir or stack_home() / "entropy").resolve() / man.digest
    uri = tracking_uri()
    parent = tracking.start_run(cfg.experiment, {"system": cfg.system, "mappings": ",".join(cfg.mappings),
                                                 "budget": cfg.budget, "eval_frames": cfg.eval_frames,
                                                 "divergence": cfg.divergence, "n_probes": cfg.n_probes,
                                                 "n_clusters": cfg.n_clusters, "temperature_k": cfg.temperature_k},
                                {"dataset_digest": man.digest, "system": cfg.system, "kind": "entropy-compare"},
                                run_name=f"compare-{cfg.system}", uri=uri)
    rows, children = [], {}
    try:
        for name, mapping in mappings.items():
            shards = remap_shards(src, mapping, work / name / "shards")
            tcfg = _flow_config(cfg, shards, name, parent)
            model_dir = work / name / f"flow-{_reuse_key(tcfg)}"
            if cfg.reuse and (model_dir / "backmapper.json").is_file():
                bm = load_backmapper(model_dir)
                child = tracking.start_run(cfg.experiment, {**tcfg.flat(), "reused_model": str(model_dir)},
                                           {"mlflow.parentRunId": parent, "family": "flow", "mapping": name,
                                            "system": cfg.system, "dataset_digest": man.digest},
                                           run_name=name, uri=uri)
                tracking.end_run(child, uri=uri)
                echo(f"{name}: reusing {model_dir}")
            else:
                echo(f"{name}: training a flow ({cfg.budget} steps, {mapping.n_beads} beads)")
                res = fit_detailed(tcfg)
                bm, child = res.backmapper, res.run_id
                bm.save(model_dir)
            client = mlflow.MlflowClient(uri)
            client.set_tag(child, "mlflow.parentRunId", parent)
            client.set_tag(child, "aa_dataset_digest", man.digest)
            for key, val in (("n_beads", mapping.n_beads), ("comparison.mapping", name)):
                try:
                    client.log_param(child, key, val)
                except Exception:  # already logged with the same value by the trainer
                    pass
            fr_all = read_frames(shards)
            heldout, split = _heldout_frames(shards, tcfg.data.fractions, tcfg.data.seed)
            est = estimate_mapping(bm, heldout, fr_all, cfg)
            client.log_batch(child, metrics=[_metric(k, v) for k, v in est.items() if math.isfinite(v)])
            client.set_tag(child, "entropy.heldout_split", split)
            row = {"mapping": name, "n_beads": mapping.n_beads, "run_id": child, "heldout_split": split, **est}
            rows.append(row)
            children[name] = child
            echo(f"{name}: S_map flow {est['smap_flow']:.3f}, Gaussian {est['smap_gauss']:.3f}, "
                 f"energy variance {est['smap_giulini']:.3f} nats/frame")
        rows = ranked_rows(rows)
        plot_path, table_path = _log_parent(parent, rows, uri)
        tracking.end_run(parent, uri=uri)
    except BaseException:
        tracking.end_run(parent, failed=True, uri=uri)
        raise
    return CompareResult(rows, parent, plot_path, table_path, children)


def _metric(key: str, value: float):
    import time

    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), 0)


def _log_parent(parent: str, rows: list[dict], uri: str) -> tuple[Path, Path]:
    import tempfile

    import mlflow

    client = mlflow.MlflowClient(uri)
    tmp = Path(tempfile.mkdtemp(prefix="entropy-compare-"))
    fig = plot_comparison(rows)
    plot = tmp / "mapping_entropy.png"
    fig.savefig(plot, dpi=120)
    table = tmp / "mapping_entropy.json"
    table.write_text(json.dumps(rows, indent=1, default=float))
    client.log_artifact(parent, str(plot))
    client.log_artifact(parent, str(table))
    for r in rows:
        client.log_metric(parent, f"{r['mapping']}.smap_flow_per_dof", r["smap_flow_per_dof"])
    client.set_tag(parent, "ranking", ",".join(r["mapping"] for r in rows))
    return plot, table


def small_adp_comparison(shards: str | Path, budget: int = 300, mappings: tuple[str, ...] = ("backbone6", "ca"),
                         echo: Callable[[str], None] = print, **kwargs) -> CompareResult:
    """A small ADP comparison for the demo: smoke-sized flows, in-process training, Hutchinson likelihoods."""
    over = ("model.preset=smoke", "training.num_workers=0", "training.progress=false", "training.eval_every=100000",
            "training.checkpoint_every=100000", *kwargs.pop("overrides", ()))
    cfg = CompareConfig(shards=Path(shards), system="adp", mappings=tuple(mappings), budget=budget, overrides=over,
                        eval_frames=kwargs.pop("eval_frames", 64), **kwargs)
    return compare_mappings(cfg, echo=echo)
