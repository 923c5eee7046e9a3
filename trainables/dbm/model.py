"""DeepBackmap's generator and critic (thesis Fig. A.1: residual 3D CNNs with layer norm and leaky ReLU).

DeepBackmap: M. Stieffenhofer, M. Wand, T. Bereau, "Adversarial reverse mapping of equilibrated
condensed-phase molecular structures", Mach. Learn.: Sci. Technol. 1 (2020); M. Stieffenhofer's PhD thesis on
DeepBackmap (2022), sections 4.4 and A.1.

- :class:`Generator`: environment [B, C, d, d, d] -> encoder (residual blocks, one stride-2 stage) -> noise z
  and the placed atom's type joined to the d/2 embedding -> decoder (residual blocks, one upsampling) -> a
  density over the d^3 cells (softmax), collapsed to a point by its weighted mean (thesis eq. 4.11):
  position [B, 3] nm in the environment's local frame.
- :class:`Critic`: environment and the atom's density [B, C + 1, d, d, d] -> residual blocks, one stride-2
  stage -> joined with the atom type -> a scalar (the Wasserstein critic, no sigmoid).

torch only; no batch statistics (layer norm), so the gradient penalty is per sample.
"""

from __future__ import annotations

import torch
from torch import nn

from finegrain.platform.science.voxels import grid_points
from finegrain.trainables.dbm.config import DBMConfig

__all__ = ["Generator", "Critic", "DBMNetworks"]


def _norm(ch: int) -> nn.Module:
    return nn.GroupNorm(1, ch)  # layer norm over (channels, voxels)


class _Residual(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(_norm(ch), nn.LeakyReLU(0.2), nn.Conv3d(ch, ch, 3, padding=1),
                                  _norm(ch), nn.LeakyReLU(0.2), nn.Conv3d(ch, ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _stage(ch: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*[_Residual(ch) for _ in range(blocks)])


class Generator(nn.Module):
    """p(r_i | environment, type_i) as a sampler: (env, type one-hot, z) -> position [B, 3] nm and density."""

    def __init__(self, config: DBMConfig, n_channels: int, n_atom_types: int):
        super().__init__()
        c, ch = config, config.channels
        self.config = c
        self.encode = nn.Sequential(nn.Conv3d(n_channels, ch, 3, padding=1), _stage(ch, c.blocks),
                                    nn.Conv3d(ch, 2 * ch, 4, stride=2, padding=1), _stage(2 * ch, c.blocks))
        self.join = nn.Conv3d(2 * ch + c.noise_dim + n_atom_types, 2 * ch, 1)
        self.decode = nn.Sequential(_stage(2 * ch, c.blocks), nn.ConvTranspose3d(2 * ch, ch, 4, stride=2, padding=1),
                                    _stage(ch, c.blocks), _norm(ch), nn.LeakyReLU(0.2), nn.Conv3d(ch, 1, 1))
        g = grid_points(c.n_grid, c.grid_width, dtype=torch.float32)
        gx, gy, gz = torch.meshgrid(g, g, g, indexing="ij")
        self.register_buffer("cells", torch.stack([gx, gy, gz], -1).reshape(-1, 3), persistent=False)

    def forward(self, env: torch.Tensor, atom_type: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """env [B, C, d, d, d], atom_type [B, T] one-hot, z [B, noise_dim] -> (position [B, 3] nm, density
        [B, d^3] summing to 1)."""
        h = self.encode(env)
        cond = torch.cat([z, atom_type], dim=-1)[:, :, None, None, None].expand(-1, -1, *h.shape[2:])
        logits = self.decode(self.join(torch.cat([h, cond], dim=1))).flatten(1)
        p = torch.softmax(logits.float(), dim=-1)
        return p @ self.cells.to(p.dtype), p


class Critic(nn.Module):
    """c(environment, atom density, type) -> [B] (unbounded, the Wasserstein critic)."""

    def __init__(self, config: DBMConfig, n_channels: int, n_atom_types: int):
        super().__init__()
        c, ch = config, config.channels
        self.body = nn.Sequential(nn.Conv3d(n_channels + 1, ch, 3, padding=1), _stage(ch, c.blocks),
                                  nn.Conv3d(ch, 2 * ch, 4, stride=2, padding=1), _stage(2 * ch, c.blocks),
                                  _norm(2 * ch), nn.LeakyReLU(0.2))
        flat = 2 * ch * (c.n_grid // 2) ** 3
        self.head = nn.Sequential(nn.Linear(flat + n_atom_types, 2 * ch), nn.LeakyReLU(0.2), nn.Linear(2 * ch, 1))

    def forward(self, env: torch.Tensor, atom: torch.Tensor, atom_type: torch.Tensor) -> torch.Tensor:
        """env [B, C, d, d, d], atom [B, 1, d, d, d] density, atom_type [B, T] -> [B]."""
        h = self.body(torch.cat([env, atom], dim=1)).flatten(1)
        return self.head(torch.cat([h, atom_type.to(h.dtype)], dim=-1))[:, 0]


class DBMNetworks(nn.Module):
    """The generator and the critic of one model, with the vocabularies they were built for.

    atom_types / bead_types : the type names of the channels (saved with the weights; a topology whose types
    are all in them can be backmapped, see :meth:`~finegrain.trainables.dbm.recipe.DBMRecipe.require_types`).
    """

    def __init__(self, config: DBMConfig, atom_types: tuple[str, ...], bead_types: tuple[str, ...]):
        super().__init__()
        from finegrain.trainables.dbm.environment import N_RELATIONS

        self.config = config
        self.atom_types, self.bead_types = tuple(atom_types), tuple(bead_types)
        self.n_channels = len(self.atom_types) + N_RELATIONS + len(self.bead_types)
        self.generator = Generator(config, self.n_channels, len(self.atom_types))
        self.critic = Critic(config, self.n_channels, len(self.atom_types))
