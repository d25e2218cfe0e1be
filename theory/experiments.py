"""The three experiments behind ``python -m theory``: each returns a JSON-ready dict and draws a PNG.

- ``lueker``: failure probability against n for several eps (with Wilson intervals and Theorem
  2.4's bound at the smallest consistent C), the n needed for 50% / 99% success against
  ln(1/eps), and the exact worst-case error distribution for small n.
- ``diamond``: one weight, error against the number of random units for the single-product,
  linear-diamond and ReLU-diamond constructions; the units needed against eps, beside the shape of
  the log(1/eps) lower bound.
- ``network``: a target MLP approximated by pruning the random ReLU-diamond network (and by the
  single-product construction), output error against the units per target weight (and the
  random-to-target parameter ratio), beside the error of pruning everything; and one run at a
  chosen n reporting entry errors, kept-to-target ratio and time.

Each writes ``NAME.json`` and ``NAME.png`` together (``write_outputs``); JSON is strict: a
non-finite number is written as null. Each JSON's ``provenance`` names the numba, numpy and Python
versions and the numba threads used (``provenance_record``).
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import lueker, strong_lth


def provenance_record(threads: Optional[int] = None) -> dict:
    """What computed a result: versions of numba, numpy and Python, and ``threads``, the numba
    threads the kernels ran on (numba's current count when None)."""
    import platform

    import numba

    return {"numba": numba.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "threads": numba.get_num_threads() if threads is None else int(threads)}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def strict_json(data):
    """``data`` with every NaN or infinite float replaced by ``None`` (JSON has no such numbers),
    numpy scalars turned into Python numbers and tuples into lists."""
    if isinstance(data, dict):
        return {str(k): strict_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict_json(v) for v in data]
    if isinstance(data, (bool, np.bool_)):
        return bool(data)
    if isinstance(data, (int, np.integer)):
        return int(data)
    if isinstance(data, (float, np.floating)):
        return float(data) if math.isfinite(data) else None
    return data


def write_outputs(out: Path, name: str, fig, data: dict) -> tuple[Path, Path]:
    """Write this call's ``NAME.png`` and ``NAME.json`` in ``out``; return their paths.

    Both are first written to temporary files; then the earlier call's pair is removed, the PNG
    renamed into place and the JSON last (the JSON marks a complete pair). So ``out`` never holds
    one call's file beside another call's: an interruption leaves the earlier call's pair, no
    pair, this call's PNG alone, or this call's pair."""
    out.mkdir(parents=True, exist_ok=True)
    png, js = out / f"{name}.png", out / f"{name}.json"
    # named by the process (not mkstemp: its files are private, 0600, whatever the umask)
    tmp_png, tmp_json = (out / f".{name}.{os.getpid()}.tmp{suffix}" for suffix in (".png", ".json"))
    # Ctrl-C waits until the pair is in place (and the temporary files gone), then takes effect
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with open(tmp_json, "w") as f:
            json.dump(strict_json(data), f, indent=2, allow_nan=False)
            f.write("\n")
        fig.savefig(tmp_png, dpi=120, bbox_inches="tight")
        js.unlink(missing_ok=True)
        png.unlink(missing_ok=True)
        os.replace(tmp_png, png)
        os.replace(tmp_json, js)
    finally:
        tmp_png.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    return js, png


def run_lueker(out: Path, ns: Sequence[int], epss: Sequence[float], trials: int = 200, n_max: int = 48,
               worst_ns: Sequence[int] = (4, 8, 12, 16), seed: int = 0, progress: bool = True,
               provenance: Optional[dict] = None) -> dict:
    """Lueker's Theorem 2.4 by simulation; writes ``lueker.json`` and ``lueker.png`` in ``out``.

    Returns the JSON's dict: failure rates per (n, eps) with Wilson intervals, the smallest
    constant C consistent with them, the n needed for 50% / 99% success per eps (None above
    ``n_max``, which only limits the search), and the exact worst-case error eps*(n) for small n.
    ``seconds`` is the wall-clock time of the computation."""
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
                     "worst_ns": list(map(int, worst_ns)), "seed": seed},
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
    axes[0].set(xlabel="n (random values U[-1, 1])", ylabel="P(failure) (fraction of trials)",
                title=f"failure rate (95% Wilson intervals)\ndashed: Lueker's Thm 2.4 bound, C = {c_low:.2f}")
    axes[0].set_yscale("symlog", linthresh=1e-3)
    axes[0].legend(fontsize=7)
    x = [r["log_inv_eps"] for r in needed]
    for key, label in (("n_50", "50% success"), ("n_99", "99% success")):
        axes[1].plot(x, [r[key] if r[key] is not None else np.nan for r in needed], "o-", label=label)
    axes[1].set(xlabel="ln(1/eps) (eps: distance on the real line)", ylabel="n needed (random values)",
                title=f"n needed (Lueker: linear in ln 1/eps)\nsearched up to n = {n_max}")
    axes[1].legend()
    axes[2].boxplot([worst[n] for n in worst], showfliers=False)
    axes[2].set_xticks(range(1, len(worst) + 1), [str(n) for n in worst])
    axes[2].set(yscale="log", xlabel="n (random values U[-1, 1])",
                ylabel="eps*(n) (distance on the real line)",
                title=f"exact worst-case error on [-1/2, 1/2]\n{trials} trials per n")
    fig.tight_layout()
    result["provenance"] = provenance or provenance_record()
    write_outputs(out, "lueker", fig, result)
    plt.close(fig)
    return result


