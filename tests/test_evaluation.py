"""The evaluation job against a real MLflow server: baselines fitted, logged, evaluated, ranked."""

import json
import math
import subprocess
import sys
import uuid
from pathlib import Path

import mdtraj as md
import numpy as np
import pytest

from finegrain.platform.services.tracking import Tracker
from finegrain.platform.apps.evaluation import evaluate
from finegrain.platform.apps.leaderboard import composite_score, leaderboard, leaderboard_rows
from finegrain.datasets.shards import Manifest
from finegrain.platform.science.errors import InputError
from finegrain.datasets.systems import get_system
from finegrain.trainables.baseline_fit import fit_baseline

#: the suite's shards are tiny (2 x 50 frames): allow FES/MSM on them, and few bootstrap replicates
SMALL = {"min_frames": 0, "bootstrap": 8}


@pytest.fixture(scope="module")
def baselines(stack, adp_shards):
    return {family: fit_baseline(family, adp_shards, tracker=Tracker(stack.mlflow_uri)) for family in ("nullspace", "em")}


def test_evaluation_run_holds_metrics_plots_and_tags(stack, adp_shards, baselines, tmp_path):
    from mlflow import MlflowClient

    _, uri = baselines["nullspace"]
    res = evaluate(uri, adp_shards, samples=2, out=tmp_path / "ns", **SMALL, tracker=Tracker(stack.mlflow_uri))
    assert res.metrics["rmsd_cg_nm"] < 1e-6  # the fibre construction is exactly CG-consistent
    assert res.metrics["diversity_rmsd_nm"] > 0.01  # two samples of the same CG frame differ
    # backbone6 beads fix phi and psi: a CG-consistency check, zero on the fibre; omega is left free
    assert res.metrics["cg_kl_fes_ramachandran"] == pytest.approx(0.0, abs=1e-12)
    assert res.metrics["kl_fes"] == res.metrics["kl_fes_omega"] > 0.0
    assert res.metrics["n_frames"] == Manifest.load(adp_shards).n_frames
    # every score beside its floor (the reference's two halves) and 95 % intervals
    for k in ("js_bonds", "js_angles", "w1_energy_kj_mol", "kl_fes"):
        assert res.metrics[f"{k}_ci_lo"] <= res.metrics[k] <= res.metrics[f"{k}_ci_hi"], k
        assert res.metrics[f"{k}_floor_ci_lo"] <= res.metrics[f"{k}_floor"] <= res.metrics[f"{k}_floor_ci_hi"], k
        assert res.metrics[f"{k}_over_floor"] == pytest.approx(res.metrics[k] / res.metrics[f"{k}_floor"])
    client = MlflowClient(stack.mlflow_uri)
    run = client.get_run(res.run_id)
    assert set(res.metrics) <= set(run.data.metrics)
    for k, v in res.metrics.items():
        assert run.data.metrics[k] == pytest.approx(v, rel=1e-12, abs=1e-300)
    tags = run.data.tags
    assert tags["model_run_id"] == uri.split("/")[1] and tags["family"] == "nullspace"
    assert tags["data_hash"] == Manifest.load(adp_shards).digest and tags["evaluation"] == "in-distribution"
    plots = {Path(a.path).name for a in client.list_artifacts(res.run_id, "plots")}
    assert {"bonds.png", "angles.png", "dihedrals.png", "energy.png", "fes_omega.png", "fes_ramachandran.png",
            "score_vs_floor.png"} <= plots
    report = json.loads((tmp_path / "ns" / "report.json").read_text())
    assert report["metrics"] == pytest.approx(res.metrics)
    assert (tmp_path / "ns" / "energy.png").stat().st_size > 1000


def test_too_few_frames_for_fes_and_msm_are_refused_naming_the_flag(stack, adp_shards, baselines):
    _, uri = baselines["nullspace"]
    n = Manifest.load(adp_shards).n_frames
    with pytest.raises(InputError, match=f"{n} frames; free-energy surfaces and MSMs need >= 1000.*--min-frames"):
        evaluate(uri, adp_shards, tracker=Tracker(stack.mlflow_uri))


