"""The Ray Serve deployment behind ``finegrain serve``: FastAPI routes, batching, limits.

This module runs in Serve replicas; :mod:`finegrain.platform.apps.serving` builds
and starts the application. Every bad request is answered with a 4xx and a
JSON body ``{"error": "<argument>: <problem>"}``: 400 malformed JSON or form,
411 no Content-Length, 413 too many bytes, frames or samples, 422 wrong
shapes, bead counts or names, non-finite or non-nm coordinates, unreadable
files or an unknown output format. The replica keeps serving.

Batching: ``@serve.batch`` collects concurrent requests; requests without a
seed or a previous AA frame are merged: for a model whose frames are
independent (baselines, frame-only models) along the frame axis, for a
temporally coherent one (the cVAE) as equal-length trajectories advanced
together (``Backmapper.backmap_trajectories``), one call per sample count.
Seeded requests run one by one, so a seed gives the same frames as
``backmap_xyz`` locally.
"""

# No `from __future__ import annotations`: Serve rebuilds the route methods, and FastAPI must see
# real annotations (a string "Request" would be read as a query parameter).
import asyncio
import io
import json
import logging
import re
import tempfile
import threading
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException  # also FastAPI's subclass, 404s and form errors

from finegrain.platform.apps.defaults import defaults_of
from finegrain.platform.apps.model_refs import model_info, resolve_model
from finegrain.platform.apps.serving_config import ModelRef, ServeSettings
from finegrain.platform.science.errors import InputError
from finegrain.platform.science.mapping import MappingError
from finegrain.platform.science.validation import check_units_nm, check_xyz
from finegrain.platform.services.tracking import Tracker
from finegrain.trainables.persistence import load_backmapper_any
from finegrain.trainables.refine import refine

__all__ = ["BackmapServer", "Served", "Job", "run_jobs", "check_bead_spacing", "RequestError", "OUT_FORMATS"]

SERVE_DEFAULTS = defaults_of(ServeSettings)

log = logging.getLogger("ray.serve")

#: Output formats of ``POST /backmap/file`` (mdtraj writers; h5 needs PyTables).
OUT_FORMATS = ("pdb", "pdb.gz", "cif", "xtc", "trr", "dcd", "nc", "gro", "xyz", "lammpstrj", "h5")


class RequestError(InputError):
    """A refused request; ``status`` is its HTTP status (4xx)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


# -- the loaded model -----------------------------------------------------------
@dataclass(frozen=True)
class Served:
    """One loaded model version and what the endpoints report about it."""

    ref: ModelRef
    backmapper: object
    info: dict

    @property
    def short(self) -> dict:
        return {"name": self.ref.name, "version": self.ref.version}

    @classmethod
    def load(cls, settings: ServeSettings, ref: ModelRef | None = None) -> "Served":
        ref = ref or resolve_model(settings.model, settings.tracking_uri)
        bm = load_backmapper_any(ref.uri, Tracker(settings.tracking_uri) if settings.tracking_uri else None)
        atoms = list(bm.topology.atoms)
        info = model_info(ref, bm, settings.tracking_uri)
        info["atom_names"] = [a.name for a in atoms]
        info["residue_names"] = [a.residue.name for a in atoms]
        info["residue_ids"] = [int(a.residue.resSeq) for a in atoms]
        return cls(ref=ref, backmapper=bm, info=info)


# -- batching -------------------------------------------------------------------
@dataclass
class Job:
    """One request's work: CG [T, n, 3] nm for one model version."""

    served: Served
    cg: np.ndarray
    samples: int = 1
    seed: int | None = None
    prev_aa: np.ndarray | None = None
    refine: int = 0

    @property
    def group(self) -> tuple | None:
        """Jobs with the same key run as one model call; None: this one runs alone (seeded or continued).

        Frame-independent models concatenate frames; temporally coherent ones
        advance equal-length trajectories together (``backmap_trajectories``).
        """
        if self.seed is not None or self.prev_aa is not None:
            return None
        bm = self.served.backmapper
        return (id(self.served), self.samples, None if bm.frames_independent else self.cg.shape[0])


