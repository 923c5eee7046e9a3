"""What the baseline families ``nullspace`` and ``em`` declare beyond the protocol (:class:`Conformance`).

- ``nullspace``: exactly equivariant per sample (same seed); its outputs map onto the CG to round-off.
- ``em``: equivariant up to the minimiser's convergence (RMS force below its tolerance in kJ/mol/nm leaves
  soft modes ~0.01 nm undetermined) and the placement noise, which is drawn in the lab frame.

Both backmap each frame on its own.
"""

from __future__ import annotations

from finegrain.trainables.protocol import Conformance

#: EM: mapped sites within this of the CG (k = 1e5 kJ/mol/nm^2), and outputs of moved inputs within
#: this of the moved outputs (minimiser tolerance + lab-frame placement noise, see the module docstring).
EM_TOL_NM = 0.02


def build_nullspace(topology, mapping, train_xyz, variant: str, system: str):
    """The null-space baseline fitted (milliseconds) on ``train_xyz``; variant: its ``mode``."""
    from finegrain.trainables.baselines import fit_nullspace

    return fit_nullspace(train_xyz, mapping, topology, mode=variant)


def build_em(topology, mapping, train_xyz, variant: str, system: str):
    """The energy-minimisation baseline in ``system``'s force field (nothing to fit)."""
    from finegrain.trainables.baselines import EnergyMinimisationBackmapper

    return EnergyMinimisationBackmapper(topology, mapping, system)


NULLSPACE = Conformance(build_nullspace, ("conditional", "full"), "exact", lambda v: 1e-9, lambda v: True)
EM = Conformance(build_em, ("template",), "approximate", lambda v: EM_TOL_NM, lambda v: True,
                 equivariance_atol=EM_TOL_NM)
