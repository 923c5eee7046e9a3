"""The end-to-end demo behind ``finegrain demo``: each stage builds on the last.

1. stack up (Ray head with token auth + MLflow server, both on 127.0.0.1);
2. simulate ADP with OpenMM: training replicas, a separate held-out replica and
   an unconstrained set for the entropy comparison;
3. ingest both with the backbone6 mapping into Parquet shards (Ray Data);
4. train the temporally coherent cVAE, its frame-based ablation, a flow
   model and an internal-coordinate model (Ray Train, tracked in MLflow),
   and backmap the held-out CG trajectory to a file;
5. fit both baselines, evaluate them, the live-trained models and the shipped
   ``zoo:adp-backbone6`` on the held-out replica and print the leaderboard;
6. run the smoke sweep as a Ray job (``ray job submit --working-dir .``) and
   show the registered champion;
7. serve the champion with Ray Serve and backmap the CG file over HTTP;
8. compare CG mappings by their mapping entropy (flow models).

Outputs go to ``WORKDIR`` (default ``$FINEGRAIN_HOME/demo``); the stack and
the Serve application are left running for the MLflow UI and HTTP calls.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from finegrain.datasets.ingest import ingest, sources_from_simulation
from finegrain.datasets.shards import Manifest, read_frames
from finegrain.datasets.simulate import SimulationConfig, simulate
from finegrain.datasets.systems import get_system
from finegrain.platform.apps.demo_config import DemoConfig
from finegrain.platform.apps.console import leaderboard_table, ranking_table, submit_job
from finegrain.platform.apps.entropy_compare import small_adp_comparison
from finegrain.platform.apps.evaluation import evaluate
from finegrain.platform.apps.leaderboard import leaderboard, log_leaderboard
from finegrain.platform.apps.serving import backmap_file_remote, serve_model
from finegrain.platform.services.stack import LocalStack, connect_ray
from finegrain.platform.services.tracking import Tracker
from finegrain.sweeps.spec import SweepSpec
from finegrain.trainables.baseline_fit import fit_baseline
from finegrain.trainables.cvae.train import fit_detailed
from finegrain.trainables.cvae.train_config import TrainConfig
from finegrain.trainables.persistence import load_backmapper_any
from finegrain.trainables.protocol import trainer_for


__all__ = ["DemoConfig", "run_demo"]

PACKAGE = Path(__file__).resolve().parents[2]  # the finegrain package (the repository root when editable)


def run_demo(cfg: DemoConfig, console: Console | None = None) -> dict:
    """Run every stage; return a dict of what was made."""
    console = console or Console()
    made: dict = {}
    console.rule("[bold]1. stack")
    st = LocalStack().up()
    console.print(f"MLflow {st.mlflow_uri}  |  Ray dashboard {st.dashboard_url}")
    connect_ray()
    tracker = Tracker.connect(st.mlflow_uri)  # the demo's one tracker
    _simulate_and_ingest(cfg, console, made)
    _train_and_backmap(cfg, console, made, tracker)
    _baselines_and_leaderboard(cfg, console, made, tracker)
    _sweep(cfg, console, made, tracker)
    _serve(cfg, console, made)
    _entropy(cfg, console, made, tracker)
    console.rule("[bold green]done")
    console.print(f"outputs in {cfg.workdir}; MLflow UI {st.mlflow_uri}; stop everything with "
                  f"`finegrain serve --stop` and `finegrain stack down`")
    return made


def _simulate_and_ingest(cfg: DemoConfig, console: Console, made: dict) -> None:
    import mdtraj as md

    console.rule("[bold]2. simulate")
    sims = {
        "train": SimulationConfig(cfg.system, ns=cfg.ns, replicas=cfg.replicas, seed=cfg.seed),
        "heldout": SimulationConfig(cfg.system, ns=cfg.heldout_ns, replicas=1, seed=cfg.seed + 1000),
        # all bonds free: with X-H bonds constrained H(X|Y) is -inf and entropy estimates meaningless
        "entropy": SimulationConfig(cfg.system, ns=cfg.entropy_ns, replicas=2, seed=cfg.seed + 2000,
                                    timestep_fs=1.0, constraints=None),
    }
    for name, sim_cfg in sims.items():
        made[f"sim_{name}"] = simulate(sim_cfg, cfg.workdir / f"sim-{name}", overwrite=True)
        console.print(f"{name}: {sim_cfg.replicas} x {sim_cfg.n_frames} frames -> {made[f'sim_{name}']}")

    console.rule("[bold]3. ingest")
    mapping = get_system(cfg.system).mapping(cfg.mapping)
    for name in sims:
        top, system, sources = sources_from_simulation(made[f"sim_{name}"])
        man = ingest(top, sources, mapping, cfg.workdir / f"shards-{name}", system=system, overwrite=True)
        made[f"shards_{name}"] = cfg.workdir / f"shards-{name}"
        console.print(
            f"{name}: {man.n_frames} frames, {man.n_trajectories} trajectories, {man.n_atoms} atoms -> "
            f"{man.n_beads} beads ({mapping.name}), {len(man.shards)} shards, data hash {man.digest}"
        )
    # the held-out CG trajectory as files, as a user would bring them
    frames = read_frames(made["shards_heldout"])
    assert Manifest.load(made["shards_heldout"]).n_trajectories == 1
    cg = md.Trajectory(frames["cg_xyz_nm"], mapping.cg_topology(), time=frames["time_ps"])
    made["cg_traj"], made["cg_top"] = cfg.workdir / "heldout_cg.dcd", cfg.workdir / "heldout_cg.pdb"
    cg.save_dcd(str(made["cg_traj"]))
    cg[0].save_pdb(str(made["cg_top"]))


def _train_and_backmap(cfg: DemoConfig, console: Console, made: dict, tracker) -> None:
    import mdtraj as md

    console.rule("[bold]4. train the cVAE (Shmilovich et al. 2022), its frame-based ablation, a flow (split-flows) and an "
                 "internal-coordinate model")
    base = [f"data.shards={made['shards_train']}", "data.fractions=[0.75, 0.25, 0.0]",
            f"training.max_steps={cfg.train_steps}", "training.num_workers=0", "training.log_every=50",
            f"training.eval_every={cfg.train_steps // 2}", f"training.checkpoint_every={cfg.train_steps // 2}",
            "tracking.experiment=demo-cvae", f"training.work_dir={cfg.workdir / 'runs'}", "model.u_max=1.0e+5",
            # lambda = 0 for the first two thirds (atoms localise first, as the paper's 2e5 steps), then a ramp
            f"model.t_lambda0={2 * cfg.train_steps // 3}", f"model.n_lambda={cfg.train_steps // 6}"]
    path = PACKAGE / "trainables" / "configs" / "adp_cvae_smoke.yaml"
    for label, extra in (("cvae", []), ("cvae_frame_based", ["model.frame_based=true"])):
        res = fit_detailed(TrainConfig.from_yaml(path, base + extra))
        made[f"model_{label}"] = res.model_uri
        console.print(f"{label}: {cfg.train_steps} steps, MLflow run {res.run_id}, model {res.model_uri}")
    # the flow-matching family (Hummerich et al., split-flows (2025)) through the same protocol
    config_cls, fit = trainer_for("flow")
    flow_sets = [s for s in base if not s.startswith(("model.", "training.max_steps"))]
    res = fit(config_cls.from_yaml(PACKAGE / "trainables" / "configs" / "adp_flow_smoke.yaml",
                                   flow_sets + [f"training.max_steps={cfg.flow_steps}", "tracking.experiment=demo-flow"]))
    made["model_flow"] = res.model_uri
    console.print(f"flow: {cfg.flow_steps} steps, MLflow run {res.run_id}, model {res.model_uri}")
    # the internal-coordinate family: a smoke model trained here; the shipped one is evaluated in stage 5
    config_cls, fit = trainer_for("ic")
    res = fit(config_cls.from_yaml(PACKAGE / "trainables" / "configs" / "adp_ic_smoke.yaml",
                                   flow_sets + [f"training.max_steps={cfg.ic_steps}", "tracking.experiment=demo-ic",
                                                f"training.eval_every={cfg.ic_steps // 2}",
                                                f"training.checkpoint_every={cfg.ic_steps}"]))
    made["model_ic"] = res.model_uri
    console.print(f"ic: {cfg.ic_steps} steps, MLflow run {res.run_id}, model {res.model_uri}")
    bm = load_backmapper_any(made["model_cvae"], tracker)
    cg = md.load(str(made["cg_traj"]), top=str(made["cg_top"]))
    out = cfg.workdir / "heldout_backmapped.pdb"
    bm.backmap(cg, seed=cfg.seed)[0].save(str(out))
    console.print(f"backmapped the held-out CG trajectory ({cg.n_frames} frames, {cg.n_atoms} beads) -> {out} "
                  f"({bm.topology.n_atoms} atoms)")


def _baselines_and_leaderboard(cfg: DemoConfig, console: Console, made: dict, tracker) -> None:
    console.rule("[bold]5. baselines, evaluation on the held-out replica, leaderboard")
    for family in ("nullspace", "em"):
        _, made[f"model_{family}"] = fit_baseline(family, made["shards_train"], seed=cfg.seed, tracker=tracker)
        console.print(f"{family}: {made[f'model_{family}']}")
    made["model_zoo"] = f"zoo:{cfg.zoo_model}"  # shipped, trained on other simulations than this demo's
    for label in ("cvae", "cvae_frame_based", "flow", "ic", "zoo", "nullspace", "em"):
        res = evaluate(made[f"model_{label}"], made["shards_heldout"], out=cfg.workdir / "evaluation" / label,
                       seed=cfg.seed, tracker=tracker)
        console.print(f"evaluated {label}: MLflow run {res.run_id}, report {res.report}")
    made["leaderboard"] = leaderboard(cfg.system, tracker)
    console.print(leaderboard_table(made["leaderboard"], cfg.system))
    log_leaderboard(made["leaderboard"], cfg.system, tracker)


def _sweep(cfg: DemoConfig, console: Console, made: dict, tracker) -> None:
    console.rule("[bold]6. smoke sweep through `ray job submit` (Tune + Optuna + ASHA)")
    spec = SweepSpec.load(PACKAGE / "sweeps" / "adp_cvae_smoke.yaml")
    rc = submit_job(["finegrain", "sweep", "sweeps/adp_cvae_smoke.yaml", "--set",
                     f"data.shards={made['shards_train']}"], working_dir=str(PACKAGE))
    if rc != 0:
        raise RuntimeError("the sweep job failed; its logs are above")
    mv = tracker.client.get_model_version_by_alias(spec.register_as, "champion")
    made["champion"] = f"models:/{spec.register_as}@champion"
    console.print(f"champion: {spec.register_as} v{mv.version} (run {mv.run_id}, "
                  f"{spec.metric} {float(mv.tags.get(f'metric.{spec.metric}', 'nan')):.6g})")


def _serve(cfg: DemoConfig, console: Console, made: dict) -> None:
    console.rule("[bold]7. serve the champion (Ray Serve) and backmap the CG file over HTTP")
    base = serve_model(made["champion"], host="127.0.0.1", port=cfg.serve_port)
    made["endpoint"] = base
    paths = backmap_file_remote(base, traj=made["cg_traj"], top=made["cg_top"],
                                out=cfg.workdir / "heldout_backmapped_http.pdb", seed=cfg.seed)
    console.print(f"{base} (OpenAPI at {base}/docs): wrote {', '.join(str(p) for p in paths)}")


def _entropy(cfg: DemoConfig, console: Console, made: dict, tracker) -> None:
    console.rule("[bold]8. mapping entropy: which CG mapping loses least? (flow models, split-flows)")
    made["entropy"] = small_adp_comparison(made["shards_entropy"], tracker, budget=cfg.entropy_steps,
                                           mappings=cfg.entropy_mappings, echo=console.print)
    console.print(ranking_table(made["entropy"].rows, cfg.system, cfg.entropy_steps))
