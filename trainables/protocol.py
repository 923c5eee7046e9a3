"""The protocol every trained backmapper obeys, whatever its family.

A trainer fits; a :class:`Backmapper` backmaps. Sweeps, evaluation and
serving only use this interface:

- ``backmap_xyz(cg_xyz [T, n_beads, 3] nm, n_samples=K, seed=S, prev_aa_xyz=[N, 3] | None)``
  -> ``[K, T, n_atoms, 3]`` nm: the one method a family implements.
- ``backmap(cg_traj: mdtraj.Trajectory, n_samples=1, seed=None)`` -> list of K
  AA ``mdtraj.Trajectory`` with the full AA topology (checks bead count/names).
- ``save(folder)`` / ``load_backmapper(folder)``: a folder of plain files —
  ``backmapper.json`` (family, config, mapping), ``topology.pdb`` and
  ``weights.pt`` (tensors only, loaded with ``torch.load(weights_only=True)``;
  nothing is unpickled).
- ``training_split``: the split of the shard folder the model was fitted on,
  {"fractions": [3], "seed": int, "train"/"validation"/"test": [traj ids]},
  saved in ``backmapper.json`` (None when unknown), so ``evaluate --split``
  scores exactly the trajectories the model never trained on.
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from finegrain.platform.science.mapping import CGMapping
from finegrain.platform.science.errors import InputError
from finegrain.platform.science.validation import check_xyz

__all__ = ["Backmapper", "Conformance", "Family", "check_family_handles", "load_backmapper", "FAMILIES", "TRAINERS", "trainer_for",
           "split_record", "backmapper_from_checkpoint", "load_weights"]

#: what :attr:`Conformance.equivariance` may declare
EQUIVARIANCE = ("exact", "translation", "approximate")


@dataclass(frozen=True)
class Conformance:
    """What a family promises beyond this protocol, and how to build a small model of it to check that.

    Declared next to the family's code (``trainables/NAME/conformance.py``) and named by its
    :class:`Family` entry; ``tests/test_family_conformance.py`` checks every registered family against its
    declaration (shape, seeding, save/load, input errors, frame independence, rigid motions).

    build : ``build(topology, mapping, train_xyz, variant, system) -> Backmapper``: a small untrained (or
        fitted in milliseconds) model on ``train_xyz`` [F, n_atoms, 3] nm of the reference system named
        ``system`` (e.g. "adp"); torch, numpy and the family's own code only (no Ray, MLflow, OpenMM).
    variants : the variants whose protocol answers differ (temporal vs frame-based, float32 vs float64);
        each one is built and checked.
    equivariance : under a rigid motion of the CG input, per sample (same seed): "exact" (rotations and
        translations move the output alike), "translation" (translations only; rotations are then
        asserted *not* to pass the exact check), "approximate" (both, within ``equivariance_atol`` nm).
    maps_onto_cg : ``maps_onto_cg(variant)``: bound (nm) on |mapping(output) - input|, None: no such claim.
    frames_independent : ``frames_independent(variant)``: the value of ``Backmapper.frames_independent``.
    equivariance_atol : the tolerance (nm) of "approximate" equivariance; None otherwise.
    """

    build: Callable[..., "Backmapper"]
    variants: tuple[str, ...]
    equivariance: str
    maps_onto_cg: Callable[[str], float | None]
    frames_independent: Callable[[str], bool]
    equivariance_atol: float | None = None

    def __post_init__(self):
        if not self.variants:
            raise ValueError("Conformance: declare at least one variant")
        if self.equivariance not in EQUIVARIANCE:
            raise ValueError(f"Conformance: equivariance {self.equivariance!r} is not one of {EQUIVARIANCE}")
        if (self.equivariance == "approximate") != (self.equivariance_atol is not None):
            raise ValueError("Conformance: equivariance_atol is set exactly for equivariance='approximate'")


@dataclass(frozen=True)
class Family:
    """A model family, declared once: where its backmapper and trainer live and what it can do.

    A new family is a folder ``trainables/NAME/`` with an ``__init__.py`` (setup.py packages every such
    folder; no list to edit), holding its backmapper, its trainer (config class + ``fit_detailed``) and
    ``conformance.py`` (a :class:`Conformance`), plus one line in :data:`FAMILIES` naming them. Its
    training configs go in ``trainables/configs/`` (``family: NAME``). Nothing else is registered.

    backmapper : "module:Class" of its :class:`Backmapper` (imported on demand).
    config, fit : "module:ConfigClass" and "module:fit_detailed" of its trainer (None: not trainable).
        A config class has ``from_dict(data, source)``, ``from_yaml(path,
        overrides)``, ``flat()`` and sections data/model/training/tracking; ``fit_detailed(config)``
        returns a ``FitResult`` (backmapper, MLflow run id, model URI, folders).
    options : backmapping options a user may set on a loaded model (attribute names), e.g. the cVAE's
        latent ``prior`` and ``project_cg``; the CLI and Serve check here, never with ``hasattr``.
    periodic : it models a condensed phase (many molecules in a periodic box, shards with ``box_nm``);
        training a family that does not on such data is refused with an error saying why.
    transfers : a trained model can backmap another topology (another molecule, a bigger box) whose atom and
        bead types it knows (:meth:`Backmapper.for_system`); the others are tied to the topology they were
        trained on and refuse with an error saying why.
    conformance : "module:NAME" of its :class:`Conformance`: the capabilities it declares (equivariance,
        frame independence, how closely outputs map onto the CG) and a small-model builder to check them.
        Capabilities are declared, not discovered; a family without one fails the conformance tests.
    """

    backmapper: str
    config: str | None = None
    fit: str | None = None
    options: tuple[str, ...] = ()
    conformance: str | None = None
    periodic: bool = False
    transfers: bool = False

    @property
    def trainable(self) -> bool:
        return self.fit is not None

    def load_conformance(self) -> Conformance | None:
        """The declared :class:`Conformance` (imported on demand), None when the family declares none."""
        if self.conformance is None:
            return None
        declared = _import(self.conformance)
        if not isinstance(declared, Conformance):
            raise TypeError(f"{self.conformance} is a {type(declared).__name__}, not a protocol.Conformance")
        return declared


#: The one registry. A new family is a folder trainables/NAME/ (with __init__.py; backmapper, trainer,
#: conformance.py) and one line here naming its backmapper, config, fit and conformance.
FAMILIES: dict[str, Family] = {
    "cvae": Family("finegrain.trainables.cvae.backmapper:CVAEBackmapper",
                   "finegrain.trainables.cvae.train_config:TrainConfig", "finegrain.trainables.cvae.train:fit_detailed",
                   options=("prior", "project_cg"), conformance="finegrain.trainables.cvae.conformance:CONFORMANCE"),
    "nullspace": Family("finegrain.trainables.baselines:NullSpaceBackmapper",
                        "finegrain.trainables.baseline_fit:BaselineTrainConfig",
                        "finegrain.trainables.baseline_fit:fit_detailed",
                        conformance="finegrain.trainables.baseline_conformance:NULLSPACE", periodic=True),
    "em": Family("finegrain.trainables.baselines:EnergyMinimisationBackmapper",
                 "finegrain.trainables.baseline_fit:BaselineTrainConfig", "finegrain.trainables.baseline_fit:fit_detailed",
                 conformance="finegrain.trainables.baseline_conformance:EM"),
    "flow": Family("finegrain.trainables.flow.backmapper:FlowBackmapper",
                   "finegrain.trainables.flow.train_config:FlowTrainConfig", "finegrain.trainables.flow.train:fit_detailed",
                   conformance="finegrain.trainables.flow.conformance:CONFORMANCE"),
    "ic": Family("finegrain.trainables.ic.backmapper:ICBackmapper",
                 "finegrain.trainables.ic.train_config:ICTrainConfig", "finegrain.trainables.ic.train:fit_detailed",
                 conformance="finegrain.trainables.ic.conformance:CONFORMANCE"),
    "dbm": Family("finegrain.trainables.dbm.backmapper:DBMBackmapper",
                  "finegrain.trainables.dbm.train_config:DBMTrainConfig", "finegrain.trainables.dbm.train:fit_detailed",
                  conformance="finegrain.trainables.dbm.conformance:CONFORMANCE", periodic=True, transfers=True),
}

def check_family_handles(family: str, periodic: bool, source: str) -> None:
    """Refuse data a family does not model: a periodic (condensed-phase) data set for a family that does not
    declare ``periodic`` (InputError naming ``source`` and the families that do)."""
    if periodic and not FAMILIES[family].periodic:
        able = ", ".join(name for name, fam in FAMILIES.items() if fam.periodic)
        raise InputError(f"{source}: a periodic (condensed-phase) data set, but family '{family}' models one "
                         f"molecule without periodic boundaries (it does not declare Family.periodic: its inputs "
                         f"do not see box images); families that handle a periodic box: {able}")


#: the trainable families (derived from :data:`FAMILIES`)
TRAINERS: tuple[str, ...] = tuple(name for name, fam in FAMILIES.items() if fam.trainable)

META = "backmapper.json"
TOPOLOGY = "topology.pdb"
WEIGHTS = "weights.pt"
SPLIT_KEYS = ("train", "validation", "test")


def split_record(fractions, seed: int, splits: dict[str, list[str]], dataset_digest: str | None = None) -> dict:
    """A training split as plain JSON: fractions [3], seed, the trajectory ids of each split, data digest."""
    rec = {"fractions": [float(f) for f in fractions], "seed": int(seed),
           **{k: sorted(str(t) for t in splits.get(k, [])) for k in SPLIT_KEYS}}
    if dataset_digest is not None:
        rec["dataset_digest"] = str(dataset_digest)
    return rec


def _check_split_record(rec, source: str) -> dict | None:
    if rec is None:
        return None
    if not isinstance(rec, dict) or any(not isinstance(rec.get(k), list) for k in SPLIT_KEYS):
        raise ValueError(f"{source}: 'training_split' must hold lists 'train', 'validation' and 'test' of "
                         f"trajectory ids, got {rec!r}")
    return rec


class Backmapper(ABC):
    """A trained backmapper for one AA topology and one CG mapping.

    Subclasses set ``family`` and implement ``backmap_xyz``, ``_config`` and
    ``_state`` / ``_from_saved`` for persistence.
    """

    family: str = "?"
    #: The training split (see the module docstring); None when unknown.
    training_split: dict | None = None
    #: True when each frame is backmapped on its own (no AA(t-1)): requests may then be
    #: concatenated along frames (Serve's batching) without changing any answer's distribution.
    frames_independent: bool = False

    def __init__(self, topology, mapping: CGMapping):
        if mapping.n_atoms != topology.n_atoms:
            raise InputError(f"mapping '{mapping.name}' has {mapping.n_atoms} atoms, topology has {topology.n_atoms}")
        self.topology = topology  # mdtraj.Topology
        self.mapping = mapping

    # -- the family's part --------------------------------------------------
    @abstractmethod
    def backmap_xyz(self, cg_xyz: np.ndarray, n_samples: int = 1, seed: int | None = None,
                    prev_aa_xyz: np.ndarray | None = None) -> np.ndarray:
        """[T, n_beads, 3] nm -> [n_samples, T, n_atoms, 3] nm."""

    def for_system(self, system: str, mapping: str) -> "Backmapper":
        """This model on another reference system's topology, mapping and force field (chemical or size
        transfer). Only families that declare ``Family.transfers`` override it; the others refuse (InputError
        naming the family and the ones that can)."""
        able = ", ".join(name for name, fam in FAMILIES.items() if fam.transfers)
        raise InputError(f"family '{self.family}' cannot backmap another topology than the one it was trained on "
                         f"(its parameters are tied to that topology's atoms: it does not declare "
                         f"Family.transfers); families that transfer: {able}")

    def backmap_in_box(self, cg_xyz: np.ndarray, box_nm: np.ndarray, n_samples: int = 1,
                       seed: int | None = None) -> np.ndarray:
        """Periodic frames: [T, n_beads, 3] nm with box vectors [T, 3, 3] nm -> [n_samples, T, n_atoms, 3] nm.

        The default checks the boxes and backmaps with :meth:`backmap_xyz`: right for families whose output
        does not depend on other molecules (the molecule-wise null-space baseline). Families that see their
        neighbours (DeepBackmap's environments) override it and use the box.
        """
        cg = self.check_cg(cg_xyz)
        box = np.asarray(box_nm, dtype=np.float64)
        if box.shape != (cg.shape[0], 3, 3) or not np.isfinite(box).all():
            raise InputError(f"box_nm: expected finite box vectors [{cg.shape[0]}, 3, 3] (nm), got shape {box.shape}")
        return self.backmap_xyz(cg, n_samples=n_samples, seed=seed)

    def backmap_trajectories(self, cg_xyz: np.ndarray, n_samples: int = 1, seed: int | None = None) -> np.ndarray:
        """M independent CG trajectories of equal length in one call: [M, T, n, 3] -> [M, K, T, N, 3] nm.

        The default backmaps them one by one; families that can advance many
        chains together (the cVAE) override it. Serving batches through this.
        """
        rng = np.random.default_rng(seed)
        seeds = rng.integers(0, 2**31 - 1, size=len(cg_xyz))
        return np.stack([self.backmap_xyz(c, n_samples, seed=int(s)) for c, s in zip(cg_xyz, seeds)])

    @abstractmethod
    def _config(self) -> dict[str, Any]:
        """JSON-serialisable settings needed to rebuild the model."""

    def _state(self) -> dict[str, Any]:
        """Tensors/arrays to save (``weights.pt``); none by default."""
        return {}

    @classmethod
    @abstractmethod
    def _from_saved(cls, topology, mapping: CGMapping, config: dict, state: dict) -> "Backmapper":
        """Rebuild from what ``_config`` and ``_state`` returned."""

    # -- shared behaviour -----------------------------------------------------
    def recorded_split(self) -> dict | None:
        """The split this model was trained on ({fractions, seed, train, validation, test}), or None.

        Set by the trainer (``info["training_split"]`` of the Ray Train families,
        ``training_split`` of the baselines) and kept by ``save``/``load_backmapper``.
        """
        rec = self.training_split
        if rec is None:
            rec = (getattr(self, "info", None) or {}).get("training_split")
        return _check_split_record(rec, f"{self.family} model")

    @property
    def system_name(self) -> str | None:
        """The reference system the model was trained on (its force field refines it); None when unknown."""
        system = (getattr(self, "info", None) or {}).get("system")
        return system if isinstance(system, str) else None

    @property
    def label(self) -> str:
        """Name on the leaderboard: the family, plus the variant where a family has several."""
        return self.family

    def check_cg(self, cg_xyz, argument: str = "cg_xyz", bead_names: list[str] | None = None) -> np.ndarray:
        """Validate a CG input against this model's mapping; returns [T, n, 3] float64."""
        arr = np.asarray(cg_xyz)
        if arr.ndim == 3 and arr.shape[1] != self.mapping.n_beads:
            raise InputError(
                f"{argument}: {arr.shape[1]} beads per frame, the model's mapping '{self.mapping.name}' has "
                f"{self.mapping.n_beads} ({', '.join(self.mapping.bead_names)})"
            )
        if bead_names is not None and list(bead_names) != list(self.mapping.bead_names):
            raise InputError(
                f"{argument}: bead names {list(bead_names)} do not match the model's mapping "
                f"'{self.mapping.name}' {list(self.mapping.bead_names)}"
            )
        return check_xyz(arr, self.mapping.n_beads, argument, what="beads").astype(np.float64)

    def backmap(self, cg_traj, n_samples: int = 1, seed: int | None = None) -> list:
        """Backmap a CG ``mdtraj.Trajectory``; returns ``n_samples`` AA trajectories.

        A CG trajectory with unit cells is periodic: it goes through :meth:`backmap_in_box` and the AA
        trajectories keep its cells.

        The CG topology must name the mapping's beads (see
        ``CGMapping.matches_bead_names``; ``CGMapping.cg_topology`` writes such a
        topology); a count or name mismatch is refused naming both.
        """
        import mdtraj as md

        names = [a.name for a in cg_traj.topology.atoms]
        expected = list(self.mapping.bead_names)
        if cg_traj.n_atoms != len(expected):
            raise InputError(
                f"cg_traj: {cg_traj.n_atoms} beads ({', '.join(names)}), the model's mapping "
                f"'{self.mapping.name}' has {len(expected)} ({', '.join(expected)})"
            )
        if not self.mapping.matches_bead_names(cg_traj.topology):
            raise InputError(f"cg_traj: bead names {names} do not match the model's mapping '{self.mapping.name}' {expected}")
        cg = self.check_cg(cg_traj.xyz, "cg_traj")
        box = cg_traj.unitcell_vectors
        if box is None:
            xyz = self.backmap_xyz(cg, n_samples=n_samples, seed=seed)
        else:
            xyz = self.backmap_in_box(cg, box.astype(np.float64), n_samples=n_samples, seed=seed)
        time = cg_traj.time if cg_traj.time is not None else None
        cells = {} if box is None else {"unitcell_lengths": cg_traj.unitcell_lengths,
                                        "unitcell_angles": cg_traj.unitcell_angles}
        return [md.Trajectory(xyz[k].astype(np.float32), self.topology, time=time, **cells)
                for k in range(xyz.shape[0])]

    def save(self, folder: str | Path) -> Path:
        """Write the model as plain files (see module docstring)."""
        import mdtraj as md
        import torch

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"family": self.family, "config": self._config(), "mapping": self.mapping.to_dict()}
        if self.recorded_split() is not None:
            meta["training_split"] = self.recorded_split()
        (folder / META).write_text(json.dumps(meta, indent=1))
        md.Trajectory(np.zeros((1, self.topology.n_atoms, 3), np.float32), self.topology).save_pdb(str(folder / TOPOLOGY))
        state = {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v.detach().cpu()
                 for k, v in self._state().items()}
        torch.save(state, folder / WEIGHTS)
        return folder


