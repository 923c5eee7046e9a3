"""Inference with a trained cVAE (Shmilovich et al. (2022), section 2.4): the decoder, autoregressively.

For a CG trajectory CG(0..T-1) (nm) and K samples:

1. Each frame is centred on its CG centroid c_t (the training convention:
   one translation per triplet, by CG(t)'s centroid).
2. AA(-1) (frame-based ablation: not needed) is the training AA(t*-1) whose
   CG(t*) is closest to CG(0) in RMSD after optimal rigid superposition
   (Kabsch), rotated onto CG(0).  A bank of training (CG(t), AA(t-1)) pairs,
   centred, is stored with the model for this.
3. For t = 0..T-1: z ~ GMM fitted to the training posterior means (or
   N(0, I)), AA(t) = collapse(Decoder(z, [VOX CG(t) | VOX AA(t-1)])), then
   AA(t) + c_t is the output and AA(t) + c_t - c_{t+1} the next condition.

Independent chains (K samples of M trajectories) run as one batch of M*K.
Only arrays are stored (``weights.pt``: tensors; ``backmapper.json``: config);
the GMM is held as weights / means / covariances and sampled with numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from finegrain.platform.science.mapping import CGMapping
from finegrain.platform.science.superposition import kabsch_rotations, pairwise_superposed_rmsd
from finegrain.platform.science.errors import InputError
from finegrain.platform.science.validation import check_xyz
from finegrain.trainables.checkpoints import read_checkpoint
from finegrain.trainables.cvae.config import CVAEConfig
from finegrain.trainables.cvae.model import CVAE
from finegrain.trainables.protocol import Backmapper

__all__ = ["CVAEBackmapper", "GaussianMixtureSampler"]

#: tensor dicts a cVAE checkpoint keeps beside the model: the mixture prior of the latents and the seed bank
CKPT_EXTRA = ("gmm", "bank")


class GaussianMixtureSampler:
    """A full-covariance Gaussian mixture on R^d held as plain arrays.

    weights [K] (summing to 1), means [K, d], covariances [K, d, d] (symmetric
    positive definite).  ``sample`` draws with numpy; nothing is pickled.
    """

    def __init__(self, weights, means, covariances):
        w = np.asarray(weights, dtype=np.float64)
        mu = np.asarray(means, dtype=np.float64)
        cov = np.asarray(covariances, dtype=np.float64)
        k = w.shape[0] if w.ndim == 1 else -1
        if mu.ndim != 2 or mu.shape[0] != k or cov.shape != (k, mu.shape[1], mu.shape[1]):
            raise ValueError(f"GMM arrays must be weights [K], means [K, d], covariances [K, d, d]; got "
                             f"{w.shape}, {mu.shape}, {cov.shape}")
        if not (np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
            raise ValueError("GMM weights must be finite, non-negative and not all zero")
        self.weights = w / w.sum()
        self.means = mu
        self.covariances = 0.5 * (cov + cov.transpose(0, 2, 1))
        try:
            self._chol = np.linalg.cholesky(self.covariances)
        except np.linalg.LinAlgError as exc:
            raise ValueError(f"GMM covariances must be positive definite ({exc})") from None

    @property
    def n_components(self) -> int:
        return self.weights.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @classmethod
    def fit(cls, z: np.ndarray, n_components: int, seed: int = 0, reg_covar: float = 1e-6) -> "GaussianMixtureSampler":
        """Fit by EM (scikit-learn) to samples z [M, d]; keeps only the arrays.

        ``n_components`` is reduced to M when fewer samples than components exist.
        """
        from sklearn.mixture import GaussianMixture

        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2 or z.shape[0] < 1 or not np.all(np.isfinite(z)):
            raise ValueError(f"z must be a finite array [M >= 1, d], got shape {z.shape}")
        k = max(1, min(int(n_components), z.shape[0]))
        if z.shape[0] < 2:  # one sample: a narrow Gaussian around it
            return cls(np.ones(1), z[:1], np.eye(z.shape[1])[None] * max(reg_covar, 1e-4))
        gm = GaussianMixture(n_components=k, covariance_type="full", reg_covar=reg_covar, random_state=seed,
                             max_iter=200).fit(z)
        return cls(gm.weights_, gm.means_, gm.covariances_)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n draws [n, d] (float64): component k ~ weights, then means[k] + L_k eps."""
        comp = rng.choice(self.n_components, size=n, p=self.weights)
        eps = rng.standard_normal((n, self.dim))
        return self.means[comp] + np.einsum("nij,nj->ni", self._chol[comp], eps)

    @property
    def mean(self) -> np.ndarray:
        """Analytic mixture mean [d]: sum_k w_k mu_k."""
        return self.weights @ self.means

    @property
    def covariance(self) -> np.ndarray:
        """Analytic mixture covariance [d, d]: sum_k w_k (S_k + mu_k mu_k^T) - mu mu^T."""
        m = self.mean
        outer = np.einsum("ki,kj->kij", self.means, self.means)
        second = np.einsum("k,kij->ij", self.weights, self.covariances + outer)
        return second - np.outer(m, m)

    def to_state(self, prefix: str = "gmm.") -> dict[str, torch.Tensor]:
        return {f"{prefix}weights": torch.from_numpy(self.weights), f"{prefix}means": torch.from_numpy(self.means),
                f"{prefix}covariances": torch.from_numpy(self.covariances)}

    @classmethod
    def from_state(cls, state: dict, prefix: str = "gmm.") -> "GaussianMixtureSampler | None":
        if f"{prefix}weights" not in state:
            return None
        return cls(*(np.asarray(state[f"{prefix}{k}"], dtype=np.float64) for k in ("weights", "means", "covariances")))


