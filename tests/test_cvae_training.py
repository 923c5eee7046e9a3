"""Training, tracking and inference of the cVAE backmapper (Shmilovich et al. (2022), sections 2.3-2.4).

Data: the session fixtures ``adp_shards`` (2 ADP replicas x 50 frames, 1 ps)
and ``chignolin_shards`` (2 x 20 frames) of conftest.py, simulated with
OpenMM through the real local stack (Ray head + MLflow server).  Reference
values are computed independently here (eqs. 5/6 by hand, analytic GMM
moments, the CG map applied to written files).
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import mdtraj as md
import numpy as np
import pytest
import torch
import typer
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from finegrain.platform.services.tracking import Tracker
from finegrain.datasets.systems import get_system
from finegrain.datasets.shards import Manifest, read_frames, split_trajectories
from finegrain.trainables.cvae import CVAE, CVAEConfig
from finegrain.trainables.cvae.backmapper import CVAEBackmapper, GaussianMixtureSampler
from finegrain.platform.science.voxels import apply_rotation, random_rotations
from finegrain.trainables.cvae.train import (SeedBank, _Worker, fit_detailed, load_checkpoint_state, prepare_triplet,
                                             step_loss)
from finegrain.trainables.cvae.train_config import ConfigError, TrainConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "trainables" / "configs"


def smoke(shards, work, *sets: str, tracking: bool = False) -> TrainConfig:
    """The shipped ADP smoke config on ``shards``: in-process, 1/2 of the trajectories held out for validation."""
    base = [f"data.shards={shards}", "data.fractions=[0.5, 0.5, 0.0]", f"training.work_dir={work}",
            "training.num_workers=0", "training.progress=false", "training.energy=false",
            f"tracking.enabled={'true' if tracking else 'false'}"]
    return TrainConfig.from_yaml(CONFIGS / "adp_cvae_smoke.yaml", base + list(sets))


def cg_topology(bead_names) -> md.Topology:
    top = md.Topology()
    res = top.add_residue("CG", top.add_chain())
    for name in bead_names:
        top.add_atom(name, md.element.virtual_site, res)
    return top


def held_out_cg(shards: Path, n_frames: int) -> np.ndarray:
    """CG frames [T, n, 3] nm of the validation trajectory (never trained on)."""
    man = Manifest.load(shards)
    val = split_trajectories(man, (0.5, 0.5, 0.0), 0)["validation"]
    return read_frames(shards, val)["cg_xyz_nm"][:n_frames].astype(np.float64)


def cli_app() -> typer.Typer:
    """The real ``finegrain`` app: its root group is the CLI's one error handler."""
    from finegrain.platform.apps.cli import app

    return app