def run_jobs(jobs: list[Job]) -> list:
    """Backmap a batch; returns per job [K, T, N, 3] nm or the exception it raised."""
    out: list = [None] * len(jobs)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        if job.group is not None:
            groups[job.group].append(i)
        else:
            out[i] = _run_one(job)
    for idx in groups.values():
        if len(idx) == 1:
            out[idx[0]] = _run_one(jobs[idx[0]])
            continue
        first = jobs[idx[0]]
        bm = first.served.backmapper
        try:
            if bm.frames_independent:
                xyz = bm.backmap_xyz(np.concatenate([jobs[i].cg for i in idx]), first.samples)
                ends = np.cumsum([jobs[i].cg.shape[0] for i in idx])
                parts = np.split(xyz, ends[:-1], axis=1)
            else:
                parts = list(bm.backmap_trajectories(np.stack([jobs[i].cg for i in idx]), first.samples))
        except Exception:  # isolate the request that fails
            for i in idx:
                out[i] = _run_one(jobs[i])
            continue
        for i, part in zip(idx, parts):
            out[i] = part
    for i, job in enumerate(jobs):
        if job.refine and not isinstance(out[i], Exception):
            out[i] = _refine(job, out[i])
    return out


def _refine(job: Job, xyz: np.ndarray):
    bm = job.served.backmapper
    try:
        return refine(xyz, job.cg, bm.mapping, bm.system_name, job.refine)
    except Exception as exc:
        return exc


def _run_one(job: Job):
    try:
        return job.served.backmapper.backmap_xyz(job.cg, job.samples, seed=job.seed, prev_aa_xyz=job.prev_aa)
    except Exception as exc:
        return exc


# -- checks -----------------------------------------------------------------------
def check_bead_spacing(cg: np.ndarray, window: tuple[float, float], argument: str) -> None:
    """Refuse CG frames [T, n, 3] whose median nearest-bead distance (first frame) is not one in nm."""
    if cg.shape[1] < 2:
        return
    if cg.shape[1] <= 64:  # few beads: a distance matrix beats building a tree
        d = np.linalg.norm(cg[0][:, None] - cg[0][None], axis=-1)
        np.fill_diagonal(d, np.inf)
        nearest = d.min(axis=1)
    else:
        from scipy.spatial import cKDTree

        nearest = cKDTree(cg[0]).query(cg[0], k=2)[0][:, 1]
    med = float(np.median(nearest))
    lo, hi = window
    if not lo <= med <= hi:
        hint = " (looks like Angstrom: divide by 10)" if hi < med < 15 * hi else ""
        raise RequestError(f"{argument}: median nearest-bead distance {med:.3g} is outside {lo}-{hi} nm; "
                           f"coordinates must be in nm{hint}")


def _json_answer(xyz: np.ndarray, info: dict, model: dict) -> bytes:
    """The JSON body of POST /backmap (1e-6 nm rounding)."""
    body = {"aa_nm": np.round(xyz, 6).tolist(), "atom_names": info["atom_names"],
            "residue_names": info["residue_names"], "residue_ids": info["residue_ids"], "model": model}
    return json.dumps(body).encode()


def _parse(model: type[BaseModel], raw: bytes) -> BaseModel:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise RequestError(f"request body: invalid JSON ({errors[0]['msg']})", 400) from None
        loc = ".".join(str(x) for x in errors[0]["loc"]) or "request body"
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise RequestError(f"{loc}: {errors[0]['msg']}{more}") from None


def _as_array(data, argument: str) -> np.ndarray:
    try:
        return np.asarray(data, dtype=np.float64)
    except ValueError:
        raise RequestError(f"{argument}: ragged nesting; expected [frames][particles][3] numbers") from None


def _suffix(filename: str | None, known: set[str], argument: str) -> str:
    name = (filename or "").lower()
    suffix = next((s for s in sorted(known, key=len, reverse=True) if name.endswith(s)), None)
    if suffix is None:
        raise RequestError(f"{argument}: unknown file type {Path(name).suffix or name!r} "
                           f"(mdtraj reads {', '.join(sorted(known))})")
    return suffix


#: HDF5 formats: PyTables may unpickle attributes of an uploaded file; never read them from a request.
UNSAFE_FORMATS = {".h5", ".lh5", ".hdf5"}
#: Seeds must fit torch/numpy generators.
MAX_SEED = 2**63 - 1
MAX_REFINE = 5000  # refinement steps per request (each step is one batched force evaluation)


