"""Typed, validated configuration of the temporally coherent cVAE (Shmilovich et al. (2022)).

Every number of Table 1 (SI 4.1) lives here, once.  ``CVAEConfig.adp()`` and
``CVAEConfig.chignolin()`` reproduce the table; ``CVAEConfig.smoke()`` is a
tiny CPU-friendly model for tests and CI.  Units: nm (sigma nm^2), kJ/mol, steps.

Table 1 gives no units for r_grid and sigma; nm is the only reading under
which a 1.8-wide grid encloses alanine dipeptide, so r_grid is in nm.  Table 1's
sigma is kept as printed and read as DeepBackmap's code reads it (the
convention of finegrain.platform.science.voxels): the denominator of
``exp(-|x - r|^2 / sigma)``, in nm^2, on a cell-centred grid of spacing
r_grid / d, i.e. a Gaussian of standard deviation sqrt(sigma / 2):
ADP 0.05398 nm^2 -> 0.164 nm (cells 0.15 nm), CLN 0.3076 nm^2 -> 0.392 nm
(cells 0.458 nm).  Eq. 1 read literally (exp(-d^2 / 2 sigma^2), sigma = 0.054 nm,
on a linspace grid) decodes a real ADP structure 0.032 nm off; this reading
is exact to ~1e-3 nm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from finegrain.trainables.cvae import schedules as _schedules
from finegrain.trainables.model_config import Bounds, ModelConfig, ModelConfigError, NonNegativeFloat, NonNegativeInt
from finegrain.trainables.model_config import PositiveFloat, PositiveInt

__all__ = ["CVAEConfig"]


@dataclass(frozen=True)
class CVAEConfig(ModelConfig):
    """Hyper-parameters of the cVAE backmapper (defaults: Table 1, ADP column).

    Grid / data
        n_grid (d): grid cells per axis; grid_width (r_grid, nm): full width
        (cell centres are the grid points); sigma (nm^2): denominator of each
        particle's density exp(-d^2 / sigma), standard deviation
        sqrt(sigma / 2) nm (see the module docstring).
    Architecture (SI 4.1, Fig. 11/12)
        d_latent; d_hidden_encoder / d_hidden_decoder (hidden channels);
        encoder_strides: one residual block per entry (Fig. 11: 5 blocks,
        12^3 -> 3^3, so two stride-2 blocks); n_condition_blocks: residual
        blocks on the decoder's condition branch; n_decoder_blocks: residual
        blocks after concatenating condition and latent branches (the paper
        gives no block counts for the decoder; 5 and 8 give the ~1.2M
        parameters SI 4.1 reports for ADP); kernel_size; leaky_relu_slope; frame_based: ablation without AA(t-1).
    Training input
        prev_noise_nm (nm): standard deviation of isotropic Gaussian noise
        added to every Cartesian component of AA(t-1) during training
        updates only (not validation, not the posterior/GMM pass, not
        inference), so the decoder cannot just copy a clean previous frame
        (0: the paper's clean teacher forcing).
    Optimisation
        learning_rate (Adam), batch_size, max_steps (Table 1 "number of
        training steps"); w_clip: gradient-norm clip applied once lambda > 0
        (None: never clip).
    Schedule length
        schedule_steps: the run length (steps) the lambda/beta breakpoints
        below are written for (Table 1: the paper's step count).  A run with
        max_steps < schedule_steps compresses every breakpoint by
        max_steps / schedule_steps (:func:`~finegrain.trainables.cvae.schedules.compress_schedule`),
        so warm-up, ramp and beta cycles keep the paper's fraction of the run;
        a full-length (or longer) run uses them as written.  None: the
        breakpoints are absolute steps, never rescaled (the smoke preset).
    Energy prefactor lambda, eq. 5
        t_lambda0, n_lambda, lambda_initial, lambda_final; u_max (kJ/mol):
        cap on the reconstructed energy in L_energy (None: no cap).
    KL prefactor beta, eq. 6
        beta_schedule "cyclic" (beta_n_cycles M, beta_cycle_length R, beta_k,
        beta_tau) or "constant" (beta_constant).
    Inference
        n_gmm_components: Gaussian-mixture components fitted to the training
        posterior (section 2.4: 10).
    """

    # grid (grid_width nm, sigma nm^2)
    n_grid: Annotated[int, Bounds(ge=2)] = 12
    grid_width: PositiveFloat = 1.8
    sigma: PositiveFloat = 0.05398
    # architecture
    d_latent: PositiveInt = 32
    d_hidden_encoder: PositiveInt = 32
    d_hidden_decoder: PositiveInt = 32
    encoder_strides: tuple[Annotated[int, Bounds(ge=1, le=2)], ...] = (1, 2, 1, 2, 1)
    n_condition_blocks: NonNegativeInt = 5
    n_decoder_blocks: PositiveInt = 8
    kernel_size: PositiveInt = 3
    leaky_relu_slope: NonNegativeFloat = 0.01
    frame_based: bool = False
    prev_noise_nm: NonNegativeFloat = 0.0
    # optimisation
    learning_rate: PositiveFloat = 1.398e-4
    batch_size: PositiveInt = 32
    max_steps: PositiveInt = 14_800_000
    w_clip: PositiveFloat | None = 0.1
    schedule_steps: PositiveInt | None = 14_800_000
    # lambda schedule (eq. 5) and energy cap
    t_lambda0: NonNegativeInt = 200_000
    n_lambda: PositiveInt = 1_250_000
    lambda_initial: PositiveFloat = 1e-6
    lambda_final: PositiveFloat = 1.0
    u_max: PositiveFloat | None = None
    # beta schedule (eq. 6)
    beta_schedule: Literal["cyclic", "constant"] = "cyclic"
    beta_n_cycles: NonNegativeInt = 4
    beta_cycle_length: PositiveInt = 25_000
    beta_k: PositiveFloat = 0.0025
    beta_tau: NonNegativeFloat = 10_000.0
    beta_constant: NonNegativeFloat = 1.0
    # inference
    n_gmm_components: PositiveInt = 10

    # ------------------------------------------------------------------ checks between fields
    def _check(self) -> None:
        if self.d_latent % 8 != 0:
            raise ModelConfigError(
                f"CVAEConfig.d_latent must be a multiple of 8 (z is reshaped to a 2x2x2 grid), got {self.d_latent}",
                "d_latent")
        if self.kernel_size % 2 != 1:
            raise ModelConfigError(f"CVAEConfig.kernel_size must be odd, got {self.kernel_size}", "kernel_size")
        if self.gaussian_std >= self.grid_width / 2:
            raise ModelConfigError(
                f"CVAEConfig.sigma ({self.sigma} nm^2: Gaussian std sqrt(sigma/2) = {self.gaussian_std:.4g} nm) "
                f"must give a std smaller than grid_width / 2 ({self.grid_width / 2} nm)", "sigma")

    # ------------------------------------------------------------ derived
    @property
    def grid_spacing(self) -> float:
        """Cell side = distance between neighbouring grid points (cell centres), nm: grid_width / n_grid."""
        return self.grid_width / self.n_grid

    @property
    def gaussian_std(self) -> float:
        """Standard deviation of each particle density, nm: sqrt(sigma / 2) (sigma in nm^2)."""
        return math.sqrt(self.sigma / 2)

    @property
    def schedule(self) -> _schedules.ScheduleBreakpoints:
        """The breakpoints this run uses: (t_lambda0, n_lambda, beta_cycle_length, beta_tau, beta_k) in steps
        (k in 1/steps), compressed by max_steps / schedule_steps when the run is shorter than schedule_steps."""
        return _schedules.compress_schedule(self.max_steps, self.schedule_steps, t_lambda0=self.t_lambda0,
                                            n_lambda=self.n_lambda, cycle_length=self.beta_cycle_length,
                                            tau=self.beta_tau, k=self.beta_k)

    def lambda_at(self, step):
        """lambda(step), eq. 5 with :attr:`schedule`'s breakpoints; int -> float, integer ndarray -> ndarray."""
        b = self.schedule
        return _schedules.lambda_schedule(step, b.t_lambda0, b.n_lambda, self.lambda_initial, self.lambda_final)

    def beta_at(self, step):
        """beta(step): eq. 6 (cyclic, :attr:`schedule`'s R, tau, k) or constant; int -> float, ndarray -> ndarray."""
        if self.beta_schedule == "cyclic":
            b = self.schedule
            return _schedules.beta_schedule(step, self.beta_n_cycles, b.cycle_length, b.k, b.tau)
        return _schedules.constant_schedule(step, self.beta_constant)

    def clip_at(self, step: int) -> float | None:
        """Gradient-norm clip for ``step``: w_clip once lambda > 0 (t >= :attr:`schedule`'s t_lambda0), else None."""
        return self.w_clip if step >= self.schedule.t_lambda0 else None

    # ------------------------------------------------------------- presets
    @classmethod
    def adp(cls, **overrides: Any) -> "CVAEConfig":
        """Table 1, ADP column (alanine dipeptide, frames 1 ps apart)."""
        return cls().replace(**overrides)

    @classmethod
    def chignolin(cls, **overrides: Any) -> "CVAEConfig":
        """Table 1, CLN column (chignolin, frames 100 ps apart)."""
        return cls(
            grid_width=5.5, sigma=0.3076, d_latent=64, d_hidden_encoder=32, d_hidden_decoder=64,
            learning_rate=4.233e-4, batch_size=32, max_steps=9_400_000, schedule_steps=9_400_000, w_clip=0.1,
            t_lambda0=750_000, n_lambda=1_250_000, lambda_initial=1e-6, lambda_final=1.0, u_max=1e5,
            beta_schedule="constant", beta_constant=1.0,
        ).replace(**overrides)

    @classmethod
    def smoke(cls, **overrides: Any) -> "CVAEConfig":
        """A tiny model (8^3 grid, 8 channels) with compressed schedules, for tests and CI.

        Its breakpoints are absolute steps (schedule_steps = None): a run of any
        length keeps lambda = 0 for exactly t_lambda0 steps.

        sigma = 0.035 nm^2 (std 0.132 nm) on 0.2 nm cells, r_grid = 1.6 nm:
        collapse(voxelize(x)) recovers a centred ADP structure to 9e-4 nm
        (mean 2e-4 nm) in any orientation.  A wider Gaussian is pulled in by
        the grid faces (sigma = 0.06: max 8e-3 nm), a narrower one by the
        cells (0.02: max 8e-3 nm).
        """
        return cls(
            n_grid=8, grid_width=1.6, sigma=0.035, d_latent=8, d_hidden_encoder=8, d_hidden_decoder=8,
            encoder_strides=(2, 2), n_condition_blocks=1, n_decoder_blocks=1,
            learning_rate=1e-3, batch_size=4, max_steps=50, schedule_steps=None, w_clip=0.1,
            t_lambda0=10, n_lambda=20, lambda_initial=1e-6, lambda_final=1.0, u_max=None,
            beta_schedule="cyclic", beta_n_cycles=2, beta_cycle_length=10, beta_k=0.5, beta_tau=5.0,
            n_gmm_components=2,
        ).replace(**overrides)