def test_generalization_input_path_agrees_with_the_shard_path(stack, adp_sim, baselines, tmp_path):
    """Evaluating files (AA reference + separate CG trajectory) matches evaluating the shards."""
    model, uri = baselines["nullspace"]
    aa = md.load(str(adp_sim / "replica_001.dcd"), top=str(adp_sim / "topology.pdb"))
    cg = md.Trajectory(model.mapping.map(aa.xyz.astype(np.float64)).astype(np.float32), model.mapping.cg_topology(),
                       time=aa.time)
    cg.save_dcd(str(tmp_path / "cg.dcd"))
    cg[0].save_pdb(str(tmp_path / "cg.pdb"))
    gen = evaluate(uri, adp_sim / "replica_001.dcd", top=adp_sim / "topology.pdb", cg=tmp_path / "cg.dcd",
                   cg_top=tmp_path / "cg.pdb", **SMALL, tracker=Tracker(stack.mlflow_uri))
    ind = evaluate(uri, adp_sim / "replica_001.dcd", top=adp_sim / "topology.pdb", **SMALL, tracker=Tracker(stack.mlflow_uri))
    for k in ("js_bonds", "js_angles", "js_dihedrals", "mean_bond_error_nm", "clash_fraction"):
        assert gen.metrics[k] == pytest.approx(ind.metrics[k], abs=1e-12)
    assert gen.metrics["rmsd_cg_nm"] < 1e-5  # the CG file holds float32 coordinates
    # wrong bead count / names are refused with both named
    bad = md.Trajectory(cg.xyz[:, :5], md.Topology.from_openmm(cg.topology.subset(range(5)).to_openmm()))
    bad.save_dcd(str(tmp_path / "bad.dcd"))
    bad[0].save_pdb(str(tmp_path / "bad.pdb"))
    with pytest.raises(InputError, match=r"5 beads.*'backbone6' has 6"):
        evaluate(uri, adp_sim / "replica_001.dcd", top=adp_sim / "topology.pdb", cg=tmp_path / "bad.dcd",
                 cg_top=tmp_path / "bad.pdb", **SMALL, tracker=Tracker(stack.mlflow_uri))


def test_em_baseline_and_the_leaderboard(stack, adp_shards, baselines, tmp_path):
    _, em_uri = baselines["em"]
    _, ns_uri = baselines["nullspace"]
    # an experiment of this test's own: the board holds exactly these evaluations, whatever else the
    # shared MLflow server holds (other tests evaluate other models of adp into the default experiment)
    experiment = f"test-leaderboard-{uuid.uuid4().hex[:8]}"
    em = evaluate(em_uri, adp_shards, out=tmp_path / "em", experiment=experiment, **SMALL, tracker=Tracker(stack.mlflow_uri))
    ns = evaluate(ns_uri, adp_shards, out=tmp_path / "ns", experiment=experiment, **SMALL, tracker=Tracker(stack.mlflow_uri))
    assert em.metrics["rmsd_cg_nm"] < 0.02  # soft restraints: close to, not exactly on, the CG
    # minimisation relaxes the constrained X-H bonds to r0 (scored apart from the heavy-bond JS, issue 14)
    # and removes the null-space sampler's high-energy tail
    assert em.metrics["mae_constrained_bond_nm"] < ns.metrics["mae_constrained_bond_nm"]
    assert em.metrics["energy_p99_excess_kj_mol"] < ns.metrics["energy_p99_excess_kj_mol"]
    board = leaderboard("adp", Tracker(stack.mlflow_uri), experiment=experiment)
    assert sorted((r["model_label"], r["run_id"]) for r in board) == [("em", em.run_id), ("nullspace", ns.run_id)]
    rows = {r["model_label"]: r for r in board}
    assert rows["em"]["js_bonds"] == pytest.approx(em.metrics["js_bonds"])
    # a later evaluation of a model replaces its row (the latest evaluation of each model)
    ns2 = evaluate(ns_uri, adp_shards, experiment=experiment, seed=1, **SMALL, tracker=Tracker(stack.mlflow_uri))
    board = leaderboard("adp", Tracker(stack.mlflow_uri), experiment=experiment)
    assert sorted((r["model_label"], r["run_id"]) for r in board) == [("em", em.run_id), ("nullspace", ns2.run_id)]
    assert [r["composite"] for r in board] == sorted(r["composite"] for r in board)  # best first
    rows = {r["model_label"]: r for r in board}
    for label, res in (("em", em), ("nullspace", ns2)):
        assert rows[label]["composite"] == pytest.approx(composite_score(res.metrics, temporal=False)[0])
        assert rows[label]["js_bonds_floor"] == pytest.approx(res.metrics["js_bonds_floor"])
    # the CLI reads the default experiment (it has no --experiment): it must print and log what the API
    # returns for that experiment at the same moment
    evaluate(ns_uri, adp_shards, **SMALL, tracker=Tracker(stack.mlflow_uri))  # so that the default board is not empty
    expected = leaderboard("adp", Tracker(stack.mlflow_uri))
    exe = Path(sys.executable).parent / "finegrain"
    out = subprocess.run([str(exe), "leaderboard", "--system", "adp"], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "COLUMNS": "250"})
    assert out.returncode == 0 and "composite" in out.stdout, out.stderr
    assert expected and all(r["model_label"] in out.stdout for r in expected)
    run_id = out.stdout.split("logged to MLflow run")[1].split()[0]
    from mlflow import MlflowClient

    client = MlflowClient(stack.mlflow_uri)
    assert {"leaderboard.txt", "leaderboard.json"} <= {a.path for a in client.list_artifacts(run_id)}
    logged = json.loads(Path(client.download_artifacts(run_id, "leaderboard.json", str(tmp_path))).read_text())
    assert [(r["model_label"], r["run_id"]) for r in logged] == [(r["model_label"], r["run_id"]) for r in expected]


