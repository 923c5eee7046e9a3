"""Martini/backward ``.map`` and GROMACS ``.ndx`` mappings against hand-built matrices and the YAML spec language."""

import mdtraj as md
import numpy as np
import pytest

from finegrain.datasets.systems import get_system
from finegrain.platform.science.mapping import CGMapping, MappingError
from finegrain.platform.science.mapping_formats import (
    mapping_from_backward, mapping_from_file, mapping_from_ndx, read_backward_map, read_ndx,
)

# CHARMM36 residue CUME (openmm/app/data/charmm36.xml), in its atom order: ring CA1..CA6 (CA4 carries
# the isopropyl) with HA1..HA6 (no HA4), the CH carbon C4 + H41, methyls C3/H31-33 and C5/H51-53.
CUME_ATOMS = ["CA1", "HA1", "CA2", "HA2", "CA3", "HA3", "CA4", "CA5", "HA5", "CA6", "HA6",
              "C4", "H41", "C3", "H31", "H32", "H33", "C5", "H51", "H52", "H53"]
N_CUME = len(CUME_ATOMS)  # 21

# DeepBackmap's cumene mapping (Stieffenhofer, Wand and Bereau (2020), Adversarial reverse mapping of
# equilibrated condensed-phase molecular structures): ring bead R, and two beads A1/A2 that each hold
# one methyl and share the CH carbon (and its H). Atom lines out of topology order on purpose; H41 names
# no bead, so it inherits C4's (backward's rule); the modifier sections are parsed and kept.
CUME_MAP = """\
; cumene, three beads
[ molecule ]
CUME
[ martini ]
R A1 A2
[ mapping ]
charmm36
[ atoms ]
   14   C3   A1
   12   C4   A1 A2   ; shared: half in each
   13  H41
    1  CA1   R
    2  HA1   R
    3  CA2   R
    4  HA2   R
    5  CA3   R
    6  HA3   R
    7  CA4   R
    8  CA5   R
    9  HA5   R
   10  CA6   R
   11  HA6   R
   15  H31   A1
   16  H32   A1
   17  H33   A1
   18   C5   A2
   19  H51   A2
   20  H52   A2
   21  H53   A2
[ chiral ]
  H41  C4  CA4  C3  C5
[ out ]
  HA1 CA1 CA2 CA6
"""


def _cumene_topology(n_res=3):
    top = md.Topology()
    chain = top.add_chain()
    for r in range(n_res):
        res = top.add_residue("CUME", chain, resSeq=r + 1)
        for name in CUME_ATOMS:
            top.add_atom(name, md.element.hydrogen if name.startswith("H") else md.element.carbon, res)
    return top


def _cumene_xyz(n_res=3):
    """Hand-made coordinates (nm): a hexagonal ring of radius 0.14, H 0.11 further out, the isopropyl
    above CA4, each residue shifted by (1, 0.5, -0.3) and tilted a little so no two residues coincide."""
    ring = {f"CA{k}": (0.14 * np.cos(np.pi * (k - 1) / 3), 0.14 * np.sin(np.pi * (k - 1) / 3), 0.0)
            for k in range(1, 7)}
    pos = dict(ring)
    for k in (1, 2, 3, 5, 6):
        pos[f"HA{k}"] = tuple(1.8 * np.asarray(ring[f"CA{k}"]))
    pos.update({"C4": (-0.29, 0.0, 0.0), "H41": (-0.30, 0.0, 0.11),
                "C3": (-0.36, 0.12, -0.05), "H31": (-0.47, 0.12, -0.05), "H32": (-0.33, 0.21, 0.0),
                "H33": (-0.33, 0.13, -0.15),
                "C5": (-0.36, -0.12, -0.05), "H51": (-0.47, -0.12, -0.05), "H52": (-0.33, -0.21, 0.0),
                "H53": (-0.33, -0.13, -0.15)})
    base = np.array([pos[n] for n in CUME_ATOMS])
    frames = [base * (1 + 0.05 * r) + np.array([1.0, 0.5, -0.3]) * r for r in range(n_res)]
    return np.concatenate(frames)[None]  # [1, 3 * 21, 3]


