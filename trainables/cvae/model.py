"""The temporally coherent conditional VAE of Shmilovich et al. (2022) (SI 4.1, Figs. 11-12).

Data flow (channels first, torch layout ``[B, C, d, d, d]``; the paper writes
``d x d x d x C``):

encoder  x = [VOX AA(t) | VOX CG(t) | VOX AA(t-1)]   (2N + n channels)
         -> conv, LayerNorm, LeakyReLU                      (h_enc channels)
         -> residual blocks, one per ``encoder_strides`` entry (stride 2 halves the grid)
         -> flatten -> two dense heads: mu, log sigma^2     (d_latent each)
decoder  condition c = [VOX CG(t) | VOX AA(t-1)]      (N + n channels)
           -> conv, LayerNorm, LeakyReLU, ``n_condition_blocks`` residual blocks (h_dec)
         latent z -> dense -> reshape [d_latent/8, 2, 2, 2] -> replication padding to d^3
           -> conv, LayerNorm, LeakyReLU                    (h_dec)
         concat (2 h_dec) -> ``n_decoder_blocks`` residual blocks (h_dec) -> conv (N) -> sigmoid

``frame_based=True`` (the ablation) drops VOX AA(t-1) from both inputs.
Inputs are coordinates in nm (mean-centred); voxelization uses the config grid.
Inference draws z externally (e.g. from a GMM fitted to the training
posterior) and calls :meth:`CVAE.decode` / :meth:`CVAE.backmap_step`.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch
from torch import nn

from finegrain.platform.science.voxels import collapse, voxelize
from finegrain.trainables.cvae.config import CVAEConfig

__all__ = ["CVAE", "CVAEOutput", "ResidualBlock3d", "LayerNorm3d"]


def _down(size: int, stride: int) -> int:
    """Grid size after a stride-``stride`` block (conv padding k//2; ceil-mode pooling)."""
    return -(-size // stride)


class LayerNorm3d(nn.Module):
    """LayerNorm over all of (C, D, H, W) of each sample, with a per-channel affine.

    Normalisation statistics are those of ``nn.LayerNorm([C, D, H, W])``; the
    affine weight/bias are per channel (as GroupNorm(1, C)) so the parameter
    count does not grow with the grid.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def _conv_norm_act(c_in: int, c_out: int, kernel: int, slope: float) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, kernel, padding=kernel // 2), LayerNorm3d(c_out),
                         nn.LeakyReLU(slope))


class ResidualBlock3d(nn.Module):
    """Fig. 12: conv -> LayerNorm -> LeakyReLU -> conv -> LayerNorm, + skip, LeakyReLU.

    The skip is the identity when shapes agree; otherwise max-pooling (when
    ``stride`` > 1) and a 1x1x1 convolution (when channels change).
    Input ``[B, c_in, s, s, s]`` -> output ``[B, c_out, ceil(s/stride)]*3``.
    """

    def __init__(self, c_in: int, c_out: int, *, kernel: int = 3, stride: int = 1, slope: float = 0.01):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=kernel // 2), LayerNorm3d(c_out),
            nn.LeakyReLU(slope),
            nn.Conv3d(c_out, c_out, kernel, padding=kernel // 2), LayerNorm3d(c_out),
        )
        skip: list[nn.Module] = []
        if stride > 1:
            skip.append(nn.MaxPool3d(stride, stride=stride, ceil_mode=True))
        if c_in != c_out or stride > 1:
            skip.append(nn.Conv3d(c_in, c_out, 1))
        self.skip = nn.Sequential(*skip) if skip else nn.Identity()
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.main(x) + self.skip(x))


class CVAEOutput(NamedTuple):
    """Everything the losses need from one forward pass.

    vox_pred [B, N, d, d, d] decoder densities in (0, 1); xyz_pred [B, N, 3] nm
    (collapsed vox_pred); vox_target [B, N, d, d, d] VOX AA(t); mu, logvar,
    z [B, d_latent] (posterior mean, log variance, reparameterised sample).
    """

    vox_pred: torch.Tensor
    xyz_pred: torch.Tensor
    vox_target: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor


class CVAE(nn.Module):
    """Conditional VAE backmapper: p(AA(t) | CG(t), AA(t-1)).

    Parameters
    ----------
    config : CVAEConfig
    n_atoms : int, N atoms of the AA system
    n_beads : int, n beads of the CG system
    """

    def __init__(self, config: CVAEConfig, n_atoms: int, n_beads: int):
        super().__init__()
        if not isinstance(config, CVAEConfig):
            raise ValueError(f"config must be a CVAEConfig, got {type(config).__name__}")
        for name, v in (("n_atoms", n_atoms), ("n_beads", n_beads)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        n_atoms, n_beads = int(n_atoms), int(n_beads)
        self.config, self.n_atoms, self.n_beads = config, n_atoms, n_beads
        c, k, a = config, config.kernel_size, config.leaky_relu_slope
        n_prev = 0 if c.frame_based else n_atoms
        he, hd = c.d_hidden_encoder, c.d_hidden_decoder

        # encoder
        enc: list[nn.Module] = [_conv_norm_act(n_atoms + n_beads + n_prev, he, k, a)]
        size = c.n_grid
        for s in c.encoder_strides:
            enc.append(ResidualBlock3d(he, he, kernel=k, stride=s, slope=a))
            size = _down(size, s)
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        self.encoder_grid = size
        self.fc_mu = nn.Linear(he * size ** 3, c.d_latent)
        self.fc_logvar = nn.Linear(he * size ** 3, c.d_latent)

        # decoder: condition branch
        self.condition_net = nn.Sequential(
            _conv_norm_act(n_beads + n_prev, hd, k, a),
            *[ResidualBlock3d(hd, hd, kernel=k, slope=a) for _ in range(c.n_condition_blocks)])
        # decoder: latent branch (dense -> reshape 2x2x2 -> replication padding -> conv)
        self.latent_channels = c.d_latent // 8
        self.fc_latent = nn.Linear(c.d_latent, c.d_latent)
        lo = (c.n_grid - 2) // 2
        hi = c.n_grid - 2 - lo
        self.latent_pad = nn.ReplicationPad3d((lo, hi, lo, hi, lo, hi))
        self.latent_net = _conv_norm_act(self.latent_channels, hd, k, a)
        # decoder: joint trunk
        blocks = [ResidualBlock3d(2 * hd if i == 0 else hd, hd, kernel=k, slope=a)
                  for i in range(c.n_decoder_blocks)]
        self.decoder_trunk = nn.Sequential(*blocks, nn.Conv3d(hd, n_atoms, k, padding=k // 2), nn.Sigmoid())

    # ---------------------------------------------------------------- helpers
    def _check_xyz(self, x, name: str, n: int, batch: int | None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[1:] != (n, 3):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must have shape [B, {n}, 3] (nm), got {shape}")
        if batch is not None and x.shape[0] != batch:
            raise ValueError(f"{name} must have batch size {batch}, got shape {tuple(x.shape)}")
        return x

    def voxelize(self, xyz: torch.Tensor) -> torch.Tensor:
        """[B, P, 3] nm -> [B, P, d, d, d]: exp(-d^2 / sigma) on the config's cell-centred grid (eq. 1; sigma nm^2)."""
        c = self.config
        return voxelize(xyz, c.n_grid, c.grid_width, c.sigma)

    def collapse(self, vox: torch.Tensor) -> torch.Tensor:
        """[B, P, d, d, d] -> [B, P, 3] nm, density-weighted average (eq. 2).

        Not checked for NaN (it collapses the model's own output): a diverged
        decoder yields NaN coordinates and a NaN loss for the loop to handle.
        """
        return collapse(vox, self.config.n_grid, self.config.grid_width, check_finite=False)

    def init_kwargs(self) -> dict:
        """Plain-data constructor arguments (for checkpoints): CVAE(**{**kw, config=CVAEConfig.from_dict(...)})."""
        return {"config": self.config.to_dict(), "n_atoms": self.n_atoms, "n_beads": self.n_beads}

    def _condition(self, cg_t: torch.Tensor, aa_prev: torch.Tensor | None) -> torch.Tensor:
        b = cg_t.shape[0]
        self._check_xyz(cg_t, "cg_t", self.n_beads, None)
        if self.config.frame_based:
            return self.voxelize(cg_t)
        if aa_prev is None:
            raise ValueError("aa_prev (AA(t-1), shape [B, N, 3]) is required unless config.frame_based")
        self._check_xyz(aa_prev, "aa_prev", self.n_atoms, b)
        return torch.cat([self.voxelize(cg_t), self.voxelize(aa_prev)], dim=1)

    # ----------------------------------------------------------------- public
    def encode(self, aa_t: torch.Tensor, cg_t: torch.Tensor, aa_prev: torch.Tensor | None = None,
               *, vox_target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior q(z | AA(t), CG(t), AA(t-1)).

        aa_t [B, N, 3], cg_t [B, n, 3], aa_prev [B, N, 3] (ignored when
        frame_based), nm.  ``vox_target`` may pass a precomputed VOX AA(t).
        Returns (mu, logvar), each [B, d_latent]; logvar = log sigma^2.
        """
        self._check_xyz(aa_t, "aa_t", self.n_atoms, None)
        self._check_xyz(cg_t, "cg_t", self.n_beads, aa_t.shape[0])
        vox_aa = self.voxelize(aa_t) if vox_target is None else vox_target
        return self._encode_vox(vox_aa, self._condition(cg_t, aa_prev))

    def _encode_vox(self, vox_aa: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(torch.cat([vox_aa, cond], dim=1))
        return self.fc_mu(h), self.fc_logvar(h)

    def _decode_vox(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h_c = self.condition_net(cond)
        h_z = self.fc_latent(z).view(z.shape[0], self.latent_channels, 2, 2, 2)
        h_z = self.latent_net(self.latent_pad(h_z))
        return self.decoder_trunk(torch.cat([h_c, h_z], dim=1))

    def decode(self, z: torch.Tensor, cg_t: torch.Tensor, aa_prev: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder(c, z): z [B, d_latent], cg_t [B, n, 3], aa_prev [B, N, 3] nm -> vox [B, N, d, d, d]."""
        c = self.config
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != c.d_latent:
            raise ValueError(f"z must have shape [B, {c.d_latent}], got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        self._check_xyz(cg_t, "cg_t", self.n_beads, z.shape[0])
        return self._decode_vox(z, self._condition(cg_t, aa_prev))

    def backmap_step(self, z: torch.Tensor, cg_t: torch.Tensor, aa_prev: torch.Tensor | None = None) -> torch.Tensor:
        """One autoregressive inference step: AA(t) [B, N, 3] nm = collapse(decode(z, CG(t), AA(t-1)))."""
        return self.collapse(self.decode(z, cg_t, aa_prev))

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mu + eps * sigma, eps ~ N(0, I) (drawn with ``generator`` when given)."""
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return mu + eps * torch.exp(0.5 * logvar)

    def forward(self, aa_t: torch.Tensor, cg_t: torch.Tensor, aa_prev: torch.Tensor | None = None,
                *, generator: torch.Generator | None = None) -> CVAEOutput:
        """Training pass: encode, sample z (reparameterisation), decode, collapse.

        aa_t [B, N, 3], cg_t [B, n, 3], aa_prev [B, N, 3] nm (mean-centred,
        already augmented; aa_prev is ignored when frame_based).  ``generator``
        (for eps) must live on the model's device.  Returns a :class:`CVAEOutput`.
        """
        self._check_xyz(aa_t, "aa_t", self.n_atoms, None)
        self._check_xyz(cg_t, "cg_t", self.n_beads, aa_t.shape[0])
        vox_target = self.voxelize(aa_t)
        cond = self._condition(cg_t, aa_prev)  # voxelized once, shared by encoder and decoder
        mu, logvar = self._encode_vox(vox_target, cond)
        z = self.reparameterize(mu, logvar, generator)
        vox_pred = self._decode_vox(z, cond)
        return CVAEOutput(vox_pred, self.collapse(vox_pred), vox_target, mu, logvar, z)
