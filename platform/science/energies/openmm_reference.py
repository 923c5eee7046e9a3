"""Reference energies: OpenMM itself behind a torch autograd function.

:class:`OpenMMEnergy` evaluates any OpenMM ``System`` for a batch of frames
``[B, N, 3]`` (nm) with a small pool of OpenMM Contexts and returns energies
``[B]`` in kJ/mol; its gradient is minus OpenMM's forces (kJ/mol/nm).  It is
the exact fallback for force terms the torch path lacks and the independent
reference the torch path is tested against.

Platform (``platform="auto"``): "Reference" below 100 atoms (for ADP's 22
atoms it is 5-10x faster than "CPU", whose per-call thread hand-off
dominates), "CPU" above 3000, and in between whichever is faster on this
System, timed once on first use (counting the Reference pool's threads).
Frames are split over the pool's Contexts in threads (OpenMM releases the GIL
while it computes; pays off from ~64 atoms).  Note "CPU" computes in mixed
precision: its energies differ from Reference's by ~1e-6 relative; pass
``platform="Reference"`` for bit-reproducible double-precision numbers.
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from finegrain.platform.science.energies.checks import check_positions

__all__ = ["ContextPool", "OpenMMEnergy", "openmm_energies_forces"]

#: Below this many atoms "auto" picks Reference without timing, above the second CPU.
AUTO_PLATFORM_ATOMS = (100, 3000)


def _make_context(system, platform: str):
    import openmm as mm

    return mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName(platform))


def _evaluate(context, frames: np.ndarray, forces: bool, has_vsites: bool,
              box_nm: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Energies [F] (kJ/mol) and forces [F, N, 3] (kJ/mol/nm) of frames [F, N, 3] (nm) on one Context
    (periodic systems: in the boxes box_nm [F, 3, 3] nm when given, else the System's default box)."""
    import openmm.unit as u

    kj = u.kilojoule_per_mole
    e = np.empty(len(frames))
    f = np.empty(frames.shape) if forces else None
    for k, x in enumerate(frames):
        if box_nm is not None:
            context.setPeriodicBoxVectors(*box_nm[k])
        context.setPositions(x)
        if has_vsites:
            context.computeVirtualSites()
        state = context.getState(getEnergy=True, getForces=forces)
        e[k] = state.getPotentialEnergy().value_in_unit(kj)
        if forces:
            f[k] = state.getForces(asNumpy=True).value_in_unit(kj / u.nanometer)
    return e, f


