"""One error base class (FinegrainError) and one CLI handler (the root command group)."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finegrain.platform.science.errors import FinegrainError, InputError

REPO = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "finegrain"
SKIP_DIRS = {"tests", "cluster", "build", "dist", "node_modules"}


def finegrain_modules() -> list[str]:
    """Dotted names of every module of the package (the repository root is ``finegrain``)."""
    names = []
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in SKIP_DIRS or any(p.startswith(".") or p.endswith(".egg-info") for p in rel.parts):
            continue
        if rel.name == "__main__.py":  # runs the CLI on import
            continue
        parts = rel.with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(("finegrain",) + parts))
    return names


def test_every_error_class_derives_from_finegrain_error():
    names = finegrain_modules()
    assert "finegrain.platform.apps.cli" in names and "finegrain.datasets.systems" in names
    found, bare = [], []
    for name in names:
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == name:
                found.append(f"{name}.{attr}")
                if not issubclass(obj, FinegrainError):
                    bare.append(f"{name}.{attr}")
    assert not bare, f"error classes that do not derive from FinegrainError: {bare}"
    assert len(found) >= 11, found  # the walk did find the product's error classes


def test_error_classes_keep_their_builtin_base():
    from finegrain.datasets.ingest import IngestError
    from finegrain.datasets.systems import UnknownSystemError
    from finegrain.platform.science.mapping import MappingError
    from finegrain.platform.services.stack import StackNotRunning
    from finegrain.sweeps.driver import SweepInterrupted
    from finegrain.sweeps.spec import SweepSpecError

    for cls in (InputError, IngestError, UnknownSystemError, MappingError, SweepSpecError):
        assert issubclass(cls, FinegrainError) and issubclass(cls, ValueError), cls
    for cls in (StackNotRunning, SweepInterrupted):
        assert issubclass(cls, FinegrainError) and issubclass(cls, RuntimeError), cls
    assert (FinegrainError.label, FinegrainError.exit_code) == ("error", 2)
    assert (SweepInterrupted.label, SweepInterrupted.exit_code) == ("interrupted", 130)


def run_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FINEGRAIN_HOME": str(tmp_path / "no-stack")}  # never reaches a running stack
    return subprocess.run([str(EXE), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_cli_missing_input_file_is_one_line_exit_2(tmp_path):
    missing = tmp_path / "missing_cg.pdb"
    r = run_cli("backmap", "--model", str(tmp_path / "no-model"), "--top", str(missing), "--traj", str(missing),
                "--out", str(tmp_path / "aa.pdb"), tmp_path=tmp_path)
    assert_one_line_error(r, "top:", str(missing), "does not exist")
    assert not (tmp_path / "aa.pdb").exists()


def test_cli_unknown_system_is_one_line_exit_2(tmp_path):
    r = run_cli("ingest", "--top", str(tmp_path / "t.pdb"), "--traj", str(tmp_path / "t.dcd"), "--mapping",
                "backbone6", "--system", "nope", "--out", str(tmp_path / "shards"), tmp_path=tmp_path)
    assert_one_line_error(r, "system:", "unknown system 'nope'")
    assert not (tmp_path / "shards").exists()


def test_cli_missing_config_file_is_one_line_exit_2(tmp_path):
    r = run_cli("train", str(tmp_path / "nope.yaml"), tmp_path=tmp_path)
    assert_one_line_error(r, "nope.yaml")


def test_cli_handler_labels_and_exit_codes(monkeypatch, tmp_path):
    """In-process (typer's CliRunner): an interrupted sweep exits 130; other exceptions keep their traceback."""
    from typer.testing import CliRunner

    import finegrain.sweeps.driver as driver
    from finegrain.platform.apps.cli import app

    def interrupted(*_a, **_k):
        raise driver.SweepInterrupted("sweep x: 1 of 4 trials ended; --resume continues it")

    monkeypatch.setattr(driver, "run_sweep", interrupted)
    spec = REPO / "sweeps" / "adp_cvae_smoke.yaml"
    res = CliRunner().invoke(app, ["sweep", str(spec)])
    assert res.exit_code == 130, res.output
    assert "interrupted: sweep x: 1 of 4 trials ended" in res.output and "Traceback" not in res.output

    def bug(*_a, **_k):
        raise KeyError("not a user error")

    monkeypatch.setattr(driver, "run_sweep", bug)
    res = CliRunner().invoke(app, ["sweep", str(spec)])
    assert res.exit_code == 1 and isinstance(res.exception, KeyError)  # propagates, not turned into a message


@pytest.mark.parametrize("exc", [InputError("top: x.pdb does not exist"), ValueError("samples: must be >= 1")])
def test_cli_handler_prints_user_errors(monkeypatch, exc):
    from typer.testing import CliRunner

    import finegrain.sweeps.driver as driver
    from finegrain.platform.apps.cli import app

    def fail(*_a, **_k):
        raise exc

    monkeypatch.setattr(driver, "run_sweep", fail)
    res = CliRunner().invoke(app, ["sweep", str(REPO / "sweeps" / "adp_cvae_smoke.yaml")])
    assert res.exit_code == 2 and res.output.strip() == f"error: {exc}", res.output
