"""DeepBackmap as a :class:`~finegrain.trainables.protocol.Backmapper` (family ``dbm``).

DeepBackmap: M. Stieffenhofer, M. Wand, T. Bereau, "Adversarial reverse mapping of equilibrated
condensed-phase molecular structures", Mach. Learn.: Sci. Technol. 1 (2020); M. Stieffenhofer's PhD thesis on
DeepBackmap (2022), sections 4.2 and 5.1.4.

Inference, for every frame and sample at once: a *forward sweep* places the beads rank by rank (rank r of
every molecule's depth-first bead order together, each bead's atoms in sequence, seeing the atoms of lower
ranks), then ``gibbs_sweeps`` *refinement sweeps* replace each bead's atoms conditioned on every other bead's
current atoms (block Gibbs, beads of one rank updated together). Each bead is drawn ``n_candidates`` times
(a random rotation about the environment's axis and fresh noise each) and the candidate of lowest energy
(bonds, angles, torsions, Lennard-Jones with its environment; the force field's parameters are saved with the
model) is kept. Cost is linear in the number of beads: each environment holds a bounded number of atoms.

Frames are independent. Periodic systems: :meth:`backmap_in_box` takes each frame's box.
Saved as JSON (config, recipe, vocabularies) + tensors only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from finegrain.platform.science.errors import InputError
from finegrain.trainables.checkpoints import read_checkpoint
from finegrain.trainables.dbm.config import DBMConfig
from finegrain.trainables.dbm.energy import LocalEnergy
from finegrain.trainables.dbm.environment import to_global
from finegrain.trainables.dbm.model import DBMNetworks
from finegrain.trainables.dbm.objective import energy_of_bead
from finegrain.trainables.dbm.recipe import DBMRecipe
from finegrain.trainables.dbm.sampler import Placer
from finegrain.trainables.protocol import Backmapper, load_weights

__all__ = ["DBMBackmapper", "orthorhombic_edges"]

ENERGY_PREFIX = "energy."


def orthorhombic_edges(box_nm, n_frames: int, argument: str = "box_nm") -> np.ndarray:
    """[T, 3, 3] box vectors (nm) -> [T, 3] edge lengths; InputError naming the argument and frame for a
    wrong shape, a non-finite or non-positive edge, or a triclinic box."""
    b = np.asarray(box_nm, dtype=np.float64)
    if b.shape != (n_frames, 3, 3):
        raise InputError(f"{argument}: expected box vectors [{n_frames}, 3, 3] (nm), got shape {b.shape}")
    edges = np.diagonal(b, axis1=1, axis2=2)
    off = np.abs(b - np.einsum("ti,ij->tij", edges, np.eye(3))).max(axis=(1, 2))
    bad = np.flatnonzero(~np.isfinite(edges).all(1) | (edges <= 0).any(1) | (off > 1e-6))
    if bad.size:
        raise InputError(f"{argument}: frame {int(bad[0])} has box {b[bad[0]].tolist()}; DeepBackmap needs a "
                         f"finite orthorhombic box (positive edges on the diagonal)")
    return edges


class DBMBackmapper(Backmapper):
    """DeepBackmap networks with one topology's recipe and force-field parameters; ``info``: provenance
    (run id, data hash, system, ``periodic``: trained on a periodic box, so a box is required)."""

    family = "dbm"
    frames_independent = True

    def __init__(self, topology, mapping, nets: DBMNetworks, energy_parameters: dict[str, np.ndarray],
                 info: dict | None = None, recipe: DBMRecipe | None = None):
        super().__init__(topology, mapping)
        self.recipe = recipe if recipe is not None else DBMRecipe.from_topology(topology, mapping)
        where = f"topology ({topology.n_atoms} atoms, mapping '{mapping.name}')"
        atom_t, bead_t = self.recipe.require_types(nets.atom_types, nets.bead_types, where)
        self.nets = nets.eval()
        self.energy_parameters = {k: np.asarray(v) for k, v in energy_parameters.items()}
        self.info = dict(info or {})
        self.placer = Placer(nets, self.recipe, atom_t, bead_t)
        self.energy = LocalEnergy(self.energy_parameters, self.recipe.bead_atoms).to(self.placer.device)

    @property
    def config(self) -> DBMConfig:
        return self.nets.config

    @property
    def periodic(self) -> bool:
        return bool(self.info.get("periodic", False))

    def to(self, device) -> "DBMBackmapper":
        self.nets.to(device)
        self.placer = Placer(self.nets, self.recipe, self.placer.types.cpu().numpy(), self.placer.bead_types.cpu().numpy())
        self.energy = self.energy.to(device)
        return self

    def for_system(self, system: str, mapping: str) -> "DBMBackmapper":
        """This model on reference system ``system`` with its mapping ``mapping`` (a name or a mapping file) and
        its force field's energy prior (:meth:`for_topology`; imports OpenMM)."""
        from finegrain.datasets.systems import get_system
        from finegrain.trainables.dbm.forcefield import prior_parameters

        ref = get_system(system)
        moved = self.for_topology(ref.md_topology, ref.mapping(mapping),
                                  prior_parameters(ref.create_system(constraints=None)))
        moved.info["system"] = ref.name
        moved.info["periodic"] = ref.box_nm is not None
        return moved

    def for_topology(self, topology, mapping, energy_parameters: dict[str, np.ndarray]) -> "DBMBackmapper":
        """The same networks on another topology (another molecule, a bigger box) whose atom and bead types
        they know (else InputError naming the first unknown atom or bead): chemical transfer."""
        return DBMBackmapper(topology, mapping, self.nets, energy_parameters,
                             info={**self.info, "transferred_from": self.info.get("system")})

    # ------------------------------------------------------------------ backmapping
    def backmap_xyz(self, cg_xyz: np.ndarray, n_samples: int = 1, seed: int | None = None,
                    prev_aa_xyz: np.ndarray | None = None) -> np.ndarray:
        """[T, n_beads, 3] nm -> [n_samples, T, n_atoms, 3] nm (no periodic box; ``prev_aa_xyz`` unused)."""
        if self.periodic:
            raise InputError("box_nm: this DeepBackmap model was trained on a periodic box; backmap with "
                             "backmap_in_box(cg_xyz, box_nm) (the CG file must carry its unit cell)")
        return self._sample(self.check_cg(cg_xyz), None, n_samples, seed)

    def backmap_in_box(self, cg_xyz: np.ndarray, box_nm: np.ndarray, n_samples: int = 1,
                       seed: int | None = None) -> np.ndarray:
        """Periodic frames: [T, n_beads, 3] nm and box vectors [T, 3, 3] nm -> [n_samples, T, n_atoms, 3] nm."""
        cg = self.check_cg(cg_xyz)
        return self._sample(cg, orthorhombic_edges(box_nm, cg.shape[0]), n_samples, seed)

    @torch.no_grad()
    def _sample(self, cg: np.ndarray, edges: np.ndarray | None, n_samples: int, seed: int | None) -> np.ndarray:
        if n_samples < 1:
            raise InputError(f"n_samples: expected >= 1, got {n_samples}")
        c, recipe, dev = self.config, self.recipe, self.placer.device
        t_frames = cg.shape[0]
        rng = np.random.default_rng(seed)
        gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**62)))
        cg_f = torch.as_tensor(np.tile(cg, (n_samples, 1, 1)), dtype=torch.float32, device=dev)
        box_f = None if edges is None else torch.as_tensor(np.tile(edges, (n_samples, 1)), dtype=torch.float32,
                                                           device=dev)
        n_f, n_atoms = cg_f.shape[0], recipe.n_atoms
        xyz = torch.zeros(n_f, n_atoms, 3, device=dev)
        placed = torch.zeros(n_f, n_atoms, dtype=torch.bool, device=dev)
        ranks = np.asarray(recipe.bead_rank)
        k = c.n_candidates
        per_chunk = max(1, c.batch_beads // k)
        for _sweep in range(1 + c.gibbs_sweeps):
            for r in np.unique(ranks):
                beads = np.flatnonzero(ranks == r)
                frame = np.repeat(np.arange(n_f), len(beads))
                bead = np.tile(beads, n_f)
                updates = []
                for s in range(0, len(bead), per_chunk):
                    updates.append(self._place(xyz, placed, cg_f, box_f, frame[s:s + per_chunk],
                                               bead[s:s + per_chunk], k, gen))
                for f_idx, atoms, pos in updates:
                    xyz[f_idx, atoms] = pos
                own = recipe.bead_atoms[beads]
                placed[:, own[own >= 0]] = True
        out = xyz.double().cpu().numpy().reshape(n_samples, t_frames, n_atoms, 3)
        if not np.isfinite(out).all():
            raise RuntimeError("DeepBackmap produced non-finite coordinates")
        return out

    def _place(self, xyz, placed, cg_f, box_f, frame: np.ndarray, bead: np.ndarray, k: int, gen):
        """Draw k candidates for each (frame, bead), keep the lowest-energy one; (frame idx, atom idx, xyz)."""
        c, dev = self.config, self.placer.device
        fr = np.repeat(frame, k)
        bd = np.repeat(bead, k)
        f_t, b_t = torch.as_tensor(fr, device=dev), torch.as_tensor(bd, device=dev)
        present = placed[f_t] & (self.placer.atom_bead[None] != b_t[:, None])
        angle = (torch.rand(len(fr), generator=gen) * 2 * np.pi).to(dev)
        box = None if box_f is None else box_f[f_t]
        ctx = self.placer.context(xyz[f_t], cg_f[f_t], box, b_t, angle, present)
        z = torch.randn(len(fr), ctx.own.shape[1], c.noise_dim, generator=gen).to(dev)
        steps = self.placer.unroll(ctx, z)
        own = ctx.own
        if k > 1:
            known = present.clone()
            known.scatter_(1, own.clamp_min(0), (own >= 0))
            e = energy_of_bead(self.energy, ctx, steps.own_fake, xyz[f_t], box, known=known)
            total = sum(e.values()).reshape(-1, k)
            total = torch.where(torch.isfinite(total), total, torch.full_like(total, float("inf")))
            best = torch.arange(len(frame), device=dev) * k + total.argmin(dim=1)
        else:
            best = torch.arange(len(frame), device=dev)
        pos = to_global(steps.own_fake[best], ctx.centre[best], ctx.rot[best])
        own_b = own[best]
        ok = own_b >= 0
        rows = torch.as_tensor(frame, device=dev)[:, None].expand_as(own_b)
        return rows[ok], own_b[ok], pos[ok]

    # ------------------------------------------------------------------ persistence
    def _config(self) -> dict[str, Any]:
        return {"dbm": self.config.to_dict(), "atom_types": list(self.nets.atom_types),
                "bead_types": list(self.nets.bead_types), "recipe": self.recipe.to_dict(), "info": self.info}

    def _state(self) -> dict[str, Any]:
        state = {k: v.detach().cpu() for k, v in self.nets.state_dict().items()}
        state |= {ENERGY_PREFIX + k: torch.as_tensor(np.asarray(v)) for k, v in self.energy_parameters.items()}
        return state

    @classmethod
    def _from_saved(cls, topology, mapping, config: dict, state: dict) -> "DBMBackmapper":
        nets = networks(config)
        weights = {k: v for k, v in state.items() if not k.startswith(ENERGY_PREFIX)}
        params = {k[len(ENERGY_PREFIX):]: v.numpy() for k, v in state.items() if k.startswith(ENERGY_PREFIX)}
        return cls(topology, mapping, load_weights(nets, weights, "dbm"), params, info=config.get("info"),
                   recipe=DBMRecipe.from_dict(config["recipe"]))

    @classmethod
    def from_checkpoint(cls, folder, topology, mapping, info: dict | None = None) -> "DBMBackmapper":
        """Rebuild from a training checkpoint folder (see :mod:`.train`)."""
        ck = read_checkpoint(folder, "dbm", "dbm", extra=("energy",))
        meta = ck["meta"]
        params = {k: v.numpy() for k, v in ck["energy"].items()}
        nets = load_weights(networks(meta), ck["model"], "dbm")
        return cls(topology, mapping, nets, params, info={**(info or {}), "periodic": bool(meta.get("periodic"))},
                   recipe=DBMRecipe.from_dict(meta["recipe"]))

def networks(config: dict) -> DBMNetworks:
    """Untrained networks of a saved config (``dbm``, ``atom_types``, ``bead_types``)."""
    return DBMNetworks(DBMConfig.from_dict(config["dbm"]), tuple(config["atom_types"]), tuple(config["bead_types"]))
