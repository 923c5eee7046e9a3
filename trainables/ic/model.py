"""An autoregressive density over the free atoms' internal coordinates, given the CG beads.

q(x | y) = prod_d q(z_d | z_<d, y), z the bonds, angles and dihedrals of the
Z-matrix (:mod:`.zmatrix`) in build order. One MADE (Germain, Gregor, Murray
& Larochelle, "MADE: Masked Autoencoder for Distribution Estimation", 2015)
gives every conditional in one pass for training; sampling takes one pass per
coordinate. Each bond or angle is a Gaussian mixture in standardised units,
each dihedral a von Mises mixture (periodic, so methyl rotors and Ramachandran
basins are mixtures, not wrapped Gaussians). Bonds and angles whose training
spread is below ``fixed_tolerance`` (constrained X-H bonds) are held at their
training mean. The CG input enters as its own internal coordinates (distances
between beads, angles and dihedrals of the bonded bead graph), so q is
invariant to rigid motions of the beads and tells mirror images apart.

Placing the atoms (:func:`.zmatrix.place`) keeps every bead atom exactly where
its bead is: the CG constraint holds by construction. Internal-coordinate
generative models of molecules: Noe, Olsson, Koehler & Wu, "Boltzmann
generators", Science 2019 (the bond/angle/torsion representation); the
backmapping use follows the fixed-bead fibre view x = C+ y + N eta.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from finegrain.trainables.ic.config import ICConfig
from finegrain.trainables.ic.zmatrix import ZMatrix, angle, dihedral, internal_coordinates, place, random_rotations

__all__ = ["ConditionalIC", "MaskedLinear"]

LOG_2PI = math.log(2 * math.pi)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask [out, in]."""

    def __init__(self, mask: torch.Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.float(), persistent=False)  # rebuilt from the Z-matrix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


def _log_i0(kappa: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.special.i0e(kappa)) + kappa


