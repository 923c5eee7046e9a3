"""Baseline backmappers: null-space Gaussian sampling and restrained energy minimisation.

**Null space**: for a linear map y = C x with full row rank, every
fibre point is x = C+ y + N eta (C+ pseudo-inverse [N_at, n], N an orthonormal
basis of ker C [N_at, k], k = N_at - n, eta [k, 3]). The null-space
coordinates eta = N^T x of raw frames change when the molecule rotates or
translates, so their statistics are fitted in a *body frame*:

1. each training frame is centred on its bead centroid c and rotated by the
   Kabsch rotation R that superposes its beads onto a reference bead
   configuration y_ref (the Procrustes mean of the training CG);
2. eta_f = N^T x_body,f and y_body,f are collected, and a Gaussian is fitted:
   ``mode="full"`` (mean + full covariance over the 3k numbers),
   ``"diagonal"`` (per coordinate) or ``"conditional"`` (the default: a joint
   Gaussian of (y_body, eta), sampled conditionally on y_body, mean
   mean_eta + B (y_body - mean_y); on ADP/backbone6 it beats "full" on every
   bonded-term JS divergence, e.g. angles 0.10 vs 0.23 nats);
3. to backmap y: c, R as above, y_body = (y - c) R^T (the *input* beads in
   the body frame, not y_ref), eta ~ the Gaussian, x_body = C+ y_body + N eta,
   x = x_body R + c. Since C acts on atoms and R on Cartesian components,
   C (x_body R) = (C x_body) R = y_body R = y - c, and C 1 = 1 (rows sum to
   one) gives C x = y exactly: the rotated, translated structure stays on the
   fibre of the input (equivalently, only the null part N eta is rotated).

With fewer than 3 beads the rotation is undefined and the identity is used
(statistics then live in the centred lab frame; outputs are still exact).

**Energy minimisation** (sec. 5.1.3 of M. Stieffenhofer's DeepBackmap PhD thesis; a soft-constraint MAP):
geometric placement (the system's template structure superposed onto the
beads, or a fitted null-space model's mean structure), projected onto the
fibre, plus seeded Gaussian noise per sample; then OpenMM's
LocalEnergyMinimizer (Reference platform, no constraints) on
U(x) + sum_b k/2 |M_b(x) - y_b|^2, the restraint a CustomCentroidBondForce on
each bead's weighted atom group with k = :data:`K_RESTRAINT` kJ/mol/nm^2.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from finegrain.datasets.systems import get_system
from finegrain.platform.science.errors import InputError
from finegrain.platform.science.mapping import CGMapping, molecule_blocks
from finegrain.platform.science.superposition import kabsch_rotations
from finegrain.platform.science.validation import check_xyz
from finegrain.trainables.protocol import Backmapper

__all__ = [
    "NullSpaceBackmapper",
    "EnergyMinimisationBackmapper",
    "fit_nullspace",
    "K_RESTRAINT",
]

#: Restraint force constant (kJ/mol/nm^2): a residual force of 1000 kJ/mol/nm on
#: a bead displaces it by only 0.01 nm.
K_RESTRAINT = 1.0e5
#: Minimiser stop: RMS force below this (kJ/mol/nm) or MAX_ITERATIONS steps.
TOLERANCE = 1.0
MAX_ITERATIONS = 2000
#: Seeded Gaussian noise (nm) added to the placement, so K samples differ.
PLACEMENT_NOISE_NM = 0.01
_RESTRAINT_GROUP = 31
_MODES = ("full", "diagonal", "conditional")


def _body_frame(y: np.ndarray, y_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroids c [F, 3], rotations R [F, 3, 3] and body-frame beads (y - c) R^T [F, n, 3]."""
    c = y.mean(axis=1)
    if y.shape[1] < 3:  # the spin about a bead axis is undefined: statistics in the centred lab frame
        r = np.broadcast_to(np.eye(3), (len(y), 3, 3)).copy()
    else:
        r = kabsch_rotations(y, y_ref)
    return c, r, np.einsum("fnj,fij->fni", y - c[:, None], r)


