"""cVAE throughput on CPU with the ADP Table 1 model (run on demand: make bench).

Training: one full step (centre + random rotation, forward, eq. 3, backward,
Adam) on a batch of 32 ADP triplets, in samples/s; baseline measured in the
same run: a forward pass alone under no_grad (the ratio is what the backward
pass and optimiser cost).  L_ENERGY is off (lambda = 0 for the first 2e5
steps of Table 1), as in most of a run.

Inference: ``CVAEBackmapper.backmap_batch`` (decoder only, GMM latent,
autoregressive) on a CG trajectory, in frames/s summed over chains; baseline:
one chain, against 100 independent chains advanced as one batch.

Inputs are ADP frames (reference structure + 0.02 nm noise) mapped with
backbone6; weights are untrained (speed does not depend on them).  Timings are
the best of a few repeats (the machine may be shared).  Bounded to ~2 minutes.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from finegrain.datasets.systems import get_system
from finegrain.trainables.cvae import CVAE, CVAEConfig
from finegrain.trainables.cvae.backmapper import CVAEBackmapper, GaussianMixtureSampler
from finegrain.trainables.cvae.train import prepare_triplet, step_loss

pytestmark = pytest.mark.benchmark
BUDGET_S = 100.0


def _best(fn, repeats: int, deadline: float, warmup: int = 2) -> float:
    for _ in range(warmup):  # oneDNN picks and caches kernels on the first calls
        fn()
    times = []
    while len(times) < repeats and (not times or time.perf_counter() < deadline):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def test_bench_cvae_training_and_inference():
    start = time.perf_counter()
    ref = get_system("adp")
    mapping = ref.mapping("backbone6")
    cfg = CVAEConfig.adp()
    rng = np.random.default_rng(0)
    b = cfg.batch_size
    aa_np = ref.positions_nm[None] + 0.02 * rng.normal(size=(b, ref.n_atoms, 3))
    aa = torch.tensor(aa_np, dtype=torch.float32)
    prev = aa + 0.01 * torch.randn(aa.shape, generator=torch.Generator().manual_seed(1))
    m = torch.tensor(mapping.matrix, dtype=torch.float32)
    cg = torch.einsum("bi,fic->fbc", m, aa)
    torch.manual_seed(0)
    model = CVAE(cfg, ref.n_atoms, mapping.n_beads)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    gen = torch.Generator().manual_seed(2)

    def train_step():
        p, c, a = prepare_triplet(prev, cg, aa, gen)
        loss, _ = step_loss(model, p, c, a, 0, m, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward_only():
        with torch.no_grad():
            model(aa, cg, prev)

    t_train = _best(train_step, 5, start + 0.45 * BUDGET_S)
    t_fwd = _best(forward_only, 5, start + 0.55 * BUDGET_S)

    gmm = GaussianMixtureSampler.fit(rng.normal(size=(500, cfg.d_latent)), cfg.n_gmm_components, seed=0)
    cg_bank = mapping.map(aa_np)
    bm = CVAEBackmapper(ref.md_topology, mapping, model.eval(), gmm, cg_bank - cg_bank.mean(1, keepdims=True),
                        aa_np + 0.01 - cg_bank.mean(1, keepdims=True))
    traj = cg_bank[:8]
    rows = []
    for chains, frames in ((1, 8), (100, 3)):
        cg_in = np.broadcast_to(traj[:frames], (chains, frames) + traj.shape[1:])
        sec = _best(lambda: bm.backmap_batch(cg_in, n_samples=1, seed=0), 3, start + 0.95 * BUDGET_S, warmup=1)
        rows.append((chains, frames, chains * frames / sec))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\ncVAE, ADP Table 1 model ({n_params / 1e6:.2f}M parameters, d={cfg.n_grid}, batch {b}), "
          f"CPU threads {torch.get_num_threads()}")
    print(f"{'measurement':<44}{'rate':>14}{'ratio':>10}")
    print(f"{'training step (fwd+loss+bwd+Adam)':<44}{b / t_train:>10.1f} s/s{t_fwd / t_train:>9.2f}x")
    print(f"{'baseline: forward only, no_grad':<44}{b / t_fwd:>10.1f} s/s{1.0:>9.2f}x")
    base = rows[0][2]
    for chains, frames, fps in rows:
        label = f"inference, {chains} chain(s) x {frames} frames"
        print(f"{label:<44}{fps:>10.1f} f/s{fps / base:>9.2f}x")
    print(f"(s/s: samples per second; f/s: reconstructed frames per second; {time.perf_counter() - start:.0f} s)")
    assert t_train > 0 and rows[1][2] > 0
