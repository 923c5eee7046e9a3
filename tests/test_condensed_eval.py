"""Evaluation of a condensed phase (liquid cumene, periodic): minimum-image velocities, RDF and CG-force metrics
with their floors, and the molecule-wise null-space baseline on it.

Frames are the shipped equilibrated box with seeded thermal-size noise (no simulation: seconds), and molecules
are wrapped back into the box between frames the way OpenMM's DCD reporter does.
"""

from __future__ import annotations

import numpy as np
import pytest

from finegrain.datasets.systems import get_system
from finegrain.platform.science.energies.openmm_reference import openmm_energies_forces
from finegrain.platform.science.frames import Frames
from finegrain.platform.science.metrics import evaluate_frames
from finegrain.platform.science.metrics.temporal import frame_velocities
from finegrain.trainables.baselines import fit_nullspace
from finegrain.trainables.protocol import check_family_handles
from finegrain.platform.science.errors import InputError

F = 8


@pytest.fixture(scope="module")
def liquid():
    ref = get_system("cumene")
    top = ref.md_topology
    box = np.asarray(ref.box_nm, np.float64)
    rng = np.random.default_rng(0)
    x = ref.positions_nm[None] + rng.normal(0.0, 0.004, (F, ref.n_atoms, 3))
    return {"ref": ref, "top": top, "box": np.broadcast_to(box, (F, 3, 3)).copy(), "x": x,
            "mapping": ref.mapping("three_bead")}


def test_velocities_take_the_minimum_image(liquid):
    x, box = liquid["x"].copy(), liquid["box"]
    truth = frame_velocities(x, dt_ps=1.0)
    wrapped = x.copy()
    mol = np.arange(21, 42)  # molecule 1 leaves through face a and is wrapped back in frames 3.. and 6..
    wrapped[3:, mol] -= box[0, 0]
    wrapped[6:, mol] += box[0, 1] + box[0, 2]
    assert frame_velocities(wrapped, dt_ps=1.0).max() > 1.0  # the jump, read literally: > 1 nm/ps
    np.testing.assert_allclose(frame_velocities(wrapped, dt_ps=1.0, box_nm=box), truth, atol=1e-9)


def test_periodic_frames_get_rdf_and_cg_force_metrics_with_floors(liquid):
    x, box, top, mapping = liquid["x"], liquid["box"], liquid["top"], liquid["mapping"]
    model = fit_nullspace(x, mapping, top, molecule_wise=True)
    cg = mapping.map(x)
    bm = model.backmap_xyz(cg, seed=1)[0]
    np.testing.assert_allclose(mapping.map(bm), cg, atol=1e-9)  # on the fibre of every bead
    omm = liquid["ref"].create_system(constraints=None)

    def forces(xyz, b):
        return openmm_energies_forces(omm, xyz, platform="CPU", box_nm=b)[1]

    reference = Frames(aa_xyz_nm=x, box_nm=box, time_ps=np.arange(F, dtype=float))
    m, figs = evaluate_frames(reference, Frames(aa_xyz_nm=bm, cg_xyz_nm=cg), top, mapping, forces_fn=forces,
                              make_figures=True)
    # the beads of a CG-consistent backmap are the reference's: their RDFs agree to round-off
    assert m["cg_rdf_w1_nm"] < 1e-6
    # atoms placed by a Gaussian around the mean molecule are not the reference's
    assert m["aa_rdf_w1_nm"] > 10 * max(m["cg_rdf_w1_nm"], 1e-9)
    for key in ("aa_rdf_w1_nm_floor", "cg_js_force_magnitude", "cg_js_force_magnitude_floor"):
        assert key in m and np.isfinite(m[key]), key
    # Gaussian placement leaves bonds strained: bead forces far broader than the reference's thermal noise
    assert m["cg_js_force_magnitude"] > 3 * m["cg_js_force_magnitude_floor"]
    assert "aa_rdf" in figs and "cg_rdf" in figs
    with pytest.raises(InputError, match="box_nm"):
        evaluate_frames(reference, Frames(aa_xyz_nm=bm[:5]), top, mapping)


def test_molecular_families_refuse_periodic_data_and_say_why():
    with pytest.raises(InputError, match="family 'flow' models one molecule .* handle a periodic box: nullspace"):
        check_family_handles("flow", True, "data.shards /x")
    check_family_handles("nullspace", True, "data.shards /x")
    check_family_handles("flow", False, "data.shards /x")