def _procrustes_mean(y: np.ndarray, iterations: int = 3) -> np.ndarray:
    ref = y[0] - y[0].mean(axis=0)
    for _ in range(iterations):
        _, _, body = _body_frame(y, ref)
        ref = body.mean(axis=0)
        ref = ref - ref.mean(axis=0)
    return ref


class NullSpaceBackmapper(Backmapper):
    """x = C+ y + N eta with eta from a Gaussian fitted in the body frame (see module docstring).

    Arrays (float64): y_ref [n, 3] nm; basis N [N_at, k]; mean_y [3n]; mean_eta
    [3k]; coupling B [3k, 3n] (zero unless mode "conditional"); chol L [3k, 3k]
    (eta = mean_eta + B (y_body - mean_y) + L z, z ~ N(0, I); eta flattened
    atom-major, i.e. eta[j, c] at 3 j + c).

    molecule_wise : the arrays describe one molecule (n, N_at of one molecule's block,
    :func:`~finegrain.platform.science.mapping.molecule_blocks`), fitted on every copy of it and
    applied to each molecule in its own body frame: the model of a liquid of one species, where a
    body frame of the whole box would mean nothing.
    """

    family = "nullspace"
    frames_independent = True

    def __init__(self, topology, mapping: CGMapping, *, mode: str, reg_nm2: float, y_ref, basis, mean_y,
                 mean_eta, coupling, chol, molecule_wise: bool = False):
        super().__init__(topology, mapping)
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
        self.mode, self.reg_nm2, self.molecule_wise = mode, float(reg_nm2), bool(molecule_wise)
        self._blocks = molecule_blocks(mapping, topology) if self.molecule_wise else None
        fitted = self._blocks.molecule if self._blocks is not None else mapping
        n, k = fitted.n_beads, np.asarray(basis).shape[1]
        self.y_ref = np.asarray(y_ref, np.float64).reshape(n, 3)
        self.basis = np.asarray(basis, np.float64).reshape(fitted.n_atoms, k)
        self.mean_y = np.asarray(mean_y, np.float64).reshape(3 * n)
        self.mean_eta = np.asarray(mean_eta, np.float64).reshape(3 * k)
        self.coupling = np.asarray(coupling, np.float64).reshape(3 * k, 3 * n)
        self.chol = np.asarray(chol, np.float64).reshape(3 * k, 3 * k)
        self._pinv = fitted.pseudo_inverse()

    @property
    def n_null(self) -> int:
        """k = N_atoms - rank(C), the number of null-space vectors."""
        return self.basis.shape[1]

    def sample(self, cg_xyz, n_samples: int = 1, seed: int | None = None, noise_scale: float = 1.0) -> np.ndarray:
        """[T, n, 3] nm -> [K, T, N, 3] nm; ``noise_scale`` 0 gives the (conditional) mean structure."""
        y = self.check_cg(cg_xyz)
        if n_samples < 1:
            raise InputError(f"n_samples: must be >= 1, got {n_samples}")
        rng = np.random.default_rng(seed)
        if self._blocks is None:
            return self._sample_fitted(y, n_samples, rng, noise_scale)
        atoms, beads = self._blocks.atoms, self._blocks.beads  # every molecule in its own body frame
        t, (r, a) = y.shape[0], atoms.shape
        xm = self._sample_fitted(y[:, beads].reshape(t * r, beads.shape[1], 3), n_samples, rng, noise_scale)
        out = np.empty((n_samples, t, self.mapping.n_atoms, 3))
        out[:, :, atoms.reshape(-1)] = xm.reshape(n_samples, t, r * a, 3)
        return out

    def _sample_fitted(self, y: np.ndarray, n_samples: int, rng, noise_scale: float) -> np.ndarray:
        """The fitted Gaussian on [T, n, 3] beads of what the arrays describe -> [K, T, N, 3] nm."""
        t, k = y.shape[0], self.n_null
        c, r, yb = _body_frame(y, self.y_ref)
        mean = self.mean_eta + (yb.reshape(t, -1) - self.mean_y) @ self.coupling.T  # [T, 3k]
        z = rng.standard_normal((n_samples, t, 3 * k))
        eta = (mean[None] + noise_scale * z @ self.chol.T).reshape(n_samples, t, k, 3)
        xb = np.einsum("ib,tbc->tic", self._pinv, yb)[None] + np.einsum("ik,stkc->stic", self.basis, eta)
        return np.einsum("stic,tcj->stij", xb, r) + c[None, :, None, :]

    def backmap_xyz(self, cg_xyz, n_samples: int = 1, seed: int | None = None, prev_aa_xyz=None) -> np.ndarray:
        """[T, n_beads, 3] nm -> [n_samples, T, n_atoms, 3] nm; frames independent (prev_aa_xyz unused)."""
        return self.sample(cg_xyz, n_samples=n_samples, seed=seed)

    def _config(self) -> dict[str, Any]:
        return {"mode": self.mode, "reg_nm2": self.reg_nm2, "molecule_wise": self.molecule_wise}

    def _state(self) -> dict[str, Any]:
        return {"y_ref": self.y_ref, "basis": self.basis, "mean_y": self.mean_y, "mean_eta": self.mean_eta,
                "coupling": self.coupling, "chol": self.chol}

    @classmethod
    def _from_saved(cls, topology, mapping, config, state) -> "NullSpaceBackmapper":
        arrays = {k: np.asarray(state[k], dtype=np.float64) for k in ("y_ref", "basis", "mean_y", "mean_eta", "coupling", "chol")}
        return cls(topology, mapping, mode=config["mode"], reg_nm2=config["reg_nm2"],
                   molecule_wise=bool(config.get("molecule_wise", False)), **arrays)


