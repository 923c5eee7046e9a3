"""Conditional flow matching on the fibre: velocity network, loss, sampling, exact likelihood.

Velocity network (:class:`VelocityField`): EGNN-style message passing
(Satorras, Hoogeboom & Welling 2021) on a graph whose receivers are the N
moving atoms and whose senders are the atoms, the n CG beads and (temporal
models) the N atoms of AA(t-1).  Node features: a learned embedding per atom
/ bead / previous-atom index (one topology per model) plus Fourier features
of t.  Edge messages m_ij = MLP(h_i, h_j, RBF(|x_i - x_j|)) are invariant;
the output is equivariant, a sum of relative vectors weighted by scalars:

    v_i = sum_layers sum_j [ phi_x(m_ij) (x_i - x_j) + phi_c(m_ij) (x_i - x_j) x w_i ] / S,
    w_i = sum_j psi(m_ij) (x_i - x_j) / S,

so v is translation invariant and rotation equivariant; the cross-product
term (``chiral``) is a pseudo-vector, which keeps rotation equivariance
but drops reflection equivariance (SE(3) rather than E(3)): an E(3) field
with an isotropic prior gives a mirror-symmetric density, which for a
chiral molecule under a CG map that cannot fix its handedness (CA-only)
puts half the mass on the wrong enantiomer.  Positions are not updated
between layers (the coordinates are the ODE state; only features are), and
relative vectors are used unnormalised (in units of ``length_scale_nm``),
so affine fields, the exact answer for Gaussian ensembles, are
representable.  Graph: complete, O(N (N + n)) edges per frame.  A masked
edge (the self edge; every AA(t-1) edge when AA(t-1) is hidden) contributes
nothing: its message m_ij and its coefficients phi_x, phi_c, psi are zeroed
(biases included), so the frame-only field does not depend on the hidden
AA(t-1) values and equals the field called with prev=None.

Flow (:class:`ConditionalFlow`): frames centred on the CG centroid; prior
and velocity projected onto the fibre (:mod:`.geometry`); conditional flow
matching with the linear path x_t = (1 - t) x0 + t x1 and target x1 - x0
(Lipman et al. 2023), independent coupling.  Sampling integrates t: 0 -> 1;
log q(x | y) = log p0(x0) - int_0^1 div v dt integrates t: 1 -> 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from finegrain.trainables.flow.config import FlowConfig
from finegrain.trainables.flow.geometry import FibreGeometry
from finegrain.trainables.flow.ode import odeint, trace_along

__all__ = ["VelocityField", "ConditionalFlow", "centre_on_cg"]


def centre_on_cg(cg: torch.Tensor, *frames: torch.Tensor | None):
    """Shift every frame by -(CG centroid): returns (centroid [B, 1, 3], cg, *frames) nm; None passes through."""
    c = cg.mean(dim=-2, keepdim=True)
    return (c, cg - c, *(None if f is None else f - c for f in frames))


class VelocityField(nn.Module):
    """EGNN-style SE(3)/E(3)-equivariant velocity v(x_t, t | y, AA(t-1)) [B, N, 3] nm per unit t."""

    def __init__(self, config: FlowConfig, n_atoms: int, n_beads: int):
        super().__init__()
        c = config
        self.c, self.n_atoms, self.n_beads = c, n_atoms, n_beads
        h = c.hidden
        self.atom_emb = nn.Parameter(torch.randn(n_atoms, h) * 0.5)
        self.bead_emb = nn.Parameter(torch.randn(n_beads, h) * 0.5)
        self.prev_emb = nn.Parameter(torch.randn(n_atoms, h) * 0.5) if c.temporal else None
        self.register_buffer("freqs", torch.arange(1, c.time_features + 1, dtype=torch.float32) * math.pi)
        self.time_mlp = nn.Sequential(nn.Linear(2 * c.time_features, h), nn.SiLU(), nn.Linear(h, h))
        centres = torch.linspace(0.0, c.rbf_max_nm / c.length_scale_nm, c.n_rbf)
        self.register_buffer("rbf_centres", centres)
        self.rbf_gamma = 1.0 / float(centres[1] - centres[0]) ** 2 if c.n_rbf > 1 else 1.0
        self.layers = nn.ModuleList(_Layer(h, c.n_rbf, c.chiral) for _ in range(c.layers))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, prev: torch.Tensor | None = None,
                prev_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, 3], t [B] in [0, 1], y [B, n, 3], prev [B, N, 3] | None (nm); prev_mask [B] (1: use prev)."""
        b, n_atoms = x.shape[0], self.n_atoms
        s = 1.0 / self.c.length_scale_nm
        senders = [x * s, y * s]
        static = [self.bead_emb.expand(b, -1, -1)]
        if self.prev_emb is not None:
            if prev is None:  # frame-only density: AA(t-1) hidden
                prev, prev_mask = x, torch.zeros(b, dtype=x.dtype, device=x.device)
            senders.append(prev * s)
            static.append(self.prev_emb.expand(b, -1, -1))
        pos = torch.cat(senders, dim=1)  # [B, S, 3]
        n_send = pos.shape[1]
        rel = x[:, :, None, :] * s - pos[:, None, :, :]  # [B, N, S, 3]
        dist = torch.sqrt((rel * rel).sum(-1) + 1e-8)
        rbf = torch.exp(-self.rbf_gamma * (dist[..., None] - self.rbf_centres) ** 2)  # [B, N, S, K]
        mask = torch.ones(b, n_atoms, n_send, dtype=x.dtype, device=x.device)
        mask[:, torch.arange(n_atoms), torch.arange(n_atoms)] = 0.0  # no self edge
        if self.prev_emb is not None and prev_mask is not None:
            mask[:, :, n_atoms + self.n_beads:] *= prev_mask.to(x.dtype)[:, None, None]
        tf = t.to(x.dtype)[:, None] * self.freqs
        temb = self.time_mlp(torch.cat([torch.sin(tf), torch.cos(tf)], dim=-1))[:, None, :]  # [B, 1, H]
        h_atoms = self.atom_emb + temb
        h_static = torch.cat(static, dim=1) + temb
        v = torch.zeros_like(x)
        for layer in self.layers:
            h_atoms, dv = layer(h_atoms, h_static, rel, rbf, mask, n_send)
            v = v + dv
        return v * self.c.length_scale_nm