# one colour and marker per construction, the same in every panel and plot
STYLE = {"single": ("tab:blue", "s", "single product (Malach et al.)"),
         "linear": ("tab:green", "^", "linear diamond (subset sum)"),
         "relu": ("tab:red", "o", "ReLU diamond (Pensia et al.)")}


def run_diamond(out: Path, ns: Sequence[int], trials: int = 200, epss: Sequence[float] = (0.1, 0.03, 0.01, 0.003, 0.001),
                seed: int = 0, progress: bool = True,
                single_ns: Sequence[int] = tuple(2 ** k for k in range(6, 13)),
                provenance: Optional[dict] = None) -> dict:
    """One target weight approximated by the three constructions; writes ``diamond.json`` and
    ``diamond.png`` in ``out``.

    Returns the JSON's dict: median / 90th-percentile / max sup error over |x| <= 1 per (n,
    construction), and the units needed for a median error <= eps (None if the sweep never gets
    there) beside the log2(1/eps) lower-bound shape. ``seconds`` is wall-clock time."""
    start = time.perf_counter()
    rows = strong_lth.diamond_sweep(ns, trials, seed, progress=progress, single_ns=single_ns)
    needed = [{"eps": float(e), **strong_lth.units_needed(rows, e), "lower_bound_shape": strong_lth.lower_bound_width(1, e)}
              for e in epss]
    result = {"experiment": "diamond", "settings": {"ns": list(map(int, ns)), "trials": trials, "seed": seed,
                                                    "targets": "w ~ U[-1/2, 1/2]", "units": "a, b ~ U[-1, 1]"},
              "errors": rows, "units_needed_median": needed, "seconds": time.perf_counter() - start}
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in strong_lth.METHODS:
        color, marker, label = STYLE[method]
        sel = [r for r in rows if r["method"] == method]
        axes[0].plot([r["n"] for r in sel], [r["median"] for r in sel], "-", marker=marker, color=color, label=label)
    axes[0].set(xscale="log", yscale="log", xlabel="random units n (count)",
                ylabel="median sup error over |x| <= 1 (weight units)", title=f"one target weight, {trials} targets")
    axes[0].legend(fontsize=8)
    log_inv = [math.log(1 / r["eps"]) for r in needed]
    for method in strong_lth.METHODS:
        color, marker, label = STYLE[method]
        axes[1].plot(log_inv, [r[method] if r[method] else np.nan for r in needed], "-", marker=marker,
                     color=color, label=label)
    axes[1].plot(log_inv, [r["lower_bound_shape"] for r in needed], "k--", label="log2(1/eps): lower-bound shape")
    axes[1].set(yscale="log", xlabel="ln(1/eps) (eps in weight units)",
                ylabel="units n for median error <= eps (count)",
                title="units needed: log(1/eps) vs poly(1/eps)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    result["provenance"] = provenance or provenance_record()
    write_outputs(out, "diamond", fig, result)
    plt.close(fig)
    return result


def run_network(out: Path, weights: Optional[list[np.ndarray]], widths: Sequence[int], n: int, eps: float,
                sweep: Sequence[int] = (2, 4, 8, 12, 16, 20, 24), samples: int = 1000, seed: int = 0,
                progress: bool = True, provenance: Optional[dict] = None) -> dict:
    """A target MLP approximated by pruning a random ReLU-diamond network; writes ``network.json``
    and ``network.png`` in ``out``.

    Returns the JSON's dict: the run at ``n`` units per target weight (entry errors, fraction
    within ``eps``, kept / random / target parameter counts, max output error over ``samples``
    inputs from the unit ball, solve time in seconds), the same summary for every n in ``sweep``
    and both constructions, and ``zero_network_error``: the output error of pruning everything
    (output 0), the baseline every approximation must beat."""
    from tqdm import tqdm

    start = time.perf_counter()
    target = weights if weights is not None else strong_lth.random_target(widths, seed)
    main = strong_lth.approximate_network(target, n, eps, samples, seed)
    curve = []
    for k in tqdm(list(sweep), desc="network", disable=None if progress else True, leave=False):
        for method in ("relu", "single"):
            curve.append(strong_lth.approximate_network(target, int(k), eps, samples, seed, method).summary(eps))
    entry = np.concatenate([blk.entry_errors.ravel() for blk in main.blocks])
    d_in = int(np.shape(target[0])[1])
    # the inputs approximate_network evaluates on (same seed), so the baseline is on the same points
    x = strong_lth.unit_ball(samples, d_in, seed=seed + 7)
    zero_error = float(np.abs(strong_lth.relu_network(target, x)).max())
    result = {"experiment": "network",
              "settings": {"widths": [d_in] + [int(np.shape(W)[0]) for W in target],
                           "n": n, "eps": eps, "sweep": list(map(int, sweep)), "samples": samples, "seed": seed,
                           "target": "given weights" if weights is not None else "random, U[-1,1]/sqrt(fan-in)"},
              "result": main.summary(eps), "sweep": curve, "zero_network_error": zero_error,
              "lower_bound_shape_width": strong_lth.lower_bound_width(d_in, eps),
              "seconds": time.perf_counter() - start}
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    positive = entry[entry > 0]
    floor = max(float(np.quantile(positive, 0.001)) if len(positive) else 1e-12, 1e-16)
    top = max(float(entry.max()), eps, floor * 10)
    axes[0].hist(np.clip(entry, floor, None), bins=np.logspace(math.log10(floor), math.log10(top), 50),
                 color=STYLE["relu"][0])
    axes[0].axvline(eps, color="k", ls="--", label=f"eps = {eps:g}")
    axes[0].set(xscale="log", xlabel="entry error, sup over |x_j| <= 1 (weight units)", ylabel="target entries (count)",
                title=f"ReLU diamond, n = {n}: {100 * main.fraction_within:.1f}% of entries within eps,\n"
                      f"kept / target parameters = {main.kept_parameters / main.target_parameters:.2f}x")
    axes[0].legend(fontsize=8)
    # x = units per target weight: both constructions prune the same random network, so they share
    # the parameter ratio; it is shown on the top axis (it is proportional to n)
    ratio = main.random_parameters / main.target_parameters / n  # random / target parameters per unit
    errors = [r["output_error"] for r in curve] + [zero_error]
    log_y = all(e > 0 for e in errors)
    for method in ("relu", "single"):
        color, marker, label = STYLE[method]
        sel = [r for r in curve if r["method"] == method]
        axes[1].plot([r["n"] for r in sel], [r["output_error"] for r in sel], "-", marker=marker, ms=7,
                     color=color, label=label)
    axes[1].axhline(zero_error, color="gray", ls=":", label="everything pruned (output 0)")
    ks = sorted({int(k) for k in sweep})
    pad = max(1.0, 0.08 * (ks[-1] - ks[0])) if ks else 1.0
    axes[1].set_xlim((ks[0] - pad, ks[-1] + pad) if ks else (n - 1, n + 1))
    if ks and len(ks) <= 12:
        axes[1].set_xticks(ks)
    if log_y:
        low, high = min(errors), max(errors)
        axes[1].set_yscale("log")
        axes[1].set_ylim(low / 3, high * 3)
    top_axis = axes[1].secondary_xaxis("top", functions=(lambda k: k * ratio, lambda r: r / ratio))
    top_axis.set_xlabel("random / target parameters (ratio)")
    axes[1].set(xlabel="random units per target weight n (count)",
                ylabel="max output error, ||x|| <= 1 (output units)",
                title=f"network {result['settings']['widths']}, {samples} inputs")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    result["provenance"] = provenance or provenance_record()
    write_outputs(out, "network", fig, result)
    plt.close(fig)
    return result
