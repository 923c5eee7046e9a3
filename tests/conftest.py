"""Shared fixtures: one real local stack (Ray head + MLflow server) per test session.

Extend this file; don't replace it. Every test that needs Ray or MLflow uses
``stack`` (Ray is connected in this process with the stack's auth token and
MLFLOW_TRACKING_URI points at the real server). Small simulated data sets are
session fixtures too, so the suite simulates each only once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def stack_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("finegrain-home")


@pytest.fixture(scope="session")
def stack(stack_home):
    """A running LocalStack in a temporary state folder, connected in-process."""
    import ray

    from finegrain.platform.services.stack import LocalStack, connect_ray

    local = LocalStack(stack_home)
    st = local.up(dashboard_port=28265, mlflow_port=25000)
    old = {k: os.environ.get(k) for k in ("FINEGRAIN_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["FINEGRAIN_HOME"] = str(stack_home)
    os.environ["MLFLOW_TRACKING_URI"] = st.mlflow_uri
    if ray.is_initialized():
        ray.shutdown()
    connect_ray(stack_home)
    yield st
    ray.shutdown()
    local.down()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def adp_sim(stack, tmp_path_factory) -> Path:
    """Two short ADP replicas simulated through Ray (50 frames each, 1 ps apart)."""
    from finegrain.datasets.simulate import SimulationConfig, simulate

    out = tmp_path_factory.mktemp("adp-sim") / "sim"
    return simulate(SimulationConfig("adp", ns=0.05, replicas=2, seed=7, equilibration_ps=2.0), out)


@pytest.fixture(scope="session")
def adp_shards(adp_sim, tmp_path_factory) -> Path:
    """``adp_sim`` ingested with the backbone6 mapping, 20 frames per shard."""
    from finegrain.tests.helpers import ingested

    return ingested(adp_sim, "backbone6", tmp_path_factory, "adp-shards")


@pytest.fixture(scope="session")
def chignolin_sim(stack, tmp_path_factory) -> Path:
    """Two very short chignolin (CLN025, 166 atoms) replicas through Ray (20 frames each, 1 ps apart, OpenMM
    CPU platform): replica 0 starts folded (5AWL), replica 1 from an unfolded state made with a 0.1 ps
    hot run and 20 minimiser iterations instead of the built-in unfolding (5 ps chunks at 800 K until the
    C-alpha RMSD to 5AWL is >= 0.45 nm: minutes) and full minimisation: seconds on the Reference platform."""
    from finegrain.datasets.simulate import SimulationConfig, simulate
    from finegrain.datasets.systems import available_systems

    out = tmp_path_factory.mktemp("chignolin-sim") / "sim"
    chig = dict(available_systems()["chignolin"], name="chignolin")
    chig["starting_states"] = dict(chig["starting_states"], unfold=dict(chig["starting_states"]["unfold"], ps=0.1,
                                                                           min_ca_rmsd_nm=0.0, max_iterations=20))
    cfg = SimulationConfig(chig, ns=0.02, replicas=2, seed=11, equilibration_ps=0.5, platform="CPU")
    return simulate(cfg, out)


@pytest.fixture(scope="session")
def chignolin_shards(chignolin_sim, tmp_path_factory) -> Path:
    """``chignolin_sim`` ingested with the 10-bead C-alpha mapping (``ca``)."""
    from finegrain.tests.helpers import ingested

    return ingested(chignolin_sim, "ca", tmp_path_factory, "chignolin-shards")
