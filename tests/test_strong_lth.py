"""Strong-LTH constructions: batched exact solver, diamond identities, layer and network bounds."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from theory.strong_lth import (
    approximate_layer,
    approximate_network,
    batch_best_subset,
    random_target,
    relu_network,
    single_weight_errors,
    unit_ball,
)
from theory.subset_sum import InputError, best_subset


@given(st.integers(1, 12), st.integers(1, 20), st.integers(0, 10_000))
def test_batch_equals_single_problem_solver(rows, n, seed):
    rng = np.random.default_rng(seed)
    values = rng.uniform(-1, 1, (rows, n))
    active = rng.random((rows, n)) < 0.6
    targets = rng.uniform(-1, 1, rows)
    errors, keep = batch_best_subset(values, targets, active)
    assert not np.any(keep & ~active)
    for r in range(rows):
        expected, _ = best_subset(values[r, active[r]], targets[r])
        assert errors[r] == pytest.approx(expected[0], abs=1e-12)
        assert abs(targets[r] - values[r, keep[r]].sum()) == pytest.approx(errors[r], abs=1e-12)


@given(st.floats(-0.9, 0.9), st.integers(2, 16), st.integers(0, 1000))
def test_relu_diamond_sup_error_is_the_larger_subset_error(w, n, seed):
    block = approximate_layer(np.array([[w]]), n, seed=seed)
    x = np.linspace(-1, 1, 401)[:, None]
    sup = np.abs(block(x)[:, 0] - w * x[:, 0]).max()
    plus, minus = abs(block.p_plus[0, 0] - w), abs(block.p_minus[0, 0] - w)
    assert sup == pytest.approx(max(plus, minus), abs=1e-12)
    assert block.entry_errors[0, 0] == pytest.approx(max(plus, minus))


def test_constructions_are_ordered():
    w = np.random.default_rng(0).uniform(-0.5, 0.5, 300)
    errors = single_weight_errors(w, 24, seed=1)
    assert np.all(errors["linear"] <= errors["single"] + 1e-15)  # one product is one subset
    assert np.all(errors["linear"] <= errors["relu"] + 1e-15)  # the ReLU subsets are linear subsets
    assert np.median(errors["relu"]) < np.median(errors["single"]) / 5  # same units, far smaller error


@given(st.integers(1, 6), st.integers(1, 6), st.integers(2, 12), st.integers(0, 1000))
def test_layer_error_at_most_max_entry_error_times_l1(d_out, d_in, n, seed):
    rng = np.random.default_rng(seed)
    W = rng.uniform(-0.5, 0.5, (d_out, d_in))
    block = approximate_layer(W, n, seed=seed)
    x = unit_ball(64, d_in, seed=seed)
    error = np.abs(block(x) - x @ W.T).max(axis=1)
    assert np.all(error <= block.entry_errors.max() * np.abs(x).sum(axis=1) + 1e-12)
    assert np.allclose(block(x), block.forward_units(x), atol=1e-12)


def test_kept_units_have_the_right_sign():
    block = approximate_layer(np.array([[0.3, -0.2]]), 16, seed=4)
    products = block.a[None] * block.b
    assert block.p_plus == pytest.approx((products * block.keep * (block.a[None] > 0)).sum(axis=2))
    assert block.p_minus == pytest.approx((products * block.keep * (block.a[None] < 0)).sum(axis=2))


def test_network_error_shrinks_with_n_and_beats_single_product():
    W = random_target([12, 8, 4], seed=0)
    small = approximate_network(W, 6, eps=0.01)
    large = approximate_network(W, 24, eps=0.01)
    single = approximate_network(W, 24, eps=0.01, method="single")
    assert large.output_error < small.output_error and large.output_error < single.output_error
    assert large.fraction_within > small.fraction_within
    assert large.target_parameters == 12 * 8 + 8 * 4


@pytest.mark.slow
def test_pensia_scale_784_500_10():
    target = random_target([784, 500, 10], seed=0)
    result = approximate_network(target, 21, eps=0.01, samples=100)
    s = result.summary(0.01)
    assert s["target_parameters"] == 397_000
    assert s["fraction_within_eps"] > 0.85
    assert 7 < s["kept_to_target"] < 12  # Pensia et al. report 9.39x
    # the approximation is useful: well below the error of pruning everything (output 0), 0.36x here;
    # the inputs are the ones approximate_network samples (seed + 7)
    x = unit_ball(100, 784, seed=7)
    assert s["output_error"] < 0.5 * np.abs(relu_network(target, x)).max()


def test_bad_input():
    with pytest.raises(InputError, match="2-D"):
        approximate_layer(np.zeros(3), 4)
    with pytest.raises(InputError, match=r"must be in \[1, 48\]"):
        approximate_layer(np.zeros((2, 2)), 49)
    with pytest.raises(InputError, match="expects 3 inputs"):
        approximate_network([np.zeros((4, 2)), np.zeros((1, 3))], 4)
    with pytest.raises(InputError, match="unknown construction"):
        single_weight_errors(np.zeros(2), 4, methods=("magic",))