def test_composite_is_the_mean_log_ratio_to_the_floor():
    m = {"js_bonds": 0.02, "js_bonds_floor": 0.002, "js_angles": 0.001, "js_angles_floor": 0.002,
         "rmsd_cg_nm": 0.05, "rmsd_cg_nm_floor": 1e-9, "js_velocity": 1.0, "js_velocity_floor": 0.001}
    comp, terms = composite_score(m, temporal=False)
    # 10x the floor -> 1; below the floor -> 0; CG-RMSD against its 0.005 nm tolerance -> 10x -> 1
    assert terms == pytest.approx({"js_bonds": 1.0, "js_angles": 0.0, "rmsd_cg_nm": 1.0}) and comp == pytest.approx(2 / 3)
    comp_t, terms_t = composite_score(m, temporal=True)  # velocities count only for temporal models
    assert terms_t["js_velocity"] == pytest.approx(3.0) and comp_t == pytest.approx(5 / 4)


#: a molecule's evaluation (no periodic box: no RDF or CG-force metrics)
MOLECULE = {"rmsd_cg_nm": 0.02, "rmsd_cg_nm_floor": 1e-9, "js_bonds": 0.05, "js_bonds_floor": 0.001,
            "js_angles": 0.003, "js_angles_floor": 0.001, "w1_energy_kj_mol": 2.0, "w1_energy_kj_mol_floor": 0.5,
            "energy_p99_excess_kj_mol": 0.5, "energy_p99_excess_kj_mol_floor": 0.2, "clash_score": 0.0,
            "clash_score_floor": 0.0}
#: the same plus what a periodic evaluation logs; the bead RDF (input, round-off) and force W1 must not count
CONDENSED = {**MOLECULE, "aa_rdf_w1_nm": 0.04, "aa_rdf_w1_nm_floor": 0.002, "cg_js_force_magnitude": 0.3,
             "cg_js_force_magnitude_floor": 0.003, "cg_rdf_w1_nm": 1e-9, "cg_rdf_w1_nm_floor": 1e-3,
             "cg_rdf_js": 0.0, "cg_rdf_js_floor": 1e-4, "w1_force_magnitude_kj_mol_nm": 500.0,
             "cg_w1_force_magnitude_kj_mol_nm": 500.0, "aa_rdf_js": 0.5, "aa_rdf_js_floor": 0.001}
#: by hand: log10(max(1, value / max(floor, tolerance))) of each term of MOLECULE
MOLECULE_TERMS = {"rmsd_cg_nm": math.log10(0.02 / 0.005),       # floor below the 0.005 nm tolerance
                  "js_bonds": math.log10(0.05 / 0.001), "js_angles": math.log10(0.003 / 0.001),
                  "w1_energy_kj_mol": math.log10(2.0 / 0.5),
                  "energy_p99_excess_kj_mol": 0.0,                 # 0.5 / max(0.2, 1.0) < 1
                  "clash_score": 0.0}                              # 0 / max(0, 0.1): log10(1), not -inf