class _Layer(nn.Module):
    def __init__(self, h: int, n_rbf: int, chiral: bool):
        super().__init__()
        self.recv, self.send, self.edge = nn.Linear(h, h), nn.Linear(h, h, bias=False), nn.Linear(n_rbf, h, bias=False)
        self.msg = nn.Sequential(nn.SiLU(), nn.Linear(h, h), nn.SiLU())
        self.coef = nn.Linear(h, 3 if chiral else 1)
        nn.init.zeros_(self.coef.weight)
        nn.init.zeros_(self.coef.bias)
        self.node = nn.Sequential(nn.Linear(2 * h, h), nn.SiLU(), nn.Linear(h, h))
        self.norm = nn.LayerNorm(h)
        self.chiral = chiral

    def forward(self, h_atoms, h_static, rel, rbf, mask, n_send):
        h_all = torch.cat([h_atoms, h_static], dim=1)
        m = self.msg(self.recv(h_atoms)[:, :, None] + self.send(h_all)[:, None] + self.edge(rbf))
        m = m * mask[..., None]  # [B, N, S, H]
        # the mask also multiplies the coefficients: coef's bias would otherwise give a masked edge
        # (a hidden AA(t-1) atom, the self edge) a weight bias * (x_i - x_j) of its own
        coef = self.coef(m) * mask[..., None]  # [B, N, S, 1 or 3]
        dv = (coef[..., :1] * rel).sum(2) / n_send
        if self.chiral:
            w = (coef[..., 1:2] * rel).sum(2, keepdim=True) / n_send  # [B, N, 1, 3] a vector per atom
            dv = dv + (coef[..., 2:3] * torch.cross(rel, w.expand_as(rel), dim=-1)).sum(2) / n_send
        h_atoms = h_atoms + self.node(torch.cat([self.norm(h_atoms), m.sum(2) / n_send], dim=-1))
        return h_atoms, dv


