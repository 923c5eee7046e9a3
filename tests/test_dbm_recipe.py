"""DeepBackmap recipe (types, generation beads, DFS bead/atom order, bond-graph relations) on real topologies:
alanine dipeptide (backbone6), liquid cumene (three_bead, 125 molecules) and chignolin (ca, 166 atoms).

Every property is checked against an independent reference built here from mdtraj's bonds and the mapping
matrix (scipy shortest paths, neighbour counts, connectivity), not against recorded outputs.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, shortest_path

from finegrain.datasets.systems import get_system
from finegrain.platform.science.errors import InputError
from finegrain.platform.science.mapping import CGMapping
from finegrain.trainables.dbm.recipe import DBMRecipe, bead_type_name


def _case(system: str, mapping: str) -> dict:
    ref = get_system(system)
    top, cg = ref.md_topology, ref.mapping(mapping)
    return {"top": top, "mapping": cg, "recipe": DBMRecipe.from_topology(top, cg)}


@pytest.fixture(scope="module")
def adp():
    return _case("adp", "backbone6")


@pytest.fixture(scope="module")
def cumene():
    return _case("cumene", "three_bead")


@pytest.fixture(scope="module")
def chignolin():
    return _case("chignolin", "ca")


def _bond_pairs(top) -> np.ndarray:
    return np.array([[b[0].index, b[1].index] for b in top.bonds], np.int64)


def _graph_distance(top, atoms: np.ndarray) -> np.ndarray:
    """Bond-graph distances among ``atoms`` (capped at 4, inf -> 4) by scipy shortest paths."""
    pos = {int(a): k for k, a in enumerate(atoms)}
    pairs = [(pos[i], pos[j]) for i, j in _bond_pairs(top) if i in pos and j in pos]
    r, c = np.array(pairs).T
    g = coo_matrix((np.ones(len(r)), (r, c)), shape=(len(atoms), len(atoms)))
    d = shortest_path(g, directed=False, unweighted=True)
    return np.minimum(np.where(np.isfinite(d), d, 4), 4).astype(np.int64)


def _all_pairs(recipe, atoms):
    return recipe.relation(atoms, np.broadcast_to(atoms, (len(atoms), len(atoms))))


@pytest.mark.parametrize("case", ["adp", "chignolin"])
def test_relation_matches_scipy_shortest_paths_in_one_molecule(case, request):
    c = request.getfixturevalue(case)
    r, top = c["recipe"], c["top"]
    atoms = np.arange(top.n_atoms)
    np.testing.assert_array_equal(_all_pairs(r, atoms), _graph_distance(top, atoms))
    assert r.dist_flat.dtype == np.int8 and r.dist_flat.size == top.n_atoms ** 2


def test_relation_on_the_liquid_is_small_and_matches_across_molecules(cumene):
    r, top = cumene["recipe"], cumene["top"]
    assert r.dist_flat.size == 125 * 21 * 21 and r.dist_flat.nbytes < 100_000
    atoms = np.arange(42)  # molecules 0 and 1: the cross-molecule block must read 4
    ref = _graph_distance(top, atoms)
    assert (ref[:21, 21:] == 4).all()
    np.testing.assert_array_equal(_all_pairs(r, atoms), ref)
    far = np.array([[5, top.n_atoms - 1, -1]])
    np.testing.assert_array_equal(r.relation(np.array([5]), far), [[0, 4, -1]])


def _reference_types(top) -> list[str]:
    heavy = {a.index: a.element.symbol != "H" for a in top.atoms}
    count = {a.index: [0, 0] for a in top.atoms}
    for i, j in _bond_pairs(top):
        count[i][0 if heavy[j] else 1] += 1
        count[j][0 if heavy[i] else 1] += 1
    return [f"{a.element.symbol}{count[a.index][0]}h{count[a.index][1]}" for a in top.atoms]


@pytest.mark.parametrize("case", ["adp", "cumene", "chignolin"])
def test_atom_types_count_heavy_and_hydrogen_neighbours(case, request):
    c = request.getfixturevalue(case)
    r, top = c["recipe"], c["top"]
    got = [r.type_names[t] for t in r.atom_type]
    assert got == _reference_types(top)
    assert list(r.type_names) == sorted(set(got))
    assert r.is_hydrogen.tolist() == [a.element.symbol == "H" for a in top.atoms]
    assert r.atom_labels == tuple(str(a) for a in top.atoms)


def test_cumene_types_are_transferable_between_molecules(cumene):
    r, top = cumene["recipe"], cumene["top"]
    per_mol = r.atom_type.reshape(125, 21)
    assert (per_mol == per_mol[0]).all()
    names = [a.name for a in top.residue(0).atoms]
    kind = {n: r.type_names[t] for n, t in zip(names, per_mol[0])}
    assert {kind[n] for n in ("CA1", "CA2", "CA3", "CA5", "CA6")} == {"C2h1"}
    assert kind["C3"] == kind["C5"] == "C1h3" and kind["CA4"] == "C3h0" and kind["C4"] == "C3h1"
    assert r.bead_type_names == ("I", "RF", "RI")


def _check_order(r, top, mapping):
    n = top.n_atoms
    assert sorted(r.atom_order.tolist()) == list(range(n))
    rows = [row[row >= 0] for row in r.bead_atoms]
    assert np.concatenate([rows[b] for b in r.bead_order]).tolist() == r.atom_order.tolist()
    assert sorted(r.bead_order.tolist()) == list(range(r.n_beads))
    bonded = set(map(tuple, _bond_pairs(top))) | {(j, i) for i, j in _bond_pairs(top)}
    where = {int(b): k for k, b in enumerate(r.bead_order)}
    for b, row in enumerate(rows):
        assert (r.atom_bead[row] == b).all() and len(row) == (r.atom_bead == b).sum()
        h = r.is_hydrogen[row]
        assert not (h[:-1] & ~h[1:]).any()  # heavy atoms first
        heavy = row[~h]
        p = r.bead_parent[b]
        if p >= 0:
            assert where[int(p)] < where[b] and r.bead_molecule[p] == r.bead_molecule[b]
            assert r.bead_rank[b] > r.bead_rank[p]
            linked = [a for a in heavy if any((a, x) in bonded for x in np.flatnonzero(r.atom_bead == p))]
            if linked:
                assert heavy[0] == min(linked)
        elif heavy.size:
            assert r.bead_rank[b] == 0
            w = mapping.matrix[b, heavy]
            assert heavy[0] == heavy[int(np.argmax(w))]  # largest weight, lowest index on ties
        if heavy.size > 1:
            sub = np.array([[(a, x) in bonded for x in heavy] for a in heavy])
            if connected_components(sub, directed=False)[0] == 1:
                for k in range(1, len(heavy)):  # DFS: every later atom hangs off an earlier one
                    assert sub[k, :k].any(), (b, heavy)


@pytest.mark.parametrize("case", ["adp", "cumene", "chignolin"])
def test_atom_and_bead_order(case, request):
    c = request.getfixturevalue(case)
    _check_order(c["recipe"], c["top"], c["mapping"])


def test_cumene_three_bead_generation_beads_and_axes(cumene):
    r, top, cg = cumene["recipe"], cumene["top"], cumene["mapping"]
    assert r.n_molecules == 125 and r.molecule.max() == 124 and r.n_beads == 375
    assert set(r.bead_rank.tolist()) == {0, 1, 2} and (r.axis_bead >= 0).all()
    assert (cg.matrix[r.atom_bead, np.arange(top.n_atoms)] > 0).all()
    assert (r.bead_molecule == np.repeat(np.arange(125), 3)).all()
    # the ring-fragment bead (one neighbour) is the root, the ring-ipso bead next, the isopropyl bead last
    assert [cg.bead_names[b] for b in r.bead_order[:3]] == ["CUM1-RF", "CUM1-RI", "CUM1-I"]


def test_adp_backbone6_assignment_and_bead_graph(adp):
    r, top, cg = adp["recipe"], adp["top"], adp["mapping"]
    assert (r.atom_bead >= 0).all() and r.n_atoms == 22 and r.max_bead_atoms == 6
    for i, j in _bond_pairs(top):  # every hydrogen is generated by the bead of its heavy atom
        for h, x in ((i, j), (j, i)):
            if r.is_hydrogen[h]:
                assert r.atom_bead[h] == r.atom_bead[x]
    k = {name: n for n, name in enumerate(cg.bead_names)}
    edges = {frozenset((k[a], k[b])) for a, b in (("C1", "N2"), ("N2", "CA2"), ("CA2", "C2"), ("C2", "N3"),
                                                  ("CA2", "CB2"))}
    got = {frozenset((b, int(c))) for b, row in enumerate(r.bead_neighbours) for c in row if c >= 0}
    assert got == edges
    assert [r.bead_type_names[t] for t in r.bead_type] == ["C", "N", "CA", "C", "N", "CB"]
    assert r.bead_parent[k["C1"]] == -1 and r.axis_bead[k["C1"]] == k["N2"] and r.bead_parent[k["CB2"]] == k["CA2"]


def test_round_trip_through_json(cumene, adp):
    for r in (adp["recipe"], cumene["recipe"]):
        back = DBMRecipe.from_dict(json.loads(json.dumps(r.to_dict())))
        for name, value in vars(r).items():
            got = getattr(back, name)
            if isinstance(value, np.ndarray):
                assert got.dtype == value.dtype and got.shape == value.shape and np.array_equal(got, value), name
                assert not got.flags.writeable
            else:
                assert got == value, name


def test_require_types(cumene, adp):
    r = cumene["recipe"]
    a, b = r.require_types(r.type_names, r.bead_type_names, "own")
    np.testing.assert_array_equal(a, r.atom_type)
    np.testing.assert_array_equal(b, r.bead_type)
    vocab = list(reversed(r.type_names))
    a, _ = r.require_types(vocab, r.bead_type_names, "reordered")
    assert [vocab[t] for t in a] == [r.type_names[t] for t in r.atom_type]
    with pytest.raises(InputError) as e:
        r.require_types([t for t in vocab if t != "C2h1"], r.bead_type_names, "model 'dbm-adp'")
    assert "model 'dbm-adp'" in str(e.value) and "CUM1-CA1" in str(e.value) and "C2h1" in str(e.value)
    with pytest.raises(InputError) as e:  # ADP's beads are not cumene's
        r.require_types(r.type_names, adp["recipe"].bead_type_names, "model 'x'")
    assert "CUM1-RI" in str(e.value) and "'RI'" in str(e.value)


def test_a_bead_across_two_molecules_is_refused(cumene):
    top, cg = cumene["top"], cumene["mapping"]
    row = np.zeros(top.n_atoms)
    row[[20, 21]] = 0.5  # the last atom of molecule 0 and the first of molecule 1
    bad = CGMapping("bad", np.vstack([cg.matrix, row]), cg.bead_names + ("BRIDGE",))
    with pytest.raises(InputError, match="BRIDGE"):
        DBMRecipe.from_topology(top, bad)


def test_an_unreachable_atom_is_refused_on_a_duck_typed_topology():
    class Atom(SimpleNamespace):
        def __str__(self) -> str:
            return self.label

    atoms = [Atom(index=i, element=SimpleNamespace(symbol=s), label=lab)
             for i, (s, lab) in enumerate((("C", "MOL1-C1"), ("H", "MOL1-H1"), ("O", "MOL1-O9")))]
    top = SimpleNamespace(atoms=atoms, bonds=[(atoms[0], atoms[1])])
    ok = DBMRecipe.from_topology(top, CGMapping("m", np.array([[1.0, 0, 0], [0, 0, 1.0]]), ("C1", "O9")))
    assert ok.type_names == ("C0h1", "H1h0", "O0h0") and ok.atom_bead.tolist() == [0, 0, 1]
    with pytest.raises(InputError, match="MOL1-O9"):
        DBMRecipe.from_topology(top, CGMapping("m", np.array([[1.0, 0, 0]]), ("C1",)))


@pytest.mark.parametrize("name, want", [("C1", "C"), ("CA2", "CA"), ("CUM3-RI", "RI"), ("RI", "RI"),
                                        ("ALA2-CB", "CB"), ("12", "12")])
def test_bead_type_names(name, want):
    assert bead_type_name(name) == want


def test_shared_atoms_connect_beads_and_go_to_the_heaviest_bead():
    ref = get_system("cumene")
    top, cg = ref.md_topology, ref.mapping("dbm")  # A1 and A2 share C4 and H41
    r = DBMRecipe.from_topology(top, cg)
    w = cg.matrix
    has = (w != 0).any(0)
    np.testing.assert_array_equal(r.atom_bead[has], np.argmax(w, axis=0)[has])
    k = {name: n for n, name in enumerate(cg.bead_names)}
    assert k["CUM1-A2"] in r.bead_neighbours[k["CUM1-A1"]]
    _check_order(r, top, cg)