def test_a_molecules_composite_has_no_condensed_terms():
    comp, terms = composite_score(MOLECULE, temporal=False)
    assert terms == pytest.approx(MOLECULE_TERMS)
    assert comp == pytest.approx((math.log10(4) + math.log10(50) + math.log10(3) + math.log10(4)) / 6)
    comp_t, _ = composite_score(MOLECULE, temporal=True)  # no velocity JS logged: the same
    assert comp_t == pytest.approx(comp)
    header, body = leaderboard_rows([{"model_label": "m", "composite": comp, **MOLECULE}])
    names = [row[0] for row in body]
    assert "aa_rdf_w1_nm" not in names and "cg_js_force_magnitude" not in names  # the table is unchanged too
    assert names[0] == "composite (see docs)" and "clash_score" in names and "kl_fes" in names


def test_the_condensed_phase_counts_the_atom_rdf_and_the_cg_force_js():
    comp, terms = composite_score(CONDENSED, temporal=False)
    expected = {**MOLECULE_TERMS, "aa_rdf_w1_nm": math.log10(0.04 / 0.002),          # 20x the floor
                "cg_js_force_magnitude": math.log10(0.3 / 0.003)}                    # 100x the floor
    assert terms == pytest.approx(expected)  # no cg_rdf_*, aa_rdf_js or force W1 among the terms
    by_hand = (math.log10(4) + math.log10(50) + math.log10(3) + math.log10(4) + 0 + 0 + math.log10(20) + 2.0) / 8
    assert comp == pytest.approx(by_hand)
    assert comp != pytest.approx(composite_score(MOLECULE, temporal=False)[0])
    # a model on the floor of both scores 0 on them (value 0 included: log10(1), never -inf)
    at_floor = {**CONDENSED, "aa_rdf_w1_nm": 0.0, "cg_js_force_magnitude": 0.002}
    _, t0 = composite_score(at_floor, temporal=False)
    assert t0["aa_rdf_w1_nm"] == 0.0 and t0["cg_js_force_magnitude"] == 0.0
    row = {"model_label": "nullspace", "composite": comp, **CONDENSED, "aa_rdf_w1_nm_ci_lo": 0.035,
           "aa_rdf_w1_nm_ci_hi": 0.045, "aa_rdf_w1_nm_floor_ci_lo": 0.001, "aa_rdf_w1_nm_floor_ci_hi": 0.003}
    header, body = leaderboard_rows([row, {"model_label": "molecule-like", "composite": 0.0, **MOLECULE}])
    cells = {line[0]: line[1:] for line in body}
    assert header == ["metric", "floor [95 % CI]", "nullspace", "molecule-like"]
    assert cells["composite (see docs)"] == ["0", f"{comp:.3f}", "0.000"]
    assert cells["aa_rdf_w1_nm"] == ["0.002 [0.001, 0.003]", "0.04 [0.035, 0.045] 20x", "-"]
    assert cells["cg_js_force_magnitude"] == ["0.003", "0.3 1e+02x", "-"]  # the ratio in the usual .2g
    assert not any(name.startswith("cg_rdf") for name in cells)


def test_a_condensed_term_without_floor_is_judged_against_its_tolerance():
    m = {k: v for k, v in CONDENSED.items() if k not in ("aa_rdf_w1_nm_floor", "cg_js_force_magnitude_floor")}
    comp, terms = composite_score(m, temporal=False)
    # as for the other terms: no floor -> max(floor, tolerance) is the tolerance (0.001 nm, 1e-4 nats)
    assert terms["aa_rdf_w1_nm"] == pytest.approx(math.log10(0.04 / 0.001))
    assert terms["cg_js_force_magnitude"] == pytest.approx(math.log10(0.3 / 1e-4))
    by_hand = (math.log10(4) + math.log10(50) + math.log10(3) + math.log10(4) + math.log10(40)
               + math.log10(3000)) / 8
    assert comp == pytest.approx(by_hand)
    nan_floor = {**CONDENSED, "aa_rdf_w1_nm_floor": math.nan}  # a non-finite floor reads as missing
    assert composite_score(nan_floor, temporal=False)[1]["aa_rdf_w1_nm"] == pytest.approx(math.log10(40))
    cells = {line[0]: line[1:] for line in leaderboard_rows([{"model_label": "x", "composite": comp, **m}])[1]}
    assert cells["aa_rdf_w1_nm"] == ["-", "0.04"]  # no floor logged: no ratio shown


