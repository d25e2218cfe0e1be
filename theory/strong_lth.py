"""Strong lottery tickets by construction: approximating a target network by pruning a random one.

One target weight w, input |x| <= 1, random a_i, b_i ~ U[-1, 1] (Part II of the lecture slides
"From model pruning to sparse updates and the LTH"):

- ``single``    (Malach et al.): keep the one product a_i b_i closest to w. With n samples the error
  shrinks like 1/n, so eps needs poly(1/eps) random weights.
- ``linear``    (linear diamond): x -> sum_{i in S} b_i a_i x; one subset-sum problem on the products.
- ``relu``      (Pensia et al.'s ReLU diamond): x -> sum_{i in S} b_i ReLU(a_i x). For x > 0 only
  units with a_i > 0 are active, for x < 0 only those with a_i < 0, so S splits into two subset-sum
  problems on the products split by the sign of a_i; the sup error over |x| <= 1 is the larger of
  the two subset-sum errors. By Lueker's theorem n = O(log(1/eps)) samples suffice.

A layer W (d_out x d_in) is built from a random hidden layer of d_in * n units (unit (j, i) reads
only x_j, with weight a_{j,i}) and random output weights b_{k,j,i}; pruning keeps, for every
target entry (k, j), the two subsets of units (j, i) that approximate W_kj. The pruned block maps
x to P_plus relu(x) - P_minus relu(-x), where P_plus/P_minus hold the kept subset sums.
A network is a stack of such blocks with ReLUs between them.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from numba import njit, prange

from .subset_sum import InputError, _sorted_sums

MAX_ROW = 48  # per-row meet in the middle: two halves of at most 2^24 sums


# ---------------------------------------------------------------------------------------------
# Many small subset-sum problems at once


@njit(cache=True)
def _row_best(values, targets_k):
    """Best subset of ``values`` for one target: (error, bit pattern over positions of values)."""
    n = len(values)
    half = n // 2
    a_sums, a_bits = _sorted_sums(values[:half])
    b_sums, b_bits = _sorted_sums(values[half:])
    i, j = 0, len(b_sums) - 1
    best, best_i, best_j = np.inf, 0, 0
    while i < len(a_sums) and j >= 0:
        d = a_sums[i] + b_sums[j] - targets_k
        if abs(d) < best:
            best, best_i, best_j = abs(d), i, j
        if d < 0:
            i += 1
        elif d > 0:
            j -= 1
        else:
            break
    return best, a_bits[best_i] | (b_bits[best_j] << np.uint64(half))


@njit(parallel=True, cache=True)
def _batch(values, active, targets):
    m, n = values.shape
    errors = np.empty(m)
    keep = np.zeros((m, n), dtype=np.bool_)
    for r in prange(m):
        idx = np.nonzero(active[r])[0]
        err, bits = _row_best(values[r, idx], targets[r])
        errors[r] = err
        for p in range(len(idx)):
            if (bits >> np.uint64(p)) & np.uint64(1):
                keep[r, idx[p]] = True
    return errors, keep


def batch_best_subset(values: np.ndarray, targets: np.ndarray,
                      active: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Solve one subset-sum problem per row: min over S within the row's active entries of
    |targets[r] - sum(values[r, S])|. Returns (errors (m,), keep mask (m, n)); exact."""
    values = np.ascontiguousarray(np.asarray(values, dtype=np.float64))
    targets = np.ascontiguousarray(np.asarray(targets, dtype=np.float64))
    if values.ndim != 2 or targets.shape != (values.shape[0],):
        raise InputError(f"values must be (m, n) and targets (m,), got {values.shape} and {targets.shape}")
    active = np.ones(values.shape, dtype=bool) if active is None else np.ascontiguousarray(active, dtype=bool)
    if active.shape != values.shape:
        raise InputError(f"active must have the shape of values {values.shape}, got {active.shape}")
    if values.shape[1] > MAX_ROW:
        raise InputError(f"at most {MAX_ROW} values per problem, got {values.shape[1]}")
    if not (np.all(np.isfinite(values)) and np.all(np.isfinite(targets))):
        raise InputError("values and targets must be finite")
    return _batch(values, active, targets)


