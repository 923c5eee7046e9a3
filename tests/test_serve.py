"""A real Ray Serve application on the test stack: the null-space baseline behind HTTP.

The baseline is exactly CG-consistent (x = C+ y + N eta), so every AA frame the
server returns must map back onto its input CG frame through the model's own
mapping matrix, up to the precision of the transport (JSON: 1e-6 nm; PDB:
1e-4 nm; XTC: 1e-3 nm).
"""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from pathlib import Path

import mdtraj as md
import numpy as np
import pytest
import requests
import yaml
from typer.testing import CliRunner

from finegrain.platform.services.tracking import Tracker
from finegrain.platform.apps.serving import ServeSettings, build_app, free_port, serve_model, shutdown
from finegrain.datasets.shards import Manifest, read_frames
from finegrain.trainables.baseline_fit import fit_baseline

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NAME = "serve-test-adp"
LIMITS = {"max_frames": 200, "max_bytes": 200_000, "max_samples": 8, "max_batch_size": 8}


@pytest.fixture(scope="module")
def versions(stack, adp_shards):
    """Two registered versions of the null-space baseline (both trajectories / one); champion -> v1."""
    from mlflow import MlflowClient

    models = [fit_baseline("nullspace", adp_shards, fractions=f, registered_model_name=NAME, tracker=Tracker(stack.mlflow_uri))[0]
              for f in ((0.8, 0.1, 0.1), (0.5, 0.5, 0.0))]
    client = MlflowClient(stack.mlflow_uri)
    latest = sorted(client.search_model_versions(f"name = '{NAME}'"), key=lambda v: int(v.version))[-2:]
    client.set_registered_model_alias(NAME, "champion", latest[0].version)
    client.set_model_version_tag(NAME, latest[0].version, "metric.val_loss", "0.5")  # as registry.py records it
    # An evaluation run of v1, as `finegrain evaluate` would tag it, for GET /model to report.
    exp = client.get_experiment_by_name("finegrain-evaluation") or client.get_experiment(
        client.create_experiment("finegrain-evaluation"))
    run = client.create_run(exp.experiment_id, tags={"model_run_id": latest[0].run_id, "evaluation": "in-distribution"})
    client.log_metric(run.info.run_id, "js_bonds", 0.125)
    client.set_terminated(run.info.run_id)
    return {"models": dict(zip((latest[0].version, latest[1].version), models)), "versions": latest,
            "client": client, "eval_run": run.info.run_id}


@pytest.fixture(scope="module")
def server(versions):
    base = serve_model(f"models:/{NAME}@champion", port=free_port(), reload=True, poll_s=1.0, **LIMITS)
    yield base
    shutdown()


@pytest.fixture(scope="module")
def cg(adp_shards) -> np.ndarray:
    return read_frames(adp_shards)["cg_xyz_nm"][:12].astype(np.float64)


def champion(versions):
    v = versions["client"].get_model_version_by_alias(NAME, "champion")
    return v, versions["models"][v.version]


def post(base, body, **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{base}/backmap", data=data, headers={"Content-Type": "application/json"}, timeout=60, **kw)


def test_json_backmap_maps_back_and_matches_the_model(server, versions, cg):
    v, bm = champion(versions)
    r = post(server, {"cg_nm": cg.tolist(), "samples": 3, "seed": 5})
    assert r.status_code == 200, r.text
    out = r.json()
    aa = np.asarray(out["aa_nm"])
    assert aa.shape == (3, 12, 22, 3)
    assert out["model"] == {"name": NAME, "version": v.version}
    assert out["atom_names"] == [a.name for a in bm.topology.atoms]
    assert out["residue_names"] == [a.residue.name for a in bm.topology.atoms]
    # independent reference: the mapping matrix applied to the returned atoms gives back the input beads
    assert np.abs(bm.mapping.map(aa) - cg[None]).max() < 2e-6
    # a seed gives the frames the model computes locally (rounded to 1e-6 nm on the wire)
    assert np.abs(aa - bm.backmap_xyz(cg, 3, seed=5)).max() <= 5.1e-7
    assert np.abs(aa[0] - aa[1]).max() > 0.01  # independent samples


def test_concurrent_unseeded_requests_are_batched_and_each_maps_back(server, versions, cg):
    from concurrent.futures import ThreadPoolExecutor

    _, bm = champion(versions)
    inputs = [cg[i : i + 1 + i % 3] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda x: post(server, {"cg_nm": x.tolist()}), inputs))
    for x, r in zip(inputs, rs):
        assert r.status_code == 200, r.text
        aa = np.asarray(r.json()["aa_nm"])
        assert aa.shape == (1, len(x), 22, 3)
        assert np.abs(bm.mapping.map(aa[0]) - x).max() < 2e-6