def _hand_matrix(n_res=3):
    """R: the 11 ring atoms at 1/11 each; A1: C4 and H41 at 0.5/5 (split), C3 + 3 H at 1/5; A2 likewise."""
    c = np.zeros((3 * n_res, N_CUME * n_res))
    for r in range(n_res):
        o = N_CUME * r
        c[3 * r, o:o + 11] = 1 / 11
        c[3 * r + 1, [o + 11, o + 12]] = 0.1
        c[3 * r + 1, o + 13:o + 17] = 0.2
        c[3 * r + 2, [o + 11, o + 12]] = 0.1
        c[3 * r + 2, o + 17:o + 21] = 0.2
    return c


@pytest.fixture()
def cume_map(tmp_path):
    path = tmp_path / "cumene.map"
    path.write_text(CUME_MAP)
    return path


@pytest.fixture(scope="module")
def adp():
    return get_system("adp")


# -- (a) .map against hand computations ------------------------------------------------------------
def test_cumene_map_matrix_and_bead_positions(cume_map):
    top = _cumene_topology()
    m = mapping_from_backward(cume_map, top)
    assert m.name == "cumene"
    assert m.bead_names == ("CUME1-R", "CUME1-A1", "CUME1-A2", "CUME2-R", "CUME2-A1", "CUME2-A2",
                            "CUME3-R", "CUME3-A1", "CUME3-A2")
    np.testing.assert_allclose(m.matrix, _hand_matrix(), rtol=0, atol=1e-15)

    x = _cumene_xyz()
    y = m.map(x)
    at = {(r, n): x[0, N_CUME * r + i] for r in range(3) for i, n in enumerate(CUME_ATOMS)}
    for r in range(3):
        ring = CUME_ATOMS[:11]
        np.testing.assert_allclose(y[0, 3 * r], sum(at[r, n] for n in ring) / 11, atol=1e-14)
        for b, methyl in ((1, "3"), (2, "5")):
            members = [f"C{methyl}"] + [f"H{methyl}{k}" for k in (1, 2, 3)]
            expected = (0.5 * at[r, "C4"] + 0.5 * at[r, "H41"] + sum(at[r, n] for n in members)) / 5
            np.testing.assert_allclose(y[0, 3 * r + b], expected, atol=1e-14)
    # the beads give a PDB-writable CG topology (residue CUME n, atoms R, A1, A2)
    cg = m.cg_topology()
    assert [(a.residue.name, a.residue.resSeq, a.name) for a in cg.atoms][:3] == [("CUME", 1, "R"), ("CUME", 1, "A1"),
                                                                                 ("CUME", 1, "A2")]
    assert m.matches_bead_names(cg)


def test_cumene_map_mass_weights(cume_map):
    top = _cumene_topology(1)
    m = mapping_from_backward(cume_map, top, weights="mass")
    x = _cumene_xyz(1)[0]
    at = dict(zip(CUME_ATOMS, x))
    mc, mh = md.element.carbon.mass, md.element.hydrogen.mass
    ring_w = {n: (mh if n.startswith("H") else mc) for n in CUME_ATOMS[:11]}
    expected_r = sum(w * at[n] for n, w in ring_w.items()) / sum(ring_w.values())
    expected_a1 = ((0.5 * mc * at["C4"] + 0.5 * mh * at["H41"] + mc * at["C3"] + mh * (at["H31"] + at["H32"] + at["H33"]))
                   / (0.5 * mc + 0.5 * mh + mc + 3 * mh))
    y = m.map(x[None])[0]
    np.testing.assert_allclose(y[0], expected_r, atol=1e-14)
    np.testing.assert_allclose(y[1], expected_a1, atol=1e-14)


def test_map_sections_are_kept(cume_map):
    bmap = read_backward_map(cume_map)
    (mol,) = bmap.molecules
    assert (mol.names, mol.cg_model, mol.beads) == (("CUME",), "martini", ("R", "A1", "A2"))
    (block,) = mol.blocks
    assert block.forcefields == ("charmm36",)
    assert [(s, t) for s, _, t in block.modifiers] == [("chiral", ("H41", "C4", "CA4", "C3", "C5")),
                                                       ("out", ("HA1", "CA1", "CA2", "CA6"))]
    h41 = next(a for a in block.atoms if a.name == "H41")
    assert h41.beads == ("A1", "A2") and h41.shares() == {"A1": 0.5, "A2": 0.5}


