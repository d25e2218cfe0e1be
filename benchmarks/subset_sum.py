"""The numba meet-in-the-middle kernel against a NumPy reference, on the same inputs.

Both enumerate and sort the two halves' subset sums; NumPy then finds, for each target t, the
nearest b to t - a for every a with ``searchsorted``; numba walks two pointers, eight targets per
thread. JIT compile time is excluded from the timing and reported apart. Target: >= 20x.
Also times ``covers`` at n = 64, eps = 1e-6.

    python benchmarks/subset_sum.py                  # n = 40, 1000 targets (about a minute)
    python benchmarks/subset_sum.py --n 30 --targets 200
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from theory.subset_sum import _sorted_sums, best_subset, covers


def numpy_reference(values: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Best subset-sum error per target: sorted half sums and ``searchsorted``."""
    half = len(values) // 2
    a = np.sort(_subset_sums_numpy(values[:half]))  # sorted queries keep searchsorted cache-friendly
    b = np.sort(_subset_sums_numpy(values[half:]))
    errors = np.empty(len(targets))
    for k, t in enumerate(targets):
        q = t - a
        idx = np.searchsorted(b, q)
        above = b[np.minimum(idx, len(b) - 1)]
        below = b[np.maximum(idx - 1, 0)]
        errors[k] = np.minimum(np.abs(above - q), np.abs(below - q)).min()
    return errors


def _subset_sums_numpy(x: np.ndarray) -> np.ndarray:
    sums = np.zeros(1)
    for v in x:
        sums = np.concatenate([sums, sums + v])
    return sums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40, help="number of values (default 40)")
    parser.add_argument("--targets", type=int, default=1000, help="number of targets (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    values = rng.uniform(-1, 1, args.n)
    targets = rng.uniform(-0.5, 0.5, args.targets)

    start = time.perf_counter()
    best_subset(values[:6], targets[:5])  # compiles every kernel (or loads numba's cache)
    _sorted_sums(values[:2])
    compile_s = time.perf_counter() - start

    start = time.perf_counter()
    fast, _ = best_subset(values, targets)
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    slow = numpy_reference(values, targets)
    slow_s = time.perf_counter() - start

    assert np.allclose(fast, slow, rtol=0, atol=1e-12), "kernels disagree"
    print(f"n = {args.n}, {args.targets} targets, max error {fast.max():.3e}")
    print(f"numba compile (or cache load): {compile_s:.2f} s, excluded")
    print(f"numba  {fast_s:8.3f} s")
    print(f"numpy  {slow_s:8.3f} s")
    print(f"speed-up numba/numpy: {slow_s / fast_s:.1f}x (target >= 20x)")

    wide = rng.uniform(-1, 1, 64)
    covers(wide[:3], 0.1, -0.5, 0.5)  # compile
    start = time.perf_counter()
    ok = covers(wide, 1e-6, -0.5, 0.5)
    print(f"covers(n=64, eps=1e-6, [-1/2, 1/2]) = {ok} in {time.perf_counter() - start:.3f} s (target: well under 1 s)")


if __name__ == "__main__":
    main()
