"""Lueker's subset-sum theorem, checked by simulation.

Theorem 2.4 of Lueker, "Exponentially small bounds on the expected optimum of the partition and
subset sum problems" (1998), as stated in the lecture slides "From model pruning to sparse updates
and the LTH": let X_1, ..., X_n be i.i.d. uniform on
[-1, 1] and 0 < eta < 1/2. If n/2 >= C ln(1/eta), then except with probability at most

    exp(-(n/2 - C ln(1/eta))^2 / (2n)),

every value in [-1/2, 1/2] has an admissible 2*eta-approximation: a subset whose sum lies within
2*eta of it. Throughout this module **eps = 2*eta** is the approximation error, so "failure"
means: some target in [-1/2, 1/2] is farther than eps from every subset sum.

Trial k uses the prefixes of one sequence of values for every n, so each trial's coverage can
only improve as n grows and the curves are monotone in n by construction. The values are drawn
value index by value index (all trials' first values, then all second values, ...), so a trial's
first n values do not depend on how many are drawn: a larger search limit (``n_max``) or a larger
n in the grid never changes the results at smaller n.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Optional

import numpy as np
from numba import njit, prange
from scipy.stats import binomtest

from .subset_sum import (
    MAX_ENUMERATION,
    MAX_INTERVALS,
    InputError,
    _covers,
    _sorted_sums,
    _worst_sorted,
)

LO, HI = -0.5, 0.5


def draw(trials: int, n: int, seed: int = 0) -> np.ndarray:
    """The values of every trial: shape (trials, n), i.i.d. uniform on [-1, 1].

    ``draw(trials, m, seed)[:, :n] == draw(trials, n, seed)`` for every m >= n: the generator
    fills value index by value index (a (n, trials) array, transposed), so trial k's first n
    values are the same whatever the number drawn. Drawing row by row instead would give trial
    k values number k*n ... k*n + n - 1 of the stream, which shift whenever n changes."""
    if trials < 1 or n < 0:
        raise InputError(f"need trials >= 1 and n >= 0, got trials={trials}, n={n}")
    return np.ascontiguousarray(np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, trials)).T)


@njit(parallel=True, cache=True)
def _covered(samples, n, eps, lo, hi, cap):
    out = np.empty(len(samples), dtype=np.int64)
    for k in prange(len(samples)):
        out[k] = _covers(samples[k, :n], eps, lo, hi, cap)
    return out


@njit(parallel=True, cache=True)
def _first_covering_n(samples, eps, lo, hi, cap):
    """Per trial, the smallest prefix length that covers [lo, hi] (n_max + 1 if none does)."""
    trials, n_max = samples.shape
    out = np.empty(trials, dtype=np.int64)
    for k in prange(trials):
        if _covers(samples[k], eps, lo, hi, cap) != 1:
            out[k] = n_max + 1
            continue
        low, high = 0, n_max  # covers at high, not known at low
        while high - low > 1:
            mid = (low + high) // 2
            if _covers(samples[k, :mid], eps, lo, hi, cap) == 1:
                high = mid
            else:
                low = mid
        out[k] = high if _covers(samples[k, :low], eps, lo, hi, cap) != 1 else low
    return out


@dataclass
class Estimate:
    """A Monte-Carlo failure probability with its Wilson confidence interval."""

    n: int
    eps: float
    failures: int
    trials: int
    p: float
    ci_low: float
    ci_high: float
    confidence: float

    def to_dict(self) -> dict:
        return asdict(self)


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not (0 < eps < 1):
        raise InputError(f"eps must be in (0, 1) (eps = 2*eta with 0 < eta < 1/2), got {eps}")
    return eps


def failure_probability(samples: np.ndarray, n: int, eps: float, confidence: float = 0.95) -> Estimate:
    """P(some target in [-1/2, 1/2] has no eps-approximation from the first n values of a trial)."""
    eps = _check_eps(eps)
    if not 0 <= n <= samples.shape[1]:
        raise InputError(f"n must be in [0, {samples.shape[1]}] for these samples, got {n}")
    covered = _covered(np.ascontiguousarray(samples), n, eps, LO, HI, MAX_INTERVALS)
    if np.any(covered < 0):
        raise InputError(f"n={n}, eps={eps:g} needs more than {MAX_INTERVALS:,} intervals; use a larger eps")
    failures, trials = int(np.sum(covered == 0)), len(samples)
    ci = binomtest(failures, trials).proportion_ci(confidence, method="wilson")
    return Estimate(n, eps, failures, trials, failures / trials, float(ci.low), float(ci.high), confidence)


def failure_grid(ns: Iterable[int], epss: Iterable[float], trials: int = 200, seed: int = 0,
                 confidence: float = 0.95, progress: bool = False) -> list[Estimate]:
    """``failure_probability`` on every (n, eps) pair, all from the same trials."""
    ns, epss = sorted(set(int(n) for n in ns)), [_check_eps(e) for e in epss]
    samples = draw(trials, max(ns), seed)
    pairs = [(n, e) for e in epss for n in ns]
    from tqdm import tqdm

    return [failure_probability(samples, n, e, confidence)
            for n, e in tqdm(pairs, desc="lueker", disable=None if progress else True, leave=False)]


def worst_case_samples(n: int, trials: int = 1000, seed: int = 0) -> np.ndarray:
    """Exact eps*(n) = max over t in [-1/2, 1/2] of the best subset-sum error, one per trial."""
    if not 1 <= n <= MAX_ENUMERATION:
        raise InputError(f"the exact worst case enumerates 2^n sums: n must be in [1, {MAX_ENUMERATION}], got {n}")
    samples = draw(trials, n, seed)
    return np.array([_worst_sorted(_sorted_sums(row)[0], LO, HI) for row in samples])


def lueker_bound(n: int, eps: float, C: float) -> float:
    """Theorem 2.4's bound on the failure probability for eps = 2*eta, or 1.0 where the theorem
    says nothing (n/2 < C ln(1/eta))."""
    eta = _check_eps(eps) / 2
    slack = n / 2 - C * math.log(1 / eta)
    if slack < 0 or n <= 0:
        return 1.0
    return math.exp(-slack * slack / (2 * n))


def smallest_constant(estimates: Iterable[Estimate], use: str = "ci_low") -> float:
    """The smallest C for which Theorem 2.4's bound is at least every measured failure rate.

    The bound grows with C, so each estimate with rate p > 0 asks
    C >= (n/2 - sqrt(2 n ln(1/p))) / ln(1/eta). ``use="ci_low"`` takes the lower confidence
    limit of each rate (the smallest C the data cannot rule out), ``use="p"`` the point estimate.
    """
    best = 0.0
    for e in estimates:
        p = getattr(e, use)
        if p <= 0:
            continue
        if p >= 1:
            needed = e.n / (2 * math.log(2 / e.eps))  # only the vacuous regime allows certain failure
        else:
            needed = (e.n / 2 - math.sqrt(2 * e.n * math.log(1 / p))) / math.log(2 / e.eps)
        best = max(best, needed)
    return best


def samples_needed(epss: Iterable[float], trials: int = 200, n_max: int = 64, seed: int = 0,
                   quantiles: tuple[float, ...] = (0.5, 0.99), progress: bool = False) -> list[dict]:
    """For each eps, the n at which a fraction q of trials covers [-1/2, 1/2] (q in ``quantiles``).

    A value above ``n_max`` is reported as ``None`` (more trials than allowed failed to cover).
    """
    samples = draw(trials, n_max, seed)
    rows = []
    from tqdm import tqdm

    for eps in tqdm([_check_eps(e) for e in epss], desc="n needed", disable=None if progress else True, leave=False):
        first = _first_covering_n(samples, eps, LO, HI, MAX_INTERVALS)
        row: dict = {"eps": eps, "log_inv_eps": math.log(1 / eps)}
        for q in quantiles:
            value = int(np.ceil(np.quantile(first, q, method="inverted_cdf")))
            row[f"n_{round(100 * q)}"] = None if value > n_max else value
        rows.append(row)
    return rows


def fit_log_slope(rows: list[dict], key: str = "n_50") -> Optional[tuple[float, float]]:
    """Least-squares (slope, intercept) of ``n`` against ln(1/eps); Lueker predicts a line."""
    points = [(r["log_inv_eps"], r[key]) for r in rows if r.get(key) is not None]
    if len(points) < 2:
        return None
    x, y = np.array(points, dtype=float).T
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)