def fit_nullspace(frames_aa, mapping: CGMapping, topology, mode: str = "conditional", reg_nm2: float = 1e-6,
                  molecule_wise: bool = False) -> NullSpaceBackmapper:
    """Fit the null-space baseline to training frames.

    frames_aa [F, N, 3] nm (F >= 2); mapping with full row rank; mode "full",
    "diagonal" or "conditional"; ``reg_nm2`` (nm^2) is added to the covariance
    diagonal (keeps it positive definite when F < 3k). ``molecule_wise``: fit one
    molecule's model on all R copies of it (F x R samples; molecules whole, as
    ingest stores them), see :class:`NullSpaceBackmapper`.
    """
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
    if reg_nm2 <= 0:
        raise ValueError(f"reg_nm2: must be > 0, got {reg_nm2}")
    x = check_xyz(frames_aa, mapping.n_atoms, "frames_aa").astype(np.float64)
    if x.shape[0] < 2:
        raise InputError(f"frames_aa: need >= 2 frames to fit a Gaussian, got {x.shape[0]}")
    fitted = mapping
    if molecule_wise:
        blocks = molecule_blocks(mapping, topology)
        fitted = blocks.molecule
        x = x[:, blocks.atoms].reshape(-1, blocks.atoms.shape[1], 3)
    arrays = _fit_gaussian(x, fitted, mode, reg_nm2)
    return NullSpaceBackmapper(topology, mapping, mode=mode, reg_nm2=reg_nm2, molecule_wise=molecule_wise, **arrays)


