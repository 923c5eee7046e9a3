"""DeepBackmap's training objective: WGAN-GP on unrolled bead sequences plus the annealed energy prior.

DeepBackmap: M. Stieffenhofer, M. Wand, T. Bereau, "Adversarial reverse mapping of equilibrated
condensed-phase molecular structures", Mach. Learn.: Sci. Technol. 1 (2020); M. Stieffenhofer's PhD thesis on
DeepBackmap (2022), eqs. 4.13-4.17; I. Gulrajani et al., "Improved training of Wasserstein GANs" (2017).

One :meth:`DBMObjective.update` per batch of frames: items (frame, bead) are drawn, each in the forward or
the Gibbs view; the critic takes one step on every batch (generated sequences held fixed) and the generator
one step every ``n_critic`` batches, back-propagating the critic's verdict on every step of its unrolled
sequences and ``lambda_pot`` times the energy prior (C2: |e(generated) - e(reference)| per term; C1: e itself),
``lambda_pot`` rising linearly from 0 to ``energy_weight`` over ``energy_ramp_steps`` generator steps.
torch + numpy only.
"""

from __future__ import annotations

import numpy as np
import torch

from finegrain.platform.science.energies.terms import soft_cap
from finegrain.trainables.dbm.environment import minimum_image, to_global
from finegrain.trainables.dbm.sampler import Placer, Steps

__all__ = ["DBMObjective", "draw_items", "present_atoms", "energy_of_bead", "with_bead_atoms"]


def draw_items(n_frames: int, n_beads: int, beads_per_frame: int, gibbs_fraction: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame [B], bead [B], gibbs [B] bool): ``beads_per_frame`` distinct beads of every frame (0: all)."""
    k = n_beads if beads_per_frame == 0 else min(beads_per_frame, n_beads)
    bead = np.concatenate([rng.choice(n_beads, k, replace=False) for _ in range(n_frames)])
    frame = np.repeat(np.arange(n_frames), k)
    return frame, bead, rng.random(len(bead)) < gibbs_fraction


def present_atoms(recipe, bead: np.ndarray, gibbs: np.ndarray) -> np.ndarray:
    """[B, N] bool: the atoms an item sees: Gibbs view every atom of another bead; forward view those of beads
    of lower rank (the beads of rank r are placed together, after every bead of rank < r)."""
    atom_rank = np.asarray(recipe.bead_rank)[np.asarray(recipe.atom_bead)]
    rank = np.asarray(recipe.bead_rank)[bead]
    other = np.asarray(recipe.atom_bead)[None, :] != bead[:, None]
    return other & (gibbs[:, None] | (atom_rank[None, :] < rank[:, None]))


def with_bead_atoms(ctx, own_local: torch.Tensor, aa: torch.Tensor) -> torch.Tensor:
    """Frames ``aa`` [B, N, 3] nm with each item's bead atoms put at ``own_local`` [B, L, 3] (its local frame)."""
    own = ctx.own
    xyz = to_global(own_local, ctx.centre, ctx.rot).to(aa.dtype)
    idx = own.clamp_min(0)[..., None].expand(-1, -1, 3)
    return aa.scatter(1, idx, torch.where((own >= 0)[..., None], xyz, torch.gather(aa, 1, idx)))


