"""Lueker's theorem checks: consistency between the estimators, the bound, and the constant."""
import math

import numpy as np
import pytest

from theory.lueker import (
    HI,
    LO,
    draw,
    failure_grid,
    failure_probability,
    fit_log_slope,
    lueker_bound,
    samples_needed,
    smallest_constant,
    worst_case_samples,
)
from theory.subset_sum import InputError, covers


def test_bound_is_the_stated_formula():
    n, eps, C = 40, 0.01, 1.5  # eta = 0.005
    slack = n / 2 - C * math.log(1 / 0.005)
    assert lueker_bound(n, eps, C) == pytest.approx(math.exp(-slack ** 2 / (2 * n)))
    assert lueker_bound(10, 0.01, 1.5) == 1.0  # n/2 < C ln(1/eta): the theorem says nothing
    assert lueker_bound(60, eps, C) < lueker_bound(40, eps, C)
    with pytest.raises(InputError, match="eps = 2\\*eta"):
        lueker_bound(40, 1.5, 1.0)


def test_failure_matches_exact_worst_case():
    """Two independent routes: the covers DP and the enumerated worst case, on the same draws."""
    n, trials, seed = 10, 150, 3
    worst = worst_case_samples(n, trials, seed)
    samples = draw(trials, n, seed)
    for eps in (0.005, 0.02, 0.05):
        estimate = failure_probability(samples, n, eps)
        assert estimate.failures == int(np.sum(worst > eps))
        assert estimate.ci_low <= estimate.p <= estimate.ci_high


def test_failure_falls_with_n_and_eps():
    grid = failure_grid([4, 8, 12, 16, 20], [0.1, 0.01], trials=100, seed=0)
    for eps in (0.1, 0.01):
        rates = [e.p for e in grid if e.eps == eps]
        assert rates == sorted(rates, reverse=True) and rates[0] > 0.9 and rates[-1] < 0.5
    by_n = {(e.n, e.eps): e.p for e in grid}
    assert all(by_n[(n, 0.1)] <= by_n[(n, 0.01)] for n in (4, 8, 12, 16, 20))


def test_smallest_constant_is_tight():
    grid = failure_grid([8, 12, 16, 20, 24], [0.01, 0.001], trials=100, seed=1)
    C = smallest_constant(grid, "p")
    assert C > 0
    assert all(lueker_bound(e.n, e.eps, C) >= e.p - 1e-12 for e in grid)
    assert any(lueker_bound(e.n, e.eps, C - 0.01) < e.p for e in grid)


def test_samples_needed_is_the_first_covering_prefix():
    samples = draw(60, 40, seed=5)
    rows = samples_needed([0.01], trials=60, n_max=40, seed=5, quantiles=(0.5, 0.99))
    firsts = []
    for row in samples:
        first = next(n for n in range(41) if covers(row[:n], 0.01, LO, HI))
        firsts.append(first)
    assert rows[0]["n_50"] == int(np.quantile(firsts, 0.5, method="inverted_cdf"))
    assert rows[0]["n_99"] == int(np.quantile(firsts, 0.99, method="inverted_cdf"))


def test_n_needed_grows_linearly_in_log_inverse_eps():
    rows = samples_needed([1e-1, 1e-2, 1e-3, 1e-4], trials=100, n_max=48)
    n50 = [r["n_50"] for r in rows]
    assert n50 == sorted(n50) and all(r["n_50"] <= r["n_99"] for r in rows)
    slope, _ = fit_log_slope(rows)
    assert 0.5 < slope < 4  # about 1.4 to 2 per unit of ln(1/eps); Lueker: linear, not polynomial


def test_n_needed_does_not_depend_on_the_search_limit():
    """--n-max only bounds the search: a trial's first values are the same whatever the limit."""
    assert np.array_equal(draw(50, 200, seed=3)[:, :30], draw(50, 30, seed=3))
    short = samples_needed([0.1, 0.01], trials=200, n_max=30, seed=0)
    long = samples_needed([0.1, 0.01], trials=200, n_max=200, seed=0)
    assert all(row["n_99"] is not None for row in short)  # every answer lies below both limits
    assert short == long


def test_failure_rates_do_not_depend_on_the_largest_n():
    few = failure_grid([4, 8, 12], [0.1], trials=100, seed=2)
    more = failure_grid([4, 8, 12, 40], [0.1], trials=100, seed=2)
    assert [e.to_dict() for e in few] == [e.to_dict() for e in more[:3]]
