"""Tests for finegrain.platform.science.energies against OpenMM itself.

Reference numbers come from OpenMM's Reference platform (double precision)
with every force in its own force group, evaluated per frame; frames are
short Langevin runs of ADP and chignolin plus Gaussian-perturbed copies
(sigma = 0.015 nm, i.e. strained, high-energy frames).

Tolerances
----------
float64 torch path: per frame and per force group |dU| <= max(1e-4 kJ/mol,
1e-6 |U|); forces max |dF| <= 1e-3 kJ/mol/nm (observed ~1e-11 both).
float32 torch path: |dU| <= F32_ENERGY_ABS + F32_ENERGY_REL * S, with S the
sum of |per-pair/per-term contributions| bounded here by the sum of |group
energies| + 100 kJ/mol (float32 round-off grows with the magnitude of the
summed terms, not with the net energy); forces max |dF| <= F32_FORCE_REL *
max |F| + 0.05 kJ/mol/nm (observed: energies <= ~5e-3 kJ/mol, forces
<= ~0.06 kJ/mol/nm for chignolin with |F| up to ~7e3, and 0.27 kJ/mol/nm
(6.3e-6 max |F|) on a noisy chignolin frame with |F| up to 4.3e4).
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from finegrain.datasets.systems import get_system
from finegrain.platform.science.energies import (
    TERM_NAMES,
    OpenMMEnergy,
    TorchForceField,
    UnsupportedForceError,
    energy_model,
    openmm_energies_forces,
    soft_cap,
)

mm = pytest.importorskip("openmm")
unit = pytest.importorskip("openmm.unit")

F32_ENERGY_ABS = 1e-3  # kJ/mol
F32_ENERGY_REL = 2e-6  # of sum |group energies| + 100
F32_FORCE_REL = 1e-5  # of max |F| (float32 eps 1.2e-7 times sums of ~100 pair terms per atom)
F64_ENERGY_ABS, F64_ENERGY_REL, F64_FORCE_ABS = 1e-4, 1e-6, 1e-3

# torch term(s) -> OpenMM force class
GROUP_TERMS = {
    "HarmonicBondForce": ("bond",),
    "HarmonicAngleForce": ("angle",),
    "PeriodicTorsionForce": ("torsion",),
    "NonbondedForce": ("lj", "coulomb"),
    "GBSAOBCForce": ("solvation",),
}
KJ = unit.kilojoule_per_mole


# ----------------------------------------------------------------------------
# helpers and fixtures
# ----------------------------------------------------------------------------
def openmm_reference(system, frames: np.ndarray) -> dict:
    """Per-frame OpenMM Reference energies: total [F], per force class [F], forces [F, N, 3]."""
    system = copy.deepcopy(system)
    names = []
    for i, force in enumerate(system.getForces()):
        force.setForceGroup(i)
        names.append(type(force).__name__)
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    total, forces, groups = [], [], {n: [] for n in names}
    for x in frames:
        ctx.setPositions(x)
        state = ctx.getState(getEnergy=True, getForces=True)
        total.append(state.getPotentialEnergy().value_in_unit(KJ))
        forces.append(state.getForces(asNumpy=True).value_in_unit(KJ / unit.nanometer))
        for i, n in enumerate(names):
            groups[n].append(ctx.getState(getEnergy=True, groups={i}).getPotentialEnergy().value_in_unit(KJ))
    return {"total": np.array(total), "forces": np.array(forces), "groups": {k: np.array(v) for k, v in groups.items()}}


def simulate(ref, n_frames: int = 8, stride: int = 40, seed: int = 1) -> np.ndarray:
    """n_frames [F, N, 3] nm from a short Langevin run (Reference platform, 300 K, HBonds, 2 fs)."""
    system = ref.create_system(constraints="HBonds")
    integ = mm.LangevinMiddleIntegrator(300 * unit.kelvin, 1.0 / unit.picosecond, 0.002 * unit.picoseconds)
    integ.setRandomNumberSeed(seed)
    ctx = mm.Context(system, integ, mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(ref.positions_nm)
    mm.LocalEnergyMinimizer.minimize(ctx, maxIterations=50)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, seed)
    frames = []
    for _ in range(n_frames):
        integ.step(stride)
        frames.append(ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return np.array(frames)


class Case:
    """A reference system with MD + perturbed frames and OpenMM's numbers for them."""

    def __init__(self, name: str | dict):
        from finegrain.datasets.systems import get_system

        self.ref = get_system(name)
        self.system = self.ref.create_system(constraints=None)
        md = simulate(self.ref)
        noisy = md[:4] + np.random.default_rng(7).normal(0.0, 0.015, md[:4].shape)
        self.frames = np.concatenate([md, noisy])
        self.expected = openmm_reference(self.system, self.frames)