# ----------------------------------------------------------------------------- config (no Ray)
def test_config_presets_overrides_and_errors_name_the_key():
    cfg = TrainConfig.from_yaml(CONFIGS / "adp_cvae.yaml")
    assert cfg.cvae() == CVAEConfig.adp()  # Table 1, ADP column, 14.8M steps
    assert TrainConfig.from_yaml(CONFIGS / "chignolin_cvae.yaml").cvae() == CVAEConfig.chignolin()
    cfg = TrainConfig.from_yaml(CONFIGS / "adp_cvae.yaml", ["model.frame_based=true", "training.max_steps=7",
                                                            "data.fractions=[0.5, 0.5, 0]", "data.shards=/x"])
    assert cfg.cvae() == CVAEConfig.adp(frame_based=True, max_steps=7)
    assert cfg.data.fractions == (0.5, 0.5, 0.0) and str(cfg.data.shards) == "/x"
    flat = cfg.flat()
    assert flat["model.frame_based"] == "True" and flat["model.sigma"] == "0.05398" and flat["training.max_steps"] == "7"
    for sets, key in [(["training.max_stepz=3"], "training.max_stepz"), (["model.batch_size=0"], "model.batch_size"),
                      (["training.max_steps=-1"], "training.max_steps"), (["model.not_a_field=1"], "model.not_a_field"),
                      (["data.fractions=[0.5, 0.6, 0]"], "data.fractions"), (["trainingmax_steps=3"], "trainingmax_steps"),
                      (["model.max_steps=5", "training.max_steps=5"], "model.max_steps")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            TrainConfig.from_yaml(CONFIGS / "adp_cvae.yaml", sets)


# ----------------------------------------------------------------------------- inference pieces (no Ray)
def test_gmm_samples_match_the_analytic_mixture_moments():
    rng = np.random.default_rng(0)
    d, k = 4, 3
    a = rng.normal(size=(k, d, d))
    gmm = GaussianMixtureSampler([0.2, 0.5, 0.3], rng.normal(scale=3.0, size=(k, d)),
                                 a @ a.transpose(0, 2, 1) + 0.1 * np.eye(d))
    n = 200_000
    z = gmm.sample(n, np.random.default_rng(1))
    mean, cov = gmm.mean, gmm.covariance
    # analytic moments by hand (law of total variance), not via the class
    m_hand = sum(w * m for w, m in zip(gmm.weights, gmm.means))
    c_hand = sum(w * (c + np.outer(m - m_hand, m - m_hand)) for w, m, c in zip(gmm.weights, gmm.means, gmm.covariances))
    np.testing.assert_allclose(mean, m_hand, atol=1e-12)
    np.testing.assert_allclose(cov, c_hand, atol=1e-10)
    se_mean = np.sqrt(np.diag(cov) / n)  # standard error of each sample mean
    assert np.all(np.abs(z.mean(0) - mean) < 5 * se_mean)
    se_cov = np.sqrt((cov ** 2 + np.outer(np.diag(cov), np.diag(cov))) / n)  # Gaussian approximation
    assert np.all(np.abs(np.cov(z.T) - cov) < 6 * se_cov + 1e-3 * np.abs(cov).max())
    # fitting recovers a well separated two-component mixture
    two = GaussianMixtureSampler([0.3, 0.7], [[-4.0, 0.0], [4.0, 1.0]], [np.eye(2) * 0.5, np.eye(2)])
    fit = GaussianMixtureSampler.fit(two.sample(20_000, np.random.default_rng(2)), 2, seed=0)
    order = np.argsort(fit.means[:, 0])
    np.testing.assert_allclose(fit.weights[order], [0.3, 0.7], atol=0.02)
    np.testing.assert_allclose(fit.means[order], two.means, atol=0.05)


def _adp():
    from finegrain.datasets.systems import get_system

    ref = get_system("adp")
    return ref, ref.mapping("backbone6")


def test_seed_frame_is_the_closest_bank_frame_rotated_onto_cg0_and_projection_is_exact():
    ref, mapping = _adp()
    rng = np.random.default_rng(4)
    aa = ref.positions_nm[None] + 0.02 * rng.normal(size=(8, ref.n_atoms, 3))
    cg = mapping.map(aa)
    bank_cg = cg - cg.mean(1, keepdims=True)
    bank_prev = aa + 0.01 * rng.normal(size=aa.shape) - cg.mean(1, keepdims=True)
    model = CVAE(CVAEConfig.smoke(), ref.n_atoms, mapping.n_beads)
    bm = CVAEBackmapper(ref.md_topology, mapping, model, None, bank_cg, bank_prev, prior="normal")
    # CG(0) of two trajectories: bank frames 5 and 2, rotated about z and moved
    rz = Rotation.from_euler("z", [[90.0], [-40.0]], degrees=True).as_matrix()
    shift = np.array([[1.0, 2.0, 3.0], [-2.0, 0.5, 0.0]])
    cg0 = np.einsum("mnj,mij->mni", bank_cg[[5, 2]], rz) + shift[:, None]
    expected = np.einsum("mnj,mij->mni", bank_prev[[5, 2]], rz) + shift[:, None]
    np.testing.assert_allclose(bm.seed_frames(cg0), expected, atol=1e-9)
    # K chains as one batch: shapes, and with project_cg every frame maps exactly onto its CG input
    traj = cg[:3] + np.array([0.5, -0.2, 0.1])
    out = bm.backmap_xyz(traj, n_samples=4, seed=0)
    assert out.shape == (4, 3, ref.n_atoms, 3)
    assert not np.allclose(out[0], out[1])  # independent latent draws
    np.testing.assert_allclose(bm.backmap_xyz(traj, n_samples=4, seed=0), out)  # seeded
    bm.project_cg = True
    np.testing.assert_allclose(mapping.map(bm.backmap_xyz(traj, n_samples=2, seed=1)), np.broadcast_to(traj, (2, 3, 6, 3)),
                               atol=1e-9)


def test_triplet_augmentation_and_energy_term_wiring():
    ref, mapping = _adp()
    rng = np.random.default_rng(5)
    aa = torch.tensor(ref.positions_nm[None] + 0.01 * rng.normal(size=(4, ref.n_atoms, 3)), dtype=torch.float32) + 1.5
    prev = aa + 0.005
    m = torch.tensor(mapping.matrix, dtype=torch.float32)
    cg = torch.einsum("bi,fic->fbc", m, aa)
    p2, c2, a2 = prepare_triplet(prev, cg, aa, torch.Generator().manual_seed(0))
    assert torch.allclose(c2.mean(1), torch.zeros(4, 3), atol=1e-5)  # CG(t) centroid at the origin
    assert torch.allclose(torch.einsum("bi,fic->fbc", m, a2), c2, atol=1e-5)  # same rigid motion for AA and CG
    assert torch.allclose(torch.cdist(a2, p2), torch.cdist(aa, prev), atol=1e-4)  # ... and for AA(t-1)
    assert not torch.allclose(a2, aa - cg.mean(1, keepdim=True), atol=1e-2)  # actually rotated
    pytest.importorskip("finegrain.platform.science.energies")
    from finegrain.platform.science.energies import energy_model
    from finegrain.trainables.cvae.losses import energy_loss

    efn = energy_model(get_system("adp"), backend="torch", dtype=torch.float32)
    cfg = CVAEConfig.smoke(t_lambda0=2, n_lambda=4, beta_schedule="constant")
    model = CVAE(cfg, ref.n_atoms, mapping.n_beads)
    _, t0 = step_loss(model, p2, c2, a2, 1, m, energy_fn=efn, generator=torch.Generator().manual_seed(9))
    total, t4 = step_loss(model, p2, c2, a2, 4, m, energy_fn=efn, generator=torch.Generator().manual_seed(9))
    assert "energy" not in t0 and t4["lambda"] == pytest.approx(1e-3)  # eq. 5 at t = 4: 1e-6 * 1e6^(2/4)
    with torch.no_grad():
        out = model(a2, c2, p2, generator=torch.Generator().manual_seed(9))
        expected = energy_loss(out.xyz_pred, efn, xyz_target=a2)
    assert t4["energy"] == pytest.approx(float(expected), rel=1e-5)
    assert t4["total"] == pytest.approx(t0["total"] + 1e-3 * t4["energy"], rel=1e-5)


def _training_input(cfg: CVAEConfig, aa_prev, cg, aa, seed: int) -> torch.Tensor:
    """The AA(t-1) that one real training update (``_Worker.train_step``) feeds to the loss."""
    ref, mapping = _adp()
    w = _Worker.__new__(_Worker)  # the worker's state without a Ray Train context
    w.cfg, w.c, w.rank, w.step, w.n_atoms, w.n_beads = cfg, {}, 0, 0, ref.n_atoms, mapping.n_beads
    torch.manual_seed(0)
    w.raw = w.model = CVAE(cfg, ref.n_atoms, mapping.n_beads)
    w.opt = torch.optim.Adam(w.raw.parameters(), lr=cfg.learning_rate)
    w.mapping, w.energy_fn = torch.tensor(mapping.matrix, dtype=torch.float32), None
    w.gen = w.gen_dev = torch.Generator().manual_seed(seed)
    seen = []
    real_loss = w._loss

    def spy(module, prev, *rest):
        seen.append(prev.detach().clone())
        return real_loss(module, prev, *rest)

    w._loss = spy
    b = aa.shape[0]
    terms = w.train_step({"aa_prev": aa_prev.reshape(b, -1), "cg": cg.reshape(b, -1), "aa": aa.reshape(b, -1)})
    assert math.isfinite(terms["total"])
    return seen[0]


def test_prev_noise_is_training_only_isotropic_gaussian_of_the_configured_std():
    ref, mapping = _adp()
    rng = np.random.default_rng(6)
    b, s = 256, 0.05
    aa = torch.tensor(ref.positions_nm[None] + 0.01 * rng.normal(size=(b, ref.n_atoms, 3)), dtype=torch.float32) + 1.5
    prev = aa + torch.tensor(0.005 * rng.normal(size=aa.shape), dtype=torch.float32)
    # contiguous, as batches come (a strided CG changes the centroid's float32 summation order)
    cg = torch.einsum("bi,fic->fbc", torch.tensor(mapping.matrix, dtype=torch.float32), aa).contiguous()
    # the pre-noise computation written out: centre on CG(t)'s centroid, one rotation per triplet
    g = torch.Generator().manual_seed(3)
    rot = random_rotations(b, generator=g, dtype=torch.float32)
    clean_ref = apply_rotation(prev - cg.mean(1, keepdim=True), rot)
    state_after = g.get_state()
    # prev_noise_nm = 0: bit-identical input and an untouched random stream (later steps unchanged)
    g0 = torch.Generator().manual_seed(3)
    p0, c0, a0 = prepare_triplet(prev, cg, aa, g0, prev_noise_nm=0.0)
    assert torch.equal(p0, clean_ref) and torch.equal(g0.get_state(), state_after)
    assert torch.equal(_training_input(CVAEConfig.smoke(), prev, cg, aa, seed=3), clean_ref)
    # prev_noise_nm = 0.05 nm: the training input is the clean one plus N(0, 0.05^2) per coordinate
    pn, cn, an = prepare_triplet(prev, cg, aa, torch.Generator().manual_seed(3), prev_noise_nm=s)
    assert torch.equal(cn, c0) and torch.equal(an, a0)  # AA(t), CG(t) untouched
    noisy = _training_input(CVAEConfig.smoke(prev_noise_nm=s), prev, cg, aa, seed=3)
    assert torch.equal(noisy, pn)
    eps = (noisy - clean_ref).double().reshape(-1, 3).numpy()
    n = eps.shape[0] * 3
    se_std = s / math.sqrt(2 * n)  # standard error of a Gaussian sample std
    assert abs(eps.std() - s) < 5 * se_std and abs(eps.mean()) < 5 * s / math.sqrt(n)
    for axis_std in eps.std(axis=0):  # isotropic: every axis the same std
        assert abs(axis_std - s) < 5 * s / math.sqrt(2 * eps.shape[0])
    corr = np.corrcoef(eps.T)[np.triu_indices(3, 1)]
    assert np.all(np.abs(corr) < 5 / math.sqrt(eps.shape[0]))  # uncorrelated axes
    assert abs(np.mean(np.abs(eps) < s) - 0.682689) < 0.015  # Gaussian: 68.27 % within one std
    with pytest.raises(ValueError, match="generator"):  # validation (no generator) cannot be noised
        prepare_triplet(prev, cg, aa, None, prev_noise_nm=s)
    # the presets keep the paper's clean teacher forcing; the smoke config sets 0.01 nm
    assert TrainConfig.from_yaml(CONFIGS / "adp_cvae.yaml").cvae().prev_noise_nm == 0.0
    assert TrainConfig.from_yaml(CONFIGS / "adp_cvae_smoke.yaml").cvae().prev_noise_nm == 0.01


def _stream(n_traj: int, per_traj: int, seed: int = 0):
    """Synthetic raw pairs in trajectory order: cg [P, 6, 3], aa_prev [P, 22, 3], traj [P], position [P]."""
    g = torch.Generator().manual_seed(seed)
    p = n_traj * per_traj
    return (torch.randn(p, 6, 3, generator=g) + 2.0, torch.randn(p, 22, 3, generator=g),
            np.repeat(np.arange(n_traj), per_traj), np.arange(p))


def test_seed_bank_is_a_uniform_sample_of_every_pair_independent_of_batching_and_workers():
    from scipy.stats import chisquare

    cg, prev, traj, pos = _stream(5, 200)
    cap, n_seeds = 100, 300
    picked = []
    for seed in range(n_seeds):
        bank = SeedBank(cap, seed)
        for i in range(0, len(cg), 64):  # batches in trajectory order (what a worker sees)
            bank.add(cg[i:i + 64], prev[i:i + 64])
        got = bank.tensors()
        # identify each bank row by its centred CG frame
        centred = (cg - cg.mean(1, keepdim=True)).reshape(len(cg), -1)
        idx = torch.cdist(got["cg"].reshape(cap, -1), centred).argmin(1).numpy()
        np.testing.assert_allclose(got["cg"].numpy(), centred[idx].reshape(cap, 6, 3).numpy(), atol=1e-6)
        np.testing.assert_allclose(got["aa_prev"].numpy(), (prev - cg.mean(1, keepdim=True))[idx].numpy(), atol=1e-6)
        assert len(set(idx)) == cap and set(traj[idx]) == set(range(5))  # every trajectory contributes
        picked.append(pos[idx])
    # pooled positions are uniform over the whole stream (a "first N pairs" bank puts all in bin 0)
    counts = np.bincount(np.concatenate(picked) // 100, minlength=10)
    assert chisquare(counts).pvalue > 1e-3, counts
    # deterministic, and independent of batch size, order and how pairs are split over workers
    ref = SeedBank(cap, 7)
    ref.add(cg, prev)
    perm = np.random.default_rng(1).permutation(len(cg))
    parts = [SeedBank(cap, 7) for _ in range(3)]
    for k, chunk in enumerate(np.array_split(perm, 17)):
        parts[k % 3].add(cg[chunk], prev[chunk])
    merged = SeedBank.merge(cap, 7, [p.state() for p in parts])
    np.testing.assert_array_equal(merged.keys, ref.keys)
    assert torch.equal(merged.tensors()["cg"], ref.tensors()["cg"])
    assert torch.equal(merged.tensors()["aa_prev"], ref.tensors()["aa_prev"])
    other = SeedBank(cap, 8)
    other.add(cg, prev)
    assert not torch.equal(other.tensors()["cg"], ref.tensors()["cg"])  # the seed matters


# ----------------------------------------------------------------------------- Ray Train + MLflow
def _hand_lambda(t: int) -> float:  # eq. 5 with t_lambda0 = 2, n_lambda = 4, 1e-6 -> 1
    return 0.0 if t < 2 else (1.0 if t >= 6 else 1e-6 * (1e6) ** ((t - 2) / 4))


def _hand_beta(t: int) -> float:  # eq. 6, smoke preset: k = 0.5, tau = 5, R = 10, M = 2
    return 1.0 if t >= 20 else 1.0 / (1.0 + math.exp(-0.5 * ((t % 10) - 5)))


@pytest.mark.slow
def test_two_worker_ray_train_retries_resumes_exactly_and_is_tracked(stack, adp_shards, tmp_path):
    from mlflow import MlflowClient

    from finegrain.trainables.persistence import load_backmapper_from_uri

    name = f"cvae-test-{uuid.uuid4().hex[:8]}"
    common = ["training.num_workers=2", "training.cpus_per_worker=0.5", "training.max_steps=6",
              "training.checkpoint_every=3", "training.eval_every=3", "training.log_every=1",
              "model.t_lambda0=2", "model.n_lambda=4", "training.gmm_max_samples=64"]
    cfg_a = smoke(adp_shards, tmp_path, *common, "training.inject_failure_at=4", "training.max_failures=1",
                  f"tracking.register_as={name}", "tracking.experiment=cvae-tests", tracking=True)
    a = fit_detailed(cfg_a)
    ck3 = a.run_dir / "checkpoint_000000003"
    state3 = load_checkpoint_state(ck3)
    assert state3["meta"]["step"] == 3 and state3["meta"]["lambda_next"] == pytest.approx(_hand_lambda(3))
    assert state3["meta"]["beta_next"] == pytest.approx(_hand_beta(3))
    assert (a.run_dir / ".injected_failure_4").exists()  # the group failed once and restarted from step 3
    adam_step = lambda ck: float(next(iter(ck["optimizer"]["state"].values()))["step"])  # noqa: E731
    assert adam_step(state3) == 3.0 and adam_step(load_checkpoint_state(a.checkpoint)) == 6.0

    b = fit_detailed(smoke(adp_shards, tmp_path, *common, f"training.resume_from={ck3}",
                           "tracking.experiment=cvae-tests", tracking=True))
    assert adam_step(load_checkpoint_state(b.checkpoint)) == 6.0 and load_checkpoint_state(b.checkpoint)["meta"]["step"] == 6

    client = MlflowClient(stack.mlflow_uri)
    hist = lambda run, key: sorted({(m.step, m.value) for m in client.get_metric_history(run, key)})  # noqa: E731
    for key, hand in (("lambda", _hand_lambda), ("beta", _hand_beta)):
        ha, hb = hist(a.run_id, key), hist(b.run_id, key)
        assert [s for s, _ in ha] == [1, 2, 3, 4, 5, 6]  # retried steps logged again with identical values
        assert [s for s, _ in hb] == [4, 5, 6]  # the resumed run continues at step 3
        for s, v in ha + hb:
            assert v == pytest.approx(hand(s - 1), rel=1e-12, abs=1e-15), (key, s)  # metric at s: update t = s-1
    run = client.get_run(a.run_id)
    p, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert p["model.preset"] == "smoke" and p["training.num_workers"] == "2" and p["model.learning_rate"] == "0.001"
    assert p["data.fractions"] == "[0.5, 0.5, 0.0]" and p["model.t_lambda0"] == "2"
    assert tags["dataset_digest"] == Manifest.load(adp_shards).digest and tags["mapping"] == "backbone6"
    for key in ("train_vox", "train_aa", "train_cg", "train_edm", "train_kld", "train_total", "lr", "samples_per_s",
                "val_total", "val_aa", "grad_norm"):
        assert key in metrics, key
    assert metrics["lr"] == 1e-3 and metrics["samples_per_s"] > 0
    assert [m.step for m in client.get_metric_history(a.run_id, "val_total")] == [3, 6]
    assert run.info.status == "FINISHED"

    # the logged model backmaps on its own, from every kind of URI, identically to the trained object
    client.set_registered_model_alias(name, "champion", "1")
    cg = held_out_cg(adp_shards, 5)
    expected = a.backmapper.backmap_xyz(cg, n_samples=2, seed=3)
    for uri in (a.model_uri, f"models:/{name}/1", f"models:/{name}@champion"):
        loaded = load_backmapper_from_uri(uri, Tracker(stack.mlflow_uri))
        assert isinstance(loaded, CVAEBackmapper) and loaded.mapping.name == "backbone6"
        np.testing.assert_array_equal(loaded.backmap_xyz(cg, n_samples=2, seed=3), expected)
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(a.model_uri, dst_path=str(tmp_path / "dl"), tracking_uri=stack.mlflow_uri))
    files = sorted(p.name for p in (local / "artifacts" / "backmapper").iterdir())
    assert files == ["backmapper.json", "topology.pdb", "weights.pt"]  # JSON, PDB, tensors only


def _bank_sources(shards: Path, bank: CVAEBackmapper) -> list[tuple[str, int]]:
    """(trajectory, frame t) of every bank row, matched against pairs read from the shard files."""
    fr = read_frames(shards)
    out = []
    for tid in np.unique(fr["traj_id"]):
        sel = fr["traj_id"] == tid
        cg, aa = fr["cg_xyz_nm"][sel].astype(np.float64), fr["aa_xyz_nm"][sel].astype(np.float64)
        c = cg[1:].mean(1, keepdims=True)  # CG(t) centroid, t >= 1 (lag 1)
        cg_c, prev_c = cg[1:] - c, aa[:-1] - c
        for i in range(len(bank.bank_cg)):
            d = np.abs(cg_c - bank.bank_cg[i]).max(axis=(1, 2))
            j = int(d.argmin())
            if d[j] < 1e-5:
                np.testing.assert_allclose(bank.bank_aa_prev[i], prev_c[j], atol=1e-5)  # AA(t-1) of the same pair
                out.append((str(tid), j + 1))
    return out


def test_seed_bank_samples_every_training_trajectory_deterministically(stack, adp_shards, tmp_path):
    """Both ADP trajectories train (fractions 1/0/0): the bank draws from both and from their whole length."""
    sets = ["data.fractions=[1.0, 0.0, 0.0]", "training.max_steps=2", "training.bank_size=16"]
    a = fit_detailed(smoke(adp_shards, tmp_path / "a", *sets)).backmapper
    src = _bank_sources(adp_shards, a)
    n_pairs = Manifest.load(adp_shards).n_frames - Manifest.load(adp_shards).n_trajectories
    assert len(src) == 16 and len(set(src)) == 16 and n_pairs > 16  # all rows are distinct training pairs
    assert len({t for t, _ in src}) == Manifest.load(adp_shards).n_trajectories == 2
    assert max(f for _, f in src) > 16  # not the first 16 pairs of a trajectory
    # same seed, different batch boundaries (model.batch_size 70: posterior batches of 70, not 64): the same bank
    b = fit_detailed(smoke(adp_shards, tmp_path / "b", *sets, "model.batch_size=70")).backmapper
    np.testing.assert_array_equal(b.bank_cg, a.bank_cg)
    np.testing.assert_array_equal(b.bank_aa_prev, a.bank_aa_prev)
    c = fit_detailed(smoke(adp_shards, tmp_path / "c", *sets, "training.seed=1")).backmapper
    assert sorted(_bank_sources(adp_shards, c)) != sorted(src)


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def trained_adp(stack, adp_shards, tmp_path_factory):
    """A smoke model trained in-process for 400 steps (about 10 s) on one ADP trajectory."""
    work = tmp_path_factory.mktemp("cvae-work")
    return fit_detailed(smoke(adp_shards, work, "training.max_steps=400", "training.log_every=100",
                              "training.eval_every=200", "training.checkpoint_every=200"))


def test_cli_backmap_writes_full_aa_trajectories_that_map_back(trained_adp, adp_shards, tmp_path):
    bm = trained_adp.backmapper
    cg = held_out_cg(adp_shards, 12)
    traj = md.Trajectory(cg.astype(np.float32), cg_topology(bm.mapping.bead_names))
    traj[0].save_pdb(str(tmp_path / "cg.pdb"))
    traj.save_dcd(str(tmp_path / "cg.dcd"))
    runner = CliRunner()
    args = ["backmap", "--model", str(trained_adp.model_folder), "--top", str(tmp_path / "cg.pdb"),
            "--traj", str(tmp_path / "cg.dcd"), "--seed", "0"]
    res = runner.invoke(cli_app(), args + ["--samples", "3", "--out", str(tmp_path / "aa.pdb")])
    assert res.exit_code == 0, res.output
    outs = [md.load(str(tmp_path / f"aa_{k}.pdb")) for k in range(3)]
    assert all(o.n_atoms == 22 and o.n_frames == 12 for o in outs)
    assert [a.name for a in outs[0].topology.atoms] == [a.name for a in bm.topology.atoms]
    mapped = np.stack([bm.mapping.map(o.xyz.astype(np.float64)) for o in outs])
    rmse = np.sqrt(((mapped - cg[None]) ** 2).sum(-1).mean())
    # Reference: every atom at its frame's bead centroid (no knowledge of the molecule).  A 400-step
    # smoke model is far from the ~0.03 nm collapse bound of the Table 1 grid; it must beat the
    # reference by a quarter (measured: ~0.11 vs ~0.18 nm).
    trivial = np.sqrt(((cg - cg.mean(1, keepdims=True)) ** 2).sum(-1).mean())
    assert rmse < 0.75 * trivial, (rmse, trivial)
    assert not np.allclose(outs[0].xyz, outs[1].xyz)  # independent samples
    # --project-cg: exact CG consistency; PDB stores 1e-4 nm, so the bound is the rounding (5e-5 nm per axis)
    res = runner.invoke(cli_app(), args + ["--project-cg", "--out", str(tmp_path / "proj.pdb")])
    assert res.exit_code == 0, res.output
    proj = md.load(str(tmp_path / "proj.pdb"))
    assert np.abs(bm.mapping.map(proj.xyz.astype(np.float64)) - cg).max() < 1e-4


def test_cli_refuses_cg_that_does_not_fit_the_model(trained_adp, adp_shards, tmp_path):
    cg = held_out_cg(adp_shards, 3)
    runner = CliRunner()

    def run(names, xyz):
        t = md.Trajectory(xyz.astype(np.float32), cg_topology(names))
        t.save_pdb(str(tmp_path / "bad.pdb"))
        return runner.invoke(cli_app(), ["backmap", "--model", str(trained_adp.model_folder), "--top",
                                         str(tmp_path / "bad.pdb"), "--traj", str(tmp_path / "bad.pdb"),
                                         "--out", str(tmp_path / "never.pdb")])

    res = run(["C1", "N2", "CA2", "C2", "N3"], cg[:, :5])  # a backbone5 trajectory
    assert res.exit_code == 2
    msg = res.output.strip().splitlines()
    assert len(msg) == 1 and msg[0].startswith("error:")
    assert "5 beads (C1, N2, CA2, C2, N3)" in msg[0] and "'backbone6' has 6 (C1, N2, CA2, C2, N3, CB2)" in msg[0]
    res = run(["C1", "N2", "CA", "C2", "N3", "CB"], cg)  # right count, wrong names
    assert res.exit_code == 2
    assert "['C1', 'N2', 'CA', 'C2', 'N3', 'CB']" in res.output and "['C1', 'N2', 'CA2', 'C2', 'N3', 'CB2']" in res.output
    assert not (tmp_path / "never.pdb").exists()
    res = runner.invoke(cli_app(), ["train", str(CONFIGS / "adp_cvae_smoke.yaml"), "--set", "training.max_stepz=1"])
    assert res.exit_code == 2 and "training.max_stepz" in res.output


# ----------------------------------------------------------------------------- ablation
def test_frame_based_ablation_trains_and_backmaps_frames_independently(stack, adp_shards, tmp_path, trained_adp):
    r = fit_detailed(smoke(adp_shards, tmp_path, "model.frame_based=true", "training.max_steps=30",
                           "training.checkpoint_every=100"))
    bm = r.backmapper
    assert bm.config.frame_based and bm.bank_cg is None
    assert bm.model.condition_net[0][0].in_channels == 6  # VOX CG(t) only: no AA(t-1) channels
    saved = json.loads((r.model_folder / "backmapper.json").read_text())
    assert saved["config"]["cvae"]["frame_based"] is True
    cg = held_out_cg(adp_shards, 6)
    out1 = bm.backmap_xyz(cg[[0, 1]], n_samples=2, seed=5)
    out2 = bm.backmap_xyz(cg[[4, 1]], n_samples=2, seed=5)
    np.testing.assert_array_equal(out1[:, 1], out2[:, 1])  # frame 1 does not see frame 0
    # the temporal model does depend on the previous frame
    t1 = trained_adp.backmapper.backmap_xyz(cg[[0, 1]], n_samples=2, seed=5)
    t2 = trained_adp.backmapper.backmap_xyz(cg[[4, 1]], n_samples=2, seed=5)
    assert not np.allclose(t1[:, 1], t2[:, 1])


# ----------------------------------------------------------------------------- shipped configs
@pytest.mark.parametrize("name", ["adp_cvae", "chignolin_cvae", "adp_cvae_smoke", "chignolin_cvae_smoke"])
def test_every_shipped_config_trains_in_smoke_mode(name, stack, request, tmp_path):
    """Each YAML under trainables/configs, with max_steps 3 on tiny data of its system, in-process."""
    shards = request.getfixturevalue("chignolin_shards" if name.startswith("chignolin") else "adp_shards")
    sets = [f"data.shards={shards}", "training.max_steps=3", "training.num_workers=0", "training.use_gpu=false",
            "training.progress=false", f"training.work_dir={tmp_path}", "training.gmm_max_samples=64"]
    man = Manifest.load(shards)
    if name.endswith("_smoke"):  # exactly as a user runs it: the CLI, tracked in the real MLflow server
        res = CliRunner().invoke(cli_app(), ["train", str(CONFIGS / f"{name}.yaml")] + sum((["--set", s] for s in sets), []))
        assert res.exit_code == 0, res.output
        lines = dict(line.split(": ", 1) for line in res.output.splitlines() if ": " in line)
        assert lines["model uri"].startswith("runs:/") and len(lines["run id"]) == 32
        from finegrain.trainables.persistence import load_backmapper_from_uri

        bm = load_backmapper_from_uri(lines["model uri"], Tracker(stack.mlflow_uri))
    else:  # Table 1 architecture and grid; a batch of 4 keeps CPU time to seconds
        cfg = TrainConfig.from_yaml(CONFIGS / f"{name}.yaml", sets + ["model.batch_size=4", "tracking.enabled=false"])
        assert cfg.cvae().n_grid == 12 and cfg.cvae().grid_width in (1.8, 5.5)
        bm = fit_detailed(cfg).backmapper
    assert bm.model.n_atoms == man.n_atoms and bm.mapping.n_beads == man.n_beads
    assert bm.info["step"] == 3 and bm.gmm is not None
    cg = read_frames(shards)["cg_xyz_nm"][:2].astype(np.float64)
    out = bm.backmap_xyz(cg, n_samples=2, seed=0)
    assert out.shape == (2, 2, man.n_atoms, 3) and np.isfinite(out).all()
    # un-centred onto each CG frame: moving the CG input by 10 nm moves every reconstruction by 10 nm
    shift = np.array([10.0, -3.0, 0.5])
    # (float32 model: the AA(t-1) hand-over between frames rounds at ~1e-7 nm)
    np.testing.assert_allclose(bm.backmap_xyz(cg + shift, n_samples=2, seed=0) - out, np.broadcast_to(shift, out.shape),
                               atol=1e-5)


def test_many_trajectories_advance_together_and_each_follows_its_own_cg(trained_adp, adp_shards):
    """backmap_trajectories (Serve's batching path): M chains at once; moving one CG trajectory moves only its chains."""
    bm = trained_adp.backmapper
    cg = held_out_cg(adp_shards, 8)
    two = np.stack([cg[:4], cg[4:8]])
    out = bm.backmap_trajectories(two, n_samples=2, seed=11)
    assert out.shape == (2, 2, 4, bm.mapping.n_atoms, 3) and np.isfinite(out).all()
    shift = np.array([5.0, 0.0, -2.0])
    moved = bm.backmap_trajectories(two + np.stack([np.zeros(3), shift])[:, None, None], n_samples=2, seed=11)
    np.testing.assert_allclose(moved[0], out[0], atol=1e-5)  # same draws, same CG: unchanged
    np.testing.assert_allclose(moved[1] - out[1], np.broadcast_to(shift, out[1].shape), atol=1e-5)


def test_gpu_recipes_are_the_table_1_models_with_gpu_settings():
    """adp/chignolin_cvae_gpu.yaml: the same model and schedule as the Table-1 configs; only how it runs differs."""
    for name in ("adp", "chignolin"):
        cpu = TrainConfig.from_yaml(CONFIGS / f"{name}_cvae.yaml")
        gpu = TrainConfig.from_yaml(CONFIGS / f"{name}_cvae_gpu.yaml")
        assert gpu.cvae() == cpu.cvae() and gpu.data == cpu.data
        assert (gpu.training.use_gpu, gpu.training.precision, gpu.training.compile) == (True, "bf16-mixed", True)
        assert cpu.training.precision == "32" and not cpu.training.compile
