"""Periodic RDFs and CG-projected forces against independent references: analytic ideal-gas statistics,
a simple cubic lattice's coordination shells, mdtraj's own compute_rdf, a brute-force numpy minimum
image over 125 images, hand-counted toys and hand-summed forces."""

import itertools

import mdtraj as md
import numpy as np
import pytest
import torch

from finegrain.platform.science.errors import InputError
from finegrain.platform.science.mapping import CGMapping
from finegrain.platform.science.metrics import plots
from finegrain.platform.science.metrics.forces import (
    compare_force_distributions,
    force_map_matrix,
    force_metrics,
    project_forces,
)
from finegrain.platform.science.metrics.rdf import (
    bead_molecule_ids,
    bead_type_labels,
    check_box,
    coordination_number,
    group_pairs,
    molecule_ids,
    pair_distance_counts,
    radial_distribution,
    rdf_counts_by_type,
    rdf_metrics,
    rdf_w1,
)


def _cubic(length: float, n_frames: int) -> np.ndarray:
    return np.broadcast_to(np.eye(3) * length, (n_frames, 3, 3)).copy()


def _hard_spheres(n_frames: int, n: int, length: float, sigma: float, seed: int) -> np.ndarray:
    """Random sequential addition of hard spheres (diameter sigma) in a periodic cube: a liquid-like
    g(r) with an excluded core and a first-shell peak."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_frames, n, 3))
    for f in range(n_frames):
        pts = np.empty((0, 3))
        while len(pts) < n:
            x = rng.random(3) * length
            d = pts - x
            d -= length * np.round(d / length)
            if len(pts) == 0 or np.min(np.sum(d * d, axis=1)) >= sigma ** 2:
                pts = np.vstack([pts, x])
        out[f] = pts
    return out


# (a) ideal gas ---------------------------------------------------------------------------------
def test_ideal_gas_g_is_one_within_the_binomial_error():
    """Uniform points in a periodic cube: for r < L/2 every pair lands in shell k with probability
    p_k = shell_k / V, and (translation invariance) pair indicators are uncorrelated even when they share
    a point, so the count is binomial: g_k = 1 +- sqrt((1 - p_k) / (F P p_k))."""
    rng = np.random.default_rng(0)
    n_frames, n, length = 20, 200, 2.0
    xyz = rng.random((n_frames, n, 3)) * length
    pairs = group_pairs(np.arange(n))
    assert len(pairs) == n * (n - 1) // 2
    c = pair_distance_counts(xyz, _cubic(length, n_frames), pairs, r_range=(0.2, 1.0), bin_width=0.02)
    g = c.g()
    p = (4 / 3) * np.pi * (c.edges[1:] ** 3 - c.edges[:-1] ** 3) / length ** 3
    sigma = np.sqrt((1 - p) / (n_frames * len(pairs) * p))
    z = (g - 1.0) / sigma
    assert np.max(np.abs(z)) < 4.5, z
    b = z.size
    assert abs(np.sum(z ** 2) - b) < 5 * np.sqrt(2 * b), np.sum(z ** 2)  # chi^2 with B degrees of freedom


# (b) simple cubic lattice -----------------------------------------------------------------------
def test_simple_cubic_lattice_peak_and_coordination_shells():
    """First peak at the spacing a (over the whole range g ties it with the second shell:
    6 / a^2 = 12 / (sqrt(2) a)^2); n(r) = int 4 pi rho r^2 g with rho = (N - 1) / V counts the 6, 12 and 8
    neighbours at a, sqrt(2) a and sqrt(3) a."""
    rng = np.random.default_rng(1)
    a, m, n_frames = 0.4, 6, 4
    grid = np.array(list(itertools.product(range(m), repeat=3)), dtype=np.float64) * a
    xyz = grid[None] + rng.normal(scale=0.004, size=(n_frames, len(grid), 3))
    length = m * a
    c = pair_distance_counts(xyz, _cubic(length, n_frames), group_pairs(np.arange(len(grid))),
                             r_range=(0.0, length / 2), bin_width=0.01)
    g = c.g()
    first = c.r < 0.5 * (1 + np.sqrt(2)) * a  # up to midway to the second shell
    assert abs(c.r[first][np.argmax(g[first])] - a) <= 0.01
    assert np.all(g[c.r < 0.35] == 0) and g[first].max() > 5  # nothing closer than the first shell
    n_r = coordination_number(g, c.edges, (len(grid) - 1) / length ** 3)
    for r_cut, expected in ((0.5, 6), (0.62, 18), (0.75, 26)):
        k = np.searchsorted(c.edges, r_cut) - 1  # n at the upper edge of the bin holding r_cut
        assert n_r[k] == pytest.approx(expected, rel=1e-9), (r_cut, n_r[k])


# (c) second implementations --------------------------------------------------------------------
def test_counts_match_mdtraj_and_a_brute_force_minimum_image_in_a_triclinic_box():
    rng = np.random.default_rng(2)
    n_frames, n = 3, 60
    box = np.array([[2.0, 0.0, 0.0], [0.5, 2.1, 0.0], [0.3, -0.4, 2.2]])
    boxes = np.stack([box * s for s in (1.0, 1.05, 0.97)])
    xyz = (rng.random((n_frames, n, 3)) @ box).astype(np.float32)
    pairs = rng.choice(n, size=(300, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    c = pair_distance_counts(xyz, boxes, pairs, r_range=(0.0, 0.9), bin_width=0.01)
    # brute force: wrap in fractional coordinates, then the nearest of 125 images
    x = xyz.astype(np.float64)
    d = x[:, pairs[:, 1]] - x[:, pairs[:, 0]]
    brute = []
    for f in range(n_frames):
        frac = d[f] @ np.linalg.inv(boxes[f])
        frac -= np.round(frac)
        images = np.array(list(itertools.product(range(-2, 3), repeat=3))) @ boxes[f]
        dist = np.linalg.norm((frac @ boxes[f])[:, None, :] + images[None], axis=-1).min(axis=1)
        brute.append(dist)
    brute = np.array(brute)
    expected = np.stack([np.histogram(b, bins=c.edges)[0] for b in brute])
    near_edge = np.sum(np.min(np.abs(brute[..., None] - c.edges), axis=-1) < 1e-5)  # float32 rounding
    assert np.abs(expected - c.counts).sum() <= near_edge
    assert expected.sum() > 100
    g_hand = expected.sum(0) / (len(pairs) * np.sum(1 / np.abs(np.linalg.det(boxes)))
                                * (4 / 3) * np.pi * np.diff(c.edges ** 3))
    np.testing.assert_allclose(c.g(), g_hand, rtol=0, atol=1e-9 + near_edge)
    traj = md.Trajectory(xyz, None)
    traj.unitcell_vectors = boxes
    r_md, g_md = md.compute_rdf(traj, pairs, r_range=(0.0, 0.9), n_bins=90)
    r, g = radial_distribution(xyz, boxes, pairs, r_range=(0.0, 0.9), bin_width=0.01)
    np.testing.assert_allclose(r, r_md, atol=1e-12)
    np.testing.assert_allclose(g, g_md, rtol=1e-12, atol=1e-12)


# (d) intramolecular exclusion --------------------------------------------------------------------
def _two_molecules():
    top = md.Topology()
    chain = top.add_chain()
    atoms = []
    for resname in ("AAA", "BBB"):
        res = top.add_residue(resname, chain)
        atoms += [top.add_atom("C1", md.element.carbon, res), top.add_atom("O1", md.element.oxygen, res)]
    top.add_bond(atoms[0], atoms[1])
    top.add_bond(atoms[2], atoms[3])
    xyz = np.array([[[0.0, 0.0, 0.0], [0.15, 0.0, 0.0], [0.0, 0.55, 0.0], [0.0, 0.96, 0.0]]]) + 1.0
    return top, xyz


def test_intramolecular_pairs_are_left_out_as_counted_by_hand():
    top, xyz = _two_molecules()
    mol = molecule_ids(top)
    np.testing.assert_array_equal(mol, [0, 0, 1, 1])
    np.testing.assert_array_equal(molecule_ids(top, by="residue"), [0, 0, 1, 1])
    box = _cubic(4.0, 1)
    edges = np.linspace(0.0, 1.2, 13)
    shell = (4 / 3) * np.pi * np.diff(edges ** 3)
    # distances: intra 0.15 (bin 1), 0.41 (bin 4); inter 0.55, 0.570 (bin 5), 0.96, 0.972 (bin 9)
    everything = pair_distance_counts(xyz, box, group_pairs(np.arange(4)), r_range=(0, 1.2), bin_width=0.1)
    inter = pair_distance_counts(xyz, box, group_pairs(np.arange(4), molecules=mol), r_range=(0, 1.2),
                                 bin_width=0.1)
    all_counts = np.zeros(12)
    all_counts[[1, 4, 5, 9]] = [1, 1, 2, 2]
    inter_counts = np.zeros(12)
    inter_counts[[5, 9]] = [2, 2]
    np.testing.assert_array_equal(everything.counts[0], all_counts)
    np.testing.assert_array_equal(inter.counts[0], inter_counts)
    assert (everything.n_pairs, inter.n_pairs) == (6, 4)
    np.testing.assert_allclose(everything.g(), all_counts / (6 / 64.0 * shell))
    np.testing.assert_allclose(inter.g(), inter_counts / (4 / 64.0 * shell))
    # per element: C-O pairs are 0-1 and 2-3 (intra), 0-3 and 1-2 (inter): inter C-O only at 0.96 and 0.570
    by_type = rdf_counts_by_type(xyz, box, [a.element.symbol for a in top.atoms], molecules=mol,
                                 r_range=(0, 1.2), bin_width=0.1)
    assert sorted(by_type) == ["C-C", "C-O", "O-O"]
    co = np.zeros(12)
    co[[5, 9]] = [1, 1]
    np.testing.assert_array_equal(by_type["C-O"].counts[0], co)
    assert by_type["C-O"].n_pairs == 2
    with pytest.raises(InputError, match="molecules"):
        rdf_counts_by_type(xyz, box, ["C", "O", "C", "O"], r_range=(0, 1.2))
    both = rdf_counts_by_type(xyz, box, ["C", "O", "C", "O"], intermolecular=False, r_range=(0, 1.2), bin_width=0.1)
    assert both["C-O"].n_pairs == 4


def test_bead_labels_and_molecules_follow_the_mapping():
    top, _ = _two_molecules()
    mapping = CGMapping("res", np.array([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]]), ("AAA1", "BBB2"))
    np.testing.assert_array_equal(bead_molecule_ids(mapping, molecule_ids(top)), [0, 1])
    np.testing.assert_array_equal(bead_type_labels(["ALA2-CA", "CUME7", "X", "ALA12-CA"]),
                                  ["ALA-CA", "CUME", "X", "ALA-CA"])
    with pytest.raises(InputError, match="molecules"):
        bead_molecule_ids(np.array([[0.5, 0, 0.5, 0], [0, 1.0, 0, 0]]), molecule_ids(top))


# (e) floors and dilation ------------------------------------------------------------------------
def test_floor_is_near_zero_and_w1_grows_with_dilation():
    length, sigma = 2.5, 0.3
    ref = _hard_spheres(16, 150, length, sigma, seed=3)
    gen = _hard_spheres(16, 150, length, sigma, seed=4)
    labels = np.array(["A"] * 150)
    kw = dict(intermolecular=False, r_range=(0.0, 1.2), bin_width=0.01)
    box = _cubic(length, 16)
    same, curves = rdf_metrics(ref, box, ref, box, labels, n_boot=8, **kw)
    assert same["rdf_w1_nm"] == 0.0 and same["rdf_js"] == 0.0
    assert same["rdf_w1_nm_ci_hi"] < 1e-12
    floor = same["rdf_w1_nm_floor"]
    assert 0 < floor < 0.005  # halves of one ensemble: a few thousandths of a nm
    assert same["rdf_w1_nm_floor_ci_lo"] <= floor <= same["rdf_w1_nm_floor_ci_hi"]
    assert set(curves) == {"A-A"} and curves["A-A"]["reference"].shape == (120,)
    values = []
    for s in (1.0, 1.02, 1.05, 1.1, 1.2):
        m, _ = rdf_metrics(ref, box, gen * s, box * s, labels, n_boot=0, **kw)
        assert m["rdf_w1_nm_floor"] == floor
        values.append(m["rdf_w1_nm"])
    assert values[0] < 3 * floor  # an independent sample of the same liquid sits at the floor
    assert np.all(np.diff(values) > 0), values
    assert values[2] > 5 * floor
    # the W1 of a rigid shift of one peak is the shift
    edges = np.linspace(0.0, 1.0, 101)
    g1, g2 = np.zeros(100), np.zeros(100)
    g1[30], g2[37] = 1.0, 2.5
    assert rdf_w1(g1, g2, edges) == pytest.approx(0.07)


# (f) force projection -----------------------------------------------------------------------------
def test_projected_forces_are_the_hand_sums_of_each_beads_atoms():
    rng = np.random.default_rng(5)
    # bead 0: atoms 0-2 (mass weights), bead 1: atoms 3-4 (geometry), atom 5 in no bead
    c = np.array([[0.5, 0.25, 0.25, 0, 0, 0], [0, 0, 0, 0.5, 0.5, 0]])
    mapping = CGMapping("toy", c, ("A", "B"))
    f = rng.normal(size=(7, 6, 3)) * 300
    out = project_forces(f, mapping)
    np.testing.assert_allclose(out[:, 0], f[:, 0] + f[:, 1] + f[:, 2], rtol=1e-12)
    np.testing.assert_allclose(out[:, 1], f[:, 3] + f[:, 4], rtol=1e-12)
    const = np.broadcast_to(np.array([1.0, -2.0, 3.0]), (2, 6, 3))
    np.testing.assert_allclose(project_forces(const, mapping), [[[3, -6, 9], [2, -4, 6]]] * 2)
    np.testing.assert_allclose(project_forces(torch.tensor(f), mapping), out)
    np.testing.assert_array_equal(force_map_matrix(mapping), (c != 0).astype(float))
    with pytest.raises(InputError, match="more than one bead"):
        force_map_matrix(np.array([[0.5, 0.5, 0], [0, 0.5, 0.5]]))
    with pytest.raises(InputError, match="mapping, force_map"):
        project_forces(f)


def test_force_distribution_distances_and_floor():
    rng = np.random.default_rng(6)
    mapping = CGMapping("toy", np.kron(np.eye(4), [0.5, 0.5]), ("A1", "A2", "B3", "B4"))
    ref = rng.normal(scale=400.0, size=(200, 8, 3))
    gen = rng.normal(scale=400.0, size=(200, 8, 3))
    hot = rng.normal(scale=800.0, size=(200, 8, 3))
    types = bead_type_labels(mapping)
    same = compare_force_distributions(project_forces(ref, mapping), project_forces(ref, mapping), types)
    assert same["js_force_magnitude"] == 0.0 and same["w1_force_component_kj_mol_nm_B"] == 0.0
    m_gen = force_metrics(ref, gen, mapping, bead_types=types, n_boot=6)
    m_hot = force_metrics(ref, hot, mapping, bead_types=types, n_boot=0)
    for key in ("js_force_magnitude", "w1_force_magnitude_kj_mol_nm", "js_force_component_A"):
        floor = m_gen[f"{key}_floor"]
        assert m_hot[f"{key}_floor"] == floor > 0
        assert m_gen[key] < 3 * floor  # same distribution: at the floor
        assert m_hot[key] > 2 * max(m_gen[key], floor)
        assert m_gen[f"{key}_ci_lo"] <= m_gen[key] <= m_gen[f"{key}_ci_hi"]
    # bead forces of two atoms of sd 400: sd 400 sqrt(2) per component; hot: 800 sqrt(2); W1 of two
    # normals with the same mean is |sd_a - sd_b| sqrt(2 / pi)
    assert m_hot["w1_force_component_kj_mol_nm"] == pytest.approx(400 * np.sqrt(2) * np.sqrt(2 / np.pi), rel=0.1)


# (g) missing box ----------------------------------------------------------------------------------
def test_a_missing_box_is_refused_naming_the_argument():
    xyz = np.random.default_rng(7).random((2, 5, 3))
    with pytest.raises(InputError, match="box_nm"):
        radial_distribution(xyz, None, group_pairs(np.arange(5)))
    with pytest.raises(InputError, match="gen_box_nm"):
        rdf_metrics(xyz, _cubic(3.0, 2), xyz, None, ["A"] * 5, intermolecular=False)
    with pytest.raises(InputError, match="r_range"):
        radial_distribution(xyz, _cubic(1.0, 2), group_pairs(np.arange(5)), r_range=(0, 0.8))
    with pytest.raises(InputError, match="box_nm"):
        check_box(np.zeros((2, 3, 3)), 2)
    np.testing.assert_array_equal(check_box([1.0, 2.0, 3.0], 2), np.stack([np.diag([1.0, 2.0, 3.0])] * 2))


def test_rdf_overlay_plot_has_a_panel_per_pair():
    r = np.linspace(0.005, 0.995, 100)
    curves = {p: {"r": r, "reference": np.ones(100), "generated": np.ones(100) * 1.1} for p in ("C-C", "C-H", "H-H")}
    fig = plots.plot_rdfs(curves, metrics={"rdf_w1_nm_C-C": 0.01, "rdf_w1_nm_C-C_floor": 0.002})
    assert len(fig.axes) == 3
    assert "W1" in fig.axes[0].get_title()