def _marginal_mixtures(z: torch.Tensor, circular: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, k: int,
                       iterations: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Per coordinate, K components that cover the data: k-means (on the circle for dihedrals).

    z [F, D] -> (locations [D, K]: standardised units / rad, log scales [D, K]:
    log std / log concentration). Starting every mixture here keeps each
    component where data are: a component left in an empty region would
    emit rare far-off samples (an H placed into a neighbour).
    """
    f, d = z.shape
    q = torch.linspace(0.5 / k, 1 - 0.5 / k, k, dtype=z.dtype)
    loc, scale = torch.zeros(d, k, dtype=z.dtype), torch.zeros(d, k, dtype=z.dtype)
    for i in range(d):
        if bool(circular[i]):
            x = z[:, i]
            c = torch.quantile(x, q)
            for _ in range(iterations):
                lab = torch.cos(x[:, None] - c[None]).argmax(1)
                for j in range(k):
                    sel = x[lab == j]
                    if len(sel):
                        c[j] = torch.atan2(torch.sin(sel).mean(), torch.cos(sel).mean())
            lab = torch.cos(x[:, None] - c[None]).argmax(1)
            r = torch.stack([torch.cos(x[lab == j] - c[j]).mean() if (lab == j).sum() > 1 else x.new_tensor(0.5)
                             for j in range(k)]).clamp(0.05, 1 - 1e-6)
            loc[i], scale[i] = c, torch.log(1.0 / (2.0 * (1.0 - r)))  # kappa ~ 1 / (2 (1 - R)) for narrow modes
        else:
            u = (z[:, i] - mean[i]) / std[i]
            c = torch.quantile(u, q)
            for _ in range(iterations):
                lab = (u[:, None] - c[None]).abs().argmin(1)
                for j in range(k):
                    sel = u[lab == j]
                    if len(sel):
                        c[j] = sel.mean()
            lab = (u[:, None] - c[None]).abs().argmin(1)
            s = torch.stack([u[lab == j].std() if (lab == j).sum() > 1 else u.new_tensor(0.5) for j in range(k)])
            loc[i], scale[i] = c, torch.log(s.clamp_min(1e-3))
    return loc, scale


class ConditionalIC(nn.Module):
    """q(z | y) for one Z-matrix; buffers hold the standardisation fitted by :meth:`fit_statistics`."""

    def __init__(self, config: ICConfig, zm: ZMatrix):
        super().__init__()
        self.config, self.zm = config, zm
        slots = np.argwhere(zm.active)  # [D, 2] (free atom m, kind 0 bond / 1 angle / 2 dihedral), build order
        self.n_ic = len(slots)
        # index buffers follow the Z-matrix (not saved: rebuilt on load)
        self.register_buffer("slot_atom", torch.as_tensor(slots[:, 0], dtype=torch.long), persistent=False)
        self.register_buffer("slot_kind", torch.as_tensor(slots[:, 1], dtype=torch.long), persistent=False)
        circ = slots[:, 1] == 2
        self.register_buffer("circular", torch.as_tensor(circ), persistent=False)
        d = self.n_ic
        self.register_buffer("ic_mean", torch.zeros(d))
        self.register_buffer("ic_std", torch.ones(d))
        self.register_buffer("fixed", torch.zeros(d, dtype=torch.bool))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))
        bead = {int(a): b for b, a in enumerate(zm.anchors)}
        for name, arr in (("cg_pairs", zm.anchor_pairs), ("cg_angles", zm.anchor_angles),
                          ("cg_dihedrals", zm.anchor_dihedrals)):
            idx = np.vectorize(bead.get, otypes=[np.int64])(arr) if arr.size else arr.astype(np.int64)
            self.register_buffer(name, torch.as_tensor(idx, dtype=torch.long), persistent=False)
        self.n_cond = len(zm.anchor_pairs) + len(zm.anchor_angles) + 2 * len(zm.anchor_dihedrals)
        self.register_buffer("cond_mean", torch.zeros(self.n_cond))
        self.register_buffer("cond_std", torch.ones(self.n_cond))
        self._build_network(circ)

    # -- network ------------------------------------------------------------------------
    def _build_network(self, circ: np.ndarray) -> None:
        c, d = self.config, self.n_ic
        in_deg = np.concatenate([[i + 1] * (2 if circ[i] else 1) for i in range(d)]).astype(np.int64)
        self.register_buffer("in_index", torch.as_tensor(
            np.concatenate([[i] * (2 if circ[i] else 1) for i in range(d)]), dtype=torch.long), persistent=False)
        hid_deg = [np.arange(c.hidden) % max(1, d - 1) + 1 for _ in range(c.layers)]
        layers, prev = [], in_deg
        for h in hid_deg:
            layers.append(MaskedLinear(torch.as_tensor(h[:, None] >= prev[None, :])))
            prev = h
        self.hidden_layers = nn.ModuleList(layers)
        self.context = nn.ModuleList(nn.Linear(self.n_cond, c.hidden) for _ in range(c.layers)) \
            if self.n_cond else None
        k = c.components
        out_deg = np.repeat(np.arange(1, d + 1), 3 * k)  # IC d's 3K parameters see hidden units of degree <= d
        self.out = MaskedLinear(torch.as_tensor(out_deg[:, None] > prev[None, :]))
        with torch.no_grad():  # start at the data's mixture (comp_loc / comp_scale): small corrections
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()
        self.register_buffer("comp_loc", torch.zeros(d, k))
        self.register_buffer("comp_scale", torch.zeros(d, k))

    def _params(self, inputs: torch.Tensor, cond: torch.Tensor | None):
        h = inputs
        for i, layer in enumerate(self.hidden_layers):
            h = layer(h)
            if self.context is not None:
                h = h + self.context[i](cond)
            h = nn.functional.silu(h)
        p = self.out(h).view(inputs.shape[0], self.n_ic, 3, self.config.components)
        # logits, locations, log scales [B, D, K]: offsets from the marginal mixture fitted to the data
        return p[:, :, 0], p[:, :, 1] + self.comp_loc, p[:, :, 2] + self.comp_scale

    def _scales(self, log_scale: torch.Tensor):
        """Gaussian std (standardised units) and von Mises concentration (1/rad^2), both [B, D, K]."""
        c = self.config
        std = c.min_scale + torch.exp(log_scale.clamp(-12.0, 4.0))
        kappa = torch.exp(log_scale.clamp(math.log(1e-3), math.log(c.max_concentration)))
        return std, kappa

    # -- features -----------------------------------------------------------------------
    def _raw_cond(self, cg: torch.Tensor) -> torch.Tensor:
        parts = []
        if len(self.cg_pairs):
            parts.append((cg[:, self.cg_pairs[:, 0]] - cg[:, self.cg_pairs[:, 1]]).norm(dim=-1))
        if len(self.cg_angles):
            a = self.cg_angles
            parts.append(angle(cg[:, a[:, 0]], cg[:, a[:, 1]], cg[:, a[:, 2]]))
        if len(self.cg_dihedrals):
            q = self.cg_dihedrals
            phi = dihedral(cg[:, q[:, 0]], cg[:, q[:, 1]], cg[:, q[:, 2]], cg[:, q[:, 3]])
            parts += [torch.cos(phi), torch.sin(phi)]
        return torch.cat(parts, dim=-1) if parts else cg.new_zeros(cg.shape[0], 0)

    def condition(self, cg: torch.Tensor) -> torch.Tensor | None:
        """Standardised CG description [B, C] from bead positions [B, n_beads, 3] nm (None: one bead)."""
        if not self.n_cond:
            return None
        return (self._raw_cond(cg) - self.cond_mean) / self.cond_std

    def flat_ic(self, aa: torch.Tensor) -> torch.Tensor:
        """Active internal coordinates [B, D] of AA frames [B, N, 3] nm."""
        ic = internal_coordinates(aa, self.zm)
        return ic[:, self.slot_atom, self.slot_kind]

    def _encode(self, z: torch.Tensor) -> torch.Tensor:
        """MADE inputs: standardised bonds/angles, (cos, sin) of dihedrals; fixed ones 0."""
        lin = torch.where(self.fixed, torch.zeros_like(z), (z - self.ic_mean) / self.ic_std)
        zi = z[:, self.in_index]
        li = lin[:, self.in_index]
        first = torch.cat([torch.ones(1, dtype=torch.bool, device=z.device),
                           self.in_index[1:] != self.in_index[:-1]])
        circ = self.circular[self.in_index]
        return torch.where(circ & first, torch.cos(zi), torch.where(circ, torch.sin(zi), li))

    @torch.no_grad()
    def fit_statistics(self, aa: torch.Tensor, cg: torch.Tensor) -> None:
        """Standardisation and fixed coordinates from training frames aa [B, N, 3], cg [B, n, 3] nm."""
        z = self.flat_ic(aa.to(self.ic_mean.dtype))
        mean, std = z.mean(0), z.std(0) if len(z) > 1 else torch.zeros_like(z[0])
        lin = ~self.circular
        self.fixed.copy_(lin & (std < self.config.fixed_tolerance))
        self.ic_mean.copy_(torch.where(lin, mean, torch.zeros_like(mean)))
        self.ic_std.copy_(torch.where(lin & ~self.fixed, std, torch.ones_like(std)))
        if self.n_cond:
            f = self._raw_cond(cg.to(self.ic_mean.dtype))
            self.cond_mean.copy_(f.mean(0))
            self.cond_std.copy_(f.std(0).clamp_min(1e-6) if len(f) > 1 else torch.ones_like(f[0]))
        loc, scale = _marginal_mixtures(z, self.circular, self.ic_mean, self.ic_std, self.config.components)
        self.comp_loc.copy_(loc)
        self.comp_scale.copy_(scale)
        self.ready.fill_(True)

    STATISTICS = ("ic_mean", "ic_std", "fixed", "cond_mean", "cond_std", "comp_loc", "comp_scale")

    def statistics(self) -> dict[str, list]:
        """The fitted standardisation as plain lists (to hand to training workers)."""
        return {k: getattr(self, k).tolist() for k in self.STATISTICS}

    def load_statistics(self, stats: dict[str, list]) -> None:
        """Set what :meth:`fit_statistics` fitted from :meth:`statistics`' lists."""
        with torch.no_grad():
            for k in self.STATISTICS:
                buf = getattr(self, k)
                buf.copy_(torch.as_tensor(stats[k], dtype=buf.dtype).reshape(buf.shape))
            self.ready.fill_(True)

    # -- density ------------------------------------------------------------------------
    def log_prob_ic(self, z: torch.Tensor, cg: torch.Tensor) -> torch.Tensor:
        """log q(z | y) [B] (nats; bond nm, angle rad, dihedral rad) of internal coordinates z [B, D]."""
        logits, loc, raw = self._params(self._encode(z), self.condition(cg))
        logw = torch.log_softmax(logits, dim=-1)
        std, kappa = self._scales(raw)
        u = ((z - self.ic_mean) / self.ic_std)[..., None]
        lp_lin = torch.logsumexp(logw - 0.5 * ((u - loc) / std) ** 2 - torch.log(std) - 0.5 * LOG_2PI, -1)
        lp_lin = lp_lin - torch.log(self.ic_std)
        lp_circ = torch.logsumexp(logw + kappa * torch.cos(z[..., None] - loc) - LOG_2PI - _log_i0(kappa), -1)
        lp = torch.where(self.circular, lp_circ, lp_lin)
        return torch.where(self.fixed, torch.zeros_like(lp), lp).sum(-1)

    def log_prob(self, aa: torch.Tensor, cg: torch.Tensor) -> torch.Tensor:
        """log q(z(x) | y) [B] for AA frames aa [B, N, 3] and beads cg [B, n, 3] (nm)."""
        return self.log_prob_ic(self.flat_ic(aa), cg)

    def forward(self, aa: torch.Tensor, cg: torch.Tensor) -> torch.Tensor:
        """log q [B] (what DistributedDataParallel wraps)."""
        return self.log_prob(aa, cg)

    def loss(self, aa: torch.Tensor, cg: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per frame (nats)."""
        return -self.log_prob(aa, cg).mean()

    # -- sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def sample_ic(self, cg: torch.Tensor) -> torch.Tensor:
        """z [B, D] ~ q(z | y), one coordinate per MADE pass (global torch RNG: seed it around the call)."""
        bsz, d = cg.shape[0], self.n_ic
        cond = self.condition(cg)
        z = self.ic_mean.expand(bsz, d).clone()
        for i in range(d):
            if bool(self.fixed[i]):
                continue
            logits, loc, raw = self._params(self._encode(z), cond)
            comp = torch.multinomial(torch.softmax(logits[:, i], -1), 1).squeeze(1)
            mu = loc[:, i].gather(1, comp[:, None]).squeeze(1)
            std, kappa = self._scales(raw[:, i].gather(1, comp[:, None]).squeeze(1))
            if bool(self.circular[i]):
                v = torch.distributions.VonMises(mu.double(), kappa.double()).sample().to(z.dtype)
                z[:, i] = torch.remainder(v + math.pi, 2 * math.pi) - math.pi
            else:
                z[:, i] = self.ic_mean[i] + self.ic_std[i] * (mu + std * torch.randn_like(mu))
        return z

    @torch.no_grad()
    def sample(self, cg: torch.Tensor) -> torch.Tensor:
        """AA frames [B, N, 3] nm ~ q(x | y) for beads cg [B, n_beads, 3] nm (global torch RNG)."""
        z = self.sample_ic(cg)
        ic = cg.new_zeros(cg.shape[0], self.zm.n_free, 3)
        ic[:, self.slot_atom, self.slot_kind] = z.to(cg.dtype)
        rot = random_rotations(cg.shape[0], dtype=cg.dtype, device=cg.device) if self.zm.single_anchor else None
        return place(ic, cg, self.zm, rotation=rot)
