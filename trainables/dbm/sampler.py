"""DeepBackmap's autoregressive placement of one bead's atoms, shared by training and inference.

DeepBackmap: M. Stieffenhofer, M. Wand, T. Bereau, "Adversarial reverse mapping of equilibrated
condensed-phase molecular structures", Mach. Learn.: Sci. Technol. 1 (2020); M. Stieffenhofer's PhD thesis on
DeepBackmap (2022), sections 4.2-4.5 and 5.1.4.

An *item* is one (frame, bead). :meth:`Placer.context` builds its aligned environment once (the atoms of
other beads that are present, the beads); :meth:`Placer.unroll` then places the bead's atoms one by one in
the recipe's order, each conditioned on the environment plus the atoms of this bead placed before it (thesis
Fig. 4.5). With ``reference`` positions it also returns, per step, what the critic compares: the environment
built from the reference atoms and the reference atom, against the generated ones.

Which atoms are present is the caller's choice: the *forward* view (atoms of beads of lower rank in their
molecule's depth-first order: thesis eq. 4.6) or the *Gibbs* view (every other bead's atoms: eq. 4.4, the
refinement sweeps of section 4.2.3, here as block updates of a whole bead). When placing a heavy atom the
hydrogens of this bead and of its neighbouring beads are hidden (thesis section 5.1.4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from finegrain.trainables.dbm.environment import N_RELATIONS, channel_weights, gather, local_frames, render, to_local

__all__ = ["Placer", "Context", "Steps"]


@dataclass
class Context:
    """One batch of items' environments (B items; P environment atoms; L atoms per bead, padded)."""

    bead: torch.Tensor        # [B] long
    centre: torch.Tensor      # [B, 3] nm
    rot: torch.Tensor         # [B, 3, 3] rows: local x, y, z
    own: torch.Tensor         # [B, L] long atom indices of the bead (-1 padded), in placement order
    env_idx: np.ndarray       # [B, P] atoms of other beads in the cube (-1 padded)
    env_local: torch.Tensor   # [B, P, 3] nm
    hide_for_heavy: np.ndarray  # [B, P] hydrogens of this or a neighbouring bead
    bead_grid: torch.Tensor   # [B, C, d, d, d] the bead channels
    own_ref: torch.Tensor | None  # [B, L, 3] nm reference positions of the bead's atoms (local), or None


@dataclass
class Steps:
    """Per placement step s (lists of length L): what the critic and the losses need."""

    valid: list[torch.Tensor]      # [B] bool: the bead has an atom at step s
    atom_type: list[torch.Tensor]  # [B, T] one-hot
    fake_env: list[torch.Tensor]   # [B, C, d, d, d]
    fake_pos: list[torch.Tensor]   # [B, 3] nm local
    real_env: list[torch.Tensor]   # (with a reference)
    real_pos: list[torch.Tensor]
    own_fake: torch.Tensor         # [B, L, 3] nm local, the generated atoms of the bead


