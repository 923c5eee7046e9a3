"""Aligned, featurised local environments of DeepBackmap (thesis section 4.3; pure batched torch + numpy).

DeepBackmap: M. Stieffenhofer, M. Wand, T. Bereau, "Adversarial reverse mapping of equilibrated
condensed-phase molecular structures", Mach. Learn.: Sci. Technol. 1 (2020); M. Stieffenhofer's PhD thesis
on DeepBackmap (2022), eqs. 4.4-4.10.

An environment is built for one *item*: a (frame, bead) pair. Its frame (:func:`local_frames`) is centred on
the bead and rotated so the direction to the bead's predecessor in the CG graph (``recipe.axis_bead``) is the
local +z axis; the rotation about z is free (``angle``). Particles are taken with the minimum image of an
orthorhombic box when there is one. Local coordinates: ``local = (x - centre) @ rot.T`` (rows of ``rot``
are the local x, y, z axes), global ``x = centre + local @ rot``.

Feature channels (``n_channels = n_atom_types + 4 + n_bead_types``), in this order:

- one per atom type (element and bonded heavy/hydrogen counts, ``recipe.type_names``): every present atom;
- four interaction channels *relative to the atom being placed* (bond, angle, dihedral, Lennard-Jones:
  one, two, three or more bonds apart / another molecule), thesis eq. 4.8;
- one per bead type: every bead.

Densities are DeepBackmap's Gaussians ``exp(-|x - r|^2 / sigma)`` on the cell centres of
:func:`~finegrain.platform.science.voxels.grid_points` (sigma in nm^2, std ``sqrt(sigma/2)``).
"""

from __future__ import annotations

import numpy as np
import torch

from finegrain.platform.science.voxels import grid_points

__all__ = ["N_RELATIONS", "local_frames", "minimum_image", "gather", "render", "to_local", "to_global",
           "channel_weights"]

#: interaction channels: bond (1), angle (2), dihedral (3), Lennard-Jones (>= 4 bonds or another molecule)
N_RELATIONS = 4