def energy_of_bead(energy, ctx, own_local: torch.Tensor, aa: torch.Tensor, box: torch.Tensor | None,
                   known: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-term energies [B] (kJ/mol) of each item's bead with its atoms at ``own_local`` [B, L, 3] (local nm)
    and every other atom where ``aa`` [B, N, 3] has it; ``known`` [B, N]: atoms that exist yet (None: all)."""
    env = torch.as_tensor(ctx.env_idx, device=aa.device)
    return energy(ctx.bead, with_bead_atoms(ctx, own_local, aa), env, box, known=known)


class DBMObjective:
    """The networks, their two Adam optimisers and the update rule (see the module docstring)."""

    def __init__(self, nets, placer: Placer, energy):
        c = nets.config
        self.nets, self.placer, self.energy, self.config = nets, placer, energy, c
        self.opt_g = torch.optim.Adam(nets.generator.parameters(), lr=c.learning_rate,
                                      betas=(c.beta1, c.beta2))
        self.opt_c = torch.optim.Adam(nets.critic.parameters(), lr=c.learning_rate,
                                      betas=(c.beta1, c.beta2))
        self.generator_steps = 0
        #: [n_bonds, 2] atom pairs (for the bond error), on the networks' device once
        self.bonds = torch.as_tensor(np.array(placer.recipe.bonds), dtype=torch.long, device=placer.device)
        #: called with each network's parameters after backward, before the step (data parallel: average the
        #: workers' gradients); None in one process
        self.sync = None

    def lambda_pot(self) -> float:
        c = self.config
        return c.energy_weight * min(1.0, self.generator_steps / c.energy_ramp_steps)

    def _critic_inputs(self, steps: Steps, real: bool):
        keep = [v.nonzero()[:, 0] for v in steps.valid]
        env = torch.cat([(steps.real_env if real else steps.fake_env)[s][k] for s, k in enumerate(keep)])
        pos = torch.cat([(steps.real_pos if real else steps.fake_pos)[s][k] for s, k in enumerate(keep)])
        kind = torch.cat([steps.atom_type[s][k] for s, k in enumerate(keep)])
        return env, self.placer.atom_density(pos.float()), kind

    def critic_step(self, steps: Steps) -> dict[str, float]:
        """One critic update on detached sequences: mean c(fake) - c(real) + gp_weight * gradient penalty."""
        critic = self.nets.critic
        env_r, atom_r, kind = self._critic_inputs(steps, True)
        env_f, atom_f, _ = self._critic_inputs(steps, False)
        env_f, atom_f = env_f.detach(), atom_f.detach()
        d_real, d_fake = critic(env_r, atom_r, kind), critic(env_f, atom_f, kind)
        eps = torch.rand(env_r.shape[0], 1, 1, 1, 1, device=env_r.device)
        env_h = (eps * env_r + (1 - eps) * env_f).requires_grad_(True)
        atom_h = (eps * atom_r + (1 - eps) * atom_f).requires_grad_(True)
        grads = torch.autograd.grad(critic(env_h, atom_h, kind).sum(), (env_h, atom_h), create_graph=True)
        norm = torch.sqrt(sum(g.pow(2).flatten(1).sum(1) for g in grads) + 1e-12)
        gp = ((norm - 1) ** 2).mean()
        w_dist = (d_real - d_fake).mean()
        loss = -w_dist + self.config.gp_weight * gp
        self.opt_c.zero_grad(set_to_none=True)
        loss.backward()
        if self.sync is not None:
            self.sync(self.nets.critic.parameters())
        self.opt_c.step()
        return {"critic_loss": float(loss.detach()), "wasserstein": float(w_dist.detach()),
                "gradient_penalty": float(gp.detach())}

    def generator_step(self, steps: Steps, ctx, aa: torch.Tensor, box: torch.Tensor | None) -> dict[str, float]:
        """One generator update: -mean c(fake) over every unrolled step + lambda_pot * energy prior."""
        env_f, atom_f, kind = self._critic_inputs(steps, False)
        for p in self.nets.critic.parameters():
            p.requires_grad_(False)
        try:
            adversarial = -self.nets.critic(env_f, atom_f, kind).mean()
        finally:
            for p in self.nets.critic.parameters():
                p.requires_grad_(True)
        lam = self.lambda_pot()
        terms = {"generator_adversarial": float(adversarial.detach())}
        loss = adversarial
        if self.energy is not None:
            e_fake = energy_of_bead(self.energy, ctx, steps.own_fake, aa, box)
            cap = self.config.energy_cap
            if self.config.energy_prior == "difference":
                with torch.no_grad():
                    e_ref = energy_of_bead(self.energy, ctx, ctx.own_ref, aa, box)
                prior = sum(soft_cap((e_fake[t] - e_ref[t]).abs(), cap) for t in e_fake)
            else:
                prior = sum(soft_cap(e_fake[t], cap) for t in e_fake)
            prior = prior.mean()
            terms["energy_prior"] = float(prior.detach())
            if lam > 0:
                loss = loss + lam * prior
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        if self.sync is not None:
            self.sync(self.nets.generator.parameters())
        self.opt_g.step()
        self.generator_steps += 1
        return terms | {"lambda_pot": lam}

    def _items(self, aa, cg, box, rng, gibbs_fraction: float | None = None):
        c, recipe = self.config, self.placer.recipe
        frame, bead, gibbs = draw_items(aa.shape[0], recipe.n_beads, c.beads_per_frame,
                                        c.gibbs_fraction if gibbs_fraction is None else gibbs_fraction, rng)
        dev = aa.device
        f_t = torch.as_tensor(frame, device=dev)
        aa_i, cg_i = aa[f_t], cg[f_t]
        box_i = None if box is None else box[f_t]
        bead_t = torch.as_tensor(bead, device=dev)
        angle = torch.as_tensor(rng.uniform(0, 2 * np.pi, len(bead)), dtype=aa.dtype, device=dev)
        present = torch.as_tensor(present_atoms(recipe, bead, gibbs), device=dev)
        ctx = self.placer.context(aa_i, cg_i, box_i, bead_t, angle, present, reference=True)
        z = torch.as_tensor(rng.standard_normal((len(bead), ctx.own.shape[1], c.noise_dim)), dtype=torch.float32,
                            device=dev)
        return ctx, z, aa_i, box_i

    def bond_error(self, ctx, own_local: torch.Tensor, aa: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
        """[B] mean |bond length with the generated atoms - reference bond length| (nm) over every bond that
        touches the item's bead: the structural error the adversarial game should drive down."""
        bonds = self.bonds
        full = with_bead_atoms(ctx, own_local, aa)
        owner = self.placer.atom_bead[bonds]  # [n_bonds, 2]
        touches = (owner[None] == ctx.bead[:, None, None]).any(-1)  # [B, n_bonds]

        def lengths(x):
            return minimum_image(x[:, bonds[:, 1]] - x[:, bonds[:, 0]], box).norm(dim=-1)

        err = (lengths(full) - lengths(aa)).abs()
        return (err * touches).sum(1) / touches.sum(1).clamp_min(1)

    @torch.no_grad()
    def placement_error(self, aa: torch.Tensor, cg: torch.Tensor, box: torch.Tensor | None,
                        rng: np.random.Generator) -> dict[str, float]:
        """Validation on a batch of frames, each bead's sequence unrolled on its own samples (no training):
        ``placement_error_nm`` (mean distance between each generated atom and the reference; a perfect sampler
        does not reach 0 on a free degree of freedom) and ``bond_error_nm`` (:meth:`bond_error`)."""
        ctx, z, aa_i, box_i = self._items(aa, cg, box, rng)
        steps = self.placer.unroll(ctx, z, with_reference=True)
        valid = torch.cat(steps.valid)
        err = torch.cat([(steps.fake_pos[s] - steps.real_pos[s]).norm(dim=-1) for s in range(len(steps.valid))])
        return {"placement_error_nm": float(err[valid].mean()),
                "bond_error_nm": float(self.bond_error(ctx, steps.own_fake, aa_i, box_i).mean()),
                "n_items": float(len(ctx.bead))}

    def update(self, aa: torch.Tensor, cg: torch.Tensor, box: torch.Tensor | None, rng: np.random.Generator,
               step: int) -> dict[str, float]:
        """One training step on a batch of frames aa [F, N, 3], cg [F, n, 3] nm, box [F, 3] nm or None."""
        c = self.config
        self.generator_steps = step // c.n_critic  # the ramp follows the step, so a resumed run continues it
        ctx, z, aa_i, box_i = self._items(aa, cg, box, rng)
        dev = aa.device
        out: dict[str, float] = {}
        if step % c.n_critic == c.n_critic - 1:
            steps = self.placer.unroll(ctx, z)
            out |= self.generator_step(steps, ctx, aa_i, box_i)
            z = torch.as_tensor(rng.standard_normal(z.shape), dtype=torch.float32, device=dev)
        with torch.no_grad():
            steps = self.placer.unroll(ctx, z, with_reference=True)
        out |= self.critic_step(steps)
        out["bond_error_nm"] = float(self.bond_error(ctx, steps.own_fake, aa_i, box_i).mean())
        valid = torch.cat([v for v in steps.valid])
        err = torch.cat([(steps.fake_pos[s] - steps.real_pos[s]).norm(dim=-1) for s in range(len(steps.valid))])
        out["placement_error_nm"] = float(err[valid].mean())
        return out