def test_run_jobs_merges_unseeded_requests_into_one_model_call(versions, cg):
    from finegrain.platform.apps.serving_app import Job, Served, run_jobs

    _, bm = champion(versions)
    calls = []

    class Counting:
        family, mapping, topology, frames_independent = bm.family, bm.mapping, bm.topology, bm.frames_independent

        def backmap_xyz(self, cg_xyz, n_samples=1, seed=None, prev_aa_xyz=None):
            calls.append((len(cg_xyz), n_samples, seed))
            if np.abs(cg_xyz).max() > 50:
                raise ValueError("poisoned frame")
            return bm.backmap_xyz(cg_xyz, n_samples, seed=seed)

    served = Served(ref=None, backmapper=Counting(), info={})
    jobs = [Job(served, cg[:2], 2), Job(served, cg[2:5], 2), Job(served, cg[5:6], 1), Job(served, cg[:4], 2, seed=9)]
    out = run_jobs(jobs)
    assert sorted(calls, key=str) == sorted([(5, 2, None), (1, 1, None), (4, 2, 9)], key=str)
    for job, res in zip(jobs, out):
        assert res.shape == (job.samples, len(job.cg), 22, 3)
        assert np.abs(bm.mapping.map(res) - job.cg[None]).max() < 1e-9
    np.testing.assert_array_equal(out[3], bm.backmap_xyz(cg[:4], 2, seed=9))  # seeded: same as alone
    # one request that makes the model raise fails alone; the others of its batch still get frames
    poison = cg[:2] + 100.0
    calls.clear()
    out = run_jobs([Job(served, cg[:2]), Job(served, poison), Job(served, cg[2:3])])
    assert isinstance(out[1], ValueError) and len(calls) == 1 + 3
    assert out[0].shape == (1, 2, 22, 3) and out[2].shape == (1, 1, 22, 3)


@pytest.mark.parametrize("shape", [(2, 2, 2), (5, 5, 4)])  # 8 beads: distance matrix; 100 beads: k-d tree
def test_bead_spacing_check_on_a_lattice_of_known_spacing(shape):
    from finegrain.platform.apps.serving_app import RequestError, check_bead_spacing

    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1).reshape(1, -1, 3)
    check_bead_spacing(0.38 * grid, (0.05, 1.0), "cg")  # C-alpha spacing in nm: accepted
    with pytest.raises(RequestError, match=r"cg: median nearest-bead distance 3.8 .*Angstrom"):
        check_bead_spacing(3.8 * grid, (0.05, 1.0), "cg")
    with pytest.raises(RequestError, match="0.01 is outside"):
        check_bead_spacing(0.01 * grid, (0.05, 1.0), "cg")



def test_run_jobs_advances_equal_length_trajectories_of_a_temporal_model_together(versions, cg):
    """A temporally coherent model is not concatenated along frames: equal-length requests become M chains."""
    from finegrain.platform.apps.serving_app import Job, Served, run_jobs

    _, bm = champion(versions)
    calls = []

    class Temporal:
        family, mapping, topology, frames_independent = "cvae", bm.mapping, bm.topology, False

        def backmap_xyz(self, cg_xyz, n_samples=1, seed=None, prev_aa_xyz=None):
            calls.append(("xyz", len(cg_xyz)))
            return bm.backmap_xyz(cg_xyz, n_samples, seed=seed)

        def backmap_trajectories(self, cg_xyz, n_samples=1, seed=None):
            calls.append(("trajectories", cg_xyz.shape[:2]))
            return np.stack([bm.backmap_xyz(c, n_samples) for c in cg_xyz])

    served = Served(ref=None, backmapper=Temporal(), info={})
    jobs = [Job(served, cg[:3], 2), Job(served, cg[3:6], 2), Job(served, cg[:2], 2), Job(served, cg[:3], 2, seed=1)]
    out = run_jobs(jobs)
    # the two 3-frame requests: one call with M = 2 chains; the 2-frame one and the seeded one alone
    assert sorted(calls, key=str) == sorted([("trajectories", (2, 3)), ("xyz", 2), ("xyz", 3)], key=str)
    for job, res in zip(jobs, out):
        assert res.shape == (2, len(job.cg), 22, 3)
        assert np.abs(bm.mapping.map(res) - job.cg[None]).max() < 1e-9