class Placer:
    """The networks' generator with a topology: builds environments and unrolls bead sequences.

    recipe : :class:`~finegrain.trainables.dbm.recipe.DBMRecipe` of the topology; atom_types [n_atoms] /
    bead_types [n_beads] : each atom's / bead's index in the networks' vocabularies.
    """

    def __init__(self, nets, recipe, atom_types: np.ndarray, bead_types: np.ndarray):
        self.nets, self.recipe, self.config = nets, recipe, nets.config
        dev = next(nets.parameters()).device
        self.device = dev
        self.n_atom_types = len(nets.atom_types)
        self.types = torch.as_tensor(np.asarray(atom_types), dtype=torch.long, device=dev)
        self.bead_types = torch.as_tensor(np.asarray(bead_types), dtype=torch.long, device=dev)
        self.bead_atoms = torch.as_tensor(np.array(recipe.bead_atoms), dtype=torch.long, device=dev)
        self.axis_bead = torch.as_tensor(np.array(recipe.axis_bead), dtype=torch.long, device=dev)
        self.atom_bead = torch.as_tensor(np.array(recipe.atom_bead), dtype=torch.long, device=dev)
        self.atom_bead_np = np.asarray(recipe.atom_bead)
        self.is_h = np.asarray(recipe.is_hydrogen, dtype=bool)
        n = recipe.n_beads
        adj = np.eye(n, dtype=bool)
        nb = np.asarray(recipe.bead_neighbours)
        rows = np.repeat(np.arange(n), nb.shape[1]) if nb.size else np.zeros(0, int)
        cols = nb.reshape(-1)
        adj[rows[cols >= 0], cols[cols >= 0]] = True
        self.adjacent = adj
        c = self.config
        self.reach = c.grid_width / 2 + 2.0 * float(np.sqrt(c.grid_sigma / 2))

    # ------------------------------------------------------------------ environments
    def _render(self, local, weights) -> torch.Tensor:
        c = self.config
        return render(local, weights, c.n_grid, c.grid_width, c.grid_sigma)

    def context(self, aa: torch.Tensor, cg: torch.Tensor, box: torch.Tensor | None, bead: torch.Tensor,
                angle: torch.Tensor, present: torch.Tensor, reference: bool = False) -> Context:
        """Environments of B items. aa [B, N, 3] / cg [B, n, 3] nm (global), box [B, 3] nm or None, bead [B],
        angle [B] rad about the local z axis, present [B, N] bool (atoms that may enter; the item's own bead's
        atoms never do). reference: keep the bead's atoms of ``aa`` as the reference (training)."""
        c = self.config
        centre, rot = local_frames(cg, bead, self.axis_bead, box, angle)
        own = self.bead_atoms[bead]
        candidates = present & (self.atom_bead[None] != bead[:, None])
        env_idx, env_local = gather(aa, centre, rot, box, candidates, self.reach, c.max_env_atoms)
        env_np = env_idx.cpu().numpy()
        bead_np = bead.cpu().numpy()
        hide = (env_np >= 0) & self.is_h[env_np.clip(0)] & self.adjacent[bead_np[:, None], self.atom_bead_np[env_np.clip(0)]]
        b_idx, b_local = gather(cg, centre, rot, box, torch.ones(cg.shape[:2], dtype=torch.bool, device=cg.device),
                                self.reach, cg.shape[1])
        w = torch.zeros(*b_idx.shape, self.nets.n_channels, device=cg.device)
        on = (b_idx >= 0).float()
        w.scatter_(-1, (self.n_atom_types + N_RELATIONS + self.bead_types[b_idx.clamp_min(0)])[..., None], on[..., None])
        own_ref = None
        if reference:
            own_xyz = torch.gather(aa, 1, own.clamp_min(0)[..., None].expand(-1, -1, 3))
            own_ref = to_local(own_xyz, centre, rot, box) * (own >= 0)[..., None]
        return Context(bead, centre, rot, own, env_np, env_local, hide, self._render(b_local, w), own_ref)

    def _atom_weights(self, placing: np.ndarray, idx: np.ndarray, present: np.ndarray) -> torch.Tensor:
        w = channel_weights(self.recipe, self.types, self.n_atom_types, placing, idx, present)
        return F.pad(w, (0, len(self.nets.bead_types)))

    # ------------------------------------------------------------------ the sequence
    def unroll(self, ctx: Context, z: torch.Tensor, *, with_reference: bool = False) -> Steps:
        """Place the bead's atoms in order (differentiable). z [B, L, noise_dim]; with_reference: also build the
        reference environments for the critic (needs ``ctx.own_ref``)."""
        gen = self.nets.generator
        own_np = ctx.own.cpu().numpy()
        b, n_steps = own_np.shape
        own_fake = torch.zeros(b, n_steps, 3, device=ctx.env_local.device)
        placed = np.zeros((b, n_steps), dtype=bool)
        env_present = ctx.env_idx >= 0
        out = Steps([], [], [], [], [], [], own_fake)
        for s in range(n_steps):
            i = own_np[:, s]
            valid = i >= 0
            if not valid.any():
                break
            placing = np.where(valid, i, 0)
            heavy = ~self.is_h[placing]
            w_env = self._atom_weights(placing, ctx.env_idx, env_present & ~(heavy[:, None] & ctx.hide_for_heavy))
            base = ctx.bead_grid + self._render(ctx.env_local, w_env)
            w_own = self._atom_weights(placing, own_np, placed)
            fake_env = base + self._render(own_fake, w_own)
            one_hot = F.one_hot(self.types[torch.as_tensor(placing, device=self.device)], self.n_atom_types).float()
            pos, _ = gen(fake_env, one_hot, z[:, s])
            valid_t = torch.as_tensor(valid, device=self.device)
            step_mask = (torch.arange(n_steps, device=self.device) == s)[None, :, None] & valid_t[:, None, None]
            own_fake = torch.where(step_mask, pos[:, None, :].to(own_fake.dtype), own_fake)
            out.valid.append(valid_t)
            out.atom_type.append(one_hot)
            out.fake_env.append(fake_env)
            out.fake_pos.append(pos)
            if with_reference:
                out.real_env.append(base + self._render(ctx.own_ref, w_own))
                out.real_pos.append(ctx.own_ref[:, s])
            placed[:, s] = valid
        out.own_fake = own_fake
        return out

    def atom_density(self, pos: torch.Tensor) -> torch.Tensor:
        """One atom's density [B, 1, d, d, d] at ``pos`` [B, 3] nm (local)."""
        return self._render(pos[:, None], torch.ones(pos.shape[0], 1, 1, device=pos.device, dtype=pos.dtype))
