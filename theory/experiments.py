"""The three experiments behind ``python -m theory``: each returns a JSON-ready dict and draws a PNG.

- ``lueker``: failure probability against n for several eps (with Wilson intervals and Theorem
  2.4's bound at the smallest consistent C), the n needed for 50% / 99% success against
  ln(1/eps), and the exact worst-case error distribution for small n.
- ``diamond``: one weight, error against the number of random units for the single-product,
  linear-diamond and ReLU-diamond constructions; the units needed against eps, beside the shape of
  the log(1/eps) lower bound.
- ``network``: a target MLP approximated by pruning the random ReLU-diamond network (and by the
  single-product construction), output error against the random-to-target parameter ratio; and
  one run at a chosen n reporting entry errors, kept-to-target ratio and time.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import lueker, strong_lth


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)


def run_lueker(out: Path, ns: Sequence[int], epss: Sequence[float], trials: int = 200, n_max: int = 48,
               worst_ns: Sequence[int] = (4, 8, 12, 16), seed: int = 0, progress: bool = True) -> dict:
    start = time.perf_counter()
    grid = lueker.failure_grid(ns, epss, trials, seed, progress=progress)
    c_low = lueker.smallest_constant(grid, "ci_low")
    c_point = lueker.smallest_constant(grid, "p")
    needed = lueker.samples_needed(epss, trials, n_max, seed, progress=progress)
    worst = {int(n): lueker.worst_case_samples(int(n), trials, seed) for n in worst_ns}
    result = {
        "experiment": "lueker", "convention": "eps = 2*eta: failure means some t in [-1/2, 1/2] is farther than eps "
                                              "from every subset sum of n i.i.d. U[-1, 1] values",
        "settings": {"ns": list(map(int, ns)), "eps": list(map(float, epss)), "trials": trials, "n_max": n_max,
                     "seed": seed},
        "failure": [e.to_dict() for e in grid],
        "smallest_C": {"from_ci_low": c_low, "from_point_estimate": c_point},
        "n_needed": needed, "n_needed_fit_50": lueker.fit_log_slope(needed, "n_50"),
        "worst_case": {str(n): {"median": float(np.median(w)), "p90": float(np.quantile(w, 0.9)),
                                "mean": float(w.mean())} for n, w in worst.items()},
        "seconds": time.perf_counter() - start,
    }
    plt = _figure()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for eps in epss:
        rows = [e for e in grid if e.eps == eps]
        n_axis = np.array([e.n for e in rows])
        p = np.array([e.p for e in rows])
        err = np.array([[e.p - e.ci_low for e in rows], [e.ci_high - e.p for e in rows]])
        line = axes[0].errorbar(n_axis, p, yerr=err, marker="o", ms=3, capsize=2, label=f"measured, eps={eps:g}")
        axes[0].plot(n_axis, [lueker.lueker_bound(n, eps, c_low) for n in n_axis], "--",
                     color=line[0].get_color(), alpha=0.7)
    axes[0].set(xlabel="n", ylabel="P(failure)", yscale="symlog", title=f"failure; dashed: Thm 2.4 bound, C={c_low:.2f}")
    axes[0].set_yscale("symlog", linthresh=1e-3)
    axes[0].legend(fontsize=7)
    x = [r["log_inv_eps"] for r in needed]
    for key, label in (("n_50", "50% success"), ("n_99", "99% success")):
        axes[1].plot(x, [r[key] if r[key] is not None else np.nan for r in needed], "o-", label=label)
    axes[1].set(xlabel="ln(1/eps)", ylabel="n needed", title="samples needed (Lueker: linear in ln 1/eps)")
    axes[1].legend()
    axes[2].boxplot([worst[n] for n in worst], showfliers=False)
    axes[2].set_xticks(range(1, len(worst) + 1), [str(n) for n in worst])
    axes[2].set(yscale="log", xlabel="n", ylabel="eps*(n)", title="exact worst-case error on [-1/2, 1/2]")
    _save(fig, out / "lueker.png")
    plt.close(fig)
    write_json(out / "lueker.json", result)
    return result


def run_diamond(out: Path, ns: Sequence[int], trials: int = 200, epss: Sequence[float] = (0.1, 0.03, 0.01, 0.003, 0.001),
                seed: int = 0, progress: bool = True,
                single_ns: Sequence[int] = tuple(2 ** k for k in range(6, 13))) -> dict:
    start = time.perf_counter()
    rows = strong_lth.diamond_sweep(ns, trials, seed, progress=progress, single_ns=single_ns)
    needed = [{"eps": float(e), **strong_lth.units_needed(rows, e), "lower_bound_shape": strong_lth.lower_bound_width(1, e)}
              for e in epss]
    result = {"experiment": "diamond", "settings": {"ns": list(map(int, ns)), "trials": trials, "seed": seed,
                                                    "targets": "w ~ U[-1/2, 1/2]", "units": "a, b ~ U[-1, 1]"},
              "errors": rows, "units_needed_median": needed, "seconds": time.perf_counter() - start}
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, label in (("single", "single product (Malach)"), ("linear", "linear diamond"),
                          ("relu", "ReLU diamond (Pensia)")):
        sel = [r for r in rows if r["method"] == method]
        axes[0].plot([r["n"] for r in sel], [r["median"] for r in sel], "o-", label=label)
    axes[0].set(xscale="log", yscale="log", xlabel="random units n", ylabel="median sup error over |x| <= 1",
                title="one target weight")
    axes[0].legend()
    for method in ("single", "relu"):
        axes[1].plot([math.log(1 / r["eps"]) for r in needed], [r[method] if r[method] else np.nan for r in needed],
                     "o-", label=f"{method}: n for median error <= eps")
    axes[1].plot([math.log(1 / r["eps"]) for r in needed], [r["lower_bound_shape"] for r in needed], "k--",
                 label="log2(1/eps): lower-bound shape")
    axes[1].set(yscale="log", xlabel="ln(1/eps)", ylabel="units needed", title="log(1/eps) vs poly(1/eps)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out / "diamond.png")
    plt.close(fig)
    write_json(out / "diamond.json", result)
    return result


def run_network(out: Path, weights: Optional[list[np.ndarray]], widths: Sequence[int], n: int, eps: float,
                sweep: Sequence[int] = (2, 4, 8, 12, 16, 20, 24), samples: int = 1000, seed: int = 0,
                progress: bool = True) -> dict:
    from tqdm import tqdm

    start = time.perf_counter()
    target = weights if weights is not None else strong_lth.random_target(widths, seed)
    main = strong_lth.approximate_network(target, n, eps, samples, seed)
    curve = []
    for k in tqdm(list(sweep), desc="network", disable=None if progress else True, leave=False):
        for method in ("relu", "single"):
            curve.append(strong_lth.approximate_network(target, int(k), eps, samples, seed, method).summary(eps))
    entry = np.concatenate([blk.entry_errors.ravel() for blk in main.blocks])
    result = {"experiment": "network",
              "settings": {"widths": [int(np.shape(target[0])[1])] + [int(np.shape(W)[0]) for W in target],
                           "n": n, "eps": eps, "samples": samples, "seed": seed,
                           "target": "given weights" if weights is not None else "random, U[-1,1]/sqrt(fan-in)"},
              "result": main.summary(eps), "sweep": curve,
              "lower_bound_shape_width": strong_lth.lower_bound_width(int(np.shape(target[0])[1]), eps),
              "seconds": time.perf_counter() - start}
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    floor = max(float(np.quantile(entry[entry > 0], 0.001)) if np.any(entry > 0) else 1e-12, 1e-16)
    axes[0].hist(np.clip(entry, floor, None), bins=np.logspace(math.log10(floor), max(0.0, math.log10(entry.max())), 50))
    axes[0].axvline(eps, color="k", ls="--", label=f"eps = {eps:g}")
    axes[0].set(xscale="log", xlabel="entry error (sup over |x_j| <= 1)", ylabel="entries",
                title=f"n = {n}: {100 * main.fraction_within:.1f}% within eps, kept/target = "
                      f"{main.kept_parameters / main.target_parameters:.2f}x")
    axes[0].legend()
    for method, label in (("relu", "ReLU diamond (subset sum)"), ("single", "single product")):
        sel = [r for r in curve if r["method"] == method]
        axes[1].plot([r["random_to_target"] for r in sel], [r["output_error"] for r in sel], "o-", label=label)
    axes[1].set(yscale="log", xlabel="random / target parameters", ylabel="max output error, ||x|| <= 1",
                title="network approximation")
    axes[1].legend()
    fig.tight_layout()
    _save(fig, out / "network.png")
    plt.close(fig)
    write_json(out / "network.json", result)
    return result
