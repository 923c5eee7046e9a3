"""lambda (eq. 5) and beta (eq. 6) schedules of paper 001 against values computed by hand.

Parameters are Table 1's: lambda: t_lambda0 = 2e5 (ADP), n_lambda = 1.25e6,
lambda_initial = 1e-6, lambda_final = 1; beta (ADP): M = 4, R = 25000,
k = 0.0025, tau = 10000.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from finegrain.trainables.cvae.config import CVAEConfig
from finegrain.trainables.schedules import beta_schedule, constant_schedule, lambda_schedule

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
