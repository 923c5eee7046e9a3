"""A Z-matrix anchored on the atoms the beads sit on: internal coordinates out, Cartesians back in.

The free atoms (those no bead sits on) are placed one by one, each from
three earlier atoms: a bond partner j, an angle atom k bonded to j and a
dihedral atom l, by a bond length |x_i - x_j| (nm), a bond angle
angle(i, j, k) (rad, in [0, pi]) and a dihedral dihedral(i, j, k, l) (rad, in
(-pi, pi], IUPAC sign, as ``mdtraj.compute_dihedrals``). Where j already has
a placed neighbour s other than k, l = s: the dihedral is then the offset of
i from its sibling about the k-j bond (+-120 degrees for methyl hydrogens,
180 degrees for a planar carbonyl), which keeps sibling correlations in one
number. Heavy atoms are placed before hydrogens.

Anchors (bead atoms) are given. With >= 3 anchors forming one bonded group
every free atom has all three references. With a single anchor (one bead on
one atom) the first free atom has only a bond (placed along +x) and the
second only a bond and an angle (in the xy-plane): the molecule is built in
that canonical frame and a uniformly random rotation about the anchor puts
it in space (the beads then fix no orientation, as they should not).

Shapes: xyz [B, N, 3] nm; internal coordinates [B, M, 3] (bond, angle,
dihedral of the M free atoms in build order); ``ZMatrix.active`` [M, 3]
says which of them exist (False only for the first two atoms of a
single-anchor build). The placement is exact to float precision:
``place(internal_coordinates(x), x)`` returns x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from finegrain.platform.science.errors import InputError

__all__ = ["ZMatrix", "build_zmatrix", "anchor_atoms", "internal_coordinates", "place", "dihedral", "angle",
           "random_rotations"]

NONE = -1  # no reference (first atoms of a single-anchor build)


@dataclass(frozen=True)
class ZMatrix:
    """The build of one topology from its anchors.

    anchors : [A] atom indices the beads sit on, in bead order.
    order : [M] free atom indices in build order.
    refs : [M, 3] (j, k, l) atom indices, ``NONE`` where absent.
    active : [M, 3] bool, which of (bond, angle, dihedral) exist.
    anchor_bonds / anchor_angles / anchor_dihedrals : [*, 2 | 3 | 4] atom
        tuples of the bonded anchor graph (what describes the CG input).
    """

    n_atoms: int
    anchors: np.ndarray
    order: np.ndarray
    refs: np.ndarray
    active: np.ndarray
    anchor_pairs: np.ndarray
    anchor_angles: np.ndarray
    anchor_dihedrals: np.ndarray

    @property
    def single_anchor(self) -> bool:
        return len(self.anchors) == 1

    @property
    def n_free(self) -> int:
        return len(self.order)

    def to_dict(self) -> dict:
        return {k: np.asarray(getattr(self, k)).tolist() for k in
                ("anchors", "order", "refs", "active", "anchor_pairs", "anchor_angles", "anchor_dihedrals")} | \
            {"n_atoms": self.n_atoms}

    @classmethod
    def from_dict(cls, d: dict) -> "ZMatrix":
        def arr(key, dtype, width):
            return np.asarray(d[key], dtype=dtype).reshape(-1, width) if width else np.asarray(d[key], dtype=dtype)

        return cls(int(d["n_atoms"]), arr("anchors", np.int64, 0), arr("order", np.int64, 0),
                   arr("refs", np.int64, 3), arr("active", bool, 3), arr("anchor_pairs", np.int64, 2),
                   arr("anchor_angles", np.int64, 3), arr("anchor_dihedrals", np.int64, 4))


def anchor_atoms(mapping) -> np.ndarray:
    """The atom each bead sits on [n_beads]; refuses beads that average several atoms (naming them)."""
    m = np.abs(np.asarray(mapping.matrix))
    out = []
    for b, row in enumerate(m):
        nz = np.flatnonzero(row > 1e-12)
        if len(nz) != 1:
            raise InputError(f"mapping '{mapping.name}': bead {mapping.bead_names[b]} averages {len(nz)} atoms; "
                             f"the internal-coordinate family needs every bead on one atom")
        out.append(int(nz[0]))
    if len(set(out)) != len(out):
        raise InputError(f"mapping '{mapping.name}': two beads sit on the same atom")
    return np.asarray(out, dtype=np.int64)


def _neighbours(topology) -> list[list[int]]:
    nb: list[list[int]] = [[] for _ in range(topology.n_atoms)]
    for a, b in topology.bonds:
        nb[a.index].append(b.index)
        nb[b.index].append(a.index)
    return [sorted(x) for x in nb]


def _anchor_graph(anchors: np.ndarray, nb: list[list[int]]):
    aset = set(int(a) for a in anchors)
    pairs = [(int(a), int(b)) for i, a in enumerate(anchors) for b in anchors[i + 1:]]
    angles, dihedrals = [], []
    for b in sorted(aset):
        ns = [n for n in nb[b] if n in aset]
        angles += [(a, b, c) for i, a in enumerate(ns) for c in ns[i + 1:]]
    for b in sorted(aset):
        for c in (n for n in nb[b] if n in aset and n > b):
            for a in (n for n in nb[b] if n in aset and n != c):
                dihedrals += [(a, b, c, d) for d in nb[c] if d in aset and d != b]
    return (np.asarray(pairs, np.int64).reshape(-1, 2), np.asarray(angles, np.int64).reshape(-1, 3),
            np.asarray(dihedrals, np.int64).reshape(-1, 4))


def build_zmatrix(topology, mapping) -> ZMatrix:
    """The Z-matrix of ``topology`` anchored on the atoms of ``mapping``'s beads (see the module docstring).

    Refuses (``InputError``) beads on several atoms, two anchors, anchors
    that are not one bonded group and atoms no bond path reaches.
    """
    anchors = anchor_atoms(mapping)
    nb = _neighbours(topology)
    n = topology.n_atoms
    heavy = np.array([a.element is None or a.element.symbol != "H" for a in topology.atoms])
    aset = set(int(a) for a in anchors)
    if len(anchors) == 2:
        raise InputError(f"mapping '{mapping.name}': two beads fix neither the orientation nor a frame; the "
                         f"internal-coordinate family needs one bead or >= 3 bonded ones")
    if len(anchors) > 1:  # anchors must be one bonded group
        seen, todo = {int(anchors[0])}, [int(anchors[0])]
        while todo:
            for nbr in nb[todo.pop()]:
                if nbr in aset and nbr not in seen:
                    seen.add(nbr)
                    todo.append(nbr)
        if seen != aset:
            names = [mapping.bead_names[i] for i, a in enumerate(anchors) if int(a) not in seen]
            raise InputError(f"mapping '{mapping.name}': beads {names} are not bonded to the others' atoms; the "
                             f"internal-coordinate family needs the bead atoms to form one bonded group")
    placed: list[int] = [int(a) for a in anchors]
    is_placed = np.zeros(n, bool)
    is_placed[anchors] = True
    order, refs = [], []
    while len(placed) < n:
        frontier = [i for i in range(n) if not is_placed[i] and any(is_placed[j] for j in nb[i])]
        if not frontier:
            missing = [str(a) for a in topology.atoms if not is_placed[a.index]][:5]
            raise InputError(f"topology: atoms {missing} have no bond path to the bead atoms")
        pick = min(frontier, key=lambda i: (not heavy[i], i))
        j = min((x for x in nb[pick] if is_placed[x]), key=placed.index)
        k = next((x for x in sorted(nb[j], key=_rank(placed)) if is_placed[x] and x != pick), NONE)
        if k == NONE and len(placed) >= 3:  # j's only placed neighbour is pick's parent chain: any earlier atom
            k = next(x for x in placed if x != j)
        l_ = NONE
        if k != NONE:
            sib = [x for x in nb[j] if is_placed[x] and x not in (k, pick)]
            far = [x for x in nb[k] if is_placed[x] and x != j]
            cand = sorted(sib, key=_rank(placed)) + sorted(far, key=_rank(placed))
            cand += [x for x in placed if x not in (j, k)]
            l_ = cand[0] if len(placed) >= 3 else NONE
        order.append(pick)
        refs.append((j, k, l_))
        placed.append(pick)
        is_placed[pick] = True
    refs_a = np.asarray(refs, np.int64).reshape(-1, 3)
    active = np.ones_like(refs_a, dtype=bool)
    active[:, 1] = refs_a[:, 1] != NONE
    active[:, 2] = refs_a[:, 2] != NONE
    pairs, angles, dihedrals = _anchor_graph(anchors, nb)
    return ZMatrix(n, anchors, np.asarray(order, np.int64), refs_a, active, pairs, angles, dihedrals)


def _rank(placed: list[int]):
    pos = {a: i for i, a in enumerate(placed)}
    return lambda x: pos.get(x, len(pos))


# -- geometry (torch, batched) ------------------------------------------------------
def angle(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Angle a-b-c [...] rad from points [..., 3] (atan2 form: accurate near 0 and pi)."""
    u, v = a - b, c - b
    return torch.atan2(torch.linalg.cross(u, v).norm(dim=-1), (u * v).sum(-1))


