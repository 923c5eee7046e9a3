"""HTTP serving throughput on loopback (run on demand: make bench).

The null-space baseline of ADP behind Ray Serve; N requests of one CG frame
each at concurrency C, sent by an aiohttp client in this process. Reported:
errors, p50/p99 latency, requests/s and frames/s, for Serve batching on
(max_batch_size 16) and off (1); batching at concurrency 1 (no load: nothing
to batch); 100 frames per request; and GET /healthz, the floor set by the
HTTP proxy and the replica without any model work.
Ratios are batched / unbatched in the same run. Bounded: at most N requests
and TIME_LIMIT_S seconds per configuration.
"""

import asyncio
import json
import time

import numpy as np
import pytest

from finegrain.platform.apps.serving import free_port, serve_model, shutdown
from finegrain.datasets.shards import read_frames
from finegrain.platform.services.stack import tracking_uri
from finegrain.platform.services.tracking import Tracker
from finegrain.trainables.baseline_fit import fit_baseline

pytestmark = pytest.mark.benchmark
N, C, TIME_LIMIT_S = 1000, 16, 120.0


async def _load(url: str, bodies: list[bytes | None], concurrency: int, deadline: float) -> dict:
    """Send ``bodies`` (POST JSON; None: GET) with ``concurrency`` workers; latencies, errors, frames/s."""
    import aiohttp

    latencies, errors, frames = [], 0, 0
    todo = iter(bodies)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as session:
        async def worker():
            nonlocal errors, frames
            for body in todo:
                if time.monotonic() > deadline:
                    return
                t0 = time.perf_counter()
                try:
                    send = session.get(url) if body is None else session.post(
                        url, data=body, headers={"Content-Type": "application/json"})
                    async with send as r:
                        payload = await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                if ok:
                    frames += len(json.loads(payload)["aa_nm"][0]) if body is not None else 0
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1e3
    return {"requests": len(latencies), "errors": errors, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "frames_per_s": frames / wall, "wall_s": wall}


def _run(url: str, bodies: list[bytes | None], concurrency: int) -> dict:
    asyncio.run(_load(url, bodies[:20], concurrency, time.monotonic() + 30))  # warm-up
    return asyncio.run(_load(url, bodies, concurrency, time.monotonic() + TIME_LIMIT_S))


def test_bench_serve_batching(stack, adp_shards):
    from mlflow import MlflowClient

    name = "bench-serve-adp"
    bm, _ = fit_baseline("nullspace", adp_shards, registered_model_name=name, tracker=Tracker(tracking_uri()))
    client = MlflowClient(stack.mlflow_uri)
    version = max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    client.set_registered_model_alias(name, "champion", str(version))
    cg = read_frames(adp_shards)["cg_xyz_nm"].astype(np.float64)
    one = [json.dumps({"cg_nm": cg[i % len(cg)][None].tolist()}).encode() for i in range(N)]
    hundred = [json.dumps({"cg_nm": np.roll(cg, i, 0)[:100].tolist()}).encode() for i in range(N // 10)]

    results, port, served_batch = {}, free_port(), None
    try:  # (label, max_batch_size, concurrency, route, bodies)
        for label, batch, conc, route, bodies in (
                ("unbatched", 1, C, "backmap", one), ("batched", 16, C, "backmap", one),
                ("batched, C=1", 16, 1, "backmap", one[: N // 4]), ("100 frames/req", 16, C, "backmap", hundred),
                ("GET /healthz", 16, C, "healthz", [None] * N)):
            if batch != served_batch:
                base = serve_model(f"models:/{name}@champion", port=port, max_batch_size=batch)
                served_batch = batch
            results[label] = _run(f"{base}/{route}", bodies, conc)
    finally:
        shutdown()

    print(f"\nServe loopback, null-space ADP model (22 atoms, 6 beads), C={C} unless noted, N={N}:")
    print(f"{'config':>16} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} {'frames/s':>9}")
    for label, r in results.items():
        print(f"{label:>16} {r['requests']:>8} {r['errors']:>6} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
              f"{r['requests'] / r['wall_s']:>7.1f} {r['frames_per_s']:>9.1f}")
    b, u = results["batched"], results["unbatched"]
    print(f"batched/unbatched at C={C}: throughput x{b['frames_per_s'] / u['frames_per_s']:.2f}, "
          f"p50 x{b['p50_ms'] / u['p50_ms']:.2f}, p99 x{b['p99_ms'] / u['p99_ms']:.2f}")
    print(f"batched C={C} / C=1 throughput: x{b['frames_per_s'] / results['batched, C=1']['frames_per_s']:.2f}")
    assert all(r["errors"] == 0 for r in results.values()), results
    assert all(r["requests"] > 0 for r in results.values())