# ---------------------------------------------------------------------------------------------
# One weight


METHODS = ("single", "linear", "relu")


def single_weight_errors(w: np.ndarray, n: int, seed: int = 0,
                         methods: Sequence[str] = METHODS) -> dict[str, np.ndarray]:
    """Sup error over |x| <= 1 of each construction for each target in ``w``, with n random units
    (fresh a, b per target). Returns {method: errors}."""
    w = np.atleast_1d(np.asarray(w, dtype=np.float64))
    if n < 1:
        raise InputError(f"the number of random units must be at least 1, got {n}")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise InputError(f"unknown construction {sorted(unknown)[0]!r}; choose from {', '.join(METHODS)}")
    if n > MAX_ROW and set(methods) - {"single"}:
        raise InputError(f"the diamonds solve subset sums of at most {MAX_ROW} units, got n={n}")
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (len(w), n))
    b = rng.uniform(-1, 1, (len(w), n))
    products = a * b
    out = {}
    if "single" in methods:
        out["single"] = np.abs(products - w[:, None]).min(axis=1)
    if "linear" in methods:
        out["linear"] = batch_best_subset(products, w)[0]
    if "relu" in methods:
        plus, _ = batch_best_subset(products, w, active=a > 0)
        minus, _ = batch_best_subset(products, w, active=a < 0)
        out["relu"] = np.maximum(plus, minus)
    return out


def diamond_sweep(ns: Sequence[int], trials: int = 200, seed: int = 0, progress: bool = False,
                  single_ns: Sequence[int] = ()) -> list[dict]:
    """Error of each construction against the number of random units n, over ``trials`` targets
    w ~ U[-1/2, 1/2]. One row per (n, method): median, 90th percentile and max error.

    ``single_ns`` adds unit counts for the single-product construction alone (it is cheap, and
    needs far more units than the diamonds for the same error)."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    w = rng.uniform(-0.5, 0.5, trials)
    jobs = [(int(n), METHODS) for n in ns] + [(int(n), ("single",)) for n in single_ns if int(n) not in set(ns)]
    rows = []
    for n, methods in tqdm(jobs, desc="diamond", disable=None if progress else True, leave=False):
        errors = single_weight_errors(w, n, seed=seed + 1 + n, methods=methods)
        for method in methods:
            e = errors[method]
            rows.append({"n": n, "method": method, "median": float(np.median(e)),
                         "p90": float(np.quantile(e, 0.9)), "max": float(e.max())})
    return sorted(rows, key=lambda r: (METHODS.index(r["method"]), r["n"]))


def units_needed(rows: list[dict], eps: float, stat: str = "median") -> dict[str, Optional[int]]:
    """Smallest n in a sweep whose ``stat`` error is at most eps, per method (None if none is)."""
    out: dict[str, Optional[int]] = {}
    for name in METHODS:
        ok = [r["n"] for r in rows if r["method"] == name and r[stat] <= eps]
        out[name] = min(ok) if ok else None
    return out


# ---------------------------------------------------------------------------------------------
# A layer and a network


@dataclass
class PrunedBlock:
    """A random two-layer block pruned to approximate one target layer W (d_out x d_in)."""

    target: np.ndarray  # (d_out, d_in)
    a: np.ndarray  # (d_in, n): hidden unit (j, i) computes ReLU(a[j, i] * x_j)
    b: np.ndarray  # (d_out, d_in, n): output weights
    keep: np.ndarray  # (d_out, d_in, n) bool: kept output weights
    p_plus: np.ndarray  # (d_out, d_in): sum of kept a*b with a > 0 (acts on x_j > 0)
    p_minus: np.ndarray  # (d_out, d_in): sum of kept a*b with a < 0 (acts on x_j < 0)

    @property
    def entry_errors(self) -> np.ndarray:
        """Per target entry, the sup over |x_j| <= 1 of the entry's error: max of the two."""
        return np.maximum(np.abs(self.p_plus - self.target), np.abs(self.p_minus - self.target))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The pruned block's output for inputs x of shape (batch, d_in)."""
        return np.maximum(x, 0) @ self.p_plus.T - np.maximum(-x, 0) @ self.p_minus.T

    def forward_units(self, x: np.ndarray) -> np.ndarray:
        """The same output computed unit by unit through the hidden layer (for checking)."""
        hidden = np.maximum(x[:, :, None] * self.a[None], 0)  # (batch, d_in, n)
        return np.einsum("bjn,kjn->bk", hidden, self.b * self.keep)

    def kept_parameters(self) -> int:
        """First-layer weights of the hidden units some output uses, plus kept output weights."""
        return int(self.keep.any(axis=0).sum() + self.keep.sum())

    def random_parameters(self) -> int:
        """Parameters of the dense random block before pruning: (d_in n) x d_in + d_out x (d_in n)."""
        d_out, d_in, n = self.b.shape
        return d_in * n * d_in + d_out * d_in * n


