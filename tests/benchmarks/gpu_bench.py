"""GPU figures for the torch force field (issue 3) and the ADP cVAE (issue 4).

A plain script (not collected by pytest: the file name does not start with
``test_``) that needs only torch and numpy, so it runs on a GPU machine without
OpenMM, mdtraj, Ray or MLflow.  Inputs are made beforehand where OpenMM exists::

    # parameter files + OpenMM reference energies/forces + the backbone6 mapping
    python tests/benchmarks/gpu_bench.py --prepare out   # writes out/{adp,chignolin}_{params,ref}.npz

then, on the GPU machine::

    python tests/benchmarks/gpu_bench.py --params out/adp_params.npz out/chignolin_params.npz \
        --json $OUT/gpu_bench.json

``--device cpu --quick`` is a smoke run anywhere.  If ``finegrain`` is not
installed the repository root is linked into a temporary folder as the package
``finegrain`` (pyproject maps finegrain -> .).

Measured, each with a baseline taken in the same run:

* energies: ``TorchForceField`` U + F (forward + autograd.grad) frames/s for
  B = 1 .. 8192 (65536 for ADP), float32/float64, on the GPU and on the
  machine's CPU (all threads); float32 with ``compile=True``; U-only
  (no_grad) on the GPU; peak GPU memory;
  GPU vs CPU float64 and vs OpenMM reference energies/forces;
* cVAE (Table 1 ADP model): one full training step (prepare_triplet centre +
  rotation, forward, eq. 3 via step_loss with L_ENERGY off, backward, Adam)
  samples/s at batch 32/256/1024, forward-only baseline, CPU baseline;
  inference frames/s through ``CVAEBackmapper.backmap_batch`` (GMM latent,
  numpy in/out; seeded from a 1024-frame bank, and with AA(-1) given, which
  skips the host-side Kabsch search) for 1 and 1000 (and 4096) parallel chains, plus the
  model-level path (``CVAE.backmap_step`` on device tensors, autoregressive,
  no numpy); peak GPU memory; GPU vs CPU (float32 and float64) forward, loss
  and gradients with cuDNN TF32 on (torch default) and off.

Timings: per call, synchronised, after warm-up; best and median of repeats.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch


# --------------------------------------------------------------------------- import finegrain
def _import_finegrain() -> None:
    try:
        import finegrain  # noqa: F401
    except ImportError:
        root = Path(__file__).resolve().parents[2]
        tmp = Path(tempfile.mkdtemp(prefix="fg_pkg_"))
        (tmp / "finegrain").symlink_to(root, target_is_directory=True)
        sys.path.insert(0, str(tmp))
        import finegrain  # noqa: F401


# --------------------------------------------------------------------------- inputs (needs OpenMM/mdtraj)
def prepare(folder: str, systems=("adp", "chignolin")) -> None:
    """Write <name>_params.npz (save_parameters) and <name>_ref.npz (reference structure, 4 perturbed
    frames with OpenMM Reference energies/forces; ADP also the backbone6 mapping as JSON) into folder."""
    from finegrain.datasets.systems import get_system
    from finegrain.platform.science.energies import TorchForceField, openmm_energies_forces

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name in systems:
        ref = get_system(name)
        system = ref.create_system(constraints=None)
        path = TorchForceField.from_system(system).save_parameters(out / f"{name}_params.npz")
        frames = ref.positions_nm[None] + np.random.default_rng(0).normal(0.0, 0.01, (4, ref.n_atoms, 3))
        e, f = openmm_energies_forces(system, frames)
        extra = dict(positions_nm=np.asarray(ref.positions_nm, np.float64), ref_frames=frames,
                     ref_energies=np.asarray(e), ref_forces=np.asarray(f))
        if name == "adp":
            extra["mapping_json"] = np.array(json.dumps(ref.mapping("backbone6").to_dict()))
        np.savez(out / f"{name}_ref.npz", **extra)
        print(f"{name}: {path}, {out / f'{name}_ref.npz'}")


# --------------------------------------------------------------------------- timing helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device, *, min_time=0.5, min_reps=5, max_reps=500, warmup=3, max_time=None):
    """(best, median, reps) seconds per synchronised call of fn()."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_time):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
        if max_time is not None and time.perf_counter() - start > max_time and len(times) >= 2:
            break
    return min(times), float(np.median(times)), len(times)