class ConditionalFlow(nn.Module):
    """q(x | y[, AA(t-1)]) for one AA topology and one CG map, on the fibre (see module docstring).

    ``mapping_matrix`` [n, N]; ``assignment`` [N] bead of each atom's prior.
    All coordinates nm; log-densities nats w.r.t. the fibre's Lebesgue measure
    in nm (dimension ``self.dim`` = 3 (N - n)).
    """

    def __init__(self, config: FlowConfig, mapping_matrix: np.ndarray, assignment: np.ndarray):
        super().__init__()
        self.config = config
        self.geometry = FibreGeometry(mapping_matrix, assignment, config.prior_width_nm)
        self.n_atoms, self.n_beads, self.dim = self.geometry.n_atoms, self.geometry.n_beads, self.geometry.dim
        self.field = VelocityField(config, self.n_atoms, self.n_beads)

    # -- checks ---------------------------------------------------------------
    def _check(self, name: str, arr: torch.Tensor | None, n: int, batch: int | None = None) -> None:
        if arr is None:
            return
        if arr.ndim != 3 or arr.shape[1:] != (n, 3) or (batch is not None and arr.shape[0] != batch):
            lead = "B" if batch is None else str(batch)
            raise ValueError(f"{name}: expected shape [{lead}, {n}, 3] (nm), got {tuple(arr.shape)}")

    def _prev(self, prev):
        if prev is not None and not self.config.temporal:
            raise ValueError("prev: this flow is frame-based (config.temporal=false); pass prev=None")
        return prev

    # -- the field on the fibre -------------------------------------------------
    def velocity(self, x, t, y, prev=None, prev_mask=None) -> torch.Tensor:
        """P v(x, t | y, prev) [B, N, 3] for centred frames; t: float or [B]."""
        if not torch.is_tensor(t) or t.ndim == 0:
            t = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        return self.geometry.tangent(self.field(x, t, y, prev, prev_mask))

    # -- training ---------------------------------------------------------------
    def forward(self, aa, cg, prev=None, generator=None) -> torch.Tensor:
        """:meth:`cfm_loss` (so a DDP wrapper synchronises its gradients)."""
        return self.cfm_loss(aa, cg, prev, generator)

    def cfm_loss(self, aa: torch.Tensor, cg: torch.Tensor, prev: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow-matching loss, mean squared velocity error per fibre dof (nm^2 per unit t^2), scalar.

        aa [B, N, 3], cg [B, n, 3], prev [B, N, 3] | None (nm, any frame: centred here).
        Temporal models hide AA(t-1) for a ``prev_dropout`` fraction of the batch.
        """
        self._check("aa", aa, self.n_atoms)
        self._check("cg", cg, self.n_beads, aa.shape[0])
        self._check("prev", self._prev(prev), self.n_atoms, aa.shape[0])
        _, y, x1, prev = centre_on_cg(cg, aa, prev)
        x1 = self.geometry.project(x1, y)
        b = x1.shape[0]
        x0 = self.geometry.sample_prior(y, generator)
        t = torch.rand(b, generator=generator, dtype=x1.dtype, device=x1.device)
        xt = (1 - t)[:, None, None] * x0 + t[:, None, None] * x1
        mask = None
        if self.config.temporal:
            keep = torch.rand(b, generator=generator, dtype=x1.dtype, device=x1.device) >= self.config.prev_dropout
            mask = keep.to(x1.dtype) if prev is not None else torch.zeros(b, dtype=x1.dtype, device=x1.device)
            prev = prev if prev is not None else x1
        v = self.velocity(xt, t, y, prev, mask)
        return ((v - (x1 - x0)) ** 2).sum(dim=(1, 2)).mean() / max(self.dim, 1)

    # -- inference ----------------------------------------------------------------
    def _opts(self, method, steps, rtol, atol, default_method=None):
        c = self.config
        return dict(method=method or default_method or c.method, steps=steps or c.steps, rtol=rtol or c.rtol,
                    atol=atol or c.atol)

    @torch.no_grad()
    def sample(self, cg: torch.Tensor, prev: torch.Tensor | None = None, generator: torch.Generator | None = None,
               method: str | None = None, steps: int | None = None, rtol: float | None = None,
               atol: float | None = None) -> torch.Tensor:
        """One AA frame per CG frame: cg [B, n, 3] (+ prev [B, N, 3]) nm -> [B, N, 3] nm, on the fibre."""
        self._check("cg", cg, self.n_beads)
        self._check("prev", self._prev(prev), self.n_atoms, cg.shape[0])
        c, y, prev = centre_on_cg(cg, prev)
        b = y.shape[0]
        x0 = self.geometry.sample_prior(y, generator)

        def f(t, state):
            return self.velocity(state.view(b, self.n_atoms, 3), t, y, prev).reshape(b, -1)

        x1, _ = odeint(f, x0.reshape(b, -1), 0.0, 1.0, **self._opts(method, steps, rtol, atol))
        return self.geometry.project(x1.view(b, self.n_atoms, 3), y) + c

    def log_prob(self, aa: torch.Tensor, cg: torch.Tensor, prev: torch.Tensor | None = None,
                 divergence: str | None = None, n_probes: int | None = None,
                 generator: torch.Generator | None = None, method: str | None = None, steps: int | None = None,
                 rtol: float | None = None, atol: float | None = None, chunk_rows: int = 8192) -> torch.Tensor:
        """log q(x | y[, prev]) [B] nats (fibre measure, nm): aa [B, N, 3], cg [B, n, 3] nm.

        ``aa`` is first projected onto the fibre over ``cg``.  divergence:
        ``exact`` (d vector-Jacobian products per evaluation) or
        ``hutchinson`` (``n_probes`` probes drawn once per call from
        ``generator``: an unbiased estimate, reproducible for a seeded generator).

        Solver: ``config.likelihood_method`` (default ``dopri5``, adaptive,
        ``rtol`` / ``atol`` from the config unless given; the log-density is
        error-controlled on its own, so atol is also its per-step absolute
        tolerance in nats).  ``steps`` given without ``method`` asks for that
        many fixed RK4 steps (fast, but ~0.05-0.1 nat off per stiff fibre dof
        at 10 steps); ``method`` overrides either.
        """
        divergence = divergence or self.config.divergence
        if divergence not in ("exact", "hutchinson"):
            raise ValueError(f"divergence: expected 'exact' or 'hutchinson', got {divergence!r}")
        self._check("aa", aa, self.n_atoms)
        self._check("cg", cg, self.n_beads, aa.shape[0])
        self._check("prev", self._prev(prev), self.n_atoms, aa.shape[0])
        _, y, x1, prev = centre_on_cg(cg, aa, prev)
        x1 = self.geometry.project(x1, y).detach()
        b, n = x1.shape[0], self.n_atoms
        if divergence == "exact":
            vectors, scale = self.geometry.basis.to(x1.dtype), 1.0
        else:
            k = n_probes or self.config.n_probes
            vectors, scale = self.geometry.probes((k, b), generator, x1.dtype, x1.device), 1.0 / k

        def f(t, state):
            x = state[:, :-1].reshape(b, n, 3)

            def v_rows(xr):
                r = xr.shape[0] // b
                rep = (lambda a: None if a is None else a.repeat(r, 1, 1))
                return self.velocity(xr, t, rep(y), rep(prev))

            with torch.enable_grad():
                v = self.velocity(x, t, y, prev).detach()
                div = trace_along(v_rows, x, vectors, chunk_rows=chunk_rows) * scale
            return torch.cat([v.reshape(b, -1), div[:, None].detach()], dim=1)

        state = torch.cat([x1.reshape(b, -1), x1.new_zeros(b, 1)], dim=1)
        if method is None and steps is not None:
            method = "rk4"
        opts = self._opts(method, steps, rtol, atol, default_method=self.config.likelihood_method)
        with torch.no_grad():  # the log-det column is its own error group (not diluted by the 3N coordinates)
            out, _ = odeint(f, state, 1.0, 0.0, error_groups=(slice(0, 3 * n), slice(3 * n, 3 * n + 1)), **opts)
        x0 = out[:, :-1].reshape(b, n, 3)
        # out[:, -1] = int_1^0 div dt = -int_0^1 div dt
        return self.geometry.prior_log_prob(x0, y) + out[:, -1]
