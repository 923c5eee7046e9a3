"""CG mappings against hand computations and the seed-000 fibre identities."""

import mdtraj as md
import numpy as np
import pytest

from finegrain.datasets.systems import get_system
from finegrain.platform.science.mapping import CGMapping, MappingError


@pytest.fixture(scope="module")
def adp():
    return get_system("adp")


def test_centre_of_mass_equals_hand_computation(adp):
    top = adp.md_topology
    mapping = CGMapping.from_spec({"per_residue": {"select": "all", "weights": "mass"}}, top, name="com")
    xyz = adp.positions_nm[None]
    y = mapping.map(xyz)
    # hand computation, residue by residue, with element masses
    for b, res in enumerate(top.residues):
        idx = [a.index for a in res.atoms]
        m = np.array([top.atom(i).element.mass for i in idx])
        expected = (m[:, None] * xyz[0, idx]).sum(0) / m.sum()
        np.testing.assert_allclose(y[0, b], expected, rtol=0, atol=1e-12)
    assert mapping.bead_names == ("ACE1", "ALA2", "NME3")


def test_slices_geometry_and_explicit_weights(adp):
    top = adp.md_topology
    ca = int(top.select("name CA")[0])
    cb = int(top.select("name CB")[0])
    spec = {
        "beads": [
            {"name": "CA", "atoms": ["ALA2-CA"]},
            {"name": "mid", "atoms": [ca, cb]},
            {"name": "w", "atoms": [ca, cb], "weights": [3, 1]},
        ]
    }
    m = CGMapping.from_spec(spec, top)
    x = adp.positions_nm[None]
    y = m.map(x)
    np.testing.assert_array_equal(y[0, 0], x[0, ca])
    np.testing.assert_allclose(y[0, 1], 0.5 * (x[0, ca] + x[0, cb]), atol=1e-15)
    np.testing.assert_allclose(y[0, 2], 0.75 * x[0, ca] + 0.25 * x[0, cb], atol=1e-15)


def test_builtin_backbone6_is_the_seed_001_mapping(adp):
    m = adp.mapping("backbone6")
    top = adp.md_topology
    atoms = [top.atom(int(np.flatnonzero(row)[0])) for row in m.matrix]
    assert [(a.residue.name, a.name) for a in atoms] == [
        ("ACE", "C"), ("ALA", "N"), ("ALA", "CA"), ("ALA", "C"), ("NME", "N"), ("ALA", "CB")
    ]


@pytest.mark.parametrize("name", ["backbone6", "backbone5", "ca", "heavy"])
def test_null_space_samples_map_back_exactly(adp, name):
    m = adp.mapping(name)
    rng = np.random.default_rng(0)
    y = rng.normal(size=(5, m.n_beads, 3))
    x = m.sample_fibre(y, scale=0.3, seed=1)
    np.testing.assert_allclose(m.map(x), y, atol=1e-12)
    basis = m.null_space()
    assert basis.shape == (m.n_atoms, m.n_atoms - m.n_beads)
    np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-12)  # orthonormal
    np.testing.assert_allclose(m.matrix @ basis, 0.0, atol=1e-12)  # in ker C
    # every AA frame is C+ y + N eta with eta = N^T x (the fibre decomposition is complete)
    x0 = adp.positions_nm[None]
    eta = np.einsum("ik,fic->fkc", basis, x0)
    np.testing.assert_allclose(m.fibre_points(m.map(x0), eta), x0, atol=1e-12)


def test_map_works_on_torch_and_commutes_with_translation(adp):
    import torch

    m = adp.mapping("heavy")
    x = torch.tensor(adp.positions_nm[None])
    shift = torch.tensor([0.3, -1.0, 2.0], dtype=x.dtype)
    torch.testing.assert_close(m.map(x + shift), m.map(x) + shift)


def test_yaml_spec(tmp_path, adp):
    path = tmp_path / "two.yaml"
    path.write_text("beads:\n  - {name: A, select: 'name CA'}\n  - {name: B, select: 'name CB'}\n")
    m = CGMapping.from_yaml(path, adp.md_topology)
    assert (m.name, m.bead_names, m.n_beads) == ("two", ("A", "B"), 2)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"beads": [{"name": "X", "select": "name CQ"}]}, "matched no atom"),
        ({"beads": [{"name": "X", "atoms": ["QQ"]}]}, "unknown atom name 'QQ'"),
        ({"beads": [{"name": "X", "atoms": ["C"]}]}, "ambiguous atom name"),
        ({"beads": [{"name": "X", "atoms": [99]}]}, "out of range"),
        ({"beads": [{"name": "X", "atoms": [0, 1], "weights": [1]}]}, "1 weights for 2 atoms"),
        ({"per_atom": {"select": "name CA"}, "beads": []}, "exactly one of"),
    ],
)
def test_bad_specs_name_the_problem(adp, spec, message):
    with pytest.raises(MappingError, match=message):
        CGMapping.from_spec(spec, adp.md_topology, name="bad")


def test_wrong_atom_count_is_refused(adp):
    m = adp.mapping("backbone6")
    with pytest.raises(MappingError, match=r"expected shape \[\.\.\., 22, 3\]"):
        m.map(np.zeros((1, 21, 3)))
    with pytest.raises(MappingError, match="unknown mapping 'nope'"):
        adp.mapping("nope")


def test_chignolin_ca_mapping_has_ten_beads():
    chig = get_system("chignolin")
    m = chig.mapping("ca")
    assert m.n_beads == 10
    assert "".join(md.Topology.from_openmm(chig.topology).residue(i).code for i in range(10)) == "YYDPETGTWY"
    com = chig.mapping("residue_com")
    assert com.matrix.shape == (10, chig.n_atoms)