def openmm_energies_forces(system, frames: np.ndarray, platform: str = "Reference",
                           box_nm: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Plain per-frame OpenMM loop (one Context): energies [B] kJ/mol, forces [B, N, 3] kJ/mol/nm.

    box_nm [B, 3, 3] nm: each frame's periodic box (rows a, b, c) for a periodic ``system``; None: its
    default box."""
    frames = np.asarray(frames, dtype=np.float64)
    if box_nm is not None:
        box_nm = np.asarray(box_nm, dtype=np.float64)
        if box_nm.shape != (len(frames), 3, 3):
            raise ValueError(f"box_nm: expected [{len(frames)}, 3, 3] nm, got {box_nm.shape}")
        if not system.usesPeriodicBoundaryConditions():
            raise ValueError("box_nm: given for a System without periodic boundary conditions")
    has_vsites = any(system.isVirtualSite(i) for i in range(system.getNumParticles()))
    return _evaluate(_make_context(system, platform), frames, True, has_vsites, box_nm)


class ContextPool:
    """A few OpenMM Contexts of one System, used by one batch at a time.

    system : openmm.System
    platform : "auto", "Reference" or "CPU" (any OpenMM platform name works)
    n_workers : Contexts (and threads); None -> 1 below 64 atoms (Python
        overhead dominates there), else min(4, cpu count). CPU platform: 1.

    Contexts are created on first use; the pool pickles without them.
    """

    def __init__(self, system, platform: str = "auto", n_workers: int | None = None):
        if n_workers is not None and (isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1):
            raise ValueError(f"n_workers: expected a positive int or None, got {n_workers!r}")
        self.system = system
        self.n_atoms = system.getNumParticles()
        self.requested_platform = platform
        self.requested_workers = n_workers
        self._has_vsites = any(system.isVirtualSite(i) for i in range(self.n_atoms))
        self._lock = threading.Lock()
        self._contexts: list = []
        self._platform: str | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_contexts=[], _lock=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def platform(self) -> str:
        """The platform in use (resolves "auto" on first call)."""
        if self._platform is None:
            self._platform = self._choose_platform()
        return self._platform

    def _choose_platform(self) -> str:
        req = self.requested_platform
        if req != "auto":
            return req
        lo, hi = AUTO_PLATFORM_ATOMS
        if self.n_atoms < lo:
            return "Reference"
        if self.n_atoms > hi:
            return "CPU"
        side = math.ceil(self.n_atoms ** (1.0 / 3.0))
        grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
        x = 0.3 * grid[None, : self.n_atoms].astype(np.float64)  # atoms on a 0.3 nm lattice: no overlaps
        times = {}
        for name in ("Reference", "CPU"):
            ctx = _make_context(self.system, name)
            _evaluate(ctx, x, True, self._has_vsites)  # warm-up
            t0 = time.perf_counter()
            _evaluate(ctx, np.repeat(x, 4, axis=0), True, self._has_vsites)
            times[name] = time.perf_counter() - t0
            if name == "Reference":
                self._contexts = [ctx]
        # Reference Contexts run in parallel threads; the CPU platform is already multi-threaded
        times["Reference"] /= self._parallel_workers()
        if times["CPU"] < times["Reference"]:
            self._contexts = []
            return "CPU"
        return "Reference"

    def _parallel_workers(self) -> int:
        return 1 if self.n_atoms < 64 else max(1, min(4, os.cpu_count() or 1))

    @property
    def n_workers(self) -> int:
        if self.requested_workers is not None:
            return self.requested_workers
        return self._parallel_workers() if self.platform == "Reference" else 1

    def evaluate(self, frames: np.ndarray, forces: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Energies [B] (kJ/mol) and forces [B, N, 3] (kJ/mol/nm, None if not asked) of frames [B, N, 3] nm."""
        frames = np.ascontiguousarray(frames, dtype=np.float64)
        with self._lock:
            platform = self.platform
            n = max(1, min(self.n_workers, len(frames)))
            while len(self._contexts) < n:
                self._contexts.append(_make_context(self.system, platform))
            if n == 1:
                return _evaluate(self._contexts[0], frames, forces, self._has_vsites)
            chunks = np.array_split(frames, n)
            with ThreadPoolExecutor(n) as ex:
                parts = list(
                    ex.map(lambda c, x: _evaluate(c, x, forces, self._has_vsites), self._contexts[:n], chunks)
                )
        e = np.concatenate([p[0] for p in parts])
        f = np.concatenate([p[1] for p in parts]) if forces else None
        return e, f


class _OpenMMEnergyFunction(torch.autograd.Function):
    """positions [B, N, 3] nm -> energies [B] kJ/mol; backward = -forces * grad_output."""

    @staticmethod
    def forward(ctx, positions: torch.Tensor, pool: ContextPool) -> torch.Tensor:
        need_forces = bool(ctx.needs_input_grad[0])
        x = positions.detach().to(device="cpu", dtype=torch.float64).numpy()
        e, f = pool.evaluate(x, forces=need_forces)
        if need_forces:
            ctx.save_for_backward(torch.from_numpy(f).to(device=positions.device, dtype=positions.dtype))
        return torch.from_numpy(e).to(device=positions.device, dtype=positions.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        (forces,) = ctx.saved_tensors
        return -forces * grad_output[:, None, None], None


class OpenMMEnergy(torch.nn.Module):
    """U(x) of any OpenMM System, evaluated by OpenMM, differentiable once.

    system : openmm.System (kept as ``.system``)
    platform, n_workers : see :class:`ContextPool`
    dtype, device : of the returned energies (positions are cast to them;
        OpenMM itself always computes from float64 copies on the CPU).

    forward(positions [B, N, 3] nm) -> energies [B] kJ/mol; the gradient is
    -forces from OpenMM (no double backward).
    """

    def __init__(self, system, platform: str = "auto", n_workers: int | None = None,
                 dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"):  # fmt: skip
        super().__init__()
        self.system = system
        self.n_atoms = system.getNumParticles()
        self.pool = ContextPool(system, platform=platform, n_workers=n_workers)
        self.register_buffer("_anchor", torch.zeros(0, dtype=dtype, device=device), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        pos = check_positions(positions, self.n_atoms).to(device=self.device, dtype=self.dtype)
        return _OpenMMEnergyFunction.apply(pos, self.pool)

    def energies_and_forces(self, positions) -> tuple[torch.Tensor, torch.Tensor]:
        """(energies [B] kJ/mol, forces [B, N, 3] kJ/mol/nm) without autograd."""
        pos = check_positions(positions, self.n_atoms)
        e, f = self.pool.evaluate(pos.detach().to(device="cpu", dtype=torch.float64).numpy(), forces=True)
        cast = dict(device=self.device, dtype=self.dtype)
        return torch.from_numpy(e).to(**cast), torch.from_numpy(f).to(**cast)

    def extra_repr(self) -> str:
        return f"n_atoms={self.n_atoms}, platform={self.pool.requested_platform!r}"
