"""Typed configuration of the DeepBackmap backmapper (family ``dbm``).

DeepBackmap: M. Stieffenhofer, M. Wand, T. Bereau, "Adversarial reverse mapping of equilibrated
condensed-phase molecular structures", Mach. Learn.: Sci. Technol. 1, 045014 (2020), and M. Stieffenhofer's
PhD thesis on DeepBackmap (Mainz, 2022), chapters 4-5.

Units: lengths in nm, ``grid_sigma`` in nm^2 (the exponent's denominator, as in
:mod:`finegrain.platform.science.voxels`), energies in kJ/mol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from finegrain.trainables.model_config import (ModelConfig, ModelConfigError, NonNegativeFloat, NonNegativeInt,
                                               PositiveFloat, PositiveInt, UnitInterval)

__all__ = ["DBMConfig"]


@dataclass(frozen=True)
class DBMConfig(ModelConfig):
    """Hyper-parameters of :class:`~finegrain.trainables.dbm.model.DBMNetworks` and its sampler.

    Local environment (thesis section 4.3)
        n_grid: voxels per axis of the aligned cube around the current bead; grid_width: its side (nm);
        grid_sigma: Gaussian width of every particle density (nm^2, std sqrt(sigma/2)); max_env_atoms:
        ceiling on the atoms one environment holds (nearest first). The cube is centred on the bead and its
        z axis points at the bead's predecessor in the CG graph; the rotation about z is random
        (augmentation in training, candidates at inference).
    Networks (thesis Fig. A.1: residual 3D CNNs, layer norm, leaky ReLU)
        channels: convolution width; blocks: residual blocks per stage; noise_dim: latent noise size.
    Adversarial training (WGAN-GP, thesis section 4.4.2)
        n_critic: critic updates per generator update; gp_weight: gradient-penalty weight (10, Gulrajani et
        al. 2017; the thesis prints 0.1, kept in the ``thesis`` preset: on ADP with the smoke networks and
        learning rate 3e-4, 0.1 let the critic run away, its Wasserstein estimate 5.6 and penalty 27 after 600
        steps, while with 10 they stayed near 1 and 0.02 and backmapped held-out frames' mean bond error
        fell to 0.012 nm after 800 steps);
        learning_rate, betas of Adam; batch_size: frames per step; beads_per_frame: bead sequences drawn
        from each frame (0: all); gibbs_fraction: share of training sequences whose environment holds the
        atoms of every other bead (the refinement sweeps' view) instead of only the beads placed before
        (the forward sweep's view).
    Energy prior (thesis section 4.5)
        energy_weight: final lambda_pot, reached linearly from 0 over energy_ramp_steps generator updates;
        energy_prior: "difference" (|e(generated) - e(reference)| per term, the thesis' C2) or "energy" (C1);
        energy_cap: per-term energies are soft-capped at this value (kJ/mol) so early clashes cannot swamp
        the adversarial signal.
    Inference
        gibbs_sweeps: refinement sweeps after the forward sweep; n_candidates: rotated/noised candidates per
        bead, the lowest-energy one kept (thesis section 5.1.4); batch_beads: bead sequences per network call.
    """

    n_grid: PositiveInt = 8
    grid_width: PositiveFloat = 1.2
    grid_sigma: PositiveFloat = 0.02
    max_env_atoms: PositiveInt = 256
    channels: PositiveInt = 32
    blocks: PositiveInt = 2
    noise_dim: PositiveInt = 64
    n_critic: PositiveInt = 5
    gp_weight: NonNegativeFloat = 10.0
    learning_rate: PositiveFloat = 3e-4  # ADP e2e: bond error 0.040 -> 0.0045 nm in 2500 CPU steps
    beta1: UnitInterval = 0.0
    beta2: UnitInterval = 0.9
    batch_size: PositiveInt = 8
    beads_per_frame: NonNegativeInt = 4
    gibbs_fraction: UnitInterval = 0.5
    energy_weight: NonNegativeFloat = 0.01
    energy_ramp_steps: PositiveInt = 2000
    energy_prior: Literal["difference", "energy"] = "difference"
    energy_cap: PositiveFloat = 1e4
    gibbs_sweeps: NonNegativeInt = 2
    n_candidates: PositiveInt = 4
    batch_beads: PositiveInt = 512

    def _check(self) -> None:
        if self.n_grid % 2:
            raise ModelConfigError(f"n_grid: the generator halves the grid once, so it must be even, got "
                                   f"{self.n_grid}", "n_grid")
        h = self.grid_width / self.n_grid
        if math.sqrt(self.grid_sigma / 2) < h / 4:
            raise ModelConfigError(f"grid_sigma: a Gaussian of std {math.sqrt(self.grid_sigma / 2):.3g} nm on "
                                   f"{h:.3g} nm voxels falls between grid points (need std >= h/4)", "grid_sigma")

    @property
    def voxel_nm(self) -> float:
        return self.grid_width / self.n_grid

    @classmethod
    def smoke(cls, **overrides: Any) -> "DBMConfig":
        """A small CPU model for tests and CI."""
        return cls(**{"channels": 16, "blocks": 1, "noise_dim": 16, "n_critic": 2, "batch_size": 4,
                      "beads_per_frame": 4, "energy_ramp_steps": 20, "gibbs_sweeps": 1, "n_candidates": 2,
                      "max_env_atoms": 160, **overrides})

    @classmethod
    def thesis(cls, **overrides: Any) -> "DBMConfig":
        """The published settings (thesis section 5.1.4; published code's grid: 8 voxels over 1.2 nm): Adam,
        five critic updates per generator update, lambda_gp 0.1, lambda_pot ramped from 0 to 0.01,
        lowest-energy candidate at inference. Sizes the thesis does not print are this family's defaults."""
        return cls(**{"n_grid": 8, "grid_width": 1.2, "channels": 64, "n_critic": 5, "n_candidates": 8,
                      "gp_weight": 0.1, "energy_weight": 0.01, "energy_prior": "difference", **overrides})
