"""Optimal superposition (finegrain.platform.science.superposition) against mdtraj and known rotations."""

from __future__ import annotations

import mdtraj as md
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from finegrain.platform.science.superposition import kabsch_rotations, pairwise_superposed_rmsd


def _trajectory(xyz: np.ndarray) -> md.Trajectory:
    top = md.Topology()
    residue = top.add_residue("BEA", top.add_chain())
    for i in range(xyz.shape[1]):
        top.add_atom(f"B{i}", md.element.carbon, residue)
    return md.Trajectory(xyz.astype(np.float32), top)


def test_kabsch_recovers_known_rotations():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(6, 3))
    rot = Rotation.random(4, random_state=1).as_matrix()
    mobile = np.einsum("nj,fij->fni", target, rot) + rng.normal(size=(4, 1, 3))  # target R_f^T + shift
    r = kabsch_rotations(mobile, target)  # should undo R_f
    np.testing.assert_allclose(np.einsum("fij,fjk->fik", r, rot), np.broadcast_to(np.eye(3), (4, 3, 3)), atol=1e-10)
    assert np.allclose(np.linalg.det(r), 1.0)
    # one target per frame: the inverse rotations
    per_frame = kabsch_rotations(np.broadcast_to(target, (4, 6, 3)), mobile)
    np.testing.assert_allclose(per_frame, rot, atol=1e-10)


def test_pairwise_rmsd_matches_mdtraj_and_explicit_superposition():
    rng = np.random.default_rng(1)
    frames = 0.3 * rng.normal(size=(300, 7, 3))
    queries = frames[[3, 50, 299]] + 0.05 * rng.normal(size=(3, 7, 3)) + 1.0
    got = pairwise_superposed_rmsd(queries, frames, chunk=2)
    assert got.shape == (3, 300)
    reference = np.stack([md.rmsd(_trajectory(frames), _trajectory(q[None])) for q in queries])  # QCP, float32
    np.testing.assert_allclose(got, reference, atol=1e-4)
    for q, row in zip(queries, got):  # the SVD rotation applied, in float64
        rot = kabsch_rotations(frames, q)
        aligned = np.einsum("fij,fnj->fni", rot, frames - frames.mean(1, keepdims=True))
        explicit = np.sqrt(((aligned - (q - q.mean(0))) ** 2).sum(-1).mean(-1))
        np.testing.assert_allclose(row, explicit, atol=1e-9)
    assert list(got.argmin(axis=1)) == [3, 50, 299]


def test_rotated_copies_match_and_mirror_images_do_not():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 5, 3))
    moved = np.einsum("nj,ij->ni", x[0], Rotation.random(random_state=3).as_matrix())[None] + 2.0
    assert pairwise_superposed_rmsd(x, moved)[0, 0] < 1e-7
    mirror = x * np.array([-1.0, 1.0, 1.0])  # no proper rotation superposes a 3-d set onto its mirror image
    np.testing.assert_allclose(pairwise_superposed_rmsd(x, mirror), md.rmsd(_trajectory(mirror), _trajectory(x))[None],
                               atol=1e-5)  # fmt: skip
    assert pairwise_superposed_rmsd(x, mirror)[0, 0] > 0.1
    planar = x.copy()
    planar[..., 2] = 0.0  # ... but a planar one is its own mirror image up to a rotation
    assert pairwise_superposed_rmsd(planar, planar * np.array([-1.0, 1.0, 1.0]))[0, 0] < 1e-6


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="queries, frames"):
        pairwise_superposed_rmsd(np.zeros((2, 5, 3)), np.zeros((4, 6, 3)))


def test_two_points_align_their_axis_and_one_point_gives_the_identity():
    rng = np.random.default_rng(4)
    pair = rng.normal(size=(3, 2, 3))
    target = rng.normal(size=(2, 3))
    r = kabsch_rotations(pair, target)
    axis = np.einsum("fij,fj->fi", r, pair[:, 1] - pair[:, 0])
    expected = (target[1] - target[0]) / np.linalg.norm(target[1] - target[0])
    np.testing.assert_allclose(axis / np.linalg.norm(axis, axis=1, keepdims=True), np.broadcast_to(expected, (3, 3)),
                               atol=1e-10)  # fmt: skip
    assert np.allclose(np.linalg.det(r), 1.0)
    single = kabsch_rotations(rng.normal(size=(2, 1, 3)), target[:1])
    np.testing.assert_allclose(single, np.broadcast_to(np.eye(3), (2, 3, 3)))


def test_framewise_superposed_rmsd_equals_mdtraj_and_the_pairwise_diagonal():
    from finegrain.platform.science.superposition import superposed_rmsd

    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(6, 9, 3)), rng.normal(size=(6, 9, 3))
    got = superposed_rmsd(a, b)
    np.testing.assert_allclose(got, np.diag(pairwise_superposed_rmsd(a, b)), atol=1e-12)
    ref = [md.rmsd(_trajectory(a[f:f + 1]), _trajectory(b[f:f + 1]))[0] for f in range(6)]
    np.testing.assert_allclose(got, ref, atol=1e-4)  # mdtraj works in float32