def read_cg_upload(traj: bytes, traj_name: str | None, top: bytes | None, top_name: str | None):
    """An mdtraj.Trajectory from uploaded bytes; format from the file names' extensions."""
    import mdtraj as md
    from mdtraj.formats.registry import FormatRegistry

    known = set(FormatRegistry.loaders) - UNSAFE_FORMATS
    traj_suffix = _suffix(traj_name, known, "cg_file")
    top_suffix = _suffix(top_name, known | {".psf", ".prmtop", ".parm7"}, "cg_top") if top is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        traj_path = Path(tmp) / f"cg{traj_suffix}"
        traj_path.write_bytes(traj)
        topology = None
        if top is not None:
            top_path = Path(tmp) / f"top{top_suffix}"
            top_path.write_bytes(top)
            try:
                topology = md.load_topology(str(top_path))
            except Exception as exc:
                raise RequestError(f"cg_top: cannot read {top_suffix} topology ({type(exc).__name__}: {exc})") from None
        try:
            return md.load(str(traj_path), top=topology)
        except Exception as exc:
            need = "" if topology is not None else "; formats without a topology need cg_top"
            problem = str(exc).replace(str(traj_path), Path(traj_name or "").name)  # no server paths in answers
            raise RequestError(f"cg_file: cannot read {traj_suffix} trajectory ({type(exc).__name__}: {problem}{need})") from None


def write_aa(xyz: np.ndarray, topology, time, fmt: str) -> tuple[bytes, str, str]:
    """[K, T, N, 3] nm -> (bytes, file name, media type): one file, or a zip of aa_k.FMT for K > 1."""
    import mdtraj as md

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k in range(xyz.shape[0]):
            path = Path(tmp) / f"aa_{k}.{fmt}"
            try:
                md.Trajectory(xyz[k].astype(np.float32), topology, time=time).save(str(path))
            except Exception as exc:
                raise RequestError(f"format: cannot write {fmt} here ({type(exc).__name__}: {exc})") from None
            paths.append(path)
        if len(paths) == 1:
            return paths[0].read_bytes(), f"aa.{fmt}", "application/octet-stream"
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in paths:
                zf.write(path, path.name)
        return buf.getvalue(), "aa.zip", "application/zip"


def _form_int(value, argument: str, default):
    if value is None or value == "":
        return default
    if isinstance(value, UploadFile) or not re.fullmatch(r"[0-9]{1,18}", str(value)) or (
            argument == "samples" and int(value) < 1):
        raise RequestError(f"{argument}: expected a {'positive' if argument == 'samples' else 'non-negative'} "
                           f"integer, got {value if not isinstance(value, UploadFile) else 'a file'!r}")
    return int(value)


# -- HTTP -----------------------------------------------------------------------
class BackmapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cg_nm: list[list[list[float]]] = Field(description="CG frames [T][n_beads][3], nm.")
    samples: int = Field(1, ge=1, description="Independent samples K per frame.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random seed (reproducible samples).")
    prev_aa_nm: list[list[float]] | None = Field(None, description="AA frame [n_atoms][3] nm before cg_nm[0] "
                                                                    "(continues a trajectory; cVAE).")
    bead_names: list[str] | None = Field(None, description="Bead names, checked against the model's mapping.")
    refine: int = Field(0, ge=0, le=MAX_REFINE, description="Then N steps of CG-restrained minimisation with the "
                                                            "torch force field of the model's system.")


class BackmapResponse(BaseModel):
    aa_nm: list[list[list[list[float]]]] = Field(description="[K][T][n_atoms][3], nm, rounded to 1e-6 nm.")
    atom_names: list[str]
    residue_names: list[str] = Field(description="Residue name of each atom.")
    residue_ids: list[int] = Field(description="Residue number of each atom.")
    model: dict = Field(description="{name, version} of the model that answered.")


class ErrorBody(BaseModel):
    error: str


_ERRORS = {code: {"model": ErrorBody} for code in (400, 411, 413, 422)}
_FILE_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["cg_file"],
    "properties": {
        "cg_file": {"type": "string", "format": "binary", "description": "CG trajectory (any mdtraj format; nm)."},
        "cg_top": {"type": "string", "format": "binary", "description": "CG topology (bead names as the model's)."},
        "format": {"type": "string", "enum": list(OUT_FORMATS), "default": "pdb", "description": "AA output format."},
        "samples": {"type": "integer", "default": 1, "description": "K > 1 answers a zip of aa_k.FORMAT."},
        "seed": {"type": "integer"},
        "refine": {"type": "integer", "default": 0, "description": "Steps of CG-restrained minimisation after."},
    }}}}}}