def dihedral(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Dihedral a-b-c-d [...] rad in (-pi, pi], the sign convention of ``mdtraj.compute_dihedrals``."""
    b0, b1, b2 = b - a, c - b, d - c
    n1, n2 = torch.linalg.cross(b0, b1), torch.linalg.cross(b1, b2)
    m1 = torch.linalg.cross(b1 / b1.norm(dim=-1, keepdim=True).clamp_min(1e-12), n1)
    return torch.atan2((m1 * n2).sum(-1), (n1 * n2).sum(-1))


def internal_coordinates(xyz: torch.Tensor, zm: ZMatrix) -> torch.Tensor:
    """[B, N, 3] nm -> [B, M, 3] (bond nm, angle rad, dihedral rad) of the free atoms; inactive slots 0."""
    r = torch.as_tensor(zm.refs, device=xyz.device).clamp_min(0)
    i = torch.as_tensor(zm.order, device=xyz.device)
    xi, xj, xk, xl = xyz[:, i], xyz[:, r[:, 0]], xyz[:, r[:, 1]], xyz[:, r[:, 2]]
    out = torch.stack([(xi - xj).norm(dim=-1), angle(xi, xj, xk), dihedral(xi, xj, xk, xl)], dim=-1)
    return out * torch.as_tensor(zm.active, device=xyz.device, dtype=xyz.dtype)


def _place_one(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, bond, ang, dih) -> torch.Tensor:
    """Point d with |d - c| = bond, angle(d, c, b) = ang, dihedral(a, b, c, d) = dih (NeRF)."""
    bc = c - b
    bc = bc / bc.norm(dim=-1, keepdim=True)
    n = torch.linalg.cross(b - a, bc)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    m = torch.linalg.cross(n, bc)
    s = torch.sin(ang)
    d = torch.stack([-bond * torch.cos(ang), bond * s * torch.cos(dih), bond * s * torch.sin(dih)], dim=-1)
    return c + d[..., :1] * bc + d[..., 1:2] * m + d[..., 2:] * n


def place(ic: torch.Tensor, anchors_xyz: torch.Tensor, zm: ZMatrix, rotation: torch.Tensor | None = None
          ) -> torch.Tensor:
    """Cartesians [B, N, 3] nm from internal coordinates [B, M, 3] and the anchors' positions.

    anchors_xyz : [B, A, 3] nm (bead positions, bead order) or [B, N, 3]
    (only the anchor rows are read). rotation : [B, 3, 3] for a single-anchor
    build (the canonical frame is rotated about the anchor; None: identity).
    """
    bsz = ic.shape[0]
    x = ic.new_zeros(bsz, zm.n_atoms, 3)
    anc = torch.as_tensor(zm.anchors, device=ic.device)
    x[:, anc] = anchors_xyz if anchors_xyz.shape[1] == len(zm.anchors) else anchors_xyz[:, anc]
    ex = ic.new_tensor([1.0, 0.0, 0.0]).expand(bsz, 3)
    ey = ic.new_tensor([0.0, 1.0, 0.0]).expand(bsz, 3)
    for m, (i, (j, k, l_)) in enumerate(zip(zm.order.tolist(), zm.refs.tolist())):
        bond, ang, dih = ic[:, m, 0:1].squeeze(1), ic[:, m, 1], ic[:, m, 2]
        if k == NONE:  # first atom of a single-anchor build: along +x
            x[:, i] = x[:, j] + bond[:, None] * ex
        elif l_ == NONE:  # second: in the xy-plane
            x[:, i] = _place_one(x[:, k] + ey, x[:, k], x[:, j], bond, ang, torch.zeros_like(ang))
        else:
            x[:, i] = _place_one(x[:, l_], x[:, k], x[:, j], bond, ang, dih)
    if zm.single_anchor and rotation is not None:
        o = x[:, anc[0]].unsqueeze(1)
        x = o + torch.einsum("bij,bnj->bni", rotation.to(x.dtype), x - o)
    return x


def random_rotations(n: int, generator: torch.Generator | None = None, dtype=torch.float32,
                     device=None) -> torch.Tensor:
    """[n, 3, 3] rotations uniform on SO(3) (normalised Gaussian quaternions)."""
    q = torch.randn(n, 4, generator=generator, dtype=dtype, device=device)
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], dim=-1).reshape(n, 3, 3)
