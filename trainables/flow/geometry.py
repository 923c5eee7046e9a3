"""Where the flow's densities live: the fibre of a linear CG map, and the prior on it.

For a CG map y = C x (``C`` [n, N], rows summing to one, acting on x, y, z
alike) with full row rank, the atomistic configurations compatible with a
CG frame y form the fibre M^-1(y) = {C+ y + N eta}, an affine subspace of
dimension d = 3 (N - n) (pseudo-inverse ``C+`` [N, n] and an
orthonormal null-space basis ``N`` [N, N - n]).  p(x | y) is supported on the
fibre, so it has no density on R^{3N}; the flow models the density of the
orthonormal fibre coordinates eta, i.e. w.r.t. the d-dimensional Lebesgue
(Hausdorff) measure of the fibre, lengths in nm.  Log-densities are thus in
nats and change by d ln(s) under a change of length unit by s.

Zero modes.  Rows of C sum to one, so translating every atom by a translates
every bead by a: a translation is never in ker C, and fixing y fixes the
translation.  The flow works on frames centred on the CG centroid (one shift
of x and y together, which leaves q(x | y) unchanged: q(x + a | y + a) =
q(x | y)).  Orientation is fixed by y only when the beads span 3D; otherwise
(CA-only, 1 bead) the conditional density is spread over orientations, which
the rotation-equivariant field and isotropic prior represent exactly.

The prior: each atom Gaussian around the bead it maps to (``assignment``),
projected onto the fibre: x0 = a(y) + sigma P eps with the anchor
a(y) = C+ y + P B y (B [N, n] one-hot assignment, P = I - C+ C = N N^T the
projector onto ker C).  In fibre coordinates that is N(N^T B y, sigma^2 I_d):
atoms that are beads themselves (slice maps) sit exactly on their bead.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["FibreGeometry", "bead_assignment", "fibre_basis"]


def fibre_basis(mapping_matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C+ [N, n], orthonormal null-space basis [N, N - rank]) of ``mapping_matrix`` [n, N]."""
    c = np.asarray(mapping_matrix, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"mapping_matrix: expected shape [n_beads, n_atoms], got {c.shape}")
    _, s, vt = np.linalg.svd(c)
    rank = int(np.sum(s > s.max() * max(c.shape) * np.finfo(float).eps))
    return np.linalg.pinv(c), vt[rank:].T.copy()


def bead_assignment(mapping_matrix: np.ndarray, aa_xyz: np.ndarray | None = None,
                    cg_xyz: np.ndarray | None = None) -> np.ndarray:
    """The bead each atom's prior is centred on, [N] int.

    An atom with weight in some bead's row goes to the bead where its weight
    is largest; an atom in no bead (e.g. a hydrogen under a slice map) goes to
    the bead nearest on average over frames ``aa_xyz`` [F, N, 3] / ``cg_xyz``
    [F, n, 3] (nm), which are then required.
    """
    c = np.asarray(mapping_matrix, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"mapping_matrix: expected shape [n_beads, n_atoms], got {c.shape}")
    n, n_atoms = c.shape
    w = np.abs(c)
    out = np.argmax(w, axis=0)
    free = np.flatnonzero(w.max(axis=0) == 0)
    if free.size:
        if aa_xyz is None or cg_xyz is None:
            raise ValueError(f"aa_xyz, cg_xyz: atoms {free.tolist()} belong to no bead; frames are needed to "
                             f"assign them to their nearest bead")
        aa, cg = np.asarray(aa_xyz, dtype=np.float64), np.asarray(cg_xyz, dtype=np.float64)
        if aa.ndim != 3 or aa.shape[1:] != (n_atoms, 3):
            raise ValueError(f"aa_xyz: expected shape [F, {n_atoms}, 3], got {aa.shape}")
        if cg.shape != (aa.shape[0], n, 3):
            raise ValueError(f"cg_xyz: expected shape [{aa.shape[0]}, {n}, 3], got {cg.shape}")
        dist = np.linalg.norm(aa[:, free, None, :] - cg[:, None, :, :], axis=-1).mean(axis=0)  # [free, n]
        out[free] = np.argmin(dist, axis=1)
    return out.astype(np.int64)


