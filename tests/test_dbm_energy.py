"""Tests for finegrain.trainables.dbm.energy (the DeepBackmap local-energy prior) against OpenMM.

Identity checked: moving only a bead's atoms from x to x' changes every OpenMM
force group (bonds, angles, torsions, Lennard-Jones; charges zeroed) by exactly
E_local(x') - E_local(x), when ``env`` holds every other atom within the cutoff;
and the bead atoms' forces from OpenMM are -dE_local/dx (every term acting on a
bead atom touches the bead).  Reference: OpenMM's Reference platform (double
precision), float64 tensors; tolerance |d| <= 1e-5 kJ/mol + 1e-6 |value|.

Cumene (CHARMM36 as OpenMM ships it) keeps its Lennard-Jones in a tabulated
CustomNonbondedForce (acoef/bcoef per atom type) plus a CustomBondForce for the
1-4 pairs; the NonbondedForce holds only charges.  The test reads per-type
sigma/epsilon from the tables' diagonals (and checks the off-diagonal entries are
Lorentz-Berthelot), evaluates that CustomNonbondedForce with a plain periodic
cutoff (no switch, no long-range correction) and drops the Coulomb-only
NonbondedForce.
"""

from __future__ import annotations

import numpy as np
import openmm as mm
import openmm.app as app
import openmm.unit as u
import pytest
import torch

from finegrain.datasets.systems import get_system
from finegrain.platform.science.energies.parameters import extract_parameters
from finegrain.platform.science.errors import InputError
from finegrain.trainables.dbm.energy import LocalEnergy, pair_parameters

KJ = u.kilojoule_per_mole
ABS, REL = 1e-5, 1e-6


def _close(a, b, abs_tol=ABS, rel=REL) -> None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.all(np.abs(a - b) <= abs_tol + rel * np.abs(b)), (a, b, np.abs(a - b).max())


class _Reference:
    """An OpenMM Reference context with named groups of force groups."""

    def __init__(self, system, groups: dict[str, set[int]]):
        self.groups = groups
        self.ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))

    def energies(self, xyz: np.ndarray) -> dict[str, float]:
        self.ctx.setPositions(xyz)
        return {k: self.ctx.getState(getEnergy=True, groups=g).getPotentialEnergy().value_in_unit(KJ)
                for k, g in self.groups.items()}

    def forces(self, xyz: np.ndarray) -> np.ndarray:
        self.ctx.setPositions(xyz)
        f = self.ctx.getState(getForces=True).getForces(asNumpy=True)
        return np.asarray(f.value_in_unit(KJ / u.nanometer))


def _pad_rows(rows: list, fill: int = -1) -> np.ndarray:
    out = np.full((len(rows), max(len(r) for r in rows)), fill, dtype=np.int64)
    for k, r in enumerate(rows):
        out[k, : len(r)] = r
    return out


def _displace(xyz: np.ndarray, atoms: np.ndarray, rng) -> np.ndarray:
    """xyz with ``atoms`` moved by random vectors of length 0.01-0.03 nm."""
    d = rng.normal(size=(len(atoms), 3))
    d *= rng.uniform(0.01, 0.03, size=(len(atoms), 1)) / np.linalg.norm(d, axis=1, keepdims=True)
    out = xyz.copy()
    out[atoms] += d
    return out


