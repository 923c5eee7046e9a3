"""Evaluation features declared in the systems YAML: values against mdtraj, and which sets a mapping fixes
against the fibre itself (moving the atoms the beads leave free changes a free feature, never a fixed one)."""

from __future__ import annotations

import mdtraj as md
import numpy as np
import pytest

from finegrain.datasets.systems import get_system
from finegrain.platform.science.metrics.features import FeatureSet, fixed_by_mapping, parse_feature_sets


def _frames(system, n: int = 8, seed: int = 0) -> np.ndarray:
    """The system's starting coordinates jiggled by 0.02 nm: [n, N, 3] nm."""
    rng = np.random.default_rng(seed)
    return system.positions_nm[None] + rng.normal(scale=0.02, size=(n, *system.positions_nm.shape))


def test_adp_ramachandran_set_equals_mdtraj_phi_psi_and_the_hand_formula():
    s = get_system("adp")
    top, xyz = s.md_topology, _frames(s)
    rama = {f.name: f for f in s.feature_sets}["ramachandran"]
    v = rama.values(xyz, top)
    traj = md.Trajectory(xyz.astype(np.float32), top)
    np.testing.assert_allclose(v[:, 0], md.compute_phi(traj)[1][:, 0], atol=1e-5)
    np.testing.assert_allclose(v[:, 1], md.compute_psi(traj)[1][:, 0], atol=1e-5)
    # IUPAC dihedral of C(ACE)-N-CA-C by the textbook formula
    p = xyz[:, [4, 6, 8, 14]]
    b0, b1, b2 = p[:, 0] - p[:, 1], p[:, 2] - p[:, 1], p[:, 3] - p[:, 2]
    b1n = b1 / np.linalg.norm(b1, axis=1, keepdims=True)
    vv = b0 - np.sum(b0 * b1n, 1, keepdims=True) * b1n
    ww = b2 - np.sum(b2 * b1n, 1, keepdims=True) * b1n
    phi = np.arctan2(np.sum(np.cross(b1n, vv) * ww, 1), np.sum(vv * ww, 1))
    np.testing.assert_allclose(v[:, 0], phi, atol=1e-5)
    emb = rama.embedding(xyz, top)
    np.testing.assert_allclose(emb, np.concatenate([np.cos(v), np.sin(v)], 1))


@pytest.mark.parametrize("system,mapping", [("adp", "backbone6"), ("adp", "ca"), ("adp", "heavy"),
                                            ("chignolin", "ca"), ("chignolin", "residue_com")])
def test_fixed_sets_do_not_move_on_the_fibre_and_free_sets_do(system, mapping):
    """The declared 'fixed by the beads' equals what the fibre shows: sample x' = C+ C x + N eta and compare."""
    s = get_system(system)
    top, m = s.md_topology, s.mapping(mapping)
    x = _frames(s, n=6)
    y = m.map(x)
    x2 = m.sample_fibre(y, scale=0.05, seed=1)
    np.testing.assert_allclose(m.map(x2), y, atol=1e-9)  # the same beads
    for f in s.feature_sets:
        a, b = f.values(x, top), f.values(x2, top)
        diff = np.abs(np.angle(np.exp(1j * (a - b)))) if f.periodic else np.abs(a - b)
        if fixed_by_mapping(f, top, m):
            assert diff.max() < 1e-4, (f.name, diff.max())
        else:
            assert diff.max() > 1e-2, (f.name, diff.max())


def test_which_adp_sets_each_mapping_fixes():
    s = get_system("adp")
    top = s.md_topology
    fixed = {m: [f.name for f in s.feature_sets if fixed_by_mapping(f, top, s.mapping(m))] for m in s.mapping_specs}
    assert fixed["backbone6"] == fixed["backbone5"] == ["ramachandran"]  # phi/psi are functions of the beads
    assert fixed["ca"] == []  # one bead leaves phi/psi free: the Ramachandran plot is informative again
    assert fixed["heavy"] == ["ramachandran", "omega", "carbonyl_o"]


def test_chignolin_contacts_are_unique_pairs_separated_in_sequence():
    s = get_system("chignolin")
    top = s.md_topology
    sets = {f.name: f for f in s.feature_sets}
    assert len(sets["ca_distances"].atom_groups(top)) == 45  # 10 CA atoms: 10 * 9 / 2 pairs
    hb = np.array(sets["hbonds"].atom_groups(top))
    res = np.array([[top.atom(int(i)).residue.index for i in p] for p in hb])
    assert np.all(np.abs(res[:, 0] - res[:, 1]) >= 3) and len({tuple(p) for p in hb}) == len(hb)
    d = sets["hbonds"].values(_frames(s, 2), top)
    ref = md.compute_distances(md.Trajectory(_frames(s, 2).astype(np.float32), top), hb)
    np.testing.assert_allclose(d, ref, atol=1e-6)


@pytest.mark.parametrize("spec,words", [
    ({"x": {"dihedrals": [["ACE:C", "ALA:N", "ALA:CA"]]}}, "x.dihedrals: expected a non-empty list of 4-atom"),
    ({"x": {"backbone": ["phi", "tau"]}}, "x.backbone: expected names from"),
    ({"x": {"contacts": {"a": "name N"}}}, "x.contacts: expected keys a, b"),
    ({"x": {"dihedrals": [["A:B"] * 4], "backbone": ["phi"]}}, "x: expected exactly one of"),
    ({"x": {"dihedrals": [["ACE:C"] * 4], "labels": ["a", "b"]}}, "x.labels: 2 labels for 1 dihedrals"),
])
def test_bad_feature_specs_are_refused_naming_the_key(spec, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("[", r"\[")):
        parse_feature_sets(spec)


def test_an_unknown_atom_is_named():
    top = get_system("adp").md_topology
    with pytest.raises(ValueError, match="residue ALA1 has no atom 'CG'"):
        FeatureSet.from_dict("x", {"dihedrals": [["ALA:N", "ALA:CA", "ALA:CB", "ALA:CG"]]}).atom_groups(top)
    with pytest.raises(ValueError, match="no residue 'GLY'"):
        FeatureSet.from_dict("x", {"dihedrals": [["GLY:N", "ALA:CA", "ALA:CB", "ALA:CG"]]}).atom_groups(top)
