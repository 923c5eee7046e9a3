"""GPU figures for the internal-coordinate family (``ic``): training throughput, held-out likelihood reached
per GPU-minute, sampling frames/s for 1000 chains, peak memory — with torch and numpy only.

A plain script (not collected by pytest). Inputs are made where mdtraj exists::

    python tests/benchmarks/gpu_bench_ic.py --prepare out --shards SHARDS --heldout HELDOUT_SHARDS
    # writes out/ic_adp.npz (Z-matrix, training and held-out frames, float32)

then on the GPU machine (no Ray, MLflow, OpenMM or mdtraj needed)::

    python tests/benchmarks/gpu_bench_ic.py --data out/ic_adp.npz --json $OUT/gpu_bench_ic.json

``--device cpu --quick`` is a smoke run anywhere. Measured, each beside a baseline from the same run:
training samples/s at batch 256 / 1024 / 4096 in float32 and with bfloat16 autocast (baseline: the
same on the machine's CPU); held-out NLL per frame after a fixed wall-clock budget at each batch size
(the data hold the zoo recipe's frames); sampling frames/s for 1 and 1000 chains x 1000 frames
(baseline: CPU); peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import _import_finegrain, _peak_mib, _reset_mem, _sync  # noqa: E402


def prepare(out: str, shards: str, heldout: str, max_frames: int = 40_000) -> None:
    import mdtraj as md

    from finegrain.platform.science.mapping import CGMapping
    from finegrain.datasets.shards import Manifest, read_frames
    from finegrain.trainables.ic import build_zmatrix

    man = Manifest.load(shards)
    zm = build_zmatrix(md.load_topology(str(Path(shards) / man.topology_pdb)), CGMapping.from_dict(man.mapping))
    tr, ho = read_frames(shards), read_frames(heldout)
    Path(out).mkdir(parents=True, exist_ok=True)
    np.savez_compressed(Path(out) / "ic_adp.npz", zmatrix=json.dumps(zm.to_dict()),
                        aa=tr["aa_xyz_nm"][:max_frames].astype(np.float32),
                        cg=tr["cg_xyz_nm"][:max_frames].astype(np.float32),
                        aa_heldout=ho["aa_xyz_nm"].astype(np.float32), cg_heldout=ho["cg_xyz_nm"].astype(np.float32))
    print(f"wrote {Path(out) / 'ic_adp.npz'}")


def _model(zm, aa, cg, device, hidden=256, layers=3):
    from finegrain.trainables.ic import ConditionalIC, ICConfig

    torch.manual_seed(0)
    m = ConditionalIC(ICConfig(hidden=hidden, layers=layers, weight_decay=0.01), zm)
    m.fit_statistics(aa[:5000], cg[:5000])
    return m.to(device)


def _train(m, aa, cg, batch, seconds, device, bf16):
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01)
    g = torch.Generator(device=device).manual_seed(0)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        idx = torch.randint(0, len(aa), (batch,), device=device, generator=g)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = m.loss(aa[idx], cg[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    _sync(device)
    return steps * batch / (time.perf_counter() - t0), steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepare")
    p.add_argument("--shards")
    p.add_argument("--heldout")
    p.add_argument("--data")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json")
    a = p.parse_args(argv)
    _import_finegrain()
    if a.prepare:
        prepare(a.prepare, a.shards, a.heldout)
        return 0
    from finegrain.trainables.ic.zmatrix import ZMatrix

    d = np.load(a.data)
    zm = ZMatrix.from_dict(json.loads(str(d["zmatrix"])))
    rows, budget = [], (3.0 if a.quick else 60.0)
    devices = [torch.device(a.device)] + ([torch.device("cpu")] if a.device != "cpu" else [])
    for device in devices:
        aa, cg = (torch.as_tensor(d[k], device=device) for k in ("aa", "cg"))
        ha, hc = (torch.as_tensor(d[k], device=device) for k in ("aa_heldout", "cg_heldout"))
        for batch in ((256,) if a.quick else (256, 1024, 4096)):
            for bf16 in (False, True):
                m = _model(zm, aa, cg, device)
                _reset_mem(device)
                sps, steps = _train(m, aa, cg, batch, budget if device.type != "cpu" else budget / 4, device, bf16)
                with torch.no_grad():
                    nll = float(-m.log_prob(ha, hc).mean())
                rows.append({"what": "train", "device": device.type, "batch": batch, "bf16": bf16,
                             "samples_per_s": sps, "steps": steps, "heldout_nll": nll, "peak_mib": _peak_mib(device)})
                print(rows[-1], flush=True)
        m = _model(zm, aa, cg, device)
        for chains in ((1, 100) if a.quick else (1, 1000)):
            frames = 1000 if not a.quick else 10
            y = hc[:frames].repeat(chains, 1, 1)
            m.sample(y[:8])  # warm-up
            _sync(device)
            t = time.perf_counter()
            m.sample(y)
            _sync(device)
            dt = time.perf_counter() - t
            rows.append({"what": "sample", "device": device.type, "chains": chains, "frames": frames,
                         "frames_per_s": len(y) / dt, "peak_mib": _peak_mib(device)})
            print(rows[-1], flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "torch": torch.__version__,
                                            "device_name": torch.cuda.get_device_name() if torch.cuda.is_available()
                                            else "cpu"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