# ----------------------------------------------------------------------------
# alanine dipeptide in vacuum (NoCutoff)
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adp():
    ref = get_system("adp")
    system = app.ForceField("amber99sbildn.xml").createSystem(ref.topology, nonbondedMethod=app.NoCutoff,
                                                                constraints=None)
    groups = {}
    for gi, force in enumerate(system.getForces()):
        force.setForceGroup(gi)
        name = type(force).__name__
        groups[{"HarmonicBondForce": "bond", "HarmonicAngleForce": "angle", "PeriodicTorsionForce": "torsion",
                "NonbondedForce": "lj"}.get(name, name)] = {gi}
        if name == "NonbondedForce":
            for i in range(force.getNumParticles()):
                _, s, e = force.getParticleParameters(i)
                force.setParticleParameters(i, 0.0, s, e)
            for k in range(force.getNumExceptions()):
                i, j, _, s, e = force.getExceptionParameters(k)
                force.setExceptionParameters(k, i, j, 0.0, s, e)
    params, _ = extract_parameters(system)
    # beads: each heavy atom with its hydrogens (a partition), plus one bead per residue
    heavy = {a.index: [a.index] for a in ref.topology.atoms() if a.element.symbol != "H"}
    for a, b in ref.topology.bonds():
        if a.element.symbol == "H":
            heavy[b.index].append(a.index)
        elif b.element.symbol == "H":
            heavy[a.index].append(b.index)
    rows = [sorted(v) for v in heavy.values()] + [[a.index for a in r.atoms()] for r in ref.topology.residues()]
    assert sorted(sum(rows[: len(heavy)], [])) == list(range(ref.n_atoms))
    beads = _pad_rows(rows)
    return dict(ref=ref, system=system, params=params, beads=beads, omm=_Reference(system, groups),
                energy=LocalEnergy(params, beads, lj_cutoff_nm=10.0), xyz=ref.positions_nm.astype(np.float64))


def _env_all(beads: np.ndarray, b: int, n: int) -> np.ndarray:
    return np.setdiff1d(np.arange(n), beads[b][beads[b] >= 0])


def test_adp_energy_differences_match_openmm(adp):
    rng = np.random.default_rng(0)
    n, beads, le = adp["ref"].n_atoms, adp["beads"], adp["energy"]
    e0 = adp["omm"].energies(adp["xyz"])
    for b in range(len(beads)):
        atoms = beads[b][beads[b] >= 0]
        frames = [adp["xyz"]] + [_displace(adp["xyz"], atoms, rng) for _ in range(2)]
        env = torch.as_tensor(np.tile(_env_all(beads, b, n), (3, 1)))
        out = le(torch.full((3,), b), torch.as_tensor(np.stack(frames)), env, None)
        for f in (1, 2):
            e1 = adp["omm"].energies(frames[f])
            for t in LocalEnergy.TERMS:
                _close(float(out[t][f] - out[t][0]), e1[t] - e0[t])


def test_adp_forces_on_bead_atoms_match_openmm(adp):
    rng = np.random.default_rng(1)
    n, beads, le = adp["ref"].n_atoms, adp["beads"], adp["energy"]
    for b in range(len(beads)):
        atoms = beads[b][beads[b] >= 0]
        x = _displace(adp["xyz"], atoms, rng)
        xyz = torch.as_tensor(x[None]).requires_grad_(True)
        u_loc = le.total(torch.tensor([b]), xyz, torch.as_tensor(_env_all(beads, b, n)[None]))
        (grad,) = torch.autograd.grad(u_loc.sum(), xyz)
        ref = adp["omm"].forces(x)[atoms]
        _close(-grad[0, atoms].numpy(), ref, abs_tol=1e-5, rel=1e-6)


def test_padded_batch_equals_one_by_one_and_gradients_finite(adp):
    n, beads, le = adp["ref"].n_atoms, adp["beads"], adp["energy"]
    rng = np.random.default_rng(2)
    picks = [0, 3, len(beads) - 1, 5]
    envs = [rng.permutation(_env_all(beads, b, n))[: 4 + 3 * k] for k, b in enumerate(picks)]
    frames = np.stack([_displace(adp["xyz"], beads[b][beads[b] >= 0], rng) for b in picks])
    box = torch.tensor([[3.0, 3.1, 3.2]] * len(picks), dtype=torch.float64)
    for bx in (None, box):
        xyz = torch.as_tensor(frames).requires_grad_(True)
        batch = le(torch.tensor(picks), xyz, torch.as_tensor(_pad_rows(envs)), bx)
        (g,) = torch.autograd.grad(sum(batch.values()).sum(), xyz)
        assert torch.isfinite(g).all()
        for k, b in enumerate(picks):
            one = le(torch.tensor([b]), torch.as_tensor(frames[k : k + 1]), torch.as_tensor(envs[k][None]),
                     None if bx is None else bx[k : k + 1])
            for t in LocalEnergy.TERMS:
                assert torch.allclose(batch[t][k], one[t][0], rtol=1e-12, atol=1e-12)
    # env atoms of the bead itself are ignored; an all-padding env adds no LJ
    b, atoms = 0, beads[0][beads[0] >= 0]
    x = torch.as_tensor(frames[:1])
    full = le(torch.tensor([b]), x, torch.as_tensor(np.arange(n)[None]))
    outside = le(torch.tensor([b]), x, torch.as_tensor(_env_all(beads, b, n)[None]))
    none = le(torch.tensor([b]), x, torch.full((1, 5), -1))
    assert torch.allclose(full["lj"], outside["lj"], rtol=1e-14, atol=0)
    assert len(atoms) and torch.isfinite(none["lj"]).all()


