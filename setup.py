"""Package discovery, the one thing pyproject.toml cannot express here; everything else lives there.

The repository root is the package ``finegrain`` (``package-dir`` in pyproject.toml). Its top-level
folders (:data:`NAMESPACES`) carry no ``__init__.py`` on purpose: they are namespace portions, so a bare
``import platform`` from the repo root still finds the standard library. Below them every folder with an
``__init__.py`` is a regular package and is found here, so a new model family ``trainables/NAME/`` ships
in the wheel without editing any list. Folders without one (``trainables/configs``, ``trainables/zoo``)
are data, shipped by ``[tool.setuptools.package-data]``. ``tests/`` does not ship.
``tests/test_import_contract.py`` checks that every module of the tree lands in a built wheel.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
#: the top-level folders, namespace portions of ``finegrain`` (a new one is added here and to the
#: import contract in pyproject.toml)
NAMESPACES = ("platform", "trainables", "datasets", "sweeps")


def packages(root: Path = ROOT) -> list[str]:
    """``finegrain``, its namespace portions, and every regular package (``__init__.py``) below them."""
    found = ["finegrain"]
    for folder in NAMESPACES:
        found.append(f"finegrain.{folder}")
        found += [f"finegrain.{folder}.{name}" for name in sorted(find_packages(where=str(root / folder)))]
    return found


if __name__ == "__main__":  # setuptools' build backend runs this file as __main__
    # script_name: build_py leaves the setup script out of the package it sits in (the root is `finegrain`);
    # under a build backend it would otherwise name the backend's runner and finegrain/setup.py would ship.
    setup(packages=packages(), script_name=os.path.relpath(ROOT / "setup.py"))
