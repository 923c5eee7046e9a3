"""The import contract of pyproject.toml ([tool.importlinter]) holds: layers and no import cycles.

grimp (import-linter's graph builder) does not descend into namespace portions,
and the top-level folders are namespace portions of ``finegrain`` on purpose
(a bare ``import platform`` must keep finding the standard library). So the
check runs the real ``lint-imports`` on a copy of the package's Python files in
which every folder is a regular package: the same modules, the same imports.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("platform", "trainables", "datasets", "sweeps")


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


def test_every_package_folder_ships():
    """A new folder with an ``__init__.py`` (a model family, say) is listed in pyproject's packages, so a wheel
    install carries it; the editable install would hide the omission."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"finegrain"}
    for folder in FOLDERS:
        found.add(f"finegrain.{folder}")
        for init in (REPO / folder).rglob("__init__.py"):
            found.add("finegrain." + ".".join(init.parent.relative_to(REPO).parts))
    assert found == listed, {"missing from pyproject": sorted(found - listed), "not in the tree": sorted(listed - found)}