def test_gradcheck_with_box(adp):
    le = LocalEnergy(adp["params"], adp["beads"], lj_cutoff_nm=1.2)
    n = adp["ref"].n_atoms
    env = torch.as_tensor(_pad_rows([_env_all(adp["beads"], 1, n), _env_all(adp["beads"], 2, n)[:5]]))
    box = torch.tensor([[2.6, 2.7, 2.8], [2.5, 2.5, 2.5]], dtype=torch.float64)
    xyz = torch.as_tensor(np.stack([adp["xyz"], adp["xyz"] + 0.01])).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: le.total(torch.tensor([1, 2]), x, env, box), (xyz,))


def test_module_imports_only_torch_numpy_and_platform_science():
    import ast
    from pathlib import Path

    import finegrain.trainables.dbm.energy as module

    tree = ast.parse(Path(module.__file__).read_text())
    names = [a.name for node in tree.body if isinstance(node, ast.Import) for a in node.names]
    names += [node.module for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert all(m in ("__future__", "numpy", "torch") or m.startswith("finegrain.platform.science") for m in names)


def test_float32_and_weights(adp):
    le, n = adp["energy"], adp["ref"].n_atoms
    assert le.to("cpu") is le
    env = torch.as_tensor(_env_all(adp["beads"], 4, n)[None])
    x64 = torch.as_tensor(adp["xyz"][None])
    e64, e32 = le(torch.tensor([4]), x64, env), le(torch.tensor([4]), x64.float(), env)
    assert all(e32[t].dtype == torch.float32 for t in LocalEnergy.TERMS)
    for t in LocalEnergy.TERMS:
        assert abs(float(e32[t][0]) - float(e64[t][0])) <= 1e-3 + 1e-5 * abs(float(e64[t][0]))
    w = {"bond": 0.5, "angle": 2.0, "torsion": 0.0, "lj": 3.0}
    total = le.total(torch.tensor([4]), x64, env, weights=w)
    assert torch.allclose(total, sum(w[t] * e64[t] for t in LocalEnergy.TERMS), rtol=1e-14)


def test_pair_parameters(adp):
    p = adp["params"]
    i, j = p["exc_idx"][:, 0], p["exc_idx"][:, 1]
    s, e = pair_parameters(p, j, i)  # either order finds the exception
    assert np.array_equal(s, p["exc_sigma"]) and np.array_equal(e, p["exc_epsilon"])
    s, e = pair_parameters(p, np.array([0]), np.array([21]))
    assert (0, 21) not in set(map(tuple, p["exc_idx"])) and (21, 0) not in set(map(tuple, p["exc_idx"]))
    _close(s, 0.5 * (p["nb_sigma"][0] + p["nb_sigma"][21]), 0, 1e-14)
    _close(e, np.sqrt(p["nb_epsilon"][0] * p["nb_epsilon"][21]), 0, 1e-14)


def test_bad_input_raises_input_error(adp):
    p, beads, le = adp["params"], adp["beads"], adp["energy"]
    x, env = torch.as_tensor(adp["xyz"][None]), torch.tensor([[5, 6]])
    with pytest.raises(InputError, match="params"):
        LocalEnergy({k: v for k, v in p.items() if k != "exc_sigma"}, beads)
    with pytest.raises(InputError, match="bead_atoms"):
        LocalEnergy(p, beads[0])
    with pytest.raises(InputError, match="bead_atoms"):
        LocalEnergy(p, np.array([[0, 0]]))
    with pytest.raises(InputError, match="bead_atoms"):
        LocalEnergy(p, np.array([[0, 99]]))
    with pytest.raises(InputError, match="bead"):
        le(torch.tensor([len(beads)]), x, env)
    with pytest.raises(InputError, match="xyz"):
        le(torch.tensor([0]), x[:, :5], env)
    with pytest.raises(InputError, match="env"):
        le(torch.tensor([0]), x, torch.tensor([[99]]))
    with pytest.raises(InputError, match="box"):
        le(torch.tensor([0]), x, env, torch.ones(1, 4))
    with pytest.raises(InputError, match="weights"):
        le.total(torch.tensor([0]), x, env, weights={"coulomb": 1.0})


# ----------------------------------------------------------------------------
# liquid cumene (periodic, plain LJ cutoff 1.0 nm)
# ----------------------------------------------------------------------------
def _tabulated_lj(force) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom (sigma, epsilon) from a CustomNonbondedForce acoef/r^12 - bcoef/r^6 over atom types."""
    tables = {}
    for k in range(force.getNumTabulatedFunctions()):
        nx, ny, vals = force.getTabulatedFunction(k).getFunctionParameters()
        tables[force.getTabulatedFunctionName(k)] = np.asarray(vals).reshape(ny, nx)
    a, b = tables["acoef"], tables["bcoef"]
    da, db = np.diag(a), np.diag(b)
    sig = np.where(db > 0, (da / np.where(db > 0, db, 1)) ** (1 / 6), 0.0)
    eps = np.where(da > 0, db * db / (4 * np.where(da > 0, da, 1)), 0.0)
    s2, e2 = 0.5 * (sig[:, None] + sig[None]), np.sqrt(eps[:, None] * eps[None])
    np.testing.assert_allclose(a, 4 * e2 * s2**12, rtol=1e-9)  # no NBFIX: Lorentz-Berthelot holds
    np.testing.assert_allclose(b, 4 * e2 * s2**6, rtol=1e-9)
    types = np.array([int(force.getParticleParameters(i)[0]) for i in range(force.getNumParticles())])
    return sig[types], eps[types]


@pytest.fixture(scope="module")
def cumene():
    ref = get_system("cumene")
    system = ref.create_system(constraints=None)
    params, _ = extract_parameters(system)  # bonded terms (the periodic nonbonded forces are reported, skipped)
    exc: dict[tuple[int, int], tuple[float, float]] = {}
    names = {"HarmonicBondForce": "bond", "HarmonicAngleForce": "angle", "PeriodicTorsionForce": "torsion",
             "CustomNonbondedForce": "lj", "CustomBondForce": "lj14"}
    for fi in reversed(range(system.getNumForces())):
        force = system.getForce(fi)
        name = type(force).__name__
        if name == "CustomTorsionForce" or name == "CMAPTorsionForce":
            assert force.getNumTorsions() == 0  # cumene has no impropers/CMAP here
        if name not in names:
            system.removeForce(fi)  # NonbondedForce: charges only (LJ epsilon 0); CMMotionRemover: no energy
    groups = {}
    for gi, force in enumerate(system.getForces()):
        force.setForceGroup(gi)
        name = type(force).__name__
        groups.setdefault(names[name].replace("lj14", "lj"), set()).add(gi)
        if name == "CustomNonbondedForce":
            force.setNonbondedMethod(mm.CustomNonbondedForce.CutoffPeriodic)
            force.setCutoffDistance(1.0)
            force.setUseSwitchingFunction(False)
            force.setUseLongRangeCorrection(False)
            sigma, epsilon = _tabulated_lj(force)
            for k in range(force.getNumExclusions()):
                i, j = force.getExclusionParticles(k)
                exc[(min(i, j), max(i, j))] = (1.0, 0.0)
        if name == "CustomBondForce":
            assert force.getEnergyFunction().replace(" ", "") == "4*epsilon*((sigma/r)^12-(sigma/r)^6)"
            for k in range(force.getNumBonds()):
                i, j, (s, e) = force.getBondParameters(k)
                key = (min(i, j), max(i, j))
                assert key not in exc or exc[key][1] == 0.0  # each 1-4 pair once
                exc[key] = (s, e)
    keys = sorted(exc)
    params.update(nb_sigma=sigma, nb_epsilon=epsilon, nb_charge=np.zeros_like(sigma),
                  exc_idx=np.array(keys, dtype=np.int64), exc_sigma=np.array([exc[k][0] for k in keys]),
                  exc_epsilon=np.array([exc[k][1] for k in keys]), exc_charge_prod=np.zeros(len(keys)))
    mapping = ref.mapping("three_bead").matrix
    beads = _pad_rows([np.flatnonzero(row > 0) for row in mapping])
    box = np.diag(ref.box_nm).copy()
    return dict(ref=ref, params=params, beads=beads, box=box, omm=_Reference(system, groups),
                energy=LocalEnergy(params, beads, lj_cutoff_nm=1.0), xyz=ref.positions_nm.astype(np.float64))


def _env_within(xyz: np.ndarray, atoms: np.ndarray, box: np.ndarray, r: float) -> np.ndarray:
    d = xyz[None, :, :] - xyz[atoms][:, None, :]
    d -= box * np.round(d / box)
    near = (np.linalg.norm(d, axis=-1) < r).any(0)
    near[atoms] = False
    return np.flatnonzero(near)


def test_cumene_periodic_energy_differences_match_openmm(cumene):
    rng = np.random.default_rng(3)
    xyz, box, beads, le = cumene["xyz"], cumene["box"], cumene["beads"], cumene["energy"]
    n_mol = len(beads) // 3
    # molecule 0 and a molecule sticking out of the box (its bonded terms and LJ need the minimum image)
    outside = [m for m in range(n_mol) if ((xyz[21 * m : 21 * m + 21] < 0) | (xyz[21 * m : 21 * m + 21] > box)).any()]
    picks = [0, 1, 2, 3 * outside[0], 3 * outside[0] + 2]
    e0 = cumene["omm"].energies(xyz)
    for b in picks:
        atoms = beads[b][beads[b] >= 0]
        x1 = _displace(xyz, atoms, rng)
        env = torch.as_tensor(np.tile(_env_within(xyz, atoms, box, 1.2), (2, 1)))
        frames = torch.as_tensor(np.stack([xyz, x1]))
        out = le(torch.full((2,), b), frames, env, torch.as_tensor(np.tile(box, (2, 1))))
        e1 = cumene["omm"].energies(x1)
        for t in LocalEnergy.TERMS:
            _close(float(out[t][1] - out[t][0]), e1[t] - e0[t])
        # wrapping single atoms into the box changes nothing (minimum image everywhere)
        wrapped = frames.clone()
        wrapped[:, atoms] -= torch.as_tensor(box) * torch.floor(wrapped[:, atoms] / torch.as_tensor(box))
        again = le(torch.full((2,), b), wrapped, env, torch.as_tensor(np.tile(box, (2, 1))))
        for t in LocalEnergy.TERMS:
            assert torch.allclose(again[t], out[t], rtol=1e-10, atol=1e-8)


def test_prior_parameters_read_charmms_tabulated_lennard_jones(cumene):
    """forcefield.prior_parameters (what training uses) gives the same LJ and 1-4 pairs as this test's own
    reading of the OpenMM system, which OpenMM's energies validate above."""
    from finegrain.trainables.dbm.forcefield import prior_parameters

    got = prior_parameters(cumene["ref"].create_system(constraints=None))
    want = cumene["params"]
    for key in ("nb_sigma", "nb_epsilon", "exc_idx", "exc_sigma", "exc_epsilon", "bond_idx", "angle_idx"):
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), rtol=1e-12, err_msg=key)
    assert not np.any(got["nb_charge"]) and not np.any(got["exc_charge_prod"])
