"""The evaluation job: backmap a CG trajectory with any model, compare with the reference AA.

``evaluate(model, reference, ...)``: the reference is a shard folder (from
``finegrain ingest``) or an AA trajectory + topology; the CG input defaults
to the mapped reference (in-distribution test) and may be a separate CG
trajectory (generalization test, e.g. from a CG force field). Every model
family goes through the same ``Backmapper.backmap_xyz``; metrics come from
:func:`finegrain.platform.science.metrics.evaluate_frames`, on reference and backmapped
:class:`~finegrain.platform.science.frames.Frames` built (and checked) once. Results go to one MLflow
run (experiment ``finegrain-evaluation``) tagged with the model's run id and
the data set hash, and to ``OUT/report.json`` + ``OUT/*.png``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from finegrain.datasets.shards import DEFAULT_FRACTIONS, DEFAULT_SPLIT_SEED, Manifest, read_frames, split_trajectories
from finegrain.datasets.systems import available_systems, get_system
from finegrain.platform.science.energies import energy_model
from finegrain.platform.science.energies.openmm_reference import openmm_energies_forces
from finegrain.platform.science.errors import InputError
from finegrain.platform.science.frames import Frames
from finegrain.platform.science.metrics import evaluate_frames, plots
from finegrain.platform.science.metrics.floors import N_BOOTSTRAP, score_with_floor
from finegrain.platform.science.metrics.landscape import MIN_FES_FRAMES
from finegrain.platform.science.validation import check_units_nm, check_xyz
from finegrain.platform.services.tracking import Tracker
from finegrain.trainables.persistence import load_backmapper_any
from finegrain.trainables.refine import refine as refine_frames, refined_label

__all__ = ["EvalResult", "evaluate", "load_reference", "backmap_trajectories", "EVAL_EXPERIMENT"]

EVAL_EXPERIMENT = "finegrain-evaluation"
#: Scores shown against their floors in the ``score_vs_floor`` plot.
FLOOR_PLOT_METRICS = ("js_bonds", "js_angles", "js_dihedrals", "w1_energy_kj_mol", "energy_p99_excess_kj_mol",
                      "kl_fes", "js_velocity")
#: Leaderboard columns: (metric, better) — lower is better for all of these.
KEY_METRICS = ("rmsd_cg_nm", "js_bonds", "js_angles", "js_dihedrals", "w1_energy_kj_mol",
               "energy_p99_excess_kj_mol", "clash_fraction", "kl_fes", "its_ratio_1", "js_velocity",
               "diversity_rmsd_nm", "frames_per_s")


@dataclass
class EvalResult:
    metrics: dict[str, float]
    run_id: str | None
    report: Path | None
    figures: dict = field(default_factory=dict, repr=False)


def load_reference(reference: str | Path, mapping, top: str | Path | None = None, split: str = "all",
                   fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, seed: int = DEFAULT_SPLIT_SEED,
                   split_record: dict | None = None) -> dict:
    """Reference frames as a dict (keys of ``shards.read_frames``) plus ``system``, ``data_hash``
    and ``constraints`` ((pairs [C, 2], r0 [C] nm) of the shard manifest, or None when unknown).

    reference : a shard folder, or an AA trajectory file (then ``top`` is needed; no constraints).
    split : for a shard folder, "all" its trajectories or one split ("train", "validation", "test").
        Its trajectory ids come from ``split_record`` (a model's recorded training split, see
        ``Backmapper.recorded_split``) when given, else from ``shards.split_trajectories(fractions,
        seed)``; ``data_hash`` is then ``<digest>:<split>-<hash of the ids>``.
    """
    import mdtraj as md

    path = Path(reference)
    if split not in ("all", "train", "validation", "test"):
        raise InputError(f"split: expected all, train, validation or test, got {split!r}")
    if path.is_dir():
        man = Manifest.load(path)
        if man.mapping["bead_names"] != list(mapping.bead_names):
            raise InputError(f"reference {path}: mapped with beads {man.mapping['bead_names']}, "
                             f"the model's mapping '{mapping.name}' has {list(mapping.bead_names)}")
        ids, data_hash = None, man.digest
        if split != "all":
            if split_record is not None:
                ids = list(split_record[split])
                missing = sorted(set(ids) - set(man.trajectories))
                if missing:
                    raise InputError(f"reference {path}: the model's recorded {split} split names trajectories "
                                     f"{missing} that this shard folder does not hold (trained on other data?); "
                                     f"use --split all with a held-out shard folder")
                how = f"the model's recorded split (seed {split_record.get('seed')})"
            else:
                ids = split_trajectories(man, fractions, seed)[split]
                how = f"fractions {list(fractions)}, seed {seed}"
            if not ids:
                raise InputError(f"reference {path}: the {split} split of {man.n_trajectories} trajectories is empty "
                                 f"({how}); use --split all with a held-out shard folder")
            data_hash = f"{man.digest}:{split}-{hashlib.sha256(','.join(sorted(ids)).encode()).hexdigest()[:8]}"
        frames = read_frames(path, ids)
        frames.update(system=man.system, data_hash=data_hash, constraints=man.constraint_arrays())
        return frames
    if split != "all":
        raise InputError(f"split: {split!r} needs a shard folder reference; {path} is a trajectory file (use --split all)")
    if top is None:
        raise InputError(f"reference {path}: an AA trajectory needs --top")
    try:
        traj = md.load(str(path), top=str(top))
    except Exception as exc:
        raise InputError(f"reference {path}: unreadable with topology {top} ({type(exc).__name__}: {exc})") from exc
    xyz = check_xyz(traj.xyz, mapping.n_atoms, f"reference {path}")
    check_units_nm(xyz, np.array([[b[0].index, b[1].index] for b in traj.topology.bonds]), f"reference {path}")
    digest = hashlib.sha256(xyz.tobytes()).hexdigest()[:16]
    return {"aa_xyz_nm": xyz, "cg_xyz_nm": mapping.map(xyz.astype(np.float64)).astype(np.float32),
            "traj_id": np.full(traj.n_frames, path.stem), "frame": np.arange(traj.n_frames),
            "time_ps": np.asarray(traj.time, np.float64), "energy_kj_mol": np.full(traj.n_frames, np.nan),
            "system": "custom", "data_hash": digest, "constraints": None}


def parse_onto(onto: str) -> tuple[str, str]:
    """"SYSTEM:MAPPING" -> (system, mapping); InputError naming ``--onto`` otherwise."""
    system, sep, mapping = str(onto).partition(":")
    if not sep or not system or not mapping:
        raise InputError(f"--onto: expected SYSTEM:MAPPING (e.g. cumene:three_bead), got {onto!r}")
    return system, mapping


def backmap_trajectories(model, cg_xyz: np.ndarray, traj_id: np.ndarray, n_samples: int = 1,
                         seed: int = 0, box_nm: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Backmap each trajectory (frames in order) separately: [K, F, N, 3] nm and seconds spent.

    box_nm : [F, 3, 3] nm, periodic frames' boxes (``Backmapper.backmap_in_box``), or None."""
    out = np.empty((n_samples, cg_xyz.shape[0], model.mapping.n_atoms, 3), np.float32)
    t0 = time.perf_counter()
    for k, tid in enumerate(dict.fromkeys(np.asarray(traj_id).tolist())):
        rows = np.flatnonzero(np.asarray(traj_id) == tid)
        if box_nm is None:
            out[:, rows] = model.backmap_xyz(cg_xyz[rows], n_samples=n_samples, seed=seed + k)
        else:
            out[:, rows] = model.backmap_in_box(cg_xyz[rows], box_nm[rows], n_samples=n_samples, seed=seed + k)
    return out, time.perf_counter() - t0