def test_shard_reference_can_be_restricted_to_a_split(adp_shards, baselines):
    """A shard reference evaluates only the trajectories of the chosen split (never the training ones)."""
    from finegrain.platform.apps.evaluation import load_reference
    from finegrain.datasets.shards import split_trajectories

    mapping = baselines["nullspace"][0].mapping
    man = Manifest.load(adp_shards)
    held_out = split_trajectories(man, (0.5, 0.5, 0.0), 0)["validation"]
    ref = load_reference(adp_shards, mapping, split="validation", fractions=(0.5, 0.5, 0.0))
    assert sorted(set(ref["traj_id"].tolist())) == held_out and len(held_out) == 1
    assert len(ref["frame"]) == man.n_frames // 2 and ref["data_hash"].startswith(f"{man.digest}:validation-")
    assert ref["constraints"][0].shape == (12, 2)  # the manifest's constraint record comes along
    with pytest.raises(InputError, match="the test split of 2 trajectories is empty"):
        load_reference(adp_shards, mapping, split="test")


# -- evaluate --split uses the split the model recorded when it was trained ---------------------

@pytest.fixture(scope="module")
def four_traj_shards(adp_sim, tmp_path_factory):
    """``adp_sim``'s two replicas cut into four 25-frame trajectories (with observables), ingested."""
    from finegrain.datasets.ingest import TrajectorySource, ingest, sources_from_simulation
    from finegrain.datasets.systems import get_system

    top, system, sources = sources_from_simulation(adp_sim)
    work = tmp_path_factory.mktemp("four-traj")
    parts = []
    for src in sources:
        traj, obs = md.load(src.path, top=top), dict(np.load(src.observables))
        for k, rows in enumerate((slice(0, 25), slice(25, 50))):
            stem = work / f"{src.traj_id}-{k}"
            traj[rows].save_dcd(f"{stem}.dcd")
            np.savez(f"{stem}.npz", **{name: v[rows] for name, v in obs.items()})
            parts.append(TrajectorySource(stem.name, f"{stem}.dcd", f"{stem}.npz", simulation=str(adp_sim)))
    out = work / "shards"
    ingest(top, parts, get_system(system).mapping("backbone6"), out, system=system, chunk_frames=25)
    return out


def test_evaluate_split_scores_the_models_own_held_out_trajectories(stack, four_traj_shards, tmp_path):
    """A flow trained with a non-default split seed is tested on the test trajectories it recorded."""
    import hashlib

    from finegrain.platform.apps.evaluation import backmap_trajectories
    from finegrain.platform.science.metrics import evaluate_frames
    from finegrain.datasets.shards import read_frames, split_trajectories
    from finegrain.trainables.flow.train import fit_detailed
    from finegrain.trainables.flow.train_config import FlowTrainConfig
    from finegrain.trainables.protocol import load_backmapper

    man = Manifest.load(four_traj_shards)
    fractions = (0.5, 0.25, 0.25)
    default_test = split_trajectories(man)["test"]  # what evaluate --split used to rebuild
    seed = next(s for s in range(1, 100) if split_trajectories(man, fractions, s)["test"] != default_test)
    config = Path(__file__).resolve().parents[1] / "trainables" / "configs" / "adp_flow_smoke.yaml"
    cfg = FlowTrainConfig.from_yaml(config, [
        f"data.shards={four_traj_shards}", f"data.fractions={list(fractions)}", f"data.seed={seed}",
        "training.num_workers=0", "training.max_steps=2", "training.eval_every=2", "training.checkpoint_every=2",
        "training.log_every=1", "training.val_nll_frames=2", "training.val_steps=2", "training.progress=false",
        f"training.work_dir={tmp_path / 'runs'}", "tracking.enabled=false"])
    folder = fit_detailed(cfg).model_folder
    recorded = json.loads((folder / "backmapper.json").read_text())["training_split"]  # written at training time
    assert recorded["seed"] == seed and recorded["fractions"] == list(fractions)
    assert recorded["test"] != default_test and len(recorded["test"]) == 1
    assert sorted(recorded["train"] + recorded["validation"] + recorded["test"]) == sorted(man.trajectories)

    res = evaluate(str(folder), four_traj_shards, split="test", out=tmp_path / "eval", **SMALL)
    tags = json.loads((tmp_path / "eval" / "report.json").read_text())["tags"]
    ids_hash = hashlib.sha256(",".join(recorded["test"]).encode()).hexdigest()[:8]
    assert tags["data_hash"] == f"{man.digest}:test-{ids_hash}" and tags["split"] == "test"
    # the same numbers as scoring the recorded test trajectories directly
    bm = load_backmapper(folder)
    ref = read_frames(four_traj_shards, recorded["test"])
    assert set(ref["traj_id"].tolist()) == set(recorded["test"])
    xyz, _ = backmap_trajectories(bm, ref["cg_xyz_nm"].astype(np.float64), ref["traj_id"], 1, 0)
    direct, _ = evaluate_frames(ref, {"aa_xyz_nm": xyz[0], "cg_xyz_nm": ref["cg_xyz_nm"]}, bm.topology, bm.mapping,
                                **get_system("adp").evaluation_kwargs(), constraints=man.constraint_arrays(),
                                make_figures=False)
    for k in ("rmsd_cg_nm", "js_bonds", "js_angles", "bond_score", "mae_constrained_bond_nm"):
        assert res.metrics[k] == pytest.approx(direct[k], rel=1e-9, abs=1e-12), k
    assert not any(k.startswith("js_bond_") and "H" in k for k in res.metrics)  # X-H bonds out of the JS