#: a 166-atom protein with the implicit solvent the torch force field implements (GBSAOBCForce): the CLN025
#: coordinates shipped for ``chignolin`` under amber99sb-ildn + OBC (``chignolin`` itself uses GB-neck2, a
#: CustomGBForce the torch force field hands to OpenMM, see test_gbneck2_goes_through_the_openmm_fallback)
CLN025_OBC = {"name": "cln025-obc", "files": {"package": "finegrain.datasets", "pdb": "data/cln025_5awl.pdb"},
              "forcefield": ["amber99sbildn.xml", "amber99_obc.xml"]}


@pytest.fixture(scope="module", params=["adp", CLN025_OBC], ids=["adp", "cln025-obc"])
def case(request) -> Case:
    return Case(request.param)


@pytest.fixture(scope="module")
def adp() -> Case:
    return Case("adp")


def torch_energies_forces(model, frames: np.ndarray, dtype) -> tuple[dict, np.ndarray]:
    pos = torch.tensor(frames, dtype=dtype, requires_grad=True)
    terms = model.terms(pos)
    total = torch.stack(list(terms.values())).sum(0)
    (grad,) = torch.autograd.grad(total.sum(), pos)
    return {k: v.detach().double().numpy() for k, v in terms.items()}, -grad.double().numpy()


def toy_system():
    """Five atoms with every supported force, non-trivial phases, exceptions and GB parameters.

    Atom 4 is large with a big HCT scale so that atom 3 lies *inside* its
    scaled sphere (rho_3 < s_4 - r), which exercises OpenMM's extra
    2 (1/rho - L) term, and atom 4's own sphere swallows atom 3's scaled
    sphere (the 'rho_i >= r + s_j' no-contribution branch).
    """
    s = mm.System()
    for m in (12.0, 14.0, 12.0, 1.0, 16.0):
        s.addParticle(m)
    bonds = mm.HarmonicBondForce()
    for i, j, r0, k in ((0, 1, 0.15, 3e5), (1, 2, 0.14, 2.5e5), (2, 3, 0.11, 3.1e5), (3, 4, 0.13, 2e5)):
        bonds.addBond(i, j, r0, k)
    angles = mm.HarmonicAngleForce()
    angles.addAngle(0, 1, 2, 1.9, 400.0)
    angles.addAngle(1, 2, 3, 2.0, 300.0)
    angles.addAngle(2, 3, 4, 1.7, 250.0)
    tors = mm.PeriodicTorsionForce()
    tors.addTorsion(0, 1, 2, 3, 1, 0.7, 2.5)
    tors.addTorsion(0, 1, 2, 3, 2, 2.0, 1.3)
    tors.addTorsion(1, 2, 3, 4, 3, -1.2, 1.1)
    nb = mm.NonbondedForce()
    nb.setNonbondedMethod(mm.NonbondedForce.NoCutoff)
    gb = mm.GBSAOBCForce()
    gb.setSoluteDielectric(2.0)
    gb.setSolventDielectric(80.0)
    gb.setSurfaceAreaEnergy(3.1)
    for q, sig, eps, rad, scale in (
        (0.4, 0.33, 0.45, 0.17, 0.72),
        (-0.5, 0.32, 0.7, 0.155, 0.79),
        (0.3, 0.34, 0.36, 0.17, 0.72),
        (0.2, 0.11, 0.07, 0.12, 0.85),
        (-0.4, 0.30, 0.88, 0.30, 1.6),
    ):
        nb.addParticle(q, sig, eps)
        gb.addParticle(q, rad, scale)
    nb.addException(0, 1, 0.0, 0.1, 0.0)  # excluded
    nb.addException(0, 2, 0.3, 0.25, 0.4)  # own parameters, not the combined ones
    nb.addException(1, 3, -0.5 * 0.2 / 1.2, 0.2, 0.3)  # 1-4 style scaling
    for f in (bonds, angles, tors, nb, gb, mm.CMMotionRemover()):
        s.addForce(f)
    pos = np.array([[0.0, 0.0, 0.0], [0.15, 0.01, 0.0], [0.2, 0.14, 0.02], [0.31, 0.16, 0.09], [0.36, 0.05, 0.17]])
    return s, pos


