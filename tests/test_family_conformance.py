"""Every registered backmapper family obeys the protocol (``trainables/protocol.py``).

Parametrised over ``protocol.FAMILIES`` and, for each family, over the variants its
:class:`~finegrain.trainables.protocol.Conformance` declares (its ``conformance`` entry,
e.g. ``trainables/flow/conformance.py``): a family registered without one fails
``test_every_registered_family_declares_its_conformance``. Models are the small
untrained (or fitted in milliseconds) ones the declarations build, on 60 frames of
ADP simulated in-process with OpenMM: no Ray, no MLflow.

What each family promises about rigid motions is declared with it (``equivariance``:
"exact", "translation" or "approximate" within ``equivariance_atol``) and asserted
here with the shared :mod:`finegrain.tests.assertions`, tolerance per compute dtype.
A "translation" family must not pass the exact rotation check by accident, and what
does hold (``maps_onto_cg``) holds for rotated inputs too; the flow's density is
additionally checked to be invariant under a joint rigid motion of x and y.
"""

from __future__ import annotations

import mdtraj as md
import numpy as np
import pytest
import torch

from finegrain.tests.helpers import replica_frames
from finegrain.platform.science.errors import InputError
from finegrain.tests.assertions import (
    assert_equivariant,
    assert_invariant,
    assert_maps_onto,
    equivariance_atol,
    move,
    random_rigid_motion,
)
from finegrain.trainables import protocol


@pytest.fixture(scope="module")
def adp(tmp_path_factory):
    """60 frames of ADP 1 ps apart (OpenMM in-process, ~3 s): 50 to fit, 10 held out."""
    ref, traj, _ = replica_frames(tmp_path_factory, "adp-conformance", ns=0.06, seed=5)
    x = traj.xyz.astype(np.float64)
    mapping = ref.mapping("backbone6")
    return {"top": ref.md_topology, "mapping": mapping, "train": x[:50], "test": x[50:], "n_atoms": ref.n_atoms,
            "system": "adp"}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models on a shared 2-core box: thread start-up costs more than the maths."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------ declarations
def _declared(family: str):
    """(the family's Conformance, None) or (None, why not): read through protocol.FAMILIES."""
    try:
        declared = protocol.FAMILIES[family].load_conformance()
    except Exception as exc:  # a wrong "module:NAME" fails that family's cases, not the whole module
        return None, f"its conformance {protocol.FAMILIES[family].conformance!r} does not load: {exc!r}"
    if declared is None:
        return None, ("it declares no conformance: set Family(conformance='module:NAME') in protocol.FAMILIES to "
                      "a protocol.Conformance in the family's folder (e.g. trainables/flow/conformance.py)")
    return declared, None


SPECS = {family: _declared(family)[0] for family in protocol.FAMILIES}
CASES = [pytest.param((f, v), id=f"{f}-{v}") for f in protocol.FAMILIES
         for v in (SPECS[f].variants if SPECS[f] is not None else ("?",))]
_BUILT: dict = {}


@pytest.fixture
def case(request, adp):
    family, variant = request.param
    spec, why = _declared(family)
    if spec is None:
        pytest.fail(f"family {family!r} is registered in protocol.FAMILIES but {why}")
    if (family, variant) not in _BUILT:
        _BUILT[family, variant] = spec.build(adp["top"], adp["mapping"], adp["train"], variant, adp["system"])
    bm = _BUILT[family, variant]
    assert bm.family == family and isinstance(bm, _registered_class(family))
    return family, variant, bm, adp


def _registered_class(family: str) -> type:
    """The Backmapper class protocol.FAMILIES names for a family ("module:Class", or an entry holding it)."""
    import importlib

    entry = protocol.FAMILIES[family]
    module, name = getattr(entry, "backmapper", entry).split(":")
    return getattr(importlib.import_module(module), name)


def _dtype(bm) -> np.dtype:
    """The dtype the family computes in (float32 networks, float64 baselines)."""
    for attr in ("flow", "model", "nets"):
        net = getattr(bm, attr, None)
        if isinstance(net, torch.nn.Module):
            return np.dtype(str(next(iter(net.state_dict().values())).dtype).replace("torch.", ""))
    return np.dtype(np.float64)