def test_repeated_and_null_weight_beads(tmp_path):
    """vermouth/Martini 3 conventions: `C4 A1 A1 A2` puts 2/3 of C4 in A1 and 1/3 in A2; `!A1` makes H41
    a zero-weight member of A1 (all of it goes to A2)."""
    text = CUME_MAP.replace("C4   A1 A2", "C4   A1 A1 A2").replace("13  H41\n", "13  H41  !A1 A2\n")
    path = tmp_path / "cume2.map"
    path.write_text(text)
    m = mapping_from_backward(path, _cumene_topology(1))
    a1 = np.zeros(N_CUME)
    a1[11] = (2 / 3) / (2 / 3 + 4)
    a1[13:17] = 1 / (2 / 3 + 4)
    a2 = np.zeros(N_CUME)
    a2[11] = (1 / 3) / (1 / 3 + 1 + 4)
    a2[12] = 1 / (1 / 3 + 1 + 4)
    a2[17:21] = 1 / (1 / 3 + 1 + 4)
    np.testing.assert_allclose(m.matrix[1], a1, atol=1e-15)
    np.testing.assert_allclose(m.matrix[2], a2, atol=1e-15)


# -- (b) the same mapping in the YAML spec language ------------------------------------------------
def test_cumene_yaml_spec_gives_the_same_matrix(cume_map, tmp_path):
    top = _cumene_topology()
    lines = ["beads:"]
    for r in range(1, 4):
        ring = ", ".join(f"CUME{r}-{n}" for n in CUME_ATOMS[:11])
        lines.append(f"  - {{name: CUME{r}-R, atoms: [{ring}]}}")
        for bead, methyl in (("A1", "3"), ("A2", "5")):
            atoms = [f"CUME{r}-C4", f"CUME{r}-H41", f"CUME{r}-C{methyl}"] + [f"CUME{r}-H{methyl}{k}" for k in (1, 2, 3)]
            lines.append(f"  - {{name: CUME{r}-{bead}, atoms: [{', '.join(atoms)}], weights: [0.5, 0.5, 1, 1, 1, 1]}}")
    yaml_path = tmp_path / "cumene.yaml"
    yaml_path.write_text("\n".join(lines) + "\n")
    from_yaml = CGMapping.from_yaml(yaml_path, top)
    from_map = mapping_from_file(cume_map, top)
    assert from_yaml.bead_names == from_map.bead_names
    np.testing.assert_allclose(from_map.matrix, from_yaml.matrix, rtol=0, atol=1e-15)


# -- (c) .ndx and .map on alanine dipeptide, through ReferenceSystem.mapping ------------------------
ADP_BACKBONE6_NDX = """\
[ C1 ]
5
[ N2 ]
7
[ CA2 ]
   9
[ C2 ]
15
[ N3 ]
17
[ CB2 ]
11
[ unused ]
1 2 3
4 5 6
"""


def test_adp_ndx_equals_shipped_backbone6(adp, tmp_path):
    path = tmp_path / "bb6.ndx"
    path.write_text(ADP_BACKBONE6_NDX)
    shipped = adp.mapping("backbone6")
    groups = ["C1", "N2", "CA2", "C2", "N3", "CB2"]
    m = mapping_from_ndx(path, adp.md_topology, groups=groups)
    assert m.bead_names == shipped.bead_names
    np.testing.assert_array_equal(m.matrix, shipped.matrix)
    # through the system (all groups are beads by default: 6 single atoms + 'unused')
    via_system = adp.mapping(str(path))
    np.testing.assert_array_equal(via_system.matrix[:6], shipped.matrix)
    np.testing.assert_allclose(via_system.matrix[6, :6], 1 / 6, atol=1e-15)
    assert read_ndx(path)["unused"] == ((1, 2, 3, 4, 5, 6), 13)