class CVAEBackmapper(Backmapper):
    """A trained temporally coherent cVAE: decoder + latent prior + seed bank.

    Parameters
    ----------
    topology : mdtraj.Topology of the AA system; mapping : CGMapping
    model : CVAE (weights loaded); only the decoder is used
    gmm : GaussianMixtureSampler fitted to the training posterior means, or None
    bank_cg [M, n, 3], bank_aa_prev [M, N, 3] : training CG(t) and AA(t-1),
        centred on CG(t)'s centroid (nm); not needed when frame_based
    prior : "gmm" (section 2.4) or "normal" (N(0, I) fallback)
    project_cg : add the minimum-norm correction C+ (CG - C AA) to every
        reconstructed frame so it maps exactly onto its CG input (off: the paper)
    info : JSON-serialisable provenance (run id, data digest, steps)
    """

    family = "cvae"

    def __init__(self, topology, mapping: CGMapping, model: CVAE, gmm: GaussianMixtureSampler | None = None,
                 bank_cg: np.ndarray | None = None, bank_aa_prev: np.ndarray | None = None, prior: str = "gmm",
                 project_cg: bool = False, info: dict | None = None, device: str | torch.device = "cpu"):
        super().__init__(topology, mapping)
        if model.n_atoms != mapping.n_atoms or model.n_beads != mapping.n_beads:
            raise InputError(f"model has {model.n_atoms} atoms / {model.n_beads} beads, mapping '{mapping.name}' "
                             f"{mapping.n_atoms} / {mapping.n_beads}")
        if prior not in ("gmm", "normal"):
            raise ValueError(f"prior must be 'gmm' or 'normal', got {prior!r}")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.gmm = gmm
        self.prior = prior
        self.project_cg = bool(project_cg)
        self.info = dict(info or {})
        if not model.config.frame_based:
            if bank_cg is None or bank_aa_prev is None or len(bank_cg) == 0:
                raise ValueError("a temporal cVAE needs a seed bank (bank_cg, bank_aa_prev) of training frames")
            bank_cg, bank_aa_prev = np.asarray(bank_cg, np.float64), np.asarray(bank_aa_prev, np.float64)
            if bank_cg.shape[1:] != (model.n_beads, 3) or bank_aa_prev.shape != (bank_cg.shape[0], model.n_atoms, 3):
                raise ValueError(f"seed bank shapes {bank_cg.shape}, {bank_aa_prev.shape} do not fit "
                                 f"{model.n_beads} beads / {model.n_atoms} atoms")
        self.bank_cg, self.bank_aa_prev = bank_cg, bank_aa_prev

    @property
    def config(self) -> CVAEConfig:
        return self.model.config

    @property
    def frames_independent(self) -> bool:
        """The frame-based ablation conditions on CG(t) only; the temporal model also on AA(t-1)."""
        return self.config.frame_based

    @property
    def label(self) -> str:
        return "cvae_frame_based" if self.config.frame_based else "cvae"

    # ------------------------------------------------------------------ latent
    def sample_latent(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n latent codes [n, d_latent]: from the GMM (prior 'gmm' and fitted) else N(0, I)."""
        if self.prior == "gmm" and self.gmm is not None:
            return self.gmm.sample(n, rng)
        return rng.standard_normal((n, self.config.d_latent))

    # -------------------------------------------------------------------- seed
    def seed_frames(self, cg0: np.ndarray) -> np.ndarray:
        """AA(-1) [M, N, 3] nm for first CG frames cg0 [M, n, 3] (absolute coordinates).

        For each, the bank's AA(t*-1) with the smallest RMSD after optimal
        superposition between its CG(t*) and cg0 (all pairs at once, from
        singular values alone), rotated onto cg0 and moved to its centroid.
        """
        if self.bank_cg is None:
            raise ValueError("frame-based models have no seed bank")
        best = pairwise_superposed_rmsd(cg0, self.bank_cg).argmin(axis=1)
        rot = kabsch_rotations(self.bank_cg[best], cg0)
        return np.einsum("mnj,mij->mni", self.bank_aa_prev[best], rot) + cg0.mean(axis=1, keepdims=True)

    # --------------------------------------------------------------- inference
    def backmap_xyz(self, cg_xyz: np.ndarray, n_samples: int = 1, seed: int | None = None,
                    prev_aa_xyz: np.ndarray | None = None) -> np.ndarray:
        """[T, n_beads, 3] nm -> [n_samples, T, n_atoms, 3] nm (K chains as one batch)."""
        cg = self.check_cg(cg_xyz)
        prev = None if prev_aa_xyz is None else check_xyz(prev_aa_xyz, self.mapping.n_atoms, "prev_aa_xyz")[:1]
        return self.backmap_batch(cg[None], n_samples=n_samples, seed=seed, prev_aa_xyz=prev)[0]

    def backmap_trajectories(self, cg_xyz: np.ndarray, n_samples: int = 1, seed: int | None = None) -> np.ndarray:
        """All chains of M trajectories advance together (:meth:`backmap_batch`): [M, K, T, N, 3] nm."""
        return self.backmap_batch(cg_xyz, n_samples=n_samples, seed=seed)

    @torch.inference_mode()
    def backmap_batch(self, cg_xyz: np.ndarray, n_samples: int = 1, seed: int | None = None,
                      prev_aa_xyz: np.ndarray | None = None, max_batch: int = 4096,
                      progress: bool = False) -> np.ndarray:
        """Backmap M CG trajectories at once.

        cg_xyz [M, T, n, 3] nm; prev_aa_xyz [M, N, 3] nm (AA(-1) per
        trajectory) or None (seeded from the bank).  All M * n_samples chains
        advance together, in batches of at most ``max_batch``.
        Returns [M, n_samples, T, N, 3] float64 nm.
        """
        cg = np.asarray(cg_xyz, dtype=np.float64)
        if cg.ndim != 4 or cg.shape[2:] != (self.mapping.n_beads, 3):
            raise InputError(f"cg_xyz: expected shape [M, T, {self.mapping.n_beads}, 3], got {cg.shape}")
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise InputError(f"n_samples: expected a positive int, got {n_samples!r}")
        m, t_len = cg.shape[:2]
        k, n_atoms = int(n_samples), self.mapping.n_atoms
        for j in range(m):
            self.check_cg(cg[j], f"cg_xyz[{j}]")
        rng = np.random.default_rng(seed)
        centroid = cg.mean(axis=2)  # [M, T, 3]
        cg_c = cg - centroid[:, :, None]
        temporal = not self.config.frame_based
        prev = None
        if temporal:
            if prev_aa_xyz is None:
                prev0 = self.seed_frames(cg[:, 0])
            else:
                prev0 = np.asarray(prev_aa_xyz, dtype=np.float64).reshape(m, n_atoms, 3)
            prev = np.repeat(prev0 - centroid[:, 0, None], k, axis=0)  # [M*K, N, 3], centred on CG(0)
        proj = self._projector() if self.project_cg else None
        out = np.empty((m * k, t_len, n_atoms, 3))
        frames = range(t_len)
        if progress:
            from tqdm.auto import tqdm

            frames = tqdm(frames, desc="backmap", unit="frame")
        dtype = next(self.model.parameters()).dtype
        for t in frames:
            cg_t = np.repeat(cg_c[:, t], k, axis=0)  # [M*K, n, 3]
            z = self.sample_latent(m * k, rng)
            aa = np.empty((m * k, n_atoms, 3))
            for s in range(0, m * k, max_batch):
                sl = slice(s, s + max_batch)
                as_t = lambda a: torch.as_tensor(a[sl], dtype=dtype, device=self.device)  # noqa: E731
                step = self.model.backmap_step(as_t(z), as_t(cg_t), as_t(prev) if temporal else None)
                aa[sl] = step.double().cpu().numpy()
            if proj is not None:
                aa = aa + np.einsum("ib,mbc->mic", proj, cg_t - np.einsum("bi,mic->mbc", self.mapping.matrix, aa))
            c_t = np.repeat(centroid[:, t], k, axis=0)[:, None]  # [M*K, 1, 3]
            out[:, t] = aa + c_t
            if temporal and t + 1 < t_len:
                prev = aa + c_t - np.repeat(centroid[:, t + 1], k, axis=0)[:, None]
        return out.reshape(m, k, t_len, n_atoms, 3)

    def _projector(self) -> np.ndarray:
        """C+ [N, n]: x + C+ (y - C x) maps exactly onto y (C full row rank)."""
        return self.mapping.pseudo_inverse()

    # ------------------------------------------------------------- persistence
    def _config(self) -> dict[str, Any]:
        return {"cvae": self.config.to_dict(), "n_atoms": self.model.n_atoms, "n_beads": self.model.n_beads,
                "prior": self.prior, "project_cg": self.project_cg, "info": self.info}

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {f"model.{k}": v.detach().cpu() for k, v in self.model.state_dict().items()}
        if self.gmm is not None:
            state.update(self.gmm.to_state())
        if self.bank_cg is not None:
            state["bank.cg"] = torch.from_numpy(np.asarray(self.bank_cg, np.float32))
            state["bank.aa_prev"] = torch.from_numpy(np.asarray(self.bank_aa_prev, np.float32))
        return state

    @classmethod
    def _from_saved(cls, topology, mapping: CGMapping, config: dict, state: dict) -> "CVAEBackmapper":
        model = CVAE(CVAEConfig.from_dict(config["cvae"]), config["n_atoms"], config["n_beads"])
        model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
        bank = [state[k].double().numpy() if k in state else None for k in ("bank.cg", "bank.aa_prev")]
        return cls(topology, mapping, model, GaussianMixtureSampler.from_state(state), bank[0], bank[1],
                   prior=config.get("prior", "gmm"), project_cg=config.get("project_cg", False),
                   info=config.get("info"))

    @classmethod
    def from_checkpoint(cls, folder: str | Path, topology, mapping: CGMapping, prior: str = "gmm",
                        info: dict | None = None) -> "CVAEBackmapper":
        """Build from a training checkpoint folder (see :mod:`finegrain.trainables.cvae.train`)."""
        ck = read_checkpoint(folder, "cVAE", extra=CKPT_EXTRA)
        model = CVAE(CVAEConfig.from_dict(ck["meta"]["cvae"]), ck["meta"]["n_atoms"], ck["meta"]["n_beads"])
        model.load_state_dict(ck["model"])
        gmm = GaussianMixtureSampler.from_state(ck["gmm"], prefix="") if ck.get("gmm") else None
        bank = ck.get("bank") or {}
        to_np = lambda key: bank[key].double().numpy() if key in bank else None  # noqa: E731
        return cls(topology, mapping, model, gmm, to_np("cg"), to_np("aa_prev"),
                   prior=prior if gmm is not None else "normal",
                   info={**(info or {}), "step": ck["meta"]["step"]})