def test_file_backmap_in_xtc_and_as_a_zip_of_samples(server, versions, cg, tmp_path):
    _, bm = champion(versions)
    cg_traj = md.Trajectory(cg.astype(np.float32), bm.mapping.cg_topology(), time=np.arange(12) * 2.0)
    cg_traj[0].save_pdb(str(tmp_path / "cg.pdb"))
    cg_traj.save_dcd(str(tmp_path / "cg.dcd"))

    def upload(fields, top="cg.pdb", traj="cg.dcd"):
        files = {"cg_file": (traj, (tmp_path / traj).read_bytes())}
        if top:
            files["cg_top"] = (top, (tmp_path / top).read_bytes())
        return requests.post(f"{server}/backmap/file", files=files, data=fields, timeout=60)

    r = upload({"format": "xtc"})
    assert r.status_code == 200, r.text
    (tmp_path / "aa.xtc").write_bytes(r.content)
    (tmp_path / "top.pdb").write_bytes(requests.get(f"{server}/model/topology.pdb", timeout=10).content)
    aa = md.load(str(tmp_path / "aa.xtc"), top=str(tmp_path / "top.pdb"))
    assert aa.n_frames == 12 and aa.n_atoms == 22
    cg32 = cg_traj.xyz.astype(np.float64)  # the server read the float32 DCD
    assert np.abs(bm.mapping.map(aa.xyz.astype(np.float64)) - cg32).max() < 1e-3  # XTC keeps 1e-3 nm

    r = upload({"format": "pdb", "samples": "2", "seed": "1"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip", r.text
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert sorted(zf.namelist()) == ["aa_0.pdb", "aa_1.pdb"]
        zf.extractall(tmp_path / "zip")
    for k in range(2):
        t = md.load(str(tmp_path / "zip" / f"aa_{k}.pdb"))
        assert np.abs(bm.mapping.map(t.xyz.astype(np.float64)) - cg32).max() < 1e-4  # PDB keeps 1e-4 nm


def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_keeps_serving(server, versions, cg, tmp_path):
    _, bm = champion(versions)
    good = {"cg_nm": cg[:2].tolist()}
    top = bm.mapping.cg_topology()
    md.Trajectory(cg[:1].astype(np.float32), top).save_pdb(str(tmp_path / "cg.pdb"))
    wrong_top = md.Topology()
    res = wrong_top.add_residue("CG", wrong_top.add_chain())
    for i in range(bm.mapping.n_beads):
        wrong_top.add_atom(f"X{i}", md.element.virtual, res)
    md.Trajectory(cg[:1].astype(np.float32), wrong_top).save_pdb(str(tmp_path / "wrong.pdb"))
    pdb = (tmp_path / "cg.pdb").read_bytes()
    nan = cg[:2].copy()
    nan[1, 2, 0] = np.nan  # json.dumps writes it as NaN, which JSON parsers commonly accept

    def file(files, data=None):
        return lambda: requests.post(f"{server}/backmap/file", files=files, data=data or {}, timeout=60)

    cases = [
        ("bead count", lambda: post(server, {"cg_nm": cg[:2, :5].tolist()}), 422, "5 beads per frame"),
        ("bead names", lambda: post(server, {**good, "bead_names": ["A"] * 6}), 422, "bead names"),
        ("NaN", lambda: post(server, {"cg_nm": nan.tolist()}), 422, "non-finite coordinate at frame 1, bead 2"),
        ("Angstrom", lambda: post(server, {"cg_nm": (cg[:2] * 10).tolist()}), 422, "Angstrom"),
        ("too many frames", lambda: post(server, {"cg_nm": np.repeat(cg[:1], 201, 0).tolist()}), 413, "max_frames"),
        ("frames x samples", lambda: post(server, {"cg_nm": np.repeat(cg[:1], 40, 0).tolist(), "samples": 6}), 413,
         "240 output frames"),
        ("too many samples", lambda: post(server, {**good, "samples": 9}), 413, "max_samples"),
        ("too many bytes", lambda: post(server, b" " * 250_000), 413, "max_bytes"),
        ("malformed JSON", lambda: post(server, b'{"cg_nm": [[['), 400, "invalid JSON"),
        ("wrong type", lambda: post(server, {**good, "samples": "many"}), 422, "samples"),
        ("unknown key", lambda: post(server, {**good, "temperature": 300}), 422, "temperature"),
        ("ragged", lambda: post(server, {"cg_nm": [cg[0].tolist(), cg[1, :5].tolist()]}), 422, "ragged"),
        ("prev atoms", lambda: post(server, {**good, "prev_aa_nm": [[0.0, 0.0, 0.0]] * 3}), 422, "prev_aa_nm"),
        ("garbage file", file({"cg_file": ("cg.dcd", b"not a dcd" * 10), "cg_top": ("cg.pdb", pdb)}), 422, "cg_file"),
        ("unknown type", file({"cg_file": ("cg.foo", pdb)}), 422, "unknown file type"),
        ("no file", file({"cg_top": ("cg.pdb", pdb)}), 422, "cg_file: missing"),
        ("out format", file({"cg_file": ("cg.pdb", pdb)}, {"format": "docx"}), 422, "format"),
        ("file samples", file({"cg_file": ("cg.pdb", pdb)}, {"samples": "0"}), 422, "samples"),
        ("digit-like", file({"cg_file": ("cg.pdb", pdb)}, {"samples": "\u00b2"}), 422, "samples"),
        ("huge seed", lambda: post(server, {**good, "seed": 2**70}), 422, "seed"),
        ("refine, no force field", lambda: post(server, {**good, "refine": 3}), 422, "refine"),
        ("refine too long", lambda: post(server, {**good, "refine": 10**6}), 422, "refine"),
        ("file refine", file({"cg_file": ("cg.pdb", pdb)}, {"refine": "-2"}), 422, "refine"),
        ("hdf5 upload", file({"cg_file": ("cg.h5", b"\x89HDF\r\n\x1a\n" * 8)}), 422, "unknown file type"),
        ("file names", file({"cg_file": ("wrong.pdb", (tmp_path / "wrong.pdb").read_bytes())}), 422, "bead names"),
    ]
    for what, send, status, needle in cases:
        r = send()
        assert r.status_code == status, (what, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json"), what
        if needle:
            assert needle in r.json()["error"], (what, r.json())
        ok = post(server, good)
        assert ok.status_code == 200, (what, ok.text)


def test_model_endpoint_matches_the_registry_and_docs_are_served(server, versions, adp_shards):
    v, bm = champion(versions)
    info = requests.get(f"{server}/model", timeout=10).json()
    assert (info["name"], info["version"], info["alias"], info["run_id"]) == (NAME, v.version, "champion", v.run_id)
    assert info["bead_names"] == list(bm.mapping.bead_names) and info["mapping"] == bm.mapping.name
    assert info["family"] == "nullspace" and info["n_atoms"] == 22
    assert info["data_hash"] == Manifest.load(adp_shards).digest
    assert info["evaluation"] == {"run_id": versions["eval_run"], "kind": "in-distribution",
                                  "metrics": {"js_bonds": 0.125}}
    assert info["selection_metrics"] == {"val_loss": 0.5}
    assert requests.get(f"{server}/healthz", timeout=10).json() == {
        "status": "ok", "model": {"name": NAME, "version": v.version}}
    spec = requests.get(f"{server}/openapi.json", timeout=10).json()
    assert {"/backmap", "/backmap/file", "/model", "/healthz"} <= set(spec["paths"])
    assert "cg_nm" in json.dumps(spec["paths"]["/backmap"]["post"]["requestBody"])
    assert requests.get(f"{server}/docs", timeout=10).status_code == 200


def test_serve_model_refuses_unknown_models_and_a_second_address(server, tmp_path):
    from finegrain.platform.science.errors import InputError

    with pytest.raises(InputError, match="model: models:/serve-test-adp@nope: not found"):
        serve_model(f"models:/{NAME}@nope", port=free_port())
    with pytest.raises(InputError, match="model: runs:/0123abc/model: not found"):
        serve_model("runs:/0123abc/model", port=free_port())
    with pytest.raises(FileNotFoundError, match="neither a model folder nor a model URI"):
        serve_model(str(tmp_path / "missing"), port=free_port())
    with pytest.raises(ValueError, match="Serve already listens on 127.0.0.1:"):
        serve_model(f"models:/{NAME}@champion", port=free_port())
    assert requests.get(f"{server}/healthz", timeout=10).status_code == 200


def test_cli_backmap_endpoint_writes_a_file_mdtraj_loads(server, versions, cg, tmp_path):
    from finegrain.platform.apps.cli import app

    _, bm = champion(versions)
    cg_traj = md.Trajectory(cg.astype(np.float32), bm.mapping.cg_topology())
    cg_traj[0].save_pdb(str(tmp_path / "cg.pdb"))
    cg_traj.save_dcd(str(tmp_path / "cg.dcd"))
    args = ["backmap", "--endpoint", server, "--top", str(tmp_path / "cg.pdb"), "--traj", str(tmp_path / "cg.dcd")]
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "aa.pdb")])
    assert res.exit_code == 0, res.output
    aa = md.load(str(tmp_path / "aa.pdb"))
    assert aa.n_frames == 12 and [a.name for a in aa.topology.atoms] == [a.name for a in bm.topology.atoms]
    assert np.abs(bm.mapping.map(aa.xyz.astype(np.float64)) - cg_traj.xyz).max() < 1e-4
    res = CliRunner().invoke(app, args + ["--samples", "2", "--seed", "0", "--out", str(tmp_path / "s.dcd")])
    assert res.exit_code == 0, res.output
    assert all(md.load(str(tmp_path / f"s_{k}.dcd"), top=str(tmp_path / "aa.pdb")).n_frames == 12 for k in (0, 1))
    # refusals come back as one error line naming the problem (exit 2)
    res = CliRunner().invoke(app, args + ["--samples", "9", "--out", str(tmp_path / "x.pdb")])
    assert res.exit_code == 2 and "max_samples" in res.output, res.output
    res = CliRunner().invoke(app, args + ["--model", "runs:/x/model", "--out", str(tmp_path / "x.pdb")])
    assert res.exit_code == 2 and "exactly one of --model or --endpoint" in res.output, res.output
    res = CliRunner().invoke(app, ["serve", "--port", "8123"])
    assert res.exit_code == 2 and "--model" in res.output, res.output