def _reset_mem(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device):
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _kernel_stats(fn, device) -> dict:
    """CUDA kernels launched and summed kernel time (ms) of one call of fn(), via torch.profiler."""
    if device.type != "cuda":
        return {}
    try:
        from torch.profiler import ProfilerActivity, profile

        fn()
        _sync(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t = time.perf_counter()
            fn()
            _sync(device)
            wall = time.perf_counter() - t
        n, us = 0, 0.0
        for e in prof.events():
            if getattr(e, "device_type", None) is not None and str(e.device_type).endswith("CUDA"):
                n += 1
                us += getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0) or 0.0
        return {"kernels": n, "kernel_ms": us / 1e3, "wall_ms_profiled": wall * 1e3}
    except Exception as exc:  # profiler quirks must not stop the run
        return {"profile_error": repr(exc)[:200]}


# --------------------------------------------------------------------------- energies
def _energy_step(model, x):
    def run():
        p = x.clone().requires_grad_(True)
        u = model(p)
        (g,) = torch.autograd.grad(u.sum(), p)
        return u, -g

    return run


def bench_energies(args, device, rows: list, checks: list, log) -> None:
    from finegrain.platform.science.energies import TorchForceField, load_parameters

    cpu = torch.device("cpu")
    for path in args.params:
        path = Path(path)
        name = path.name.removesuffix(".npz").removesuffix("_params")
        params = load_parameters(path)
        n_atoms = int(params["n_atoms"])
        ref_path = path.with_name(path.name.replace("_params", "_ref"))
        ref = dict(np.load(ref_path)) if ref_path.is_file() else None
        x0 = ref["positions_nm"] if ref is not None else None
        if x0 is None:  # no reference structure: a random compact cloud (timing only)
            x0 = np.random.default_rng(1).normal(0.0, 0.5, (n_atoms, 3))
        models = {
            (dev.type, dt): TorchForceField(params, dtype=dt, device=dev)
            for dev in {cpu, device}
            for dt in (torch.float32, torch.float64)
        }
        log(f"[energies] {name}: {models[(cpu.type, torch.float64)]}")

        # ---- correctness on this machine: device vs CPU float64 (and vs OpenMM when the ref file has it)
        frames = x0[None] + np.random.default_rng(0).normal(0.0, 0.01, (64, n_atoms, 3))
        x_cpu = torch.tensor(frames, dtype=torch.float64)
        u_ref, f_ref = _energy_step(models[("cpu", torch.float64)], x_cpu)()
        for dt in (torch.float64, torch.float32):
            u, f = _energy_step(models[(device.type, dt)], x_cpu.to(device, dt))()
            du = ((u.double().cpu() - u_ref).abs() / u_ref.abs()).max().item()
            df = (f.double().cpu() - f_ref).abs().max().item()
            checks.append(dict(what=f"energies {name} {device.type} {str(dt)[6:]} vs CPU float64 (64 frames)",
                               max_rel_U=du, max_abs_F=df, F_scale=f_ref.abs().max().item()))
        if ref is not None and "ref_energies" in ref:
            u, f = _energy_step(models[(device.type, torch.float64)],
                                torch.tensor(ref["ref_frames"], dtype=torch.float64, device=device))()
            e_omm, f_omm = torch.tensor(ref["ref_energies"]), torch.tensor(ref["ref_forces"])
            checks.append(dict(what=f"energies {name} {device.type} float64 vs OpenMM (4 frames)",
                               max_rel_U=((u.cpu() - e_omm).abs() / e_omm.abs()).max().item(),
                               max_abs_F=(f.cpu() - f_omm).abs().max().item(), F_scale=f_omm.abs().max().item()))

        # ---- timings
        batches = [b for b in args.batches if not (name != "adp" and b > 8192)]
        for batch in batches:
            frames = x0[None] + np.random.default_rng(batch).normal(0.0, 0.01, (batch, n_atoms, 3))
            for dt in (torch.float32, torch.float64):
                targets = [device] + ([cpu] if device.type == "cuda" and batch <= args.cpu_max_batch else [])
                for dev in targets:
                    model = models[(dev.type, dt)]
                    x = torch.tensor(frames, dtype=dt, device=dev)
                    row = dict(section="energies", system=name, B=batch, dtype=str(dt)[6:], device=dev.type)
                    try:
                        _reset_mem(dev)
                        best, med, reps = timeit(_energy_step(model, x), dev, min_time=args.min_time,
                                                 max_time=4 * args.min_time + 2)
                        row.update(method="U+F", fps=batch / best, fps_median=batch / med, ms=best * 1e3,
                                   reps=reps, peak_mib=_peak_mib(dev))
                        rows.append(row)
                        if dev.type == "cuda" and dt == torch.float32:  # U only, no_grad
                            with torch.no_grad():
                                b2, m2, r2 = timeit(lambda: model(x), dev, min_time=args.min_time / 2)
                            rows.append({**row, "method": "U only", "fps": batch / b2, "fps_median": batch / m2,
                                         "ms": b2 * 1e3, "reps": r2, "peak_mib": float("nan")})
                    except RuntimeError as exc:
                        if not _is_oom(exc):
                            raise
                        rows.append({**row, "method": "U+F", "fps": float("nan"), "error": "OOM"})
                        torch.cuda.empty_cache()
                    log(f"  {name} B={batch} {str(dt)[6:]} {dev.type}: U+F {row.get('fps', float('nan')):.0f} frames/s, "
                        f"{row.get('ms', float('nan')):.3f} ms/call, peak {row.get('peak_mib', float('nan')):.0f} MiB")
            if args.compile:  # float32 through torch.compile (triton on CUDA); compile time excluded
                row = dict(section="energies", system=name, B=batch, dtype="float32", device=device.type,
                           method="U+F compiled")
                try:
                    model = models.setdefault("compiled", TorchForceField(params, dtype=torch.float32, device=device,
                                                                          compile=True))
                    x, t_first = torch.tensor(frames, dtype=torch.float32, device=device), time.perf_counter()
                    _energy_step(model, x)()
                    _sync(device)
                    first = time.perf_counter() - t_first
                    best, med, reps = timeit(_energy_step(model, x), device, min_time=args.min_time,
                                             max_time=4 * args.min_time + 2)
                    row.update(fps=batch / best, fps_median=batch / med, ms=best * 1e3, reps=reps, first_call_s=first)
                except Exception as exc:  # no triton, OOM, ...: record it, keep benchmarking
                    row.update(fps=float("nan"), error=f"{type(exc).__name__}: {str(exc)[:200]}")
                rows.append(row)
                log(f"  {name} B={batch} float32 {device.type} compiled: U+F {row['fps']:.0f} frames/s"
                    + (f" ({row['error']})" if "error" in row else ""))
            if device.type == "cuda" and batch in (1, 1024):
                x = torch.tensor(frames, dtype=torch.float32, device=device)
                st = _kernel_stats(_energy_step(models[(device.type, torch.float32)], x), device)
                rows.append(dict(section="energies-profile", system=name, B=batch, dtype="float32", **st))