def _best_single(products: np.ndarray, targets: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Keep mask choosing, per row, the one active product closest to the target (none if none)."""
    dist = np.where(active, np.abs(products - targets[:, None]), np.inf)
    choice = dist.argmin(axis=1)
    keep = np.zeros(products.shape, dtype=bool)
    rows = np.arange(len(products))
    keep[rows, choice] = np.isfinite(dist[rows, choice])
    # the empty choice (output 0) is better when |w| is smaller than the closest product's error
    keep[rows, choice] &= dist[rows, choice] < np.abs(targets)
    return keep


def approximate_layer(W: np.ndarray, n: int, seed: int = 0, method: str = "relu") -> PrunedBlock:
    """Prune a random block with n units per input to approximate W.

    ``method="relu"`` solves both subset-sum problems of every entry exactly (Pensia et al.);
    ``method="single"`` keeps at most one unit per sign (Malach-style, the same random block).
    """
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2:
        raise InputError(f"a target layer must be a 2-D array (d_out, d_in), got shape {W.shape}")
    if not np.all(np.isfinite(W)):
        raise InputError("target weights must be finite")
    if not 1 <= n <= MAX_ROW:
        raise InputError(f"n (random units per weight) must be in [1, {MAX_ROW}], got {n}")
    d_out, d_in = W.shape
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (d_in, n))
    b = rng.uniform(-1, 1, (d_out, d_in, n))
    products = (a[None] * b).reshape(d_out * d_in, n)
    positive = np.broadcast_to(a[None] > 0, (d_out, d_in, n)).reshape(d_out * d_in, n)
    negative = np.broadcast_to(a[None] < 0, (d_out, d_in, n)).reshape(d_out * d_in, n)
    targets = W.reshape(-1)
    if method == "relu":
        _, keep_plus = batch_best_subset(products, targets, active=positive)
        _, keep_minus = batch_best_subset(products, targets, active=negative)
    elif method == "single":
        keep_plus, keep_minus = _best_single(products, targets, positive), _best_single(products, targets, negative)
    else:
        raise InputError(f"unknown construction {method!r}; choose relu or single")
    p_plus = (products * keep_plus).sum(axis=1).reshape(d_out, d_in)
    p_minus = (products * keep_minus).sum(axis=1).reshape(d_out, d_in)
    keep = (keep_plus | keep_minus).reshape(d_out, d_in, n)
    return PrunedBlock(W, a, b, keep, p_plus, p_minus)


def relu_network(weights: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
    """The target MLP x -> W_L relu(... relu(W_1 x)) (no biases), for x of shape (batch, d_in)."""
    for k, W in enumerate(weights):
        x = x @ np.asarray(W).T
        if k < len(weights) - 1:
            x = np.maximum(x, 0)
    return x


def unit_ball(count: int, dim: int, seed: int = 0) -> np.ndarray:
    """``count`` points uniform in the unit Euclidean ball of R^dim."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((count, dim))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return g * rng.uniform(0, 1, (count, 1)) ** (1 / dim)


@dataclass
class NetworkResult:
    n: int
    method: str
    blocks: list[PrunedBlock] = field(repr=False)
    max_entry_error: float
    fraction_within: Optional[float]
    trivial_fraction: Optional[float]  # entries with |w| <= eps: the empty subset already suffices
    output_error: float  # max over sampled x of ||f(x) - f~(x)||_inf
    target_parameters: int
    kept_parameters: int
    random_parameters: int
    seconds: float

    def summary(self, eps: Optional[float] = None) -> dict:
        return {"n": self.n, "method": self.method, "eps": eps, "max_entry_error": self.max_entry_error,
                "fraction_within_eps": self.fraction_within, "trivial_fraction": self.trivial_fraction,
                "output_error": self.output_error,
                "target_parameters": self.target_parameters, "kept_parameters": self.kept_parameters,
                "random_parameters": self.random_parameters,
                "kept_to_target": self.kept_parameters / self.target_parameters,
                "random_to_target": self.random_parameters / self.target_parameters, "seconds": self.seconds}


def approximate_network(weights: Sequence[np.ndarray], n: int, eps: Optional[float] = None, samples: int = 1000,
                        seed: int = 0, method: str = "relu") -> NetworkResult:
    """Approximate the target MLP ``weights`` (list of (d_out, d_in) arrays) block by block.

    Reports the largest entry error, the fraction of entries within ``eps`` (if given), the sup
    over ``samples`` inputs from the unit ball of the output error (max-norm), and parameter counts.
    """
    if not weights:
        raise InputError("the target network needs at least one layer")
    for k in range(1, len(weights)):
        if np.shape(weights[k])[1] != np.shape(weights[k - 1])[0]:
            raise InputError(f"layer {k} expects {np.shape(weights[k])[1]} inputs but layer {k - 1} has "
                             f"{np.shape(weights[k - 1])[0]} outputs")
    start = time.perf_counter()
    blocks = [approximate_layer(W, n, seed=seed + 1000 * k, method=method) for k, W in enumerate(weights)]
    seconds = time.perf_counter() - start
    entry = np.concatenate([blk.entry_errors.ravel() for blk in blocks])
    x = unit_ball(samples, np.shape(weights[0])[1], seed=seed + 7)
    approx = x
    for k, blk in enumerate(blocks):
        approx = blk(approx)
        if k < len(blocks) - 1:
            approx = np.maximum(approx, 0)
    output_error = float(np.abs(relu_network(weights, x) - approx).max())
    magnitudes = np.concatenate([np.abs(np.asarray(W)).ravel() for W in weights])
    return NetworkResult(
        n=n, method=method, blocks=blocks, max_entry_error=float(entry.max()),
        fraction_within=None if eps is None else float(np.mean(entry <= eps)),
        trivial_fraction=None if eps is None else float(np.mean(magnitudes <= eps)), output_error=output_error,
        target_parameters=int(sum(np.size(W) for W in weights)),
        kept_parameters=sum(blk.kept_parameters() for blk in blocks),
        random_parameters=sum(blk.random_parameters() for blk in blocks), seconds=seconds)


def random_target(widths: Sequence[int], seed: int = 0, scale: float = 1.0) -> list[np.ndarray]:
    """A random target MLP with layer widths ``widths`` and entries uniform on [-scale, scale]
    divided by sqrt(fan-in) (so that ||x|| <= 1 keeps activations of order 1)."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-scale, scale, (d_out, d_in)) / math.sqrt(d_in)
            for d_in, d_out in zip(widths[:-1], widths[1:])]


def lower_bound_width(d: int, eps: float, c: float = 1.0) -> float:
    """The shape of Pensia et al.'s lower bound: width c * d * log2(1/eps) (the constant is not
    given by the theorem; c = 1 draws the shape)."""
    return c * d * math.log2(1 / eps)
