"""Evaluation metrics: reference AA vs backmapped AA (README "Reading the scores").

Pure array functions (nm, ps, kJ/mol, radians; divergences in nats), split by
concept:

- :mod:`.divergences` — histograms on fixed bins, JS, KL (pseudo-count), W1.
- :mod:`.structure` — CG RMSD, bonded-term distributions by element class,
  bond-length errors, steric clashes, sample diversity.
- :mod:`.energy` — potential-energy W1 and high-energy tail.
- :mod:`.fes` — Ramachandran and TICA free-energy surfaces, KL.
- :mod:`.kinetics` — k-means states, MSMs, implied timescales, eigenvectors.
- :mod:`.temporal` — finite-difference velocity distributions, throughput.
- :mod:`.rdf` — periodic radial distribution functions per type pair, their W1 / JS, floors.
- :mod:`.forces` — CG-projected atomistic forces and their JS / W1.
- :mod:`.suite` — :func:`evaluate_frames`, everything at once (+ figures).
"""

from finegrain.platform.science.metrics.divergences import (
    FES_PSEUDO_COUNT,
    clipped_histogram,
    histogram_js,
    js_divergence,
    kl_divergence,
    wasserstein_1,
)
from finegrain.platform.science.metrics.energy import TAIL_PERCENTILE, energy_metrics, tail_excess
from finegrain.platform.science.metrics.fes import (
    RAMACHANDRAN_EDGES_RAD,
    ca_distances,
    compare_fes,
    fit_tica,
    histogram_2d,
    ramachandran,
    tica_project,
)
from finegrain.platform.science.metrics.forces import (
    compare_force_distributions,
    force_map_matrix,
    force_metrics,
    project_forces,
)
from finegrain.platform.science.metrics.kinetics import (
    DEFAULT_LAG_PS,
    DEFAULT_N_CENTRES,
    compare_msms,
    estimate_msm,
    implied_timescales,
    kinetics_from_features,
)
from finegrain.platform.science.metrics.rdf import (
    RDFCounts,
    check_box,
    compare_rdfs,
    coordination_number,
    radial_distribution,
    rdf_counts_by_type,
    rdf_js,
    rdf_metrics,
    rdf_w1,
)
from finegrain.platform.science.metrics.structure import (
    ANGLE_EDGES_RAD,
    BOND_EDGES_NM,
    CLASH_THRESHOLD_NM,
    DIHEDRAL_EDGES_RAD,
    bond_length_errors,
    cg_rmsd,
    clash_fraction,
    diversity_rmsd,
    internal_js,
)
from finegrain.platform.science.metrics.suite import evaluate_frames
from finegrain.platform.science.metrics.temporal import (
    VELOCITY_EDGES_NM_PS,
    frame_velocities,
    frames_per_second,
    measure_throughput,
    velocity_metrics,
)

__all__ = [
    "evaluate_frames",
    "FES_PSEUDO_COUNT", "clipped_histogram", "histogram_js", "js_divergence", "kl_divergence", "wasserstein_1",
    "TAIL_PERCENTILE", "energy_metrics", "tail_excess",
    "RAMACHANDRAN_EDGES_RAD", "ca_distances", "compare_fes", "fit_tica", "histogram_2d", "ramachandran",
    "tica_project",
    "DEFAULT_LAG_PS", "DEFAULT_N_CENTRES", "compare_msms", "estimate_msm", "implied_timescales", "kinetics_from_features",
    "ANGLE_EDGES_RAD", "BOND_EDGES_NM", "CLASH_THRESHOLD_NM", "DIHEDRAL_EDGES_RAD", "bond_length_errors",
    "cg_rmsd", "clash_fraction", "diversity_rmsd", "internal_js",
    "compare_force_distributions", "force_map_matrix", "force_metrics", "project_forces",
    "RDFCounts", "check_box", "compare_rdfs", "coordination_number", "radial_distribution", "rdf_counts_by_type",
    "rdf_js", "rdf_metrics", "rdf_w1",
    "VELOCITY_EDGES_NM_PS", "frame_velocities", "frames_per_second", "measure_throughput", "velocity_metrics",
]