http = FastAPI(title="finegrain backmapping", version="1",
               description="Backmap coarse-grained frames to all-atom with the served model (nm throughout).")


@http.exception_handler(InputError)
@http.exception_handler(MappingError)
async def _input_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=getattr(exc, "status", 422))


@http.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)


@http.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("request %s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the replica log"}, status_code=500)


@serve.deployment(name="BackmapServer", max_constructor_retry_count=3, graceful_shutdown_timeout_s=60)
@serve.ingress(http)
class BackmapServer:
    """One replica: a loaded model version, its alias watcher, and the routes."""

    def __init__(self, settings: dict):
        self.settings = ServeSettings.model_validate(settings)
        self.served = Served.load(self.settings)
        self._batched.set_max_batch_size(self.settings.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.settings.batch_wait_s)
        self._stop = threading.Event()
        if self.settings.reload:
            threading.Thread(target=self._watch, name="alias-watch", daemon=True).start()
        log.info("serving %s (version %s)", self.served.ref.source, self.served.ref.version)

    def __del__(self):
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    def _watch(self) -> None:
        """Follow the alias: load a new version off the request path, then swap the reference."""
        while not self._stop.wait(self.settings.poll_s):
            try:
                ref = resolve_model(self.settings.model, self.settings.tracking_uri)
                if ref.version != self.served.ref.version:
                    self.served = Served.load(self.settings, ref)
                    log.info("alias %s moved: now serving version %s", self.settings.model, ref.version)
            except Exception as exc:  # keep serving the loaded version
                log.warning("alias check for %s failed: %s", self.settings.model, exc)

    # the decorator's values only until __init__ sets the replica's own (ServeSettings)
    @serve.batch(max_batch_size=SERVE_DEFAULTS["max_batch_size"], batch_wait_timeout_s=SERVE_DEFAULTS["batch_wait_s"])
    async def _batched(self, jobs: list[Job]) -> list:
        return await asyncio.to_thread(run_jobs, jobs)

    async def _backmap(self, job: Job) -> np.ndarray:
        out = await self._batched(job)
        if isinstance(out, BaseException):
            raise out
        return out

    def _check_length(self, request: Request) -> None:
        n = request.headers.get("content-length")
        if n is None:
            raise RequestError("request body: send a Content-Length header (chunked bodies are refused)", 411)
        if not n.isdigit() or int(n) > self.settings.max_bytes:
            raise RequestError(f"request body: {n} bytes, the limit is {self.settings.max_bytes} (max_bytes)", 413)

    def _check_sizes(self, n_frames: int, samples: int, argument: str) -> None:
        lim = self.settings
        if samples > lim.max_samples:
            raise RequestError(f"samples: {samples}, the limit is {lim.max_samples} (max_samples)", 413)
        if n_frames * samples > lim.max_frames:
            raise RequestError(f"{argument}: {samples} samples x {n_frames} frames = {n_frames * samples} output "
                               f"frames, the limit is {lim.max_frames} (max_frames)", 413)

    def _job(self, served: Served, cg, argument: str, samples: int, seed, prev=None, names=None,
             refine: int = 0) -> Job:
        bm = served.backmapper
        if refine and bm.system_name is None:
            raise RequestError("refine: the served model names no reference system, so no force field refines it")
        if refine > MAX_REFINE:
            raise RequestError(f"refine: {refine} steps, the limit is {MAX_REFINE}")
        cg = bm.check_cg(cg, argument, bead_names=names)
        self._check_sizes(cg.shape[0], samples, argument)
        check_bead_spacing(cg, self.settings.bead_spacing_nm, argument)
        if prev is not None:
            prev = check_xyz(_as_array(prev, "prev_aa_nm"), bm.topology.n_atoms, "prev_aa_nm")
            check_units_nm(prev, np.array([[b[0].index, b[1].index] for b in bm.topology.bonds]), "prev_aa_nm")
            prev = prev[0]
        return Job(served, cg, samples, seed, prev, refine)

    @http.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "model": self.served.short}

    @http.get("/model")
    async def model(self) -> dict:
        """Name, version, alias, MLflow run id, mapping (bead names), training data hash, evaluation metrics."""
        served = self.served
        return {k: v for k, v in served.info.items() if k not in ("atom_names", "residue_names", "residue_ids")}

    @http.get("/model/topology.pdb")
    async def topology(self) -> Response:
        """The AA topology (PDB), to read output formats that carry none (xtc, dcd, ...)."""
        import mdtraj as md

        top = self.served.backmapper.topology
        with tempfile.TemporaryDirectory() as tmp:
            md.Trajectory(np.zeros((1, top.n_atoms, 3), np.float32), top).save_pdb(f"{tmp}/top.pdb")
            return Response(Path(f"{tmp}/top.pdb").read_bytes(), media_type="chemical/x-pdb")

    @http.post("/backmap", response_model=BackmapResponse, responses=_ERRORS, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": BackmapRequest.model_json_schema()}}}})
    async def backmap(self, request: Request) -> Response:
        """CG frames (JSON) -> K samples of AA frames (JSON)."""
        served = self.served  # this request stays on this version even if the alias moves meanwhile
        self._check_length(request)
        # parsing and writing up to max_bytes of JSON happen off the event loop: /healthz and
        # the batcher keep running meanwhile
        req = await asyncio.to_thread(_parse, BackmapRequest, await request.body())
        job = self._job(served, _as_array(req.cg_nm, "cg_nm"), "cg_nm", req.samples, req.seed, req.prev_aa_nm,
                        req.bead_names, req.refine)
        xyz = await self._backmap(job)
        body = await asyncio.to_thread(_json_answer, xyz, served.info, served.short)
        return Response(body, media_type="application/json")

    @http.post("/backmap/file", responses={200: {"content": {"application/octet-stream": {}, "application/zip": {}}},
                                           **_ERRORS}, openapi_extra=_FILE_FORM)
    async def backmap_file(self, request: Request) -> Response:
        """A CG trajectory file (+ topology) -> an AA trajectory file (a zip of K files for samples K > 1)."""
        served = self.served
        self._check_length(request)
        async with request.form(max_files=2, max_fields=8) as form:  # closes spooled uploads on exit
            fields = {k: form.get(k) for k in ("cg_file", "cg_top", "format", "samples", "seed", "refine")}
            for name in ("cg_file", "cg_top"):
                if fields[name] is not None and not isinstance(fields[name], UploadFile):
                    raise RequestError(f"{name}: expected a file upload (multipart file field)")
            if fields["cg_file"] is None:
                raise RequestError("cg_file: missing (multipart file field with the CG trajectory)")
            fmt = str(fields["format"] or "pdb").lower().lstrip(".")
            if fmt not in OUT_FORMATS:
                raise RequestError(f"format: {fmt!r} is not an output format ({', '.join(OUT_FORMATS)})")
            samples, seed = _form_int(fields["samples"], "samples", 1), _form_int(fields["seed"], "seed", None)
            refine = _form_int(fields["refine"], "refine", 0)
            traj_file, top = fields["cg_file"], fields["cg_top"]
            upload = (await traj_file.read(), traj_file.filename, await top.read() if top else None,
                      top.filename if top else None)
        traj = await asyncio.to_thread(read_cg_upload, *upload)
        bm = served.backmapper
        names = [a.name for a in traj.topology.atoms]
        if traj.n_atoms == bm.mapping.n_beads and not bm.mapping.matches_bead_names(traj.topology):
            raise RequestError(f"cg_file: bead names {names} do not match the model's mapping "
                               f"'{bm.mapping.name}' {list(bm.mapping.bead_names)}")
        job = self._job(served, traj.xyz, "cg_file", samples, seed, refine=refine)
        xyz = await self._backmap(job)
        time = traj.time if traj.time is not None and len(traj.time) == traj.n_frames else None
        content, filename, media = await asyncio.to_thread(write_aa, xyz, bm.topology, time, fmt)
        headers = {"Content-Disposition": f'attachment; filename="{filename}"',
                   "X-Model-Name": str(served.ref.name), "X-Model-Version": str(served.ref.version)}
        return Response(content, media_type=media, headers=headers)

