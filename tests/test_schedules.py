"""lambda (eq. 5) and beta (eq. 6) schedules of Shmilovich et al. (2022) against values computed by hand.

Parameters are Table 1's: lambda: t_lambda0 = 2e5 (ADP), n_lambda = 1.25e6,
lambda_initial = 1e-6, lambda_final = 1; beta (ADP): M = 4, R = 25000,
k = 0.0025, tau = 10000.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from finegrain.trainables.cvae.config import CVAEConfig
from finegrain.trainables.cvae.schedules import beta_schedule, compress_schedule, constant_schedule, lambda_schedule

T0, NL, LI, LF = 200_000, 1_250_000, 1e-6, 1.0
M, R, K, TAU = 4, 25_000, 0.0025, 10_000.0


def lam(t):
    return lambda_schedule(t, T0, NL, LI, LF)


def beta(t):
    return beta_schedule(t, M, R, K, TAU)


@pytest.mark.parametrize("step,expected", [
    (0, 0.0),
    (T0 - 1, 0.0),
    (T0, 1e-6),                                   # ramp starts at lambda_initial
    (T0 + NL // 2, 1e-3),                         # geometric midpoint sqrt(1e-6 * 1)
    (T0 + NL // 5, 1e-6 * 1e6 ** 0.2),            # = 10^-4.8
    (T0 + NL - 1, 1e-6 * 1e6 ** ((NL - 1) / NL)),
    (T0 + NL, 1.0),
    (10 ** 8, 1.0),
])
def test_lambda_eq5(step, expected):
    value = lam(step)
    assert isinstance(value, float)
    assert value == pytest.approx(expected, rel=1e-12, abs=0)


def test_lambda_midpoint_is_exactly_1e_minus_3():
    assert lam(T0 + NL // 2) == pytest.approx(10 ** -3, rel=1e-12)
    assert lam(T0 + NL // 5) == pytest.approx(10 ** -4.8, rel=1e-12)


def test_lambda_on_numpy_arrays_equals_scalar_calls():
    steps = np.array([[0, T0 - 1, T0], [T0 + 12345, T0 + NL, T0 + NL + 7]])
    out = lam(steps)
    assert isinstance(out, np.ndarray) and out.shape == steps.shape and out.dtype == np.float64
    np.testing.assert_array_equal(out, np.vectorize(lambda s: lam(int(s)))(steps))
    # monotone on the ramp
    ramp = lam(np.arange(T0, T0 + NL + 1, 1000))
    assert np.all(np.diff(ramp) > 0)


def hand_beta(t: int) -> float:
    return 1.0 / (1.0 + math.exp(-K * ((t % R) - TAU))) if t < M * R else 1.0


@pytest.mark.parametrize("step,expected", [
    (0, 1 / (1 + math.exp(25.0))),                 # k tau = 25
    (int(TAU), 0.5),                                # sigmoid centre
    (R - 1, 1 / (1 + math.exp(-K * (R - 1 - TAU)))),
    (R, 1 / (1 + math.exp(25.0))),                  # cycle boundary: back to the start
    (R + int(TAU), 0.5),
    (3 * R + 4000, 1 / (1 + math.exp(-K * (4000 - TAU)))),
    (M * R - 1, 1 / (1 + math.exp(-K * (R - 1 - TAU)))),
    (M * R, 1.0),                                   # after M cycles: 1
    (M * R + int(TAU) // 2, 1.0),
])
def test_beta_eq6(step, expected):
    value = beta(step)
    assert isinstance(value, float)
    assert value == pytest.approx(expected, rel=1e-12, abs=1e-300)
    assert value == pytest.approx(hand_beta(step), rel=1e-12, abs=1e-300)


def test_beta_arrays_and_large_arguments():
    steps = np.arange(0, M * R + 3 * R, 997)
    np.testing.assert_allclose(beta(steps), [hand_beta(int(s)) for s in steps], rtol=1e-12, atol=0)
    # steep sigmoid: no overflow, exact limits (underflow to 0 is the right answer)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        assert beta_schedule(0, 1, 10_000, 1.0, 5000.0) == 0.0
        assert beta_schedule(9_999, 1, 10_000, 1.0, 0.0) == 1.0


def test_constant_schedule():
    assert constant_schedule(123) == 1.0
    np.testing.assert_array_equal(constant_schedule(np.arange(4), 0.25), np.full(4, 0.25))


def test_config_dispatch_adp_and_chignolin():
    adp, cln = CVAEConfig.adp(), CVAEConfig.chignolin()
    for t in (0, 10_000, 25_000, 99_999, 100_000, 750_000):
        assert adp.beta_at(t) == pytest.approx(hand_beta(t), rel=1e-12, abs=1e-300)
        assert cln.beta_at(t) == 1.0
    assert adp.lambda_at(T0) == pytest.approx(1e-6)
    assert cln.lambda_at(749_999) == 0.0 and cln.lambda_at(750_000) == pytest.approx(1e-6)
    assert cln.lambda_at(750_000 + NL) == 1.0
    assert adp.clip_at(T0 - 1) is None and adp.clip_at(T0) == 0.1


# ----------------------------------------------------------------------------- runs shorter than Table 1
ADP_STEPS = 14_800_000  # Table 1: ADP training steps


def test_short_run_compresses_breakpoints_to_the_papers_fractions():
    # 148k steps = 1 % of Table 1: every breakpoint / 100 (exact), k * 100
    short = CVAEConfig.adp(max_steps=148_000)
    assert tuple(short.schedule) == (2_000, 12_500, 250, 100.0, 0.25)
    # 600 steps (a demo run): t0 = ceil(600 * 2e5 / 14.8e6 = 8.108) = 9, n = round(50.68) = 51,
    # R = round(1.0135) = 1, tau = 1e4 / 25000 = 0.4 steps, k = 0.0025 * 25000 = 62.5 / step
    assert tuple(CVAEConfig.adp(max_steps=600).schedule) == (9, 51, 1, 0.4, 62.5)
    # warm-up and ramp are the paper's fractions of the run (1.35 %, 8.45 %)
    assert short.schedule.t_lambda0 / 148_000 == pytest.approx(T0 / ADP_STEPS)
    assert short.schedule.n_lambda / 148_000 == pytest.approx(NL / ADP_STEPS)
    # eq. 5 / eq. 6 by hand with the compressed numbers
    assert short.lambda_at(1_999) == 0.0 and short.lambda_at(2_000) == 1e-6
    assert short.lambda_at(2_000 + 6_250) == pytest.approx(1e-3, rel=1e-12)
    assert short.lambda_at(14_499) == pytest.approx(1e-6 * 1e6 ** (12_499 / 12_500), rel=1e-12)
    assert short.lambda_at(14_500) == 1.0
    assert short.clip_at(1_999) is None and short.clip_at(2_000) == 0.1
    for t in (0, 100, 249, 250, 777, 999):
        assert short.beta_at(t) == pytest.approx(1 / (1 + math.exp(-0.25 * ((t % 250) - 100))), rel=1e-12)
    assert short.beta_at(1_000) == 1.0  # M R = 4 * 250
    # chignolin (9.4M steps): 10 % of the run -> t0 = 75000, n = 125000; beta stays constant
    cln = CVAEConfig.chignolin(max_steps=940_000)
    assert (cln.schedule.t_lambda0, cln.schedule.n_lambda) == (75_000, 125_000)
    assert cln.lambda_at(74_999) == 0.0 and cln.lambda_at(75_000) == 1e-6 and cln.lambda_at(200_000) == 1.0
    assert cln.beta_at(3) == 1.0


def test_full_length_and_absolute_schedules_are_unchanged():
    for cfg in (CVAEConfig.adp(), CVAEConfig.adp(max_steps=20_000_000)):
        assert tuple(cfg.schedule) == (T0, NL, R, TAU, K)
        assert cfg.lambda_at(T0 - 1) == 0.0 and cfg.lambda_at(T0) == 1e-6 and cfg.lambda_at(T0 + NL) == 1.0
        assert cfg.beta_at(12_345) == beta(12_345) and cfg.beta_at(M * R) == 1.0
    cln = CVAEConfig.chignolin()
    assert (cln.schedule.t_lambda0, cln.schedule.n_lambda) == (750_000, NL)
    # the smoke preset's breakpoints are absolute (schedule_steps=None) at any run length
    for steps in (6, 50, 600):
        assert tuple(CVAEConfig.smoke(max_steps=steps).schedule) == (10, 20, 10, 5.0, 0.5)
    # schedule_steps <= max_steps: never rescaled
    assert tuple(CVAEConfig.adp(max_steps=600, schedule_steps=600).schedule) == (T0, NL, R, TAU, K)
    # exact integers (no float rounding): 7/14.8M of 2e5 = 0.0946 -> ceil 1; n, R floor at 1
    assert tuple(compress_schedule(7, ADP_STEPS, t_lambda0=T0, n_lambda=NL, cycle_length=R, tau=TAU, k=K))[:3] == (
        1, 1, 1)
    assert compress_schedule(5, 10, t_lambda0=0, n_lambda=3, cycle_length=5, tau=1.0, k=1.0).n_lambda == 2  # 1.5 up
    with pytest.raises(ValueError, match="schedule_steps"):
        CVAEConfig.adp(schedule_steps=0)
    with pytest.raises(ValueError, match="reference_steps"):
        compress_schedule(5, 0, t_lambda0=0, n_lambda=3, cycle_length=5, tau=1.0, k=1.0)


@pytest.mark.parametrize("call,arg", [
    (lambda: lam(-1), "step"),
    (lambda: lam(1.5), "step"),
    (lambda: lam(True), "step"),
    (lambda: lam(np.array(["a"])), "step"),
    (lambda: lambda_schedule(0, -1, NL, LI, LF), "t_lambda0"),
    (lambda: lambda_schedule(0, T0, 0, LI, LF), "n_lambda"),
    (lambda: lambda_schedule(0, T0, NL, 0.0, LF), "lambda_initial"),
    (lambda: lambda_schedule(0, T0, NL, LI, float("nan")), "lambda_final"),
    (lambda: beta_schedule(0, -1, R, K, TAU), "n_cycles"),
    (lambda: beta_schedule(0, M, 0, K, TAU), "cycle_length"),
    (lambda: beta_schedule(0, M, R, 0.0, TAU), "k"),
    (lambda: beta_schedule(0, M, R, K, float("inf")), "tau"),
])
def test_bad_arguments(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()