def test_ndx_shared_atoms_full_or_split(adp, tmp_path):
    path = tmp_path / "shared.ndx"
    path.write_text("[ a ]\n9 11\n[ b ]\n11 15\n")
    full = mapping_from_ndx(path, adp.md_topology)
    split = mapping_from_ndx(path, adp.md_topology, shared="split")
    np.testing.assert_allclose(full.matrix[0, [8, 10]], [0.5, 0.5])
    np.testing.assert_allclose(split.matrix[0, [8, 10]], [1 / 1.5, 0.5 / 1.5])
    np.testing.assert_allclose(split.matrix[1, [10, 14]], [0.5 / 1.5, 1 / 1.5])
    mass = mapping_from_ndx(path, adp.md_topology, weights="mass")
    top = adp.md_topology
    m_ca, m_cb = top.atom(8).element.mass, top.atom(10).element.mass
    np.testing.assert_allclose(mass.matrix[0, [8, 10]], [m_ca / (m_ca + m_cb), m_cb / (m_ca + m_cb)])


ADP_RESIDUES_MAP = """\
[ molecule ]
ACE
[ martini ]
B
[ atoms ]
1 H1 B
2 CH3
3 H2
4 H3
5 C
6 O

[ molecule ]
ALA
[ martini ]
B
[ atoms ]
1 N B
2 H B
3 CA B
4 HA B
5 CB B
6 HB1 B
7 HB2 B
8 HB3 B
9 C B
10 O B

[ molecule ]
NME
[ martini ]
B
[ atoms ]
1 N B
2 H B
3 C B
4 H1 B
5 H2 B
6 H3 B
"""


@pytest.mark.parametrize("weights", ["geometry", "mass"])
def test_adp_one_bead_per_residue_map_equals_per_residue_spec(adp, tmp_path, weights):
    path = tmp_path / "residues.map"
    path.write_text(ADP_RESIDUES_MAP)
    spec = CGMapping.from_spec({"per_residue": {"select": "all", "weights": weights}}, adp.md_topology)
    m = mapping_from_backward(path, adp.md_topology, weights=weights)
    assert m.bead_names == ("ACE1-B", "ALA2-B", "NME3-B")
    np.testing.assert_allclose(m.matrix, spec.matrix, rtol=0, atol=1e-15)
    if weights == "geometry":
        np.testing.assert_allclose(adp.mapping(str(path)).matrix, spec.matrix, rtol=0, atol=1e-15)


def test_several_atom_blocks_pick_the_one_that_fits(adp, tmp_path):
    alt = ADP_RESIDUES_MAP.replace("ALA\n[ martini ]\nB\n[ atoms ]\n",
                                   "ALA\n[ martini ]\nB\n[ mapping ]\ngromos\n[ atoms ]\n1 N B\n2 H B\n3 CA B\n"
                                   "4 CB B\n5 C B\n6 O B\n[ mapping ]\namber\n[ atoms ]\n")
    path = tmp_path / "alt.map"
    path.write_text(alt)
    m = mapping_from_backward(path, adp.md_topology)  # the gromos block lacks the H's: amber block chosen
    np.testing.assert_allclose(m.matrix[1, 6:16], 0.1)
    sub = mapping_from_backward(path, adp.md_topology, forcefield="gromos", allow_unmapped=True)
    np.testing.assert_allclose(sub.matrix[1, [6, 7, 8, 10, 14, 15]], 1 / 6)
    with pytest.raises(MappingError, match=r"alt\.map:\d+: .*no \[ mapping \] block for force field 'x'"):
        mapping_from_backward(path, adp.md_topology, forcefield="x")


