"""Time to quality on this machine: each family trained on ADP, its checkpoints scored on a held-out replica
against elapsed wall-clock, beside the baselines; and backmapping speed against the EM baseline.

Run on demand (``make bench`` or ``pytest tests/benchmarks/test_time_to_quality.py -m benchmark -s``).
Environment:

- ``FINEGRAIN_TTQ_FAMILIES``: comma-separated ``family:config:max_steps[:key=value...]`` (default: the shipped
  ``ic`` recipe for 4000 steps, the ``flow`` config for 2000 steps with likelihoods on 16 validation frames
  (exact traces of 256 frames need tens of GB), the cVAE smoke config for 600 steps);
- ``FINEGRAIN_TTQ_DATA``: ``replicas x ns`` of training data (default ``8x5``, the zoo recipes' data; its
  simulation time is printed, not counted in the elapsed times).

Each run checkpoints 8 times; a checkpoint's elapsed time is its folder's write time minus the start of
``fit`` (data set-up included). Scores: the product's evaluation (``finegrain.platform.apps.evaluation``) of
each checkpoint on the held-out replica (1000 frames, new seed), printed as value / floor.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from finegrain.platform.services.stack import tracking_uri
from finegrain.platform.services.tracking import Tracker

pytestmark = pytest.mark.benchmark

SCORES = ("rmsd_cg_nm", "js_bonds", "js_angles", "clash_fraction", "w1_energy_kj_mol", "energy_p99_excess_kj_mol",
          "kl_fes", "velocity_js")
DEFAULT = "ic:adp_ic.yaml:4000,flow:adp_flow.yaml:2000:training.val_nll_frames=16,cvae:adp_cvae_smoke.yaml:600"


@pytest.fixture(scope="module")
def data(stack, tmp_path_factory):
    from finegrain.datasets.ingest import ingest, sources_from_simulation
    from finegrain.datasets.simulate import SimulationConfig, simulate
    from finegrain.datasets.systems import get_system

    replicas, ns = os.environ.get("FINEGRAIN_TTQ_DATA", "8x5").split("x")
    root = tmp_path_factory.mktemp("ttq")
    out = {}
    t0 = time.time()
    for part, cfg in (("train", SimulationConfig("adp", ns=float(ns), replicas=int(replicas), seed=10)),
                      ("heldout", SimulationConfig("adp", ns=1.0, replicas=1, seed=1001))):
        top, system, sources = sources_from_simulation(simulate(cfg, root / f"sim-{part}"))
        out[part] = root / f"shards-{part}"
        ingest(top, sources, get_system("adp").mapping("backbone6"), out[part], system=system)
    print(f"\nsimulated and ingested {replicas} x {ns} ns (+ 1 ns held out) in {time.time() - t0:.0f} s")
    return out


def _row(label, step, elapsed, metrics):
    cells = "  ".join(f"{m} {metrics[m]:.3g}/{metrics.get(m + '_floor', float('nan')):.2g}"
                      for m in SCORES if m in metrics)
    print(f"{label:10s} step {step:>6}  {elapsed:7.0f} s  {cells}", flush=True)


def test_time_to_quality(data, tmp_path):
    import mdtraj as md

    from finegrain.platform.apps.evaluation import evaluate
    from finegrain.platform.science.mapping import CGMapping
    from finegrain.datasets.shards import Manifest
    from finegrain.trainables.baseline_fit import fit_baseline
    from finegrain.trainables.protocol import backmapper_from_checkpoint, trainer_for

    import ray

    configs = Path(__file__).resolve().parents[2] / "trainables" / "configs"
    cpus = ray.cluster_resources().get("CPU", 1)  # a recipe asking for more CPUs than the machine has
    man = Manifest.load(data["train"])
    topology = md.load_topology(str(data["train"] / man.topology_pdb))
    mapping = CGMapping.from_dict(man.mapping)
    print("\nscore value/floor on the held-out replica (1000 frames); elapsed wall-clock since fit() started")
    baselines = {}
    for family in ("em", "nullspace"):
        _, uri = fit_baseline(family, data["train"], seed=0, tracker=Tracker(tracking_uri()))
        baselines[family] = evaluate(uri, data["heldout"], bootstrap=0, tracker=Tracker(tracking_uri())).metrics
        _row(family, "-", 0.0, baselines[family])
    for spec in os.environ.get("FINEGRAIN_TTQ_FAMILIES", DEFAULT).split(","):
        family, config, steps, *extra = spec.split(":")
        config_cls, fit = trainer_for(family)
        every = max(1, int(steps) // 8)
        cfg = config_cls.from_yaml(configs / config, [
            f"data.shards={data['train']}", "data.fractions=[0.875, 0.125, 0.0]", f"training.max_steps={steps}",
            f"training.checkpoint_every={every}", f"training.eval_every={every}", "training.use_gpu=false",
            f"training.work_dir={tmp_path / family}", "training.progress=false", "tracking.enabled=false", *extra])
        cfg = cfg.with_overrides([f"training.cpus_per_worker={min(float(cpus), cfg.training.cpus_per_worker)}"])
        t0 = time.time()
        result = fit(cfg)
        for ck in sorted(p for p in result.run_dir.glob("checkpoint_*") if p.is_dir() and p.name[11:].isdigit()):
            step = int(ck.name[11:])
            bm = backmapper_from_checkpoint(family, ck, topology, mapping)
            folder = bm.save(tmp_path / f"{family}-{step}")
            metrics = evaluate(str(folder), data["heldout"], bootstrap=0).metrics
            _row(bm.label, step, ck.stat().st_mtime - t0, metrics)
            assert np.isfinite(metrics["js_bonds"]) and ck.stat().st_mtime > t0
        if family == "ic":  # the shipped recipe's family beats the EM baseline's energies by its last checkpoint
            assert metrics["w1_energy_kj_mol"] < baselines["em"]["w1_energy_kj_mol"]


def test_backmapping_speed_against_the_em_baseline(data):
    """1000 held-out frames: the shipped ic model against the EM baseline, in this process and via the CLI."""
    import subprocess
    import sys

    import mdtraj as md

    from finegrain.datasets.shards import read_frames
    from finegrain.trainables.persistence import load_backmapper_any
    from finegrain.trainables.baseline_fit import fit_baseline

    fr = read_frames(data["heldout"])
    cg = fr["cg_xyz_nm"]
    tracker = Tracker(tracking_uri())
    _, em_uri = fit_baseline("em", data["train"], seed=0, tracker=tracker)
    models = {"em": load_backmapper_any(em_uri, tracker), "zoo:adp-backbone6": load_backmapper_any("zoo:adp-backbone6")}
    seconds = {}
    for name, bm in models.items():
        bm.backmap_xyz(cg[:10], seed=0)  # warm-up
        t = time.perf_counter()
        bm.backmap_xyz(cg, seed=0)
        seconds[name] = time.perf_counter() - t
    folder = Path(data["heldout"]).parent
    mapping = models["em"].mapping
    md.Trajectory(cg.astype("float32"), mapping.cg_topology()).save_dcd(str(folder / "cg.dcd"))
    md.Trajectory(cg[:1].astype("float32"), mapping.cg_topology()).save_pdb(str(folder / "cg.pdb"))
    cli = {}
    for name in models:
        model = name if name.startswith("zoo:") else em_uri
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "finegrain.platform.apps.cli", "backmap", "--model", model, "--top",
                        str(folder / "cg.pdb"), "--traj", str(folder / "cg.dcd"), "--out",
                        str(folder / f"aa-{name.replace(':', '_')}.dcd")], check=True, capture_output=True)
        cli[name] = time.perf_counter() - t
    for name in models:
        print(f"{name:18s} in-process {len(cg) / seconds[name]:9.1f} frames/s ({seconds[name]:.2f} s)   "
              f"CLI incl. start and load {cli[name]:.1f} s")
    print(f"speed-up over EM: {seconds['em'] / seconds['zoo:adp-backbone6']:.0f}x in-process, "
          f"{cli['em'] / cli['zoo:adp-backbone6']:.1f}x through the CLI")
    assert seconds["zoo:adp-backbone6"] < seconds["em"] and cli["zoo:adp-backbone6"] < cli["em"]