def test_every_registered_family_declares_its_conformance():
    missing = {family: _declared(family)[1] for family in protocol.FAMILIES if SPECS[family] is None}
    assert not missing, missing


parametrize = pytest.mark.parametrize("case", CASES, indirect=True)


# ------------------------------------------------------------------------------------------ tests
@parametrize
def test_output_shape_dtype_and_mdtraj_entry_point(case):
    family, variant, bm, d = case
    cg = d["mapping"].map(d["test"][:3])
    out = bm.backmap_xyz(cg, n_samples=2, seed=0)
    assert out.shape == (2, 3, d["n_atoms"], 3) and out.dtype == np.float64
    assert np.isfinite(out).all()
    bound = SPECS[family].maps_onto_cg(variant)
    if bound is not None:
        assert_maps_onto(d["mapping"], out, cg, bound, family)
    # the outputs are molecules near the input, not noise: every atom within 0.5 nm of the bead centroid's
    # reach (ADP spans < 1 nm)
    assert np.linalg.norm(out - cg.mean(1)[None, :, None], axis=-1).max() < 1.0
    traj = md.Trajectory(cg.astype(np.float32), d["mapping"].cg_topology())
    trajs = bm.backmap(traj, n_samples=2, seed=0)
    assert len(trajs) == 2 and all(t.n_frames == 3 and t.topology.n_atoms == d["n_atoms"] for t in trajs)
    np.testing.assert_allclose(trajs[1].xyz, bm.backmap_xyz(traj.xyz, n_samples=2, seed=0)[1], atol=1e-6)


@parametrize
def test_seed_reproducibility_and_the_callers_rng_untouched(case):
    family, variant, bm, d = case
    cg = d["mapping"].map(d["test"][:2])
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    a = bm.backmap_xyz(cg, n_samples=2, seed=11)
    np.testing.assert_array_equal(bm.backmap_xyz(cg, n_samples=2, seed=11), a)
    # every family is stochastic (the protocol has no "deterministic" declaration; em adds seeded
    # placement noise): another seed, and the two samples of one call, differ
    assert np.abs(bm.backmap_xyz(cg, n_samples=2, seed=12) - a).max() > 1e-4
    assert np.abs(a[0] - a[1]).max() > 1e-4
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(x, y) for x, y in zip(np.random.get_state(), np_state))


@parametrize
def test_save_load_round_trip_same_outputs(case, tmp_path):
    family, variant, bm, d = case
    loaded = protocol.load_backmapper(bm.save(tmp_path / "model"))
    assert type(loaded) is type(bm) and loaded.family == family and loaded.label == bm.label
    assert loaded.frames_independent == bm.frames_independent
    cg = d["mapping"].map(d["test"][:3])
    expected = bm.backmap_xyz(cg, n_samples=2, seed=5)
    # the temporal cVAE keeps its seed bank in float32 (weights.pt), so its AA(-1) moves by round-off
    atol = 1e-5 if (family, variant) == ("cvae", "temporal") else 0.0
    np.testing.assert_allclose(loaded.backmap_xyz(cg, n_samples=2, seed=5), expected, rtol=0, atol=atol)
    for name in ("backmapper.json", "topology.pdb", "weights.pt"):
        assert (tmp_path / "model" / name).is_file()


@parametrize
def test_bad_input_is_refused_naming_the_argument(case):
    family, variant, bm, d = case
    cg = d["mapping"].map(d["test"][:3])
    with pytest.raises(InputError) as err:
        bm.backmap_xyz(cg[:, :5], seed=0)
    msg = str(err.value)
    assert msg.startswith("cg_xyz") and "5 beads" in msg and "'backbone6' has 6" in msg, msg
    bad = cg.copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(InputError) as err:
        bm.backmap_xyz(bad, seed=0)
    msg = str(err.value)
    assert msg.startswith("cg_xyz") and "frame 1" in msg and "bead 2" in msg, msg
    with pytest.raises(InputError, match="^n_samples"):
        bm.backmap_xyz(cg, n_samples=0, seed=0)
    with pytest.raises(InputError, match="^cg_traj: 5 beads"):
        bm.backmap(md.Trajectory(cg[:, :5].astype(np.float32), d["mapping"].cg_topology().subset(range(5))))