def _fit_gaussian(x: np.ndarray, mapping: CGMapping, mode: str, reg_nm2: float) -> dict[str, np.ndarray]:
    """The body-frame Gaussian of the module docstring, fitted on x [S, N, 3] nm of ``mapping``'s atoms."""
    basis = mapping.null_space()
    if basis.shape[1] != mapping.n_atoms - mapping.n_beads:
        raise InputError(f"mapping '{mapping.name}': matrix is not of full row rank; the fibre construction needs it")
    y = mapping.map(x)
    y_ref = _procrustes_mean(y)
    c, r, yb = _body_frame(y, y_ref)
    xb = np.einsum("fnj,fij->fni", x - c[:, None], r)
    eta = np.einsum("ik,fic->fkc", basis, xb).reshape(x.shape[0], -1)  # [F, 3k]
    yf = yb.reshape(x.shape[0], -1)  # [F, 3n]
    mean_eta, mean_y = eta.mean(0), yf.mean(0)
    de, dy = eta - mean_eta, yf - mean_y
    d = eta.shape[1]
    coupling = np.zeros((d, yf.shape[1]))
    if mode == "diagonal":
        cov = np.diag(de.var(0))
    else:
        cov = de.T @ de / (x.shape[0] - 1)
        if mode == "conditional":
            s_yy = dy.T @ dy / (x.shape[0] - 1)
            s_ey = de.T @ dy / (x.shape[0] - 1)
            coupling = s_ey @ np.linalg.pinv(s_yy, rcond=1e-8, hermitian=True)
            cov = cov - coupling @ s_ey.T
    cov = 0.5 * (cov + cov.T) + reg_nm2 * np.eye(d)
    w, v = np.linalg.eigh(cov)  # clip tiny negative eigenvalues from round-off, then factor
    chol = np.linalg.cholesky((v * np.clip(w, reg_nm2, None)) @ v.T)
    return {"y_ref": y_ref, "basis": basis, "mean_y": mean_y, "mean_eta": mean_eta, "coupling": coupling,
            "chol": chol}


