"""Energies + forces throughput: torch path vs OpenMM (run on demand: make bench).

Every method computes U and F = -dU/dx for B frames (perturbed by 0.01 nm):

- loop default / loop Reference : a plain per-frame OpenMM loop on one
  Context (setPositions + getState(getEnergy, getForces) + unit conversion).
  "default" is ``Context(system, integrator)`` with no platform named, i.e.
  what OpenMM picks as fastest (CPU here: the anchor's way); Reference is
  faster for these small systems, so "x loop(Ref)" is the conservative ratio.
- openmm path : OpenMMEnergy forward + backward (Context pool, auto platform);
- torch f64 / f32 : TorchForceField forward + autograd.grad, eager;
- torch f32 compiled : the same with ``compile=True`` (compile time excluded,
  printed separately), with all threads and with one thread (on a shared
  machine OpenMP threads wait for a busy core, so the two can swap places);
- torch f32 U only : forward under no_grad (energy distributions).

The process keeps freed memory (:func:`retain_freed_memory`, as the CLI and
the Ray Train workers do).  Timings are the best of repeats taken round-robin
over the methods, so a slow spell of the shared machine hits them all alike.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from finegrain.datasets.systems import get_system
from finegrain.platform.services.cpu_memory import retain_freed_memory
from finegrain.platform.science.energies import OpenMMEnergy, TorchForceField, openmm_energies_forces

pytestmark = pytest.mark.benchmark
CASES = [("adp", 1), ("adp", 64), ("adp", 1024), ("chignolin", 64)]
ROUNDS, SECONDS_PER_ROUND = 4, 0.25


def _loop(system, platform: str | None):
    import openmm as mm
    import openmm.unit as u

    integrator = mm.VerletIntegrator(0.001)
    if platform is None:
        ctx = mm.Context(system, integrator)
    else:
        ctx = mm.Context(system, integrator, mm.Platform.getPlatformByName(platform))
    kj = u.kilojoule_per_mole

    def run(frames):
        e, f = np.empty(len(frames)), np.empty(frames.shape)
        for k, x in enumerate(frames):
            ctx.setPositions(x)
            state = ctx.getState(getEnergy=True, getForces=True)
            e[k] = state.getPotentialEnergy().value_in_unit(kj)
            f[k] = state.getForces(asNumpy=True).value_in_unit(kj / u.nanometer)
        return e, f

    run.platform = ctx.getPlatform().getName()
    return run


def _torch_step(model, x, threads: int | None = None):
    def run():
        p = x.clone().requires_grad_(True)
        u = model(p)
        (g,) = torch.autograd.grad(u.sum(), p)
        return u, -g

    if threads is None:
        return run

    def run_with_threads():
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return run()
        finally:
            torch.set_num_threads(old)

    return run_with_threads


def _round_robin(methods: dict) -> dict[str, tuple[float, float]]:
    """(best, median) seconds per call of each fn, repeats interleaved over ROUNDS."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for fn in methods.values():
        fn()  # warm-up (compiles)
    for _ in range(ROUNDS):
        for name, fn in methods.items():
            start = time.perf_counter()
            while not times[name] or time.perf_counter() - start < SECONDS_PER_ROUND:
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return {name: (min(ts), float(np.median(ts))) for name, ts in times.items()}


def test_bench_energies():
    assert retain_freed_memory()
    rows, compile_s = [], {}
    systems = {}
    for name, batch in CASES:
        if name not in systems:
            ref = get_system(name)
            system = ref.create_system(constraints=None)
            compiled = TorchForceField.from_system(system, dtype=torch.float32, compile=True)
            systems[name] = (
                ref,
                system,
                {dt: TorchForceField.from_system(system, dtype=dt) for dt in (torch.float32, torch.float64)},
                compiled,
                OpenMMEnergy(system),
                _loop(system, None),
                _loop(system, "Reference"),
            )
        ref, system, models, compiled, omm, loop_default, loop_ref = systems[name]
        frames = ref.positions_nm[None] + np.random.default_rng(0).normal(0.0, 0.01, (batch, ref.n_atoms, 3))
        x64 = torch.tensor(frames)
        x32 = x64.float()

        # correctness guard: what is timed computes the right numbers
        e_ref, f_ref = openmm_energies_forces(system, frames[:4])
        u64, f64 = _torch_step(models[torch.float64], x64[:4])()
        np.testing.assert_allclose(u64.detach().numpy(), e_ref, rtol=1e-6, atol=1e-4)
        assert np.abs(f64.numpy() - f_ref).max() < 1e-3
        t0 = time.perf_counter()
        uc, fc = _torch_step(compiled, x32)()
        compile_s[(name, batch)] = time.perf_counter() - t0
        u32, f32 = _torch_step(models[torch.float32], x32)()
        torch.testing.assert_close(uc, u32, rtol=1e-4, atol=1e-2)
        assert (fc - f32).abs().max() <= 1e-4 * f32.abs().max() + 1e-2

        methods = {
            f"loop default ({loop_default.platform})": lambda: loop_default(frames),
            "loop Reference": lambda: loop_ref(frames),
            "openmm path": _torch_step(omm, x64),
            "torch f64": _torch_step(models[torch.float64], x64),
            "torch f32": _torch_step(models[torch.float32], x32),
            "torch f32 compiled": _torch_step(compiled, x32),
            "torch f32 compiled 1 thr": _torch_step(compiled, x32, threads=1),
        }
        methods["torch f32 U only"] = torch.no_grad()(lambda: models[torch.float32](x32))
        timings = _round_robin(methods)
        base_default = batch / next(t for k, t in timings.items() if k.startswith("loop default"))[0]
        base_ref = batch / timings["loop Reference"][0]
        for method, (best, median) in timings.items():
            fps = batch / best
            rows.append((name, batch, method, fps, batch / median, fps / base_default, fps / base_ref))

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; frames/s = energies + forces per second")
    head = (f"{'system':10s} {'B':>5s} {'method':26s} {'frames/s best':>14s} {'median':>10s} "
            f"{'x loop(default)':>16s} {'x loop(Ref)':>12s}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for name, batch, method, fps, fps_med, r_default, r_ref in rows:
        print(f"{name:10s} {batch:5d} {method:26s} {fps:14.0f} {fps_med:10.0f} {r_default:16.2f} {r_ref:12.2f}")
    print("first compiled call (compile + run), s: " + ", ".join(f"{n} B={b}: {s:.1f}" for (n, b), s in compile_s.items()))
    assert all(np.isfinite(r[3]) and r[3] > 0 for r in rows)