@parametrize
def test_frames_independent_is_honoured(case):
    """``frames_independent``: each frame is backmapped on its own (no AA(t-1)), so frames may be batched.

    Declared True: AA(t-1) (``prev_aa_xyz``) is ignored and replacing one frame leaves the others'
    answers unchanged (asserted per seed: every family draws each frame's noise independently of the
    other frames' coordinates). Declared False: both change the answer (the declaration is not idle).
    """
    family, variant, bm, d = case
    m = d["mapping"]
    cg = m.map(d["test"][:3])
    other = cg.copy()
    other[0] = m.map(d["test"][7:8])[0]
    base = bm.backmap_xyz(cg, n_samples=2, seed=3, prev_aa_xyz=d["train"][-1:])
    with_prev = bm.backmap_xyz(cg, n_samples=2, seed=3, prev_aa_xyz=d["train"][-20:-19])
    replaced = bm.backmap_xyz(other, n_samples=2, seed=3, prev_aa_xyz=d["train"][-1:])
    assert np.abs(replaced[:, 0] - base[:, 0]).max() > 1e-3  # the replaced frame itself does change
    if bm.frames_independent:
        np.testing.assert_array_equal(with_prev, base)
        np.testing.assert_array_equal(replaced[:, 1:], base[:, 1:])
    else:
        assert np.abs(with_prev[:, 0] - base[:, 0]).max() > 1e-4  # frame 0 conditions on AA(-1)
        assert np.abs(replaced[:, 1] - base[:, 1]).max() > 1e-4  # frame 1 conditions on AA(0)
    assert bm.frames_independent is SPECS[family].frames_independent(variant)


@parametrize
def test_rigid_motion_of_the_cg_input_moves_the_output(case):
    family, variant, bm, d = case
    spec, m = SPECS[family], d["mapping"]
    cg = m.map(d["test"][:2])
    rot, shift = random_rigid_motion(seed=2)
    atol = spec.equivariance_atol if spec.equivariance == "approximate" else equivariance_atol(_dtype(bm))

    def sample(y):  # temporal families seed AA(-1) from y (cVAE: the bank frame superposed onto y)
        return bm.backmap_xyz(y, n_samples=2, seed=4)

    no_rotation = np.eye(3)
    assert_equivariant(sample, cg, no_rotation, shift, atol, f"{family}-{variant} translation")
    if spec.equivariance in ("exact", "approximate"):
        assert_equivariant(sample, cg, rot, shift, atol, f"{family}-{variant} rotation")
        return
    # not equivariant per sample under rotations: it must not pass the exact check by accident
    # (else it should be declared "exact" above) ...
    with pytest.raises(AssertionError):
        assert_equivariant(sample, cg, rot, shift, atol)
    # ... but what does hold holds for rotated inputs too
    bound = spec.maps_onto_cg(variant)
    if bound is not None:
        moved = move(cg, rot, shift)
        assert_maps_onto(m, sample(moved), moved, bound, f"{family}-{variant} rotated")
    if family == "flow":  # q(R x + t | R y + t) = q(x | y): the density is equivariant
        aa = d["test"][:2]
        opts = {"divergence": "exact", "method": "rk4", "steps": 2}
        if bm.config.temporal:
            prev = d["test"][2:4]
            assert_invariant(lambda x, y, p: bm.log_likelihood(x, y, prev_aa_xyz=p, **opts), (aa, m.map(aa), prev),
                             rot, shift, 1e-3, "flow log-likelihood")
        else:
            assert_invariant(lambda x, y: bm.log_likelihood(x, y, **opts), (aa, m.map(aa)), rot, shift, 1e-3,
                             "flow log-likelihood")