def _energy_fn(system: str):
    """Batched float64 energies of a reference system (torch; OpenMM for a periodic one, which the torch
    force field does not evaluate), or None when it is not one."""
    import torch

    if system not in available_systems():
        return None
    ref = get_system(system)
    model = energy_model(ref, backend="openmm", dtype=torch.float64) if ref.periodic else energy_model(
        ref, backend="torch", dtype=torch.float64, fallback=True)  # GB-neck2 (CustomGBForce) through OpenMM

    def fn(xyz: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([model(torch.as_tensor(xyz[i:i + 1024], dtype=torch.float64)).numpy()
                                   for i in range(0, len(xyz), 1024)])

    return fn


def _forces_fn(system: str):
    """Atomic forces [F, N, 3] kJ/mol/nm of frames [F, N, 3] nm in boxes [F, 3, 3] nm, for a periodic
    reference system (OpenMM, CPU platform; the condensed-phase force metrics), else None."""
    ref = get_system(system) if system in available_systems() else None
    if ref is None or not ref.periodic:
        return None
    omm = ref.create_system(constraints=None)

    def fn(xyz: np.ndarray, box_nm: np.ndarray) -> np.ndarray:
        return openmm_energies_forces(omm, xyz, platform="CPU", box_nm=box_nm)[1]

    return fn


def _with_energies(frames: Frames, energy_fn) -> Frames:
    """``frames`` with ``energy_fn``'s energies [T] kJ/mol where none is known (absent or all NaN)."""
    e = frames.energy_kj_mol
    if e is not None and not np.all(np.isnan(np.asarray(e, np.float64))):
        return frames
    return replace(frames, energy_kj_mol=energy_fn(np.asarray(frames.aa_xyz_nm, np.float64)))


def _system_settings(system: str, lag_ps: float | None) -> dict:
    """``evaluate_frames`` keywords of a shipped system (its YAML's evaluation section); none for others."""

    settings = get_system(system).evaluation_kwargs() if system in available_systems() else {}
    if lag_ps is not None:
        settings["lag_ps"] = float(lag_ps)
    return settings


def _model_run_id(model: str, tracker: Tracker | None) -> str | None:
    if model.startswith("runs:/"):
        return model.split("/")[1]
    if model.startswith("models:/") and tracker is not None:
        client, spec = tracker.client, model[len("models:/"):]
        name, _, alias = spec.partition("@")
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(*spec.split("/"))
        return mv.run_id
    return None


def evaluate(model: str, reference: str | Path, *, top: str | Path | None = None, cg: str | Path | None = None,
             cg_top: str | Path | None = None, samples: int = 1, seed: int = 0, out: str | Path | None = None,
             experiment: str = EVAL_EXPERIMENT, system: str | None = None, tracker: Tracker | None = None,
             lag_ps: float | None = None, split: str = "all", min_frames: int = MIN_FES_FRAMES,
             bootstrap: int = N_BOOTSTRAP, floor_reference: str | Path | None = None,
             refine: int = 0, onto: str | None = None) -> EvalResult:
    """Backmap, compare, log (see module docstring). Returns metrics, run id and report path.

    tracker : where the evaluation is logged as an MLflow run and model URIs are resolved (None: nothing is
    logged, and ``model`` must be a folder or ``zoo:NAME``).

    split : "all" trajectories of a shard reference, or the model's own "train", "validation" or
    "test" trajectories as recorded when it was trained (InputError naming ``--split`` when the
    model has no record). The manifest's constraint record keeps constrained bonds out of the
    bond JS (scored as ``mae_constrained_bond_nm``).
    min_frames : fewest reference frames for free-energy surfaces and MSMs (ValueError naming
    ``--min-frames`` below it, when the system declares evaluation features).
    bootstrap : block-bootstrap replicates for the 95 % intervals (0: none).
    floor_reference : an independent reference run (shard folder or trajectory) for the noise
    floors; default: the two halves of ``reference``
    (:mod:`finegrain.platform.science.metrics.floors`).
    refine : steps of restrained minimisation (:mod:`finegrain.trainables.refine`) after backmapping;
    the result is its own leaderboard row (``LABEL+refineN``), timed with the backmapping.
    onto : "SYSTEM:MAPPING": the model is first moved onto that reference system (``Backmapper.for_system``:
    transfer to another molecule or box; a family that cannot refuses); its row is labelled
    ``LABEL@SYSTEM``.
    """
    import mdtraj as md

    if samples < 1:
        raise ValueError(f"samples: must be >= 1, got {samples}")
    bm = load_backmapper_any(model, tracker)
    if onto is not None:
        bm = bm.for_system(*parse_onto(onto))
    record = None
    if split != "all":
        record = bm.recorded_split()
        if record is None:
            raise InputError(f"--split {split}: model {model} has no recorded training split (saved before splits "
                             f"were recorded?); retrain it, or use --split all with a held-out shard folder")
    loaded = load_reference(reference, bm.mapping, top, split=split, split_record=record)
    system = system or loaded["system"]
    constraints, data_hash = loaded.get("constraints"), loaded["data_hash"]
    try:  # checked once here, then passed down
        ref = Frames.from_dict(loaded, topology=bm.topology, mapping=bm.mapping)
    except InputError as exc:
        raise InputError(f"reference {reference}: {exc}") from exc
    if cg is None:
        cg_xyz, cg_tid, kind = ref.cg_xyz_nm, ref.traj_id, "in-distribution"
        cg_hash, cg_box = data_hash, ref.box_nm
    else:
        if cg_top is None:
            raise ValueError("cg: a CG trajectory needs --cg-top")
        cg_traj = md.load(str(cg), top=str(cg_top))
        names = None if bm.mapping.matches_bead_names(cg_traj.topology) else [a.name for a in cg_traj.topology.atoms]
        cg_xyz = bm.check_cg(cg_traj.xyz, f"cg {cg}", bead_names=names)
        cg_tid, kind = np.full(cg_traj.n_frames, Path(cg).stem), "generalization"
        cg_box = None if cg_traj.unitcell_vectors is None else cg_traj.unitcell_vectors.astype(np.float64)
        cg_hash = hashlib.sha256(cg_xyz.tobytes()).hexdigest()[:16]
    samples_xyz, seconds = backmap_trajectories(bm, np.asarray(cg_xyz, np.float64), cg_tid, samples, seed, cg_box)
    label = model if model.startswith("zoo:") else bm.label  # a shipped model is its own row (zoo:NAME)
    if onto is not None:
        label = f"{label}@{onto}"
    if refine:
        t0 = time.perf_counter()
        samples_xyz = refine_frames(samples_xyz, np.asarray(cg_xyz, np.float64), bm.mapping, system, refine)
        seconds += time.perf_counter() - t0
        label = refined_label(label, refine)
    try:
        backmapped = Frames(aa_xyz_nm=samples_xyz[0], cg_xyz_nm=cg_xyz, traj_id=cg_tid,
                            time_ps=None if cg is None else np.asarray(cg_traj.time, np.float64),
                            samples=samples_xyz if samples > 1 else None, topology=bm.topology, mapping=bm.mapping)
    except InputError as exc:
        raise InputError(f"backmapped frames of {model}: {exc}") from exc
    settings = _system_settings(system, lag_ps)
    energy_fn = _energy_fn(system)
    if energy_fn is not None:  # once here, so bootstrap replicates resample energies instead of recomputing
        ref, backmapped = (_with_energies(f, energy_fn) for f in (ref, backmapped))
    try:
        metrics, figures = evaluate_frames(ref, backmapped, bm.topology, bm.mapping, seed=seed, min_frames=min_frames,
                                           constraints=constraints, forces_fn=_forces_fn(system), **settings)
    except ValueError as exc:
        if "min_frames" in str(exc):
            raise InputError(f"reference {reference}: {exc}".replace("min_frames / --min-frames", "--min-frames"))
        raise

    def score(r: Frames, b: Frames) -> dict[str, float]:  # the condensed-phase metrics carry their own floors
        return evaluate_frames(r, b, bm.topology, bm.mapping, seed=seed, make_figures=False,
                               constraints=constraints, condensed=False, **settings)[0]

    second = None if floor_reference is None else Frames.from_dict(
        load_reference(floor_reference, bm.mapping, top), topology=bm.topology, mapping=bm.mapping)
    metrics = score_with_floor(score, ref, backmapped, second_reference=second, n_boot=bootstrap, seed=seed,
                               estimate=metrics)
    metrics["frames_per_s"] = samples_xyz.shape[0] * samples_xyz.shape[1] / max(seconds, 1e-9)
    figures["score_vs_floor"] = plots.plot_scores_vs_floors(metrics, FLOOR_PLOT_METRICS)
    tags = {"model_uri": model, "model_run_id": _model_run_id(model, tracker) or "", "family": bm.family,
            "temporal": str(not bm.frames_independent).lower(), "floor": "independent run" if second else "halves",
            "model_label": label, "refine_steps": str(int(refine)), "system": system, "mapping": bm.mapping.name, "data_hash": data_hash,
            "cg_hash": cg_hash, "evaluation": kind, "split": split}
    report = _write_report(out, metrics, tags, figures) if out is not None else None
    run_id = _log(tracker, experiment, metrics, tags, figures, report, samples) if tracker is not None else None
    return EvalResult(metrics=metrics, run_id=run_id, report=report, figures=figures)


def _write_report(out, metrics, tags, figures) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
    path = out / "report.json"
    path.write_text(json.dumps({"tags": tags, "metrics": metrics, "figures": sorted(figures)}, indent=1))
    return path


def _log(tracker: Tracker, experiment, metrics, tags, figures, report, samples) -> str:
    """One MLflow run of the evaluation (through the caller's tracker: no process-wide state)."""
    from mlflow.entities import Metric, Param

    client = tracker.client
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    name = f"eval-{tags['model_label']}-{tags['system']}-{tags['evaluation']}"
    run_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
    try:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        client.log_batch(run_id, params=[Param("samples", str(samples)), Param("evaluation", tags["evaluation"])])
        for start in range(0, len(batch), 1000):  # MLflow's limit per batch
            client.log_batch(run_id, metrics=batch[start:start + 1000])
        for fname, fig in figures.items():
            client.log_figure(run_id, fig, f"plots/{fname}.png")
        if report is not None:
            client.log_artifact(run_id, str(report))
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    return run_id
