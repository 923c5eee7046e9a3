"""Shared physics assertions for the test suite (import as ``finegrain.tests.assertions``).

Rigid motions act on coordinates ``[..., n, 3]`` as x -> x R^T + t (R a proper
rotation, t a translation in nm). A map f from CG beads to AA atoms is
*equivariant* when f(R y + t) = R f(y) + t, and a quantity g is *invariant*
when g(R x + t) = g(x). Tolerances depend on the dtype the map computes in.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EQUIVARIANCE_ATOL_NM", "equivariance_atol", "random_rigid_motion", "move",
           "assert_equivariant", "assert_invariant", "assert_maps_onto"]

#: Largest coordinate deviation (nm) from exact equivariance that round-off explains, per compute dtype.
EQUIVARIANCE_ATOL_NM = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-8}


def equivariance_atol(dtype) -> float:
    """The tolerance (nm) of :data:`EQUIVARIANCE_ATOL_NM` for a numpy or torch dtype."""
    name = str(dtype).replace("torch.", "")
    return EQUIVARIANCE_ATOL_NM[np.dtype(name)]


def random_rigid_motion(seed: int, max_shift_nm: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A Haar-random proper rotation R [3, 3] and a translation t [3] (nm), reproducible from ``seed``."""
    from scipy.spatial.transform import Rotation

    rot = Rotation.random(random_state=seed).as_matrix()
    shift = np.random.default_rng(seed).uniform(-max_shift_nm, max_shift_nm, 3)
    assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-12) and np.linalg.det(rot) > 0.999
    return rot, shift


def move(x: np.ndarray, rot: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """x [..., n, 3] -> x R^T + t."""
    return np.asarray(x) @ np.asarray(rot).T + np.asarray(shift)


def assert_equivariant(fn, cg: np.ndarray, rot: np.ndarray, shift: np.ndarray, atol: float, what: str = "") -> None:
    """fn(cg R^T + t) == fn(cg) R^T + t within ``atol`` nm (fn: [T, n, 3] -> [..., T, N, 3]).

    The motion must move the input by far more than ``atol`` (else the check could not fail).
    """
    assert np.abs(move(cg, rot, shift) - cg).max() > 10 * atol, "the rigid motion is too small to test anything"
    expected = move(fn(cg), rot, shift)
    got = fn(move(cg, rot, shift))
    dev = float(np.abs(got - expected).max())
    assert got.shape == expected.shape and dev <= atol, \
        f"{what}: output of the moved input is {dev:.3g} nm from the moved output (tolerance {atol:.1g} nm)"


def assert_invariant(fn, arrays: tuple, rot: np.ndarray, shift: np.ndarray, atol: float, what: str = "") -> None:
    """fn(*arrays) == fn(*(a R^T + t for a in arrays)) within ``atol`` (each array [..., n, 3] nm)."""
    ref = np.asarray(fn(*arrays))
    got = np.asarray(fn(*(move(a, rot, shift) for a in arrays)))
    dev = float(np.abs(got - ref).max())
    assert got.shape == ref.shape and dev <= atol, f"{what}: changes by {dev:.3g} under a rigid motion (tolerance {atol:.1g})"


def assert_maps_onto(mapping, aa: np.ndarray, cg: np.ndarray, atol: float, what: str = "") -> None:
    """The mapping applied to AA frames [..., T, N, 3] gives back the CG frames [T, n, 3] within ``atol`` nm."""
    mapped = mapping.map(np.asarray(aa).reshape(-1, mapping.n_atoms, 3)).reshape(np.shape(aa)[:-2] + (mapping.n_beads, 3))
    dev = float(np.abs(mapped - np.broadcast_to(cg, mapped.shape)).max())
    assert dev <= atol, f"{what}: mapped output is {dev:.3g} nm from its CG input (tolerance {atol:.1g} nm)"
