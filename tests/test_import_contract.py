"""The import contract of pyproject.toml ([tool.importlinter]) holds: layers and no import cycles.

grimp (import-linter's graph builder) does not descend into namespace portions,
and the top-level folders are namespace portions of ``finegrain`` on purpose
(a bare ``import platform`` must keep finding the standard library). So the
check runs the real ``lint-imports`` on a copy of the package's Python files in
which every folder is a regular package: the same modules, the same imports.

The package list comes from ``setup.py`` (its top-level folders, ``NAMESPACES``, and every folder below
them with an ``__init__.py``); the last tests check that every module of the tree ships in a built wheel.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _setup_module():
    """setup.py as a module (not ``__main__``, so it computes without building)."""
    spec = importlib.util.spec_from_file_location("finegrain_setup", REPO / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SETUP = _setup_module()
FOLDERS = SETUP.NAMESPACES


def _regular_copy(dest: Path) -> Path:
    root = dest / "finegrain"
    shutil.copy(REPO / "__init__.py", root.mkdir(parents=True) or root / "__init__.py")
    for folder in FOLDERS:
        for src in (REPO / folder).rglob("*.py"):
            out = root / src.relative_to(REPO)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, out)
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        (d / "__init__.py").touch()
    return dest


def _lint(tmp_path: Path, extra_module: tuple[str, str] | None = None) -> subprocess.CompletedProcess:
    path = _regular_copy(tmp_path)
    if extra_module:
        rel, text = extra_module
        (path / "finegrain" / rel).write_text(text)
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint), "--no-cache", str(REPO / "pyproject.toml")], cwd=tmp_path,
                          env={"PYTHONPATH": str(path), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=300)


def test_the_import_contract_holds(tmp_path):
    r = _lint(tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in r.stdout, r.stdout[-2000:]


def test_the_contract_catches_a_science_module_importing_an_application(tmp_path):
    """The check can fail: a bottom-layer module that imports the CLI breaks the layers contract."""
    r = _lint(tmp_path, ("platform/science/leak.py", "from finegrain.platform.apps import cli\n"))
    assert r.returncode != 0
    assert "finegrain.platform.science.leak -> finegrain.platform.apps.cli" in r.stdout, r.stdout[-3000:]


#: folders that hold no shipped modules (tests, virtualenvs, build outputs, run outputs: see .gitignore)
NOT_SHIPPED = {"tests", "build", "dist", "mlruns", "out", "notes", "pretrained-work", "__pycache__"}


def _module_files() -> list[Path]:
    """Every .py file of the tree that belongs to the distribution, relative to the repo root."""
    files = []
    for folder, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if not (d.startswith(".") or d in NOT_SHIPPED or d.endswith(".egg-info"))]
        rel = Path(folder).relative_to(REPO)
        files += [rel / n for n in names if n.endswith(".py") and rel / n != Path("setup.py")]
    return sorted(files)


def test_every_module_folder_is_a_package():
    """Every folder holding modules is in the list setup.py computes: a top-level folder is one of its
    NAMESPACES (and stays a namespace portion, no __init__.py), a folder below has an ``__init__.py``
    (setup.py finds packages by it: a family folder without one would be left out of the wheel)."""
    listed = set(SETUP.packages())
    folders = {".".join(("finegrain", *rel.parent.parts)) for rel in _module_files()}
    missing = sorted(folders - listed)
    assert not missing, (f"folders with modules that would not ship: {missing}; give a subfolder an __init__.py, "
                         f"add a new top-level folder to NAMESPACES in setup.py")
    assert all((REPO / Path(*p.split(".")[1:])).is_dir() for p in listed), sorted(listed)
    namespaced = [f for f in FOLDERS if (REPO / f / "__init__.py").exists()]
    assert not namespaced, f"{namespaced}: top-level folders stay namespace portions (a bare `import platform`)"


def test_a_built_wheel_carries_every_module_and_the_shipped_data(tmp_path):
    """Build the wheel (setup.py + pyproject.toml, as ``pip install .`` would) from a copy of the tree and
    list it: every module (nothing from tests/, not setup.py), the shipped configs, zoo models and specs."""
    src = tmp_path / "src"
    src.mkdir()
    for path in REPO.iterdir():
        if path.is_file() and not path.name.startswith("."):
            shutil.copy(path, src / path.name)
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path / "wheel"), str(src)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("finegrain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped_py = {n for n in names if n.endswith(".py")}
    expected_py = {"/".join(("finegrain", *rel.parts)) for rel in _module_files()}
    assert shipped_py == expected_py, {"missing from the wheel": sorted(expected_py - shipped_py),
                                       "unexpected in the wheel": sorted(shipped_py - expected_py)}
    data = [*(REPO / "trainables" / "configs").glob("*.yaml"), *(REPO / "trainables" / "zoo").rglob("*"),
            *(REPO / "datasets").glob("*.yaml"), *(REPO / "sweeps").glob("*.yaml")]
    data = {"/".join(("finegrain", *p.relative_to(REPO).parts)) for p in data if p.is_file()}
    assert data and not data - names, sorted(data - names)