def _import(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def trainer_for(family: str):
    """(config class, fit_detailed) of a trainable family; ValueError naming the known ones."""
    if family not in TRAINERS:
        raise ValueError(f"unknown model family {family!r} (known: {', '.join(TRAINERS)})")
    fam = FAMILIES[family]
    try:
        return _import(fam.config), _import(fam.fit)
    except ImportError as exc:
        raise ValueError(f"model family {family!r} is not available here ({exc})") from exc


def backmapper_from_checkpoint(family: str, folder: str | Path, topology, mapping: CGMapping,
                               info: dict | None = None) -> Backmapper:
    """The backmapper in a training checkpoint folder of a trainable family (its ``from_checkpoint``)."""
    if family not in TRAINERS:
        raise ValueError(f"unknown model family {family!r} (trainable: {', '.join(TRAINERS)})")
    return _import(FAMILIES[family].backmapper).from_checkpoint(folder, topology, mapping, info=info)


def load_weights(module, state: dict, family: str):
    """``module`` with ``state`` loaded (strict), cast first to the state's float dtype so float64 weights stay
    float64; ValueError naming the family when the weights do not fit its saved config."""
    dtypes = {v.dtype for v in state.values() if hasattr(v, "is_floating_point") and v.is_floating_point()}
    if len(dtypes) == 1:
        module = module.to(dtypes.pop())
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{family} weights do not fit the saved config: {exc}") from None
    return module


def load_backmapper(folder: str | Path) -> Backmapper:
    """Load a saved backmapper of any family, without unpickling anything."""
    import mdtraj as md
    import torch

    folder = Path(folder)
    meta_path = folder / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"model folder {folder}: no {META}")
    meta = json.loads(meta_path.read_text())
    family = meta.get("family")
    if family not in FAMILIES:
        raise ValueError(f"model folder {folder}: unknown family {family!r} (known: {', '.join(FAMILIES)})")
    cls = _import(FAMILIES[family].backmapper)
    topology = md.load_topology(str(folder / TOPOLOGY))
    state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True) if (folder / WEIGHTS).is_file() else {}
    bm = cls._from_saved(topology, CGMapping.from_dict(meta["mapping"]), meta["config"], state)
    if meta.get("training_split") is not None:
        bm.training_split = _check_split_record(meta["training_split"], str(meta_path))
    return bm