def minimum_image(d: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
    """Difference vectors ``d`` [B, ..., 3] (nm) wrapped into an orthorhombic box ``box`` [B, 3] (nm; None: as is)."""
    if box is None:
        return d
    edge = box.reshape(box.shape[0], *([1] * (d.dim() - 2)), 3)
    return d - edge * torch.round(d / edge)


def local_frames(cg: torch.Tensor, bead: torch.Tensor, axis_bead: torch.Tensor, box: torch.Tensor | None,
                 angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(centre [B, 3] nm, rot [B, 3, 3]) of each item's environment.

    cg : [B, n_beads, 3] nm, each item's CG frame; bead : [B] the item's bead; axis_bead : [n_beads] the bead
    whose direction defines local +z (-1: none, then z is the global z); box : [B, 3] nm or None;
    angle : [B] rad, the rotation about the local z axis.
    """
    b = torch.arange(cg.shape[0], device=cg.device)
    centre = cg[b, bead]
    ax = axis_bead[bead]
    has_axis = ax >= 0
    toward = minimum_image((cg[b, ax.clamp_min(0)] - centre)[:, None], box)[:, 0]
    ez = torch.tensor([0.0, 0.0, 1.0], dtype=cg.dtype, device=cg.device).expand_as(toward)
    z = torch.where(has_axis[:, None], toward, ez)
    z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    # a reference vector least aligned with z, then Gram-Schmidt
    ref = torch.eye(3, dtype=cg.dtype, device=cg.device)[torch.argmin(z.abs(), dim=-1)]
    x = ref - (ref * z).sum(-1, keepdim=True) * z
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.cross(z, x, dim=-1)
    c, s = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
    x, y = c * x + s * y, -s * x + c * y
    return centre, torch.stack([x, y, z], dim=1)


def to_local(xyz: torch.Tensor, centre: torch.Tensor, rot: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
    """Global [B, P, 3] nm -> local [B, P, 3] nm (minimum image about the centre)."""
    return minimum_image(xyz - centre[:, None], box) @ rot.mT


def to_global(local: torch.Tensor, centre: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Local [B, P, 3] nm -> global [B, P, 3] nm (the image nearest the centre)."""
    return centre[:, None] + local @ rot


def gather(xyz: torch.Tensor, centre: torch.Tensor, rot: torch.Tensor, box: torch.Tensor | None,
           candidates: torch.Tensor, reach: float, max_particles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The particles inside each item's cube: (index [B, P] long, -1 padded; local [B, P, 3] nm).

    xyz : [B, M, 3] nm global positions; candidates : [B, M] bool, which particles may enter (present,
    not the item's own); reach : half-width of the cube plus the density's tail (nm); at most
    ``max_particles`` are kept, nearest to the centre first. ``P`` is the largest count in the batch.
    """
    local = to_local(xyz, centre, rot, box)
    inside = candidates & (local.abs().amax(dim=-1) < reach)
    dist = torch.where(inside, local.norm(dim=-1), torch.full_like(local[..., 0], float("inf")))
    p = int(min(max_particles, max(int(inside.sum(dim=1).max()), 1)))
    d_sel, idx = torch.topk(dist, p, dim=1, largest=False)
    keep = torch.isfinite(d_sel)
    idx = torch.where(keep, idx, torch.full_like(idx, -1))
    loc = torch.gather(local, 1, idx.clamp_min(0)[..., None].expand(-1, -1, 3))
    return idx, torch.where(keep[..., None], loc, torch.zeros_like(loc))


def channel_weights(recipe, types: torch.Tensor, n_atom_types: int, placing: np.ndarray, idx: np.ndarray,
                    present: np.ndarray) -> torch.Tensor:
    """The atom part of each particle's channel vector [B, P, n_atom_types + 4] (float, on ``types``' device).

    types : [n_atoms] long, each atom's index in the model's atom-type vocabulary; placing : [B] the atom being
    placed; idx : [B, P] atom indices (-1: padding); present : [B, P] bool (a padded or hidden particle gets 0).
    """
    rel = recipe.relation(placing, idx)  # [B, P] in 1..4 (0: itself, -1: padding)
    on = present & (idx >= 0) & (rel > 0)
    dev = types.device
    w = torch.zeros(*idx.shape, n_atom_types + N_RELATIONS, device=dev)
    on_t = torch.as_tensor(on, device=dev)
    atom_t = types[torch.as_tensor(np.where(on, idx, 0), device=dev)]
    w.scatter_(-1, atom_t[..., None], on_t[..., None].float())
    rel_t = torch.as_tensor(np.clip(rel, 1, N_RELATIONS) - 1, device=dev) + n_atom_types
    w.scatter_(-1, rel_t[..., None], on_t[..., None].float())
    return w


def render(local: torch.Tensor, weights: torch.Tensor, n_grid: int, grid_width: float, sigma: float,
           chunk: int = 128) -> torch.Tensor:
    """Featurised densities [B, C, d, d, d] of particles at ``local`` [B, P, 3] nm with channel weights
    ``weights`` [B, P, C]: ``sum_p w[b, p, c] exp(-|x_ijk - r_p|^2 / sigma)`` (differentiable in both).

    Separable per axis, contracted in chunks of ``chunk`` items so memory stays O(chunk * P * d^3).
    """
    g = grid_points(n_grid, grid_width, dtype=local.dtype, device=local.device)
    out = []
    for s in range(0, local.shape[0], chunk):
        f = torch.exp(-((g - local[s:s + chunk, ..., None]) ** 2) / sigma)  # [b, P, 3, d]
        dens = (f[:, :, 0, :, None, None] * f[:, :, 1, None, :, None] * f[:, :, 2, None, None, :]).flatten(2)
        out.append(weights[s:s + chunk].to(local.dtype).mT @ dens)  # [b, C, d^3]
    return torch.cat(out).reshape(local.shape[0], weights.shape[-1], n_grid, n_grid, n_grid)