# -- (d) bad input names the file and the line / group / residue / atom ---------------------------
@pytest.mark.parametrize(
    "edit, message",
    [
        (("   18   C5   A2", "   18   C9   A2"),
         r"bad\.map:26: atom 'C9' is not in residue 0 \(CUME1\) of the topology"),
        (("   21  H53   A2\n", ""), r"bad\.map: atom\(s\) H53 of residue 0 \(CUME1\) are not in the \[ atoms \] block"),
        (("   21  H53   A2", "   21  H53   A3"), r"bad\.map:29: atom 'H53': bead 'A3' is not in \[ martini \]"),
        (("   21  H53   A2", "   21  H53   A2 !A2"), r"bad\.map:29: atom 'H53' is mapped to 'A2' both with and without"),
        (("   21  H53   A2", "   21  H31   A2"), r"bad\.map:29: atom 'H31' listed twice"),
        (("   21  H53   A2", "   xx  H53   A2"), r"bad\.map:29: \[ atoms \] atom number 'xx' is not an integer"),
        (("   14   C3   A1", "   14   C3"), r"bad\.map:9: atom 'C3' names no bead"),
        (("CUME\n", "BENZ\n"), r"bad\.map: no \[ molecule \] for residue 0 \(CUME1\) of the topology"),
        (("R A1 A2", "R A1 A2 A3"), r"bad\.map:2: bead 'A3' of molecule CUME gets no atom .* residue 0 \(CUME1\)"),
        (("R A1 A2", "R A1 A1"), r"bad\.map:5: bead 'A1' listed twice"),
        (("[ atoms ]", "[ atoms"), r"bad\.map:8: malformed section header"),
    ],
)
def test_bad_map_files_name_file_line_residue_atom(tmp_path, edit, message):
    old, new = edit
    assert old in CUME_MAP
    path = tmp_path / "bad.map"
    path.write_text(CUME_MAP.replace(old, new, 1))
    with pytest.raises(MappingError, match=message):
        mapping_from_backward(path, _cumene_topology())


def test_unmapped_atoms_and_residues_can_be_allowed(tmp_path, adp):
    path = tmp_path / "ala_only.map"
    path.write_text("[ molecule ]\nALA\n[ martini ]\nBB\n[ atoms ]\n1 N BB\n3 CA BB\n9 C BB\n")
    with pytest.raises(MappingError, match=r"no \[ molecule \] for residue 0 \(ACE1\)"):
        mapping_from_backward(path, adp.md_topology)
    m = mapping_from_backward(path, adp.md_topology, allow_unmapped=True)
    assert m.bead_names == ("ALA2-BB",)
    np.testing.assert_allclose(m.matrix[0, [6, 8, 14]], 1 / 3)


@pytest.mark.parametrize(
    "text, kwargs, message",
    [
        ("[ a ]\n5 23\n", {}, r"bad\.ndx:1: group \[ a \]: atom number 23 out of range 1\.\.22"),
        ("[ a ]\n0\n", {}, r"bad\.ndx:1: group \[ a \]: atom number 0 out of range"),
        ("[ a ]\n5\n[ b ]\n[ c ]\n7\n", {}, r"bad\.ndx:3: group \[ b \] is empty"),
        ("[ a ]\n5\n[ b ]\n7\n[ a ]\n9\n", {}, r"bad\.ndx:5: duplicate group name \[ a \] \(first at line 1\)"),
        ("[ a ]\n5 x7\n", {}, r"bad\.ndx:2: group \[ a \]: 'x7' is not an atom number"),
        ("5 7\n[ a ]\n5\n", {}, r"bad\.ndx:1: atom numbers before any \[ group \]"),
        ("[ a ]\n5\n", {"groups": ["b"]}, r"bad\.ndx: no group \[ b \] \(groups: a\)"),
    ],
)
def test_bad_ndx_files_name_file_group_number(adp, tmp_path, text, kwargs, message):
    path = tmp_path / "bad.ndx"
    path.write_text(text)
    with pytest.raises(MappingError, match=message):
        mapping_from_ndx(path, adp.md_topology, **kwargs)


def test_empty_group_not_selected_is_fine(adp, tmp_path):
    path = tmp_path / "e.ndx"
    path.write_text("[ a ]\n5\n[ empty ]\n")
    assert mapping_from_ndx(path, adp.md_topology, groups=["a"]).bead_names == ("a",)


def test_unknown_file_suffix(adp, tmp_path):
    path = tmp_path / "m.txt"
    path.write_text("")
    with pytest.raises(MappingError, match=r"m\.txt: unknown format '\.txt'"):
        mapping_from_file(path, adp.md_topology)
    with pytest.raises(MappingError, match=r"or give a \.yaml, \.map or \.ndx file"):
        adp.mapping(str(path))