# --------------------------------------------------------------------------- cVAE
def _adp_inputs(args):
    """ADP reference positions [22, 3] nm and the backbone6 CGMapping, from out/adp_ref.npz."""
    from finegrain.platform.science.mapping import CGMapping

    ref_path = Path(args.cvae_ref)
    data = np.load(ref_path)
    mapping = CGMapping.from_dict(json.loads(str(data["mapping_json"])))
    return np.asarray(data["positions_nm"], np.float64), mapping


def _triplets(x0, mapping, batch, seed, device, dtype=torch.float32):
    rng = np.random.default_rng(seed)
    aa = torch.tensor(x0[None] + 0.02 * rng.normal(size=(batch,) + x0.shape), dtype=dtype)
    prev = aa + 0.01 * torch.randn(aa.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    m = torch.tensor(mapping.matrix, dtype=dtype)
    cg = torch.einsum("bi,fic->fbc", m, aa)
    return aa.to(device), prev.to(device), cg.to(device), m.to(device)


def _det_loss(model, aa, cg, prev, m):
    """Eq. 3 (lambda = 0, beta = 1) with z = mu: a deterministic forward for CPU/GPU comparisons."""
    from finegrain.trainables.cvae.losses import total_loss
    from finegrain.trainables.cvae.train import prepare_triplet

    p, c, a = prepare_triplet(prev, cg, aa, None)
    vt = model.voxelize(a)
    cond = model._condition(c, p)
    mu, lv = model._encode_vox(vt, cond)
    vp = model._decode_vox(mu, cond)
    xyz = model.collapse(vp)
    loss, _ = total_loss(vp, vt, xyz, a, c, m, mu, lv, lam=0.0, beta=1.0)
    return loss, vp, xyz, mu


def cvae_checks(args, device, checks: list, log) -> None:
    from finegrain.trainables.cvae import CVAE, CVAEConfig

    x0, mapping = _adp_inputs(args)
    cfg = CVAEConfig.adp()
    torch.manual_seed(0)
    base = CVAE(cfg, len(x0), mapping.n_beads)
    ref = copy.deepcopy(base).double()
    aa, prev, cg, m = _triplets(x0, mapping, 16, 5, "cpu", torch.float64)
    loss_r, vp_r, xyz_r, mu_r = _det_loss(ref, aa, cg, prev, m)
    loss_r.backward()
    g_r = torch.cat([p.grad.flatten() for p in ref.parameters()])
    variants = [("cpu", torch.float32, None)]
    if device.type == "cuda":
        variants += [("cuda", torch.float32, True), ("cuda", torch.float32, False), ("cuda", torch.float64, None)]
    for dev, dt, tf32 in variants:
        old = torch.backends.cudnn.allow_tf32
        if tf32 is not None:
            torch.backends.cudnn.allow_tf32 = tf32
        try:
            mod = copy.deepcopy(base).to(dev, dt)
            args_ = [t.to(dev, dt) for t in (aa, cg, prev, m)]
            loss, vp, xyz, mu = _det_loss(mod, *args_)
            loss.backward()
            g = torch.cat([p.grad.flatten() for p in mod.parameters()])
            label = f"cVAE {dev} {str(dt)[6:]}" + ("" if tf32 is None else f" cudnn.allow_tf32={tf32}")
            checks.append(dict(what=f"{label} vs CPU float64 (batch 16, z=mu)", rel_mu=_rel(mu, mu_r),
                               rel_vox=_rel(vp, vp_r), max_abs_xyz_nm=(xyz.double().cpu() - xyz_r).abs().max().item(),
                               rel_loss=abs(loss.item() - loss_r.item()) / abs(loss_r.item()), rel_grad=_rel(g, g_r)))
        finally:
            torch.backends.cudnn.allow_tf32 = old
    log("[cvae] numerical checks done")


def bench_cvae_training(args, device, rows: list, log) -> None:
    from finegrain.trainables.cvae import CVAE, CVAEConfig
    from finegrain.trainables.cvae.train import prepare_triplet, step_loss

    x0, mapping = _adp_inputs(args)
    cfg = CVAEConfig.adp()
    targets = [(device, b, False) for b in args.train_batches]
    if device.type == "cuda":
        targets += [(device, b, True) for b in args.train_batches if b <= 256]  # cudnn.benchmark variant
        targets += [(torch.device("cpu"), args.train_batches[0], False)]
    for dev, batch, cudnn_bench in targets:
        torch.backends.cudnn.benchmark = cudnn_bench
        torch.manual_seed(0)
        model = CVAE(cfg, len(x0), mapping.n_beads).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
        aa, prev, cg, m = _triplets(x0, mapping, batch, 0, dev)
        gen_cpu = torch.Generator().manual_seed(2)  # rotations are drawn on the CPU (voxels.random_rotations)
        gen_dev = torch.Generator(device=dev).manual_seed(3)  # eps of the reparameterisation, on the model's device

        def train_step():
            p, c, a = prepare_triplet(prev, cg, aa, gen_cpu)
            loss, _ = step_loss(model, p, c, a, 0, m, generator=gen_dev)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def forward_only():
            with torch.no_grad():
                model(aa, cg, prev, generator=gen_dev)

        row = dict(section="cvae-train", device=dev.type, B=batch, cudnn_benchmark=cudnn_bench)
        try:
            _reset_mem(dev)
            best, med, reps = timeit(train_step, dev, min_time=args.min_time, max_time=6 * args.min_time + 3)
            peak = _peak_mib(dev)
            fb, fm, fr = timeit(forward_only, dev, min_time=args.min_time / 2, max_time=3 * args.min_time + 2)
            row.update(sps=batch / best, sps_median=batch / med, ms=best * 1e3, reps=reps, peak_mib=peak,
                       fwd_sps=batch / fb, fwd_ms=fb * 1e3)
            if dev.type == "cuda" and not cudnn_bench and batch in (args.train_batches[0],):
                row["profile"] = _kernel_stats(train_step, dev)
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
            row.update(sps=float("nan"), error="OOM")
            torch.cuda.empty_cache()
        rows.append(row)
        log(f"[cvae train] {dev.type} B={batch} cudnn.benchmark={cudnn_bench}: {row.get('sps', float('nan')):.1f} samples/s "
            f"(fwd only {row.get('fwd_sps', float('nan')):.1f}), peak {row.get('peak_mib', float('nan')):.0f} MiB")
        del model, opt
    torch.backends.cudnn.benchmark = False


def _flops(args, device) -> dict:
    """FLOPs per sample of a training step (fwd+bwd) and of one decoder step, from torch's FlopCounterMode."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        from finegrain.trainables.cvae import CVAE, CVAEConfig
        from finegrain.trainables.cvae.train import prepare_triplet, step_loss

        x0, mapping = _adp_inputs(args)
        model = CVAE(CVAEConfig.adp(), len(x0), mapping.n_beads).to(device)
        aa, prev, cg, m = _triplets(x0, mapping, 4, 0, device)
        with FlopCounterMode(display=False) as fc:
            p, c, a = prepare_triplet(prev, cg, aa, torch.Generator().manual_seed(0))
            loss, _ = step_loss(model, p, c, a, 0, m, generator=torch.Generator(device=device).manual_seed(0))
            loss.backward()
        train = fc.get_total_flops() / 4
        z = torch.randn(4, model.config.d_latent, device=device)
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model.backmap_step(z, cg, prev)
        return {"train_flop_per_sample": train, "decode_flop_per_frame": fc.get_total_flops() / 4}
    except Exception as exc:
        return {"flops_error": repr(exc)[:200]}


def bench_cvae_inference(args, device, rows: list, log) -> None:
    from finegrain.trainables.cvae import CVAE, CVAEConfig
    from finegrain.trainables.cvae.backmapper import CVAEBackmapper, GaussianMixtureSampler

    x0, mapping = _adp_inputs(args)
    cfg = CVAEConfig.adp()
    rng = np.random.default_rng(0)
    n_bank = 1024  # TrainConfig.bank_size default
    aa_np = x0[None] + 0.02 * rng.normal(size=(n_bank,) + x0.shape)
    cg_bank = mapping.map(aa_np)
    c_bank = cg_bank.mean(1, keepdims=True)
    k, d = cfg.n_gmm_components, cfg.d_latent
    gmm = GaussianMixtureSampler(np.full(k, 1.0 / k), rng.normal(size=(k, d)), np.tile(0.5 * np.eye(d), (k, 1, 1)))
    topology = types.SimpleNamespace(n_atoms=len(x0))  # Backmapper only reads n_atoms (no mdtraj here)
    traj_aa = x0[None] + 0.02 * rng.normal(size=(64,) + x0.shape)
    traj = mapping.map(traj_aa) + 0.3  # off-centre CG trajectory, 64 frames
    cases = [(device, chains, t) for chains, t in args.infer_cases]
    if device.type == "cuda":
        cases += [(torch.device("cpu"), chains, t) for chains, t in args.cpu_infer_cases]
    for dev, chains, t_len in cases:
        torch.manual_seed(0)
        model = CVAE(cfg, len(x0), mapping.n_beads)
        bm = CVAEBackmapper(topology, mapping, model, gmm, cg_bank - c_bank, aa_np + 0.01 - c_bank, device=dev)
        cg_in = np.ascontiguousarray(np.broadcast_to(traj[:t_len], (chains, t_len) + traj.shape[1:]))
        # AA(-1) given: the same start frame for every chain (skips the host-side seed-bank search)
        prev_given = aa_np[:1] - c_bank[:1] + cg_in[:, 0].mean(1, keepdims=True)  # [M, N, 3]
        for path, kw in (("backmap_batch", {}), ("backmap_batch+prev", {"prev_aa_xyz": prev_given})):
            if dev != device and path != "backmap_batch":  # CPU baseline of a GPU run: seeded path only
                continue
            row = dict(section="cvae-infer", device=dev.type, chains=chains, T=t_len, path=path)
            try:
                _reset_mem(dev)
                best, med, reps = timeit(lambda: bm.backmap_batch(cg_in, n_samples=1, seed=0, **kw), dev,
                                         min_time=args.min_time, min_reps=3, warmup=1, max_time=4 * args.min_time + 4)
                row.update(fps=chains * t_len / best, fps_median=chains * t_len / med,
                           s_per_call=best, reps=reps, peak_mib=_peak_mib(dev))
                out = bm.backmap_batch(cg_in[:, :2], n_samples=1, seed=0, **kw)
                row["finite"] = bool(np.isfinite(out).all())
            except RuntimeError as exc:
                if not _is_oom(exc):
                    raise
                row.update(fps=float("nan"), error="OOM")
            rows.append(row)
            log(f"[cvae infer] {dev.type} {path} {chains} chains x {t_len} frames: {row.get('fps', float('nan')):.1f} "
                f"frames/s, peak {row.get('peak_mib', float('nan')):.0f} MiB")

        # model level: the same autoregressive loop on device tensors (no numpy, no GMM on the host)
        if dev.type == "cuda":
            mdl = bm.model
            cg_t = torch.tensor(cg_in[:, 0] - cg_in[:, 0].mean(1, keepdims=True), dtype=torch.float32, device=dev)
            prev0 = torch.tensor(np.repeat(aa_np[:1] - c_bank[:1], chains, 0), dtype=torch.float32, device=dev)

            def loop():
                with torch.inference_mode():
                    prev = prev0
                    for _ in range(t_len):
                        z = torch.randn(chains, d, device=dev)
                        prev = mdl.backmap_step(z, cg_t, prev)
                    return prev

            _reset_mem(dev)
            best, med, reps = timeit(loop, dev, min_time=args.min_time, min_reps=3, warmup=1)
            rows.append(dict(section="cvae-infer", device=dev.type, chains=chains, T=t_len, path="model.backmap_step",
                             fps=chains * t_len / best, fps_median=chains * t_len / med, s_per_call=best, reps=reps,
                             peak_mib=_peak_mib(dev)))
            log(f"[cvae infer] cuda model.backmap_step {chains} x {t_len}: {rows[-1]['fps']:.1f} frames/s")
        del bm, model


# --------------------------------------------------------------------------- report
def _fmt(v, spec=".0f"):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def report(rows, checks, meta, log) -> None:
    log("\n==== environment")
    for k, v in meta.items():
        log(f"{k}: {v}")
    log("\n==== numerical checks")
    for c in checks:
        log("  " + c["what"] + ": " + ", ".join(f"{k}={v:.2e}" for k, v in c.items() if k != "what"))

    en = [r for r in rows if r["section"] == "energies"]
    if en:
        log("\n==== energies: U + F (forward + autograd.grad) frames/s (best; median); x = vs same-run baseline")
        log(f"{'system':10s}{'B':>7s} {'dtype':8s}{'method':14s}{'dev':6s}{'frames/s':>12s}{'median':>12s}"
            f"{'ms/call':>10s}{'peak MiB':>10s}{'x CPU':>8s}{'x B=1':>9s}")
        for r in en:
            cpu = next((c for c in en if c["device"] == "cpu" and c["system"] == r["system"] and c["B"] == r["B"]
                        and c["dtype"] == r["dtype"] and c["method"] == "U+F"), None)
            b1 = next((c for c in en if c["device"] == r["device"] and c["system"] == r["system"] and c["B"] == 1
                       and c["dtype"] == r["dtype"] and c["method"] == r["method"]), None)
            x_cpu = r["fps"] / cpu["fps"] if cpu and r["device"] != "cpu" and r["method"] == "U+F" else None
            x_b1 = r["fps"] / b1["fps"] if b1 else None
            log(f"{r['system']:10s}{r['B']:>7d} {r['dtype']:8s}{r['method']:14s}{r['device']:6s}{_fmt(r.get('fps')):>12s}"
                f"{_fmt(r.get('fps_median')):>12s}{_fmt(r.get('ms'), '.3f'):>10s}{_fmt(r.get('peak_mib')):>10s}"
                f"{_fmt(x_cpu, '.1f'):>8s}{_fmt(x_b1, '.1f'):>9s}{'  ' + r['error'] if 'error' in r else ''}")
        for r in rows:
            if r["section"] == "energies-profile":
                log(f"  profile {r['system']} B={r['B']} f32 U+F: " + ", ".join(f"{k}={v}" for k, v in r.items()
                                                                               if k not in ("section", "system", "B", "dtype")))
    tr = [r for r in rows if r["section"] == "cvae-train"]
    if tr:
        log("\n==== cVAE ADP Table 1: training step (prepare_triplet + fwd + eq.3 + bwd + Adam), samples/s")
        base = next((r for r in tr if r["device"] == "cpu"), None)
        log(f"{'dev':6s}{'B':>6s}{'cudnn.bm':>9s}{'samples/s':>11s}{'median':>10s}{'ms/step':>9s}{'fwd-only s/s':>13s}"
            f"{'train/fwd':>10s}{'peak MiB':>10s}{'x CPU B32':>10s}")
        for r in tr:
            log(f"{r['device']:6s}{r['B']:>6d}{str(r['cudnn_benchmark']):>9s}{_fmt(r.get('sps'), '.1f'):>11s}"
                f"{_fmt(r.get('sps_median'), '.1f'):>10s}{_fmt(r.get('ms'), '.1f'):>9s}{_fmt(r.get('fwd_sps'), '.1f'):>13s}"
                f"{_fmt(r.get('fwd_ms', 0) / r['ms'] if r.get('ms') else None, '.2f'):>10s}{_fmt(r.get('peak_mib')):>10s}"
                f"{_fmt(r['sps'] / base['sps'] if base and r.get('sps') else None, '.1f'):>10s}"
                f"{'  ' + r['error'] if 'error' in r else ''}")
            if "profile" in r:
                log("   profile (one step): " + ", ".join(f"{k}={v}" for k, v in r["profile"].items()))
    inf = [r for r in rows if r["section"] == "cvae-infer"]
    if inf:
        log("\n==== cVAE inference (decoder, autoregressive), frames/s summed over chains")
        dev_type = torch.device(meta["device"]).type
        base = next((r for r in inf if r["chains"] == 1 and r["path"] == "backmap_batch" and r["device"] == dev_type), None)
        log(f"{'dev':6s}{'path':22s}{'chains':>7s}{'T':>4s}{'frames/s':>11s}{'median':>10s}{'s/call':>8s}{'peak MiB':>10s}"
            f"{'x 1 chain':>10s}")
        for r in inf:
            log(f"{r['device']:6s}{r['path']:22s}{r['chains']:>7d}{r['T']:>4d}{_fmt(r.get('fps'), '.1f'):>11s}"
                f"{_fmt(r.get('fps_median'), '.1f'):>10s}{_fmt(r.get('s_per_call'), '.3f'):>8s}{_fmt(r.get('peak_mib')):>10s}"
                f"{_fmt(r['fps'] / base['fps'] if base and r.get('fps') else None, '.1f'):>10s}"
                f"{'  ' + r['error'] if 'error' in r else ''}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", nargs="*", default=["out/adp_params.npz"],
                    help="parameter files (save_parameters); <name>_ref.npz beside each adds checks")
    ap.add_argument("--cvae-ref", default=None, help="ADP ref file with positions_nm and mapping_json "
                                                     "(default: adp_ref.npz beside the first --params)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 64, 1024, 8192, 65536])
    ap.add_argument("--cpu-max-batch", type=int, default=1024, help="largest B timed on the CPU baseline")
    ap.add_argument("--train-batches", type=int, nargs="*", default=[32, 256, 1024])
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--skip", nargs="*", default=[], choices=["energies", "cvae"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test on a CPU)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the energies with TorchForceField(compile=True)")
    ap.add_argument("--json", default=None, help="write all rows and checks here")
    ap.add_argument("--prepare", metavar="FOLDER", default=None,
                    help="only write the input files into FOLDER (needs OpenMM and mdtraj), then exit")
    args = ap.parse_args(argv)
    if args.prepare:
        _import_finegrain()
        prepare(args.prepare)
        return 0
    args.infer_cases = [(1, 64), (1000, 16), (4096, 4)]
    args.cpu_infer_cases = [(1, 8), (100, 2)]
    if args.quick:
        args.batches, args.train_batches, args.min_time = [1, 64], [4], 0.1
        args.infer_cases, args.cpu_infer_cases = [(1, 2), (8, 2)], [(1, 2)]
    if args.cvae_ref is None:
        args.cvae_ref = str(Path(args.params[0]).with_name("adp_ref.npz"))
    _import_finegrain()
    device = torch.device(args.device)
    lines: list[str] = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    meta = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        meta.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    rows: list[dict] = []
    checks: list[dict] = []
    t0 = time.perf_counter()
    if "energies" not in args.skip:
        bench_energies(args, device, rows, checks, log)
        log(f"(energies: {time.perf_counter() - t0:.0f} s)")
    if "cvae" not in args.skip:
        t1 = time.perf_counter()
        cvae_checks(args, device, checks, log)
        meta.update(_flops(args, device))
        bench_cvae_training(args, device, rows, log)
        bench_cvae_inference(args, device, rows, log)
        log(f"(cvae: {time.perf_counter() - t1:.0f} s)")
    meta["total_s"] = round(time.perf_counter() - t0, 1)
    report(rows, checks, meta, log)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "checks": checks, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
