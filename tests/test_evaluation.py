"""The evaluation job against a real MLflow server: baselines fitted, logged, evaluated, ranked."""

import json
import subprocess
import sys
from pathlib import Path

import mdtraj as md
import numpy as np
import pytest

from finegrain.platform.evaluation import evaluate, leaderboard
from finegrain.platform.shards import Manifest
from finegrain.platform.validation import InputError
from finegrain.trainables.baseline_fit import fit_baseline


@pytest.fixture(scope="module")
def baselines(stack, adp_shards):
    return {family: fit_baseline(family, adp_shards) for family in ("nullspace", "em")}


def test_evaluation_run_holds_metrics_plots_and_tags(stack, adp_shards, baselines, tmp_path):
    from mlflow import MlflowClient

    _, uri = baselines["nullspace"]
    res = evaluate(uri, adp_shards, samples=2, out=tmp_path / "ns")
    assert res.metrics["rmsd_cg_nm"] < 1e-6  # the fibre construction is exactly CG-consistent
    assert res.metrics["diversity_rmsd_nm"] > 0.01  # two samples of the same CG frame differ
    assert res.metrics["kl_fes"] == pytest.approx(0.0, abs=1e-12)  # backbone6 beads fix phi and psi
    client = MlflowClient(stack.mlflow_uri)
    run = client.get_run(res.run_id)
    assert set(res.metrics) <= set(run.data.metrics)
    for k, v in res.metrics.items():
        assert run.data.metrics[k] == pytest.approx(v, rel=1e-12, abs=1e-300)
    tags = run.data.tags
    assert tags["model_run_id"] == uri.split("/")[1] and tags["family"] == "nullspace"
    assert tags["data_hash"] == Manifest.load(adp_shards).digest and tags["evaluation"] == "in-distribution"
    plots = {Path(a.path).name for a in client.list_artifacts(res.run_id, "plots")}
    assert {"bonds.png", "angles.png", "dihedrals.png", "energy.png", "fes.png"} <= plots
    report = json.loads((tmp_path / "ns" / "report.json").read_text())
    assert report["metrics"] == pytest.approx(res.metrics)
    assert (tmp_path / "ns" / "energy.png").stat().st_size > 1000


def test_generalization_input_path_agrees_with_the_shard_path(stack, adp_sim, baselines, tmp_path):
    """Evaluating files (AA reference + separate CG trajectory) matches evaluating the shards."""
    model, uri = baselines["nullspace"]
    aa = md.load(str(adp_sim / "replica_001.dcd"), top=str(adp_sim / "topology.pdb"))
    cg = md.Trajectory(model.mapping.map(aa.xyz.astype(np.float64)).astype(np.float32), model.mapping.cg_topology(),
                       time=aa.time)
    cg.save_dcd(str(tmp_path / "cg.dcd"))
    cg[0].save_pdb(str(tmp_path / "cg.pdb"))
    gen = evaluate(uri, adp_sim / "replica_001.dcd", top=adp_sim / "topology.pdb", cg=tmp_path / "cg.dcd",
                   cg_top=tmp_path / "cg.pdb", log=False)
    ind = evaluate(uri, adp_sim / "replica_001.dcd", top=adp_sim / "topology.pdb", log=False)
    for k in ("js_bonds", "js_angles", "js_dihedrals", "mean_bond_error_nm", "clash_fraction"):
        assert gen.metrics[k] == pytest.approx(ind.metrics[k], abs=1e-12)
    assert gen.metrics["rmsd_cg_nm"] < 1e-5  # the CG file holds float32 coordinates
    # wrong bead count / names are refused with both named
    bad = md.Trajectory(cg.xyz[:, :5], md.Topology.from_openmm(cg.topology.subset(range(5)).to_openmm()))
    bad.save_dcd(str(tmp_path / "bad.dcd"))
    bad[0].save_pdb(str(tmp_path / "bad.pdb"))
    with pytest.raises(InputError, match=r"5 beads.*'backbone6' has 6"):
        evaluate(uri, adp_sim / "replica_001.dcd", top=adp_sim / "topology.pdb", cg=tmp_path / "bad.dcd",
                 cg_top=tmp_path / "bad.pdb", log=False)


def test_em_baseline_and_the_leaderboard(stack, adp_shards, baselines, tmp_path):
    _, em_uri = baselines["em"]
    _, ns_uri = baselines["nullspace"]
    em = evaluate(em_uri, adp_shards, out=tmp_path / "em")
    ns = evaluate(ns_uri, adp_shards, out=tmp_path / "ns")
    assert em.metrics["rmsd_cg_nm"] < 0.02  # soft restraints: close to, not exactly on, the CG
    # minimisation removes the null-space sampler's bond-length spread and high-energy tail
    assert em.metrics["js_bonds"] < ns.metrics["js_bonds"]
    assert em.metrics["energy_p99_excess_kj_mol"] < ns.metrics["energy_p99_excess_kj_mol"]
    rows = {r["model_label"]: r for r in leaderboard("adp")}
    assert set(rows) == {"nullspace", "em"}
    assert rows["em"]["js_bonds"] == pytest.approx(em.metrics["js_bonds"])
    assert rows["nullspace"]["run_id"] == ns.run_id  # the latest evaluation of each model
    exe = Path(sys.executable).parent / "finegrain"
    out = subprocess.run([str(exe), "leaderboard", "--system", "adp"], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "COLUMNS": "250"})
    assert out.returncode == 0 and "nullspace" in out.stdout and "em" in out.stdout


def test_shard_reference_can_be_restricted_to_a_split(adp_shards, baselines):
    """A shard reference evaluates only the trajectories of the chosen split (never the training ones)."""
    from finegrain.platform.evaluation import load_reference
    from finegrain.platform.shards import split_trajectories

    mapping = baselines["nullspace"][0].mapping
    man = Manifest.load(adp_shards)
    held_out = split_trajectories(man, (0.5, 0.5, 0.0), 0)["validation"]
    ref = load_reference(adp_shards, mapping, split="validation", fractions=(0.5, 0.5, 0.0))
    assert sorted(set(ref["traj_id"].tolist())) == held_out and len(held_out) == 1
    assert len(ref["frame"]) == man.n_frames // 2 and ref["data_hash"] == f"{man.digest}:validation"
    with pytest.raises(InputError, match="the test split of 2 trajectories is empty"):
        load_reference(adp_shards, mapping, split="test")