class FibreGeometry(torch.nn.Module):
    """Fibre projector, orthonormal tangent basis and projected Gaussian prior of one CG map.

    Buffers (float32 unless cast): ``pinv`` [N, n], ``proj`` [N, N] (P),
    ``anchor`` [N, n] (C+ + P B), ``basis`` [d, N, 3] (orthonormal fibre
    tangent vectors, for exact divergences).  Arrays act on atom indices and
    identically on x, y, z.
    """

    def __init__(self, mapping_matrix: np.ndarray, assignment: np.ndarray, prior_width_nm: float):
        super().__init__()
        c = np.asarray(mapping_matrix, dtype=np.float64)
        pinv, null = fibre_basis(c)
        n, n_atoms = c.shape
        a = np.asarray(assignment, dtype=np.int64)
        if a.shape != (n_atoms,) or a.min(initial=0) < 0 or a.max(initial=0) >= n:
            raise ValueError(f"assignment: expected [{n_atoms}] bead indices in [0, {n}), got shape {a.shape}")
        proj = np.eye(n_atoms) - pinv @ c
        onehot = np.zeros((n_atoms, n))
        onehot[np.arange(n_atoms), a] = 1.0
        k = null.shape[1]
        basis = np.einsum("ia,cd->acid", null, np.eye(3)).reshape(3 * k, n_atoms, 3)
        self.n_atoms, self.n_beads, self.dim = n_atoms, n, 3 * k
        self.sigma = float(prior_width_nm)
        self.register_buffer("matrix", torch.tensor(c, dtype=torch.float32))
        self.register_buffer("pinv", torch.tensor(pinv, dtype=torch.float32))
        self.register_buffer("proj", torch.tensor(proj, dtype=torch.float32))
        self.register_buffer("anchor", torch.tensor(pinv + proj @ onehot, dtype=torch.float32))
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.float32))
        self.register_buffer("assignment", torch.tensor(a))

    # All methods: x [B, N, 3], y [B, n, 3] (nm); the leading dims are any batch shape.
    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The point of the fibre over y nearest to x: x - C+ (C x - y)."""
        return x - torch.einsum("ib,...bc->...ic", self.pinv, torch.einsum("bi,...ic->...bc", self.matrix, x) - y)

    def tangent(self, v: torch.Tensor) -> torch.Tensor:
        """P v: the component of a displacement [..., N, 3] along the fibre."""
        return torch.einsum("ij,...jc->...ic", self.proj, v)

    def prior_mean(self, y: torch.Tensor) -> torch.Tensor:
        """The anchor a(y) = C+ y + P B y [..., N, 3]."""
        return torch.einsum("ib,...bc->...ic", self.anchor, y)

    def sample_prior(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x0 = a(y) + sigma P eps, eps ~ N(0, I) [..., N, 3]."""
        eps = torch.randn(y.shape[:-2] + (self.n_atoms, 3), generator=generator, dtype=y.dtype, device=y.device)
        return self.prior_mean(y) + self.sigma * self.tangent(eps)

    def prior_log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log N(eta; N^T B y, sigma^2 I_d) of a fibre point x, [...] nats (nm-based fibre measure)."""
        r = self.tangent(x - self.prior_mean(y))  # exact on the fibre; removes round-off off it
        sq = (r * r).sum(dim=(-1, -2))
        return -0.5 * self.dim * math.log(2 * math.pi * self.sigma ** 2) - 0.5 * sq / self.sigma ** 2

    def probes(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
               dtype=torch.float32, device=None) -> torch.Tensor:
        """Hutchinson probes P eps, eps ~ N(0, I): shape + (N, 3); E[u u^T] = P (x) I_3."""
        eps = torch.randn(tuple(shape) + (self.n_atoms, 3), generator=generator, dtype=dtype, device=device)
        return self.tangent(eps)