# ----------------------------------------------------------------------------
# torch path vs OpenMM
# ----------------------------------------------------------------------------
def test_float64_matches_openmm_per_group_and_forces(case):
    model = TorchForceField.from_system(case.system, dtype=torch.float64)
    terms, forces = torch_energies_forces(model, case.frames, torch.float64)
    exp = case.expected
    for force_name, keys in GROUP_TERMS.items():
        mine = sum(terms[k] for k in keys)
        ref = exp["groups"][force_name]
        tol = np.maximum(F64_ENERGY_ABS, F64_ENERGY_REL * np.abs(ref))
        assert np.all(np.abs(mine - ref) <= tol), (force_name, np.abs(mine - ref).max())
    total = sum(terms[k] for k in TERM_NAMES)
    np.testing.assert_allclose(total, exp["total"], rtol=F64_ENERGY_REL, atol=F64_ENERGY_ABS)
    assert np.abs(forces - exp["forces"]).max() <= F64_FORCE_ABS
    # the forward (total) equals the sum of the terms
    np.testing.assert_allclose(model(torch.tensor(case.frames)).numpy(), total, rtol=1e-12, atol=1e-9)


def test_float32_within_documented_tolerance(case):
    model = TorchForceField.from_system(case.system, dtype=torch.float32)
    terms, forces = torch_energies_forces(model, case.frames, torch.float32)
    exp = case.expected
    scale = sum(np.abs(v) for v in exp["groups"].values()) + 100.0
    for force_name, keys in GROUP_TERMS.items():
        err = np.abs(sum(terms[k] for k in keys) - exp["groups"][force_name])
        assert np.all(err <= F32_ENERGY_ABS + F32_ENERGY_REL * scale), (force_name, err.max())
    err = np.abs(sum(terms[k] for k in TERM_NAMES) - exp["total"])
    assert np.all(err <= F32_ENERGY_ABS + F32_ENERGY_REL * scale), err.max()
    fmax = np.abs(exp["forces"]).max()
    assert np.abs(forces - exp["forces"]).max() <= F32_FORCE_REL * fmax + 0.05