def test_a_model_without_a_recorded_split_is_refused_naming_split(adp_shards, tmp_path):
    """``--split validation`` scores exactly the trajectory the model never saw, found from its recorded seed."""
    import hashlib

    from finegrain.datasets.shards import read_frames
    from finegrain.trainables.baselines import fit_nullspace
    from finegrain.trainables.protocol import load_backmapper

    man = Manifest.load(adp_shards)
    # a seed whose split differs from the default seed's, so evaluating with the wrong seed cannot pass
    seed = next(s for s in range(1, 100) if split_trajectories_of(adp_shards, s) != split_trajectories_of(adp_shards, 0))
    model, _ = fit_baseline("nullspace", adp_shards, fractions=(0.5, 0.5, 0.0), seed=seed)
    model.save(tmp_path / "with")
    rec = load_backmapper(tmp_path / "with").recorded_split()
    assert rec["seed"] == seed and rec["validation"] == split_trajectories_of(adp_shards, seed)
    train_ids, val_ids = rec["train"], rec["validation"]
    assert len(train_ids) == len(val_ids) == 1 and set(train_ids) | set(val_ids) == set(man.trajectories)
    # the model was fitted on the recorded training trajectory and only on it (refitted independently)
    train, held = read_frames(adp_shards, train_ids), read_frames(adp_shards, val_ids)
    np.testing.assert_allclose(fit_nullspace(train["aa_xyz_nm"], model.mapping, model.topology).mean_eta,
                               model.mean_eta, atol=1e-12)
    assert np.abs(fit_nullspace(held["aa_xyz_nm"], model.mapping, model.topology).mean_eta - model.mean_eta).max() > 1e-4
    res = evaluate(str(tmp_path / "with"), adp_shards, split="validation", out=tmp_path / "eval", **SMALL)
    tags = json.loads((tmp_path / "eval" / "report.json").read_text())["tags"]
    ids_hash = hashlib.sha256(",".join(sorted(val_ids)).encode()).hexdigest()[:8]
    assert tags["split"] == "validation" and tags["data_hash"] == f"{man.digest}:validation-{ids_hash}"
    assert res.metrics["n_frames"] == len(held["frame"]) == man.n_frames - len(train["frame"])
    # the scores are those of the held-out frames, not of the training ones
    on_train = evaluate(str(tmp_path / "with"), adp_shards, split="train", **SMALL)
    assert on_train.metrics["n_frames"] == len(train["frame"])
    assert res.metrics["js_angles"] != pytest.approx(on_train.metrics["js_angles"], rel=1e-6)
    model.training_split = None
    model.save(tmp_path / "without")
    with pytest.raises(InputError, match="--split test.*no recorded training split"):
        evaluate(str(tmp_path / "without"), adp_shards, split="test", **SMALL)


def split_trajectories_of(shards, seed):
    from finegrain.datasets.shards import split_trajectories

    return split_trajectories(Manifest.load(shards), (0.5, 0.5, 0.0), seed)["validation"]
