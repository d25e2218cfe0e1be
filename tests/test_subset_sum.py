"""Subset-sum kernels against brute force and their symmetries (hypothesis)."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from theory.subset_sum import InputError, best_subset, covers, worst_case_error

floats = st.floats(-1, 1, allow_nan=False, allow_infinity=False)
ints = st.integers(-1000, 1000).map(float)
values_f = st.lists(floats, min_size=0, max_size=12)
values_i = st.lists(ints, min_size=0, max_size=12)
targets_f = st.lists(st.floats(-3, 3), min_size=1, max_size=6)


def brute_sums(x):
    x = np.asarray(x, dtype=np.float64)
    sums = np.zeros(1)
    for v in x:
        sums = np.concatenate([sums, sums + v])
    return sums


def brute_errors(x, targets):
    sums = brute_sums(x)
    return np.abs(sums[None, :] - np.asarray(targets)[:, None]).min(axis=1)


@given(values_i, st.lists(ints, min_size=1, max_size=6))
def test_equals_brute_force_exactly_on_integers(x, t):
    errors, _ = best_subset(x, t)
    assert np.array_equal(errors, brute_errors(x, t))


@given(values_f, targets_f)
def test_equals_brute_force_on_floats(x, t):
    errors, _ = best_subset(x, t)
    assert np.allclose(errors, brute_errors(x, t), rtol=0, atol=1e-12)


@given(st.lists(floats, min_size=13, max_size=18), st.lists(st.floats(-2, 2), min_size=1, max_size=3))
def test_equals_brute_force_up_to_18(x, t):
    errors, _ = best_subset(x, t)
    assert np.allclose(errors, brute_errors(x, t), rtol=0, atol=1e-12)


@given(values_f, targets_f)
def test_returned_subset_reproduces_error(x, t):
    errors, masks = best_subset(x, t)
    assert masks.shape == (len(t), len(x))
    achieved = np.abs(np.asarray(t) - (masks * np.asarray(x)).sum(axis=1))
    assert np.allclose(achieved, errors, rtol=0, atol=1e-12)


@given(values_f, floats, targets_f)
def test_adding_an_element_never_hurts(x, extra, t):
    before, _ = best_subset(x, t)
    after, _ = best_subset(x + [extra], t)
    assert np.all(after <= before + 1e-12)


@given(values_i, st.lists(ints, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_symmetries(x, t, rnd):
    base, _ = best_subset(x, t)
    shuffled = list(x)
    rnd.shuffle(shuffled)
    assert np.array_equal(best_subset(shuffled, t)[0], base)  # permutation
    assert np.array_equal(best_subset([-v for v in x], [-v for v in t])[0], base)  # (x, t) -> (-x, -t)
    total = float(sum(x))
    assert np.array_equal(best_subset(x, [total - v for v in t])[0], base)  # complement
    assert np.array_equal(best_subset([0.25 * v for v in x], [0.25 * v for v in t])[0], 0.25 * base)  # exact scale


@given(values_i, st.data())
def test_every_subset_sum_is_hit_exactly(x, data):
    sums = brute_sums(x)
    picks = data.draw(st.lists(st.integers(0, len(sums) - 1), min_size=1, max_size=5))
    errors, _ = best_subset(x, sums[picks])
    assert np.all(errors == 0)


@given(st.lists(floats, min_size=1, max_size=10), st.floats(-1, 0), st.floats(0, 1))
def test_worst_case_bounds_pointwise_and_covers_flips_there(x, lo, hi):
    worst = worst_case_error(x, lo, hi)
    grid = np.linspace(lo, hi, 101)
    assert np.all(best_subset(x, grid)[0] <= worst + 1e-12)
    assert worst >= (hi - lo) / 2 ** (len(x) + 1) - 1e-15
    assume(worst > 1e-9)
    assert covers(x, worst * (1 + 1e-6), lo, hi)
    assert not covers(x, worst * (1 - 1e-6), lo, hi)


@given(st.lists(floats, min_size=1, max_size=10), st.floats(-1, 0), st.floats(0, 1), st.floats(0, 1))
def test_worst_case_grows_with_window(x, lo, hi, widen):
    assert worst_case_error(x, lo - widen, hi + widen) >= worst_case_error(x, lo, hi)


def test_worst_case_is_attained_at_a_gap_midpoint():
    # sums of {1, 3}: 0, 1, 3, 4 -> on [0, 4] the worst target is 2, at distance 1
    assert worst_case_error([1.0, 3.0], 0, 4) == 1.0
    assert worst_case_error([1.0, 3.0], 0, 1.5) == 0.5
    assert worst_case_error([1.0, 3.0], 5, 6) == 2.0


def test_bisection_beyond_enumeration_agrees_with_sampling():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, 26)
    worst = worst_case_error(x, -0.5, 0.5, rtol=1e-4)
    sampled = best_subset(x, np.linspace(-0.5, 0.5, 20001))[0].max()
    assert sampled <= worst
    assert covers(x, worst, -0.5, 0.5)


def test_covers_n64_small_eps():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 64)
    assert covers(x, 1e-6, -0.5, 0.5)
    assert not covers(x[:5], 1e-6, -0.5, 0.5)


@pytest.mark.parametrize("call,message", [
    (lambda: best_subset([1.0, np.nan], [0.0]), "finite"),
    (lambda: best_subset(np.zeros(49), [0.0]), "at most 48"),
    (lambda: best_subset(np.zeros((2, 2)), [0.0]), "1-D"),
    (lambda: best_subset([1.0], [np.inf]), "targets must be finite"),
    (lambda: covers([1.0], 0.0, 0, 1), "eps must be a positive"),
    (lambda: covers([1.0], 0.1, 1, 0), "lo <= hi"),
    (lambda: worst_case_error([1.0], -np.inf, 0), "finite"),
])
def test_bad_input_is_refused(call, message):
    with pytest.raises(InputError, match=message):
        call()