def test_toy_system_every_branch_matches_openmm():
    system, pos = toy_system()
    frames = pos[None] + np.random.default_rng(3).normal(0.0, 0.01, (4, 5, 3))
    frames[0] = pos
    exp = openmm_reference(system, frames)
    model = TorchForceField.from_system(system, dtype=torch.float64)
    terms, forces = torch_energies_forces(model, frames, torch.float64)
    for force_name, keys in GROUP_TERMS.items():
        np.testing.assert_allclose(sum(terms[k] for k in keys), exp["groups"][force_name], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(forces, exp["forces"], atol=1e-7)
    # the geometry really exercises the OBC special cases the docstring names
    r34 = np.linalg.norm(pos[3] - pos[4])
    rho3, s4 = 0.12 - 0.009, (0.30 - 0.009) * 1.6
    rho4, s3 = 0.30 - 0.009, (0.12 - 0.009) * 0.85
    assert rho3 < s4 - r34 and rho4 >= r34 + s3


@pytest.mark.parametrize("keep", [("HarmonicBondForce",), ("NonbondedForce",), ("GBSAOBCForce",),
                                  ("HarmonicAngleForce", "PeriodicTorsionForce", "NonbondedForce")])
def test_systems_with_a_subset_of_forces(keep):
    full, pos = toy_system()
    system = mm.System()
    for i in range(full.getNumParticles()):
        system.addParticle(full.getParticleMass(i))
    for f in full.getForces():
        if type(f).__name__ in keep:
            system.addForce(copy.deepcopy(f))
    frames = pos[None] + np.random.default_rng(5).normal(0.0, 0.01, (3, 5, 3))
    exp = openmm_reference(system, frames)
    model = TorchForceField.from_system(system, dtype=torch.float64)
    terms, forces = torch_energies_forces(model, frames, torch.float64)
    np.testing.assert_allclose(sum(terms.values()), exp["total"], rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(forces, exp["forces"], atol=1e-7)
    for name, keys in GROUP_TERMS.items():
        if name not in keep:
            assert all(np.all(terms[k] == 0) for k in keys)


def test_exception_replaces_normal_pair():
    """An exception's own parameters are used and the combined pair is not added on top."""
    s = mm.System()
    s.addParticle(1.0)
    s.addParticle(1.0)
    nb = mm.NonbondedForce()
    nb.setNonbondedMethod(mm.NonbondedForce.NoCutoff)
    nb.addParticle(1.0, 0.3, 1.0)
    nb.addParticle(-1.0, 0.3, 1.0)
    nb.addException(0, 1, 0.25, 0.2, 0.5)
    s.addForce(nb)
    r = 0.35
    model = TorchForceField.from_system(s, dtype=torch.float64)
    t = model.terms(torch.tensor([[[0.0, 0.0, 0.0], [r, 0.0, 0.0]]], dtype=torch.float64))
    from finegrain.platform.science.energies.terms import ONE_4PI_EPS0

    assert t["coulomb"].item() == pytest.approx(ONE_4PI_EPS0 * 0.25 / r, rel=1e-12)
    assert t["lj"].item() == pytest.approx(4 * 0.5 * ((0.2 / r) ** 12 - (0.2 / r) ** 6), rel=1e-12)
    assert ONE_4PI_EPS0 == pytest.approx(138.935457, rel=1e-8)


def test_gradcheck_toy_and_adp(adp):
    """The closed-form gradients against finite differences: total, and each term on its own."""
    system, pos = toy_system()
    model = TorchForceField.from_system(system, dtype=torch.float64)
    x = torch.tensor(pos[None] + np.random.default_rng(0).normal(0, 0.005, (2, 5, 3)), requires_grad=True)
    assert torch.autograd.gradcheck(model, (x,), eps=1e-6, atol=1e-5, rtol=1e-5)
    per_term = lambda p: torch.stack(list(model.terms(p).values()), -1)  # noqa: E731
    assert torch.autograd.gradcheck(per_term, (x,), eps=1e-6, atol=1e-5, rtol=1e-5)
    model = TorchForceField.from_system(adp.system, dtype=torch.float64)
    x = torch.tensor(adp.frames[:1], requires_grad=True)
    assert torch.autograd.gradcheck(model, (x,), eps=1e-6, atol=1e-4, rtol=1e-5)


def test_rigid_motion_invariance(adp):
    model = TorchForceField.from_system(adp.system, dtype=torch.float64)
    x = torch.tensor(adp.frames)
    q = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    moved = x @ q.T + torch.tensor([1.3, -0.7, 2.9], dtype=torch.float64)
    u0, u1 = model(x), model(moved)
    torch.testing.assert_close(u1, u0, rtol=1e-10, atol=1e-8)
    for k, v in model.terms(moved).items():
        torch.testing.assert_close(v, model.terms(x)[k], rtol=1e-10, atol=1e-8)


def test_degenerate_geometries_keep_gradients_finite():
    """Collinear angles/torsions and coincident bonded atoms: finite U (as OpenMM) and finite forces."""
    system, pos = toy_system()
    model = TorchForceField.from_system(system, dtype=torch.float64)
    collinear = pos.copy()
    collinear[2] = collinear[1] + 0.9 * (collinear[1] - collinear[0])  # angle 0-1-2 = pi, torsion 0-1-2-3 undefined
    x = torch.tensor(collinear[None], requires_grad=True)
    u = model(x)
    (g,) = torch.autograd.grad(u.sum(), x)
    assert torch.isfinite(u).all() and torch.isfinite(g).all()
    t = model.terms(x)
    exp = openmm_reference(system, collinear[None])
    # the angle term at exactly pi matches OpenMM; the torsion is undefined there (both finite)
    np.testing.assert_allclose(t["angle"].detach().numpy(), exp["groups"]["HarmonicAngleForce"], rtol=1e-9)
    from finegrain.platform.science.energies.terms import bond_terms

    atom = (torch.zeros(1, 1, dtype=torch.float64),) * 3  # both atoms of the bond at the origin
    e, grads = bond_terms(atom, atom, torch.tensor([0.1], dtype=torch.float64), torch.tensor([1e5], dtype=torch.float64))
    assert e.item() == pytest.approx(0.5 * 1e5 * 0.01)
    assert all(torch.isfinite(c).all() for g in grads for c in g)


def test_compiled_path_matches_openmm(adp):
    """compile=True (torch.compile of the same closed forms) reproduces OpenMM in float64."""
    model = TorchForceField.from_system(adp.system, dtype=torch.float64, compile=True)
    x = torch.tensor(adp.frames, requires_grad=True)
    u = model(x)
    (g,) = torch.autograd.grad(u.sum(), x)
    exp = adp.expected
    np.testing.assert_allclose(u.detach().numpy(), exp["total"], rtol=F64_ENERGY_REL, atol=F64_ENERGY_ABS)
    assert np.abs(-g.numpy() - exp["forces"]).max() <= F64_FORCE_ABS
    with torch.no_grad():  # the energy-only graph
        terms = {k: v.numpy() for k, v in model.terms(x).items()}
    for force_name, keys in GROUP_TERMS.items():
        ref = exp["groups"][force_name]
        assert np.all(np.abs(sum(terms[k] for k in keys) - ref) <= np.maximum(F64_ENERGY_ABS, F64_ENERGY_REL * np.abs(ref)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(adp):
    cpu = TorchForceField.from_system(adp.system, dtype=torch.float32)
    gpu = TorchForceField.from_system(adp.system, dtype=torch.float32, device="cuda")
    x = torch.tensor(adp.frames, dtype=torch.float32)
    torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-5, atol=1e-2)


# ----------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "openmm"])
def test_bad_positions_raise(adp, backend):
    model = energy_model(adp.system, backend=backend, dtype=torch.float64)
    x = torch.tensor(adp.frames[:4])
    bad = x.clone()
    bad[2, 5, 1] = float("nan")
    with pytest.raises(ValueError, match=r"positions.*frame 2, atom 5"):
        model(bad)
    bad = x.clone()
    bad[3, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"positions.*frame 3"):
        model(bad)
    for shape in [(22, 3), (2, 21, 3), (2, 22, 2)]:
        with pytest.raises(ValueError, match=r"positions.*\[B, N, 3\]"):
            model(torch.zeros(shape, dtype=torch.float64))


# ----------------------------------------------------------------------------
# reference (OpenMM) path
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("n_workers", [1, 2])
def test_openmm_path_equals_plain_loop_and_gradient_is_minus_forces(adp, n_workers):
    model = OpenMMEnergy(adp.system, platform="Reference", n_workers=n_workers)
    x = torch.tensor(adp.frames, requires_grad=True)
    u = model(x)
    e_loop, f_loop = openmm_energies_forces(adp.system, adp.frames)
    np.testing.assert_allclose(u.detach().numpy(), e_loop, rtol=0, atol=1e-9)
    np.testing.assert_allclose(u.detach().numpy(), adp.expected["total"], rtol=0, atol=1e-9)
    w = torch.linspace(0.5, 2.0, len(adp.frames), dtype=torch.float64)
    (grad,) = torch.autograd.grad((u * w).sum(), x)
    np.testing.assert_allclose(grad.numpy(), -f_loop * w.numpy()[:, None, None], rtol=0, atol=1e-9)
    e, f = model.energies_and_forces(x)
    np.testing.assert_allclose(f.numpy(), f_loop, atol=1e-9)


def test_openmm_auto_platform_picks_reference_for_small_systems(adp):
    model = OpenMMEnergy(adp.system)
    assert model.pool.platform == "Reference"
    assert model(torch.tensor(adp.frames[:2])).shape == (2,)


def _with_external_force(system):
    s = copy.deepcopy(system)
    ext = mm.CustomExternalForce("kx*(x-0.5)^2 + 3*y*z")
    ext.addPerParticleParameter("kx")
    for i in range(0, s.getNumParticles(), 3):
        ext.addParticle(i, [20.0 + i])
    s.addForce(ext)
    return s


def test_unsupported_force_raises_or_falls_back(adp):
    system = _with_external_force(adp.system)
    with pytest.raises(UnsupportedForceError, match="CustomExternalForce"):
        TorchForceField.from_system(system)
    with pytest.raises(ValueError, match="CustomExternalForce"):
        energy_model(system, backend="torch")
    model = energy_model(system, backend="torch", dtype=torch.float64, fallback=True)
    assert model.system is system
    exp = openmm_reference(system, adp.frames)
    terms, forces = torch_energies_forces(model, adp.frames, torch.float64)
    assert "other" in terms and np.abs(terms["other"]).max() > 1.0
    np.testing.assert_allclose(sum(terms.values()), exp["total"], rtol=1e-8, atol=1e-6)
    np.testing.assert_allclose(terms["other"], exp["groups"]["CustomExternalForce"], rtol=1e-10, atol=1e-8)
    assert np.abs(forces - exp["forces"]).max() <= F64_FORCE_ABS
    with pytest.raises(ValueError, match="cannot be exported"):
        model.save_parameters("unused.npz")


# ----------------------------------------------------------------------------
# entry point, parameters file, training safety
# ----------------------------------------------------------------------------
def test_energy_model_entry_point(adp):
    m = energy_model(get_system("adp"), dtype=torch.float64)
    assert isinstance(m, TorchForceField) and m.system.getNumParticles() == 22
    x = torch.tensor(adp.frames[:3])
    np.testing.assert_allclose(m(x).numpy(), adp.expected["total"][:3], rtol=1e-9, atol=1e-6)
    assert m(x).dtype == torch.float64
    assert energy_model(adp.system).dtype == torch.float32
    o = energy_model(adp.system, backend="openmm")
    assert isinstance(o, OpenMMEnergy) and o.system is adp.system
    np.testing.assert_allclose(o(x).numpy(), adp.expected["total"][:3], rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="backend"):
        energy_model(adp.system, backend="jax")
    with pytest.raises(ValueError, match="system: expected"):
        energy_model(42)
    # constraints add no energy: a System with HBonds constraints gives the same U(x)
    hb = energy_model(adp.ref.create_system(constraints="HBonds"), dtype=torch.float64)
    assert hb.system.getNumConstraints() > 0
    np.testing.assert_allclose(hb(x).numpy(), adp.expected["total"][:3], rtol=1e-9, atol=1e-6)
    # chunked energies_and_forces == one batch
    e, f = m.energies_and_forces(torch.tensor(adp.frames), chunk_size=5)
    assert np.abs(f.numpy() - adp.expected["forces"]).max() <= F64_FORCE_ABS
    np.testing.assert_allclose(e.numpy(), adp.expected["total"], rtol=1e-9, atol=1e-6)


def test_parameters_file_runs_without_openmm(adp, tmp_path):
    model = TorchForceField.from_system(adp.system, dtype=torch.float64)
    path = model.save_parameters(tmp_path / "adp_ff.npz")
    np.save(tmp_path / "frames.npy", adp.frames)
    again = TorchForceField.from_parameters(path, dtype=torch.float64)
    assert again.system is None
    torch.testing.assert_close(again(torch.tensor(adp.frames)), model(torch.tensor(adp.frames)))
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["openmm"] = None  # any "import openmm" now fails
        import numpy as np, torch
        from finegrain.platform.science.energies import TorchForceField
        m = TorchForceField.from_parameters({str(path)!r}, dtype=torch.float64)
        u = m(torch.from_numpy(np.load({str(tmp_path / "frames.npy")!r})))
        assert not any(k == "openmm" or k.startswith("openmm.") for k, v in sys.modules.items() if v is not None)
        print(repr(u.tolist()))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(eval(out.stdout.strip()), adp.expected["total"], rtol=1e-9, atol=1e-6)


def test_parameters_file_rejects_bad_content(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, n_atoms=np.array(3))
    with pytest.raises(ValueError, match="missing keys"):
        TorchForceField.from_parameters(bad)
    with pytest.raises(ValueError, match="cannot read"):
        TorchForceField.from_parameters(tmp_path / "nope.npz")


def test_soft_cap_values():
    u = torch.tensor([-50.0, 10.0, 100.0, 1e6], dtype=torch.float64, requires_grad=True)
    capped = soft_cap(u, 100.0)
    expected = [-50.0, 10.0, 100.0, 100.0 + math.log1p(1e6 - 100.0)]
    np.testing.assert_allclose(capped.detach().numpy(), expected, rtol=1e-12)
    (g,) = torch.autograd.grad(capped.sum(), u)
    np.testing.assert_allclose(g.numpy(), [1.0, 1.0, 1.0, 1.0 / (1.0 + 1e6 - 100.0)], rtol=1e-12)
    np.testing.assert_allclose(soft_cap(u, 100.0, "clamp").detach().numpy(), [-50.0, 10.0, 100.0, 100.0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_u_max_keeps_overlapping_atoms_finite(adp, dtype):
    x = torch.tensor(adp.frames[:3], dtype=dtype)
    x[1, 0] = x[1, 20]  # two far-apart (in the topology) atoms exactly on top of each other
    x[2, 1] = x[2, 19] + torch.tensor([3e-3, 0.0, 0.0], dtype=dtype)  # ... and 0.003 nm apart
    exact = TorchForceField.from_system(adp.system, dtype=dtype)
    with torch.no_grad():
        u_exact = exact(x)
    assert not torch.isfinite(u_exact[1]) and u_exact[2] > 1e12
    for cap in ("log", "clamp"):
        safe = TorchForceField.from_system(adp.system, dtype=dtype, u_max=1e5, cap=cap)
        xg = x.clone().requires_grad_(True)
        u = safe(xg)
        (g,) = torch.autograd.grad(u.sum(), xg)
        assert torch.isfinite(u).all() and torch.isfinite(g).all()
        assert u[0].item() == pytest.approx(u_exact[0].item(), rel=1e-6)  # normal frame untouched
        for b in (1, 2):
            assert 1e5 <= u[b].item() <= 1e5 + math.log1p(1e30)
        if cap == "log":
            # -grad pushes the close pair apart
            sep = (x[2, 1] - x[2, 19]).double()
            assert torch.dot(sep, -(g[2, 1] - g[2, 19]).double()) > 0
        else:
            assert g[1:].abs().max() == 0  # the paper's hard clamp: no gradient above U_max
    # the OpenMM backend applies the same cap
    u0 = float(adp.expected["total"][0])
    o = energy_model(adp.system, backend="openmm", u_max=u0 - 10.0)
    assert o(torch.tensor(adp.frames[:1])).item() == pytest.approx(u0 - 10.0 + math.log1p(10.0), rel=1e-9)


def test_gbneck2_goes_through_the_openmm_fallback():
    """``chignolin`` (ff14SB + GB-neck2): the torch force field refuses the CustomGBForce by name, and with
    ``fallback=True`` (what training, evaluation and refinement use) the total equals OpenMM's."""
    from finegrain.datasets.systems import get_system
    from finegrain.platform.science.energies import energy_model
    from finegrain.platform.science.energies.parameters import UnsupportedForceError

    ref = get_system("chignolin")
    with pytest.raises(UnsupportedForceError, match="CustomGBForce"):
        energy_model(ref, backend="torch", dtype=torch.float64)
    model = energy_model(ref, backend="torch", dtype=torch.float64, fallback=True)
    x = ref.positions_nm[None] + np.random.default_rng(3).normal(0.0, 0.002, (3, ref.n_atoms, 3))
    expected = openmm_reference(ref.create_system(constraints=None), x)
    e_ref, f_ref = expected["total"], expected["forces"]
    pos = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    e = model(pos)
    (grad,) = torch.autograd.grad(e.sum(), pos)
    np.testing.assert_allclose(e.detach().numpy(), e_ref, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(-grad.numpy(), f_ref, rtol=1e-5, atol=1e-2)