def test_settings_and_the_serve_config_yaml():
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "cluster" / "serve_backmap.yaml").read_text()))
    (app_cfg,) = config.applications
    assert app_cfg.import_path == "finegrain.platform.apps.serving:build_app"
    assert config.http_options.host == "127.0.0.1"
    settings = ServeSettings.model_validate(app_cfg.args)
    assert settings.reload and settings.model.endswith("@champion")
    app = build_app(app_cfg.args)  # the builder `serve deploy` calls; nothing starts
    assert type(app).__name__ == "Application"
    for bad, needle in (({"model": "runs:/abc/model", "reload": True}, "reload"),
                        ({"model": "m", "max_frames": 0}, "max_frames"),
                        ({"model": "m", "bead_spacing_nm": [1.0, 0.5]}, "bead_spacing_nm"),
                        ({"model": "m", "max_frame": 10}, "max_frame")):
        with pytest.raises(ValueError, match=needle):
            ServeSettings.model_validate(bad)


def test_alias_move_switches_version_without_dropping_requests(server, versions, cg):
    """Last: moves the alias. Requests keep flowing while the replica loads v2 and swaps it in."""
    old, new = (v.version for v in versions["versions"])
    assert requests.get(f"{server}/model", timeout=10).json()["version"] == old
    seen, failures, stop = [], [], threading.Event()

    def traffic():
        while not stop.is_set():
            r = post(server, {"cg_nm": cg[:4].tolist()})
            if r.status_code != 200:
                failures.append(r.text)
            else:
                seen.append(r.json()["model"]["version"])

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.0)
        versions["client"].set_registered_model_alias(NAME, "champion", new)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not seen or seen[-1] != new):
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert not failures, failures[:3]
    assert seen[0] == old and seen[-1] == new, (seen[:3], seen[-3:])
    assert set(seen) == {old, new}
    info = requests.get(f"{server}/model", timeout=10).json()
    assert info["version"] == new and info["run_id"] == versions["versions"][1].run_id
    assert info["evaluation"] is None and info["selection_metrics"] == {}  # v2 was never evaluated
    # the new version answers with its own parameters: its seeded frames are v2's
    r = post(server, {"cg_nm": cg[:3].tolist(), "seed": 2})
    expect = versions["models"][new].backmap_xyz(cg[:3], 1, seed=2)
    assert np.abs(expect - versions["models"][old].backmap_xyz(cg[:3], 1, seed=2)).max() > 1e-3  # they differ
    assert np.abs(np.asarray(r.json()["aa_nm"]) - expect).max() <= 5.1e-7