class EnergyMinimisationBackmapper(Backmapper):
    """Placement + restrained OpenMM minimisation (see module docstring).

    system : built-in system name (e.g. "adp") or a definition dict (as in
    ``ReferenceSystem.definition``); the OpenMM System is rebuilt from it with
    ``create_system(constraints=None)``. placement : None (template structure
    of the system) or a fitted :class:`NullSpaceBackmapper` (its conditional
    mean structure).
    """

    family = "em"
    frames_independent = True

    def __init__(self, topology, mapping: CGMapping, system: str | dict, *, k_restraint: float = K_RESTRAINT,
                 tolerance: float = TOLERANCE, max_iterations: int = MAX_ITERATIONS,
                 placement_noise_nm: float = PLACEMENT_NOISE_NM, placement: NullSpaceBackmapper | None = None):
        super().__init__(topology, mapping)
        if not k_restraint > 0:
            raise ValueError(f"k_restraint: must be > 0 kJ/mol/nm^2, got {k_restraint}")
        if not tolerance > 0 or max_iterations < 0 or placement_noise_nm < 0:
            raise ValueError("tolerance must be > 0, max_iterations >= 0 and placement_noise_nm >= 0")
        self.system = system
        self.k_restraint, self.tolerance = float(k_restraint), float(tolerance)
        self.max_iterations, self.placement_noise_nm = int(max_iterations), float(placement_noise_nm)
        self.placement = placement
        self._pinv = mapping.pseudo_inverse()
        self._context = None  # built on first use (an OpenMM Context cannot be saved)
        self._template = None

    # -- OpenMM ---------------------------------------------------------------
    @property
    def system_name(self) -> str | None:
        return self.system if isinstance(self.system, str) else None

    def _reference_system(self):
        ref = get_system(self.system)
        if ref.n_atoms != self.topology.n_atoms:
            raise InputError(f"system: {ref.name!r} has {ref.n_atoms} atoms, the topology has {self.topology.n_atoms}")
        return ref

    def _build_context(self):
        import openmm as mm

        ref = self._reference_system()
        system = ref.create_system(constraints=None)
        force = mm.CustomCentroidBondForce(1, "0.5*k_restraint*((x1-x0)^2+(y1-y0)^2+(z1-z0)^2)")
        force.addGlobalParameter("k_restraint", self.k_restraint)
        for p in ("x0", "y0", "z0"):
            force.addPerBondParameter(p)
        for b in range(self.mapping.n_beads):
            atoms = np.flatnonzero(self.mapping.matrix[b])
            g = force.addGroup([int(i) for i in atoms], [float(w) for w in self.mapping.matrix[b, atoms]])
            force.addBond([g], [0.0, 0.0, 0.0])
        force.setForceGroup(_RESTRAINT_GROUP)
        system.addForce(force)
        integrator = mm.VerletIntegrator(0.001)
        self._context = mm.Context(system, integrator, mm.Platform.getPlatformByName("Reference"))
        self._force = force
        self._template = ref.positions_nm

    # -- placement --------------------------------------------------------------
    def place(self, cg_xyz, n_samples: int = 1, seed: int | None = None) -> np.ndarray:
        """Initial structures before minimisation [K, T, N, 3] nm, each exactly on its fibre (C x = y)."""
        y = self.check_cg(cg_xyz)
        if self.placement is not None:
            x0 = self.placement.sample(y, n_samples=1, noise_scale=0.0)[0]
        else:
            if self._template is None:
                self._template = self._reference_system().positions_nm
            tmpl = np.asarray(self._template, np.float64)
            y_t = self.mapping.map(tmpl[None])[0]
            c, r, _ = _body_frame(y, y_t)  # r: input -> template orientation
            x0 = np.einsum("ic,tcj->tij", tmpl - y_t.mean(0), r) + c[:, None]
        rng = np.random.default_rng(seed)
        x = x0[None] + self.placement_noise_nm * rng.standard_normal((n_samples,) + x0.shape)
        return x + np.einsum("ib,stbc->stic", self._pinv, y[None] - self.mapping.map(x))

    def minimise(self, x0, cg_xyz) -> np.ndarray:
        """Restrained minimisation of starting structures x0 [K, T, N, 3] onto cg_xyz [T, n, 3]; same shape out."""
        import openmm.unit as u

        y = self.check_cg(cg_xyz)
        x0 = np.asarray(x0, np.float64)
        if x0.ndim != 4 or x0.shape[1:] != (y.shape[0], self.mapping.n_atoms, 3):
            raise InputError(f"x0: expected shape [K, {y.shape[0]}, {self.mapping.n_atoms}, 3], got {x0.shape}")
        if self._context is None:
            self._build_context()
        import openmm as mm

        out = np.empty_like(x0)
        for t in range(y.shape[0]):
            for b in range(self.mapping.n_beads):
                self._force.setBondParameters(b, [b], [float(v) for v in y[t, b]])
            self._force.updateParametersInContext(self._context)
            for s in range(x0.shape[0]):
                self._context.setPositions(x0[s, t] * u.nanometer)
                mm.LocalEnergyMinimizer.minimize(self._context, self.tolerance, self.max_iterations)
                pos = self._context.getState(getPositions=True).getPositions(asNumpy=True)
                out[s, t] = pos.value_in_unit(u.nanometer)
        return out

    def backmap_xyz(self, cg_xyz, n_samples: int = 1, seed: int | None = None, prev_aa_xyz=None) -> np.ndarray:
        """[T, n_beads, 3] nm -> [n_samples, T, n_atoms, 3] nm; frames independent (prev_aa_xyz unused)."""
        y = self.check_cg(cg_xyz)
        if n_samples < 1:
            raise InputError(f"n_samples: must be >= 1, got {n_samples}")
        return self.minimise(self.place(y, n_samples, seed), y)

    # -- persistence --------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        cfg = {"system": self.system, "k_restraint_kj_mol_nm2": self.k_restraint, "tolerance_kj_mol_nm": self.tolerance,
               "max_iterations": self.max_iterations, "placement_noise_nm": self.placement_noise_nm,
               "placement": None}
        if self.placement is not None:
            cfg["placement"] = {"family": "nullspace", "config": self.placement._config()}
        return cfg

    def _state(self) -> dict[str, Any]:
        if self.placement is None:
            return {}
        return {f"placement.{k}": v for k, v in self.placement._state().items()}

    @classmethod
    def _from_saved(cls, topology, mapping, config, state) -> "EnergyMinimisationBackmapper":
        placement = None
        if config.get("placement"):
            sub = {k[len("placement."):]: v for k, v in state.items() if k.startswith("placement.")}
            placement = NullSpaceBackmapper._from_saved(topology, mapping, config["placement"]["config"], sub)
        return cls(topology, mapping, config["system"], k_restraint=config["k_restraint_kj_mol_nm2"],
                   tolerance=config["tolerance_kj_mol_nm"], max_iterations=config["max_iterations"],
                   placement_noise_nm=config["placement_noise_nm"], placement=placement)
