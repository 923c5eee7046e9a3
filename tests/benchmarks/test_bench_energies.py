"""Energies + forces throughput: torch path vs OpenMM (run on demand: make bench).

Every method computes U and F = -dU/dx for B frames (ADP perturbed by 0.01 nm):

- torch f32 / f64 : TorchForceField forward + autograd.grad (CPU, all threads);
- torch f32 U only: forward under no_grad (energy distributions for evaluation);
- openmm path     : OpenMMEnergy forward + backward (Context pool, auto platform);
- loop Reference / loop CPU : a plain per-frame OpenMM loop on one Context
  (setPositions + getState(getEnergy, getForces) + unit conversion), the
  baseline the ratios are taken against (Reference is the faster of the two
  for these sizes, so "x loop(Ref)" is the conservative ratio).

Timings are the best of several repeats (the machine is shared; medians are
printed too).  Bounded to well under two minutes.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from finegrain.datasets.systems import get_system
from finegrain.platform.energies import OpenMMEnergy, TorchForceField, openmm_energies_forces

pytestmark = pytest.mark.benchmark
CASES = [("adp", 1), ("adp", 64), ("adp", 1024), ("chignolin", 64)]
MIN_SECONDS, MIN_REPEATS, MAX_REPEATS = 0.4, 3, 50


def _time(fn) -> tuple[float, float]:
    """(best, median) seconds per call of fn()."""
    fn()  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < MAX_REPEATS and (len(times) < MIN_REPEATS or time.perf_counter() - start < MIN_SECONDS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), float(np.median(times))


def _loop(system, platform):
    import openmm as mm
    import openmm.unit as u

    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName(platform))
    kj = u.kilojoule_per_mole

    def run(frames):
        e, f = np.empty(len(frames)), np.empty(frames.shape)
        for k, x in enumerate(frames):
            ctx.setPositions(x)
            state = ctx.getState(getEnergy=True, getForces=True)
            e[k] = state.getPotentialEnergy().value_in_unit(kj)
            f[k] = state.getForces(asNumpy=True).value_in_unit(kj / u.nanometer)
        return e, f

    return run


def _torch_step(model, x):
    def run():
        p = x.clone().requires_grad_(True)
        u = model(p)
        (g,) = torch.autograd.grad(u.sum(), p)
        return u, -g

    return run


def test_bench_energies():
    rows = []
    systems = {}
    for name, batch in CASES:
        if name not in systems:
            ref = get_system(name)
            system = ref.create_system(constraints=None)
            systems[name] = (
                ref,
                system,
                {dt: TorchForceField.from_system(system, dtype=dt) for dt in (torch.float32, torch.float64)},
                OpenMMEnergy(system),
                _loop(system, "Reference"),
                _loop(system, "CPU"),
            )
        ref, system, models, omm, loop_ref, loop_cpu = systems[name]
        frames = ref.positions_nm[None] + np.random.default_rng(0).normal(0.0, 0.01, (batch, ref.n_atoms, 3))
        x64 = torch.tensor(frames)

        # correctness guard: what is timed computes the right numbers
        e_ref, f_ref = openmm_energies_forces(system, frames[:4])
        u64, f64 = _torch_step(models[torch.float64], x64[:4])()
        np.testing.assert_allclose(u64.detach().numpy(), e_ref, rtol=1e-6, atol=1e-4)
        assert np.abs(f64.numpy() - f_ref).max() < 1e-3

        timings = {
            "loop Reference": _time(lambda: loop_ref(frames)),
            "loop CPU": _time(lambda: loop_cpu(frames)),
            "openmm path": _time(_torch_step(omm, x64)),
            "torch f64": _time(_torch_step(models[torch.float64], x64)),
            "torch f32": _time(_torch_step(models[torch.float32], x64.float())),
        }
        with torch.no_grad():
            timings["torch f32 U only"] = _time(lambda: models[torch.float32](x64.float()))
        base_ref = batch / timings["loop Reference"][0]
        base_cpu = batch / timings["loop CPU"][0]
        for method, (best, median) in timings.items():
            fps = batch / best
            rows.append((name, batch, method, fps, batch / median, fps / base_ref, fps / base_cpu))

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; frames/s = energies + forces per second")
    head = f"{'system':10s} {'B':>5s} {'method':18s} {'frames/s best':>14s} {'median':>10s} {'x loop(Ref)':>12s} {'x loop(CPU)':>12s}"
    print(head)
    print("-" * len(head))
    for name, batch, method, fps, fps_med, r_ref, r_cpu in rows:
        print(f"{name:10s} {batch:5d} {method:18s} {fps:14.0f} {fps_med:10.0f} {r_ref:12.2f} {r_cpu:12.2f}")
    assert all(np.isfinite(r[3]) and r[3] > 0 for r in rows)
