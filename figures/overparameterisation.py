"""Figure 11: the over-parameterisation needed to approximate one weight and one layer to eps by
pruning random weights: the single product of Malach et al. against the linear and the ReLU
diamond of Pensia et al., beside the shape of Pensia et al.'s lower bound (lecture slides "From
model pruning to sparse updates and the LTH", Part II).

No training: ``theory.strong_lth`` solves every subset-sum problem exactly (meet in the middle).
One weight: w ~ U[-1/2, 1/2], random a_i, b_i ~ U[-1, 1], sup error over |x| <= 1. One layer: a
random d x d target (U[-1, 1]/sqrt(d)) from a random two-layer block with n hidden units per input,
max output error over inputs from the unit ball.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .core import Caption, Context, Figure, Result
from .lueker import loglog_slope, numba_threads, theory_provenance
from .style import COLORS, legend, subplots, title

SEED = 0
LABELS = {"single": "single product (Malach et al.)", "linear": "linear diamond (subset sum)",
          "relu": "ReLU diamond (Pensia et al.)"}
ROLE = {"single": "single-product", "linear": "linear-diamond", "relu": "relu-diamond"}
MARKERS = {"single": "s", "linear": "^", "relu": "o"}
CLAIM = ("Lecture slides \"From model pruning to sparse updates and the LTH\", Part II: Malach et al., \"Proving the "
         "lottery ticket hypothesis: pruning is all you need\" (2020) keep one random weight per target weight (\"if "
         "we draw 1/eps random weights, one will be eps-close to target with constant probability\"), so their "
         "construction needs poly(1/eps) random weights, \"unavoidable if you prune down to one weight\" (a network "
         "O(d^4 l^2) wider); Pensia et al., \"Optimal lottery tickets via SubsetSum: logarithmic over-parameterization "
         "is sufficient\" (2020) combine subsets (the linear diamond; with ReLUs the diamond splits the units by the "
         "sign of a_i) and, by Lueker's theorem, need only O(log(1/eps)) random weights per target weight, which is "
         "optimal: some width-d network cannot be approximated to eps unless the random network has width "
         "Omega(d log(1/eps)).")


def settings(ctx: Context) -> dict:
    """This scale's grid: units n and targets (trials) of the one-weight sweep (``single_ns``: the
    single product alone, which needs far more units), the eps read off it, and the d x d layer's
    width, units per input, seeds (one target and one random block each), eps and input samples."""
    return ctx.pick(
        tiny=dict(ns=[1, 2, 4, 8, 12], trials=30, single_ns=[16, 64, 256], epss=[0.1, 0.03, 0.01],
                  d=5, layer_ns=[1, 2, 4, 8], seeds=[0], layer_epss=[0.3, 0.1], samples=200),
        # 300 targets make each median good to a few percent; n <= 32 keeps the linear diamond's
        # meet in the middle (two halves of 2^16 sums) quick; a 20 x 20 layer with 3 seeds is seconds
        small=dict(ns=[1, 2, 3, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32], trials=300,
                   single_ns=sorted({round(2 ** (k / 2)) for k in range(8, 29)}),
                   epss=[0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 5e-4, 2e-4, 1e-4],
                   d=20, layer_ns=[1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48], seeds=[0, 1, 2],
                   layer_epss=[0.3, 0.1, 0.03, 0.01, 0.003, 0.001], samples=1000),
        # Pensia et al.'s hidden width (500) for the layer, more targets and smaller eps for the weight
        # (the single product's largest n, 2^16, holds three 1000 x 2^16 arrays: about 1.5 GB)
        paper=dict(ns=[1, 2, 3, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 36, 40], trials=1000,
                   single_ns=sorted({round(2 ** (k / 2)) for k in range(8, 33)}),
                   epss=[0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 5e-4, 2e-4, 1e-4, 5e-5, 2e-5, 1e-5],
                   d=500, layer_ns=[1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48],
                   seeds=[0, 1, 2, 3, 4],
                   layer_epss=[0.3, 0.1, 0.03, 0.01, 0.003, 0.001], samples=10000),
    )


def needed_n(points: list[tuple[int, float]], eps: float) -> Optional[int]:
    """Smallest n among ``(n, error)`` points whose error is at most eps (None if none is)."""
    ok = [n for n, e in points if e <= eps]
    return min(ok) if ok else None


def make(ctx: Context) -> Result:
    from theory import strong_lth

    s = settings(ctx)
    with numba_threads(ctx.threads) as threads:
        weight_rows = strong_lth.diamond_sweep(s["ns"], s["trials"], SEED, progress=ctx.progress,
                                               single_ns=s["single_ns"])
        layer = []
        for seed in s["seeds"]:
            target = strong_lth.random_target([s["d"], s["d"]], seed)  # one d x d layer
            x = strong_lth.unit_ball(s["samples"], s["d"], seed=seed + 7)  # the inputs approximate_network uses
            zero = float(np.abs(strong_lth.relu_network(target, x)).max())
            for n in s["layer_ns"]:
                for method in ("relu", "single"):
                    r = strong_lth.approximate_network(target, n, None, s["samples"], seed, method)
                    layer.append(dict(seed=seed, n=n, method=method, output_error=r.output_error,
                                      max_entry_error=r.max_entry_error, zero_error=zero,
                                      random_to_target=r.random_parameters / r.target_parameters,
                                      kept_to_target=r.kept_parameters / r.target_parameters))

    rows: list[dict] = []
    for r in weight_rows:
        rows.append(dict(panel="weight_error", series=r["method"], n=r["n"], median=r["median"], p90=r["p90"],
                         max=r["max"], trials=s["trials"], seed=SEED))
    weight_needed = {e: strong_lth.units_needed(weight_rows, e) for e in s["epss"]}
    for e, need in weight_needed.items():
        for method in strong_lth.METHODS:
            rows.append(dict(panel="weight_needed", series=method, eps=e, n=need[method],
                             reached=need[method] is not None, seed=SEED))
        rows.append(dict(panel="weight_needed", series="lower bound shape", eps=e,
                         n=strong_lth.lower_bound_width(1, e), reached=True, seed=SEED))
    for r in layer:
        rows.append(dict(panel="layer_error", series=r["method"], d=s["d"], samples=s["samples"], **r))
    layer_median = {(m, n): float(np.median([r["output_error"] for r in layer if r["method"] == m and r["n"] == n]))
                    for m in ("relu", "single") for n in s["layer_ns"]}
    zero_median = float(np.median([r["zero_error"] for r in layer]))
    layer_needed = {e: {m: needed_n([(n, layer_median[m, n]) for n in s["layer_ns"]], e) for m in ("relu", "single")}
                    for e in s["layer_epss"]}
    for e, need in layer_needed.items():
        for m in ("relu", "single"):
            rows.append(dict(panel="layer_needed", series=m, d=s["d"], eps=e, n=need[m], reached=need[m] is not None,
                             seeds=len(s["seeds"])))
        rows.append(dict(panel="layer_needed", series="lower bound shape", d=s["d"], eps=e,
                         n=strong_lth.lower_bound_width(1, e), reached=True))

    fig, axes = subplots(2, 2, width=5.0, height=3.6)
    ax = axes[0, 0]
    for method in strong_lth.METHODS:
        pts = [r for r in weight_rows if r["method"] == method]
        ax.plot([r["n"] for r in pts], [r["median"] for r in pts], "-", marker=MARKERS[method],
                color=COLORS[ROLE[method]], label=LABELS[method])
    ax.set(xscale="log", yscale="log", xlabel="random units n (count, log scale)",
           ylabel="median sup error over |x| <= 1 (log)")
    ax.set_title(f"one weight: error against units ({s['trials']} targets)", fontsize=9)
    legend(ax, loc="lower left")

    ax = axes[0, 1]
    inv = [1 / e for e in s["epss"]]
    for method in strong_lth.METHODS:
        pts = [(1 / e, weight_needed[e][method]) for e in s["epss"] if weight_needed[e][method] is not None]
        if pts:
            ax.plot(*zip(*pts), "-", marker=MARKERS[method], color=COLORS[ROLE[method]], label=LABELS[method])
    ax.plot(inv, [strong_lth.lower_bound_width(1, e) for e in s["epss"]], "--", color=COLORS["bound"],
            label="lower bound's shape, log2(1/eps) (constant 1)")
    ax.plot(inv, inv, ":", color=COLORS["single-product"], linewidth=1, label="Malach et al.'s lemma's shape, 1/eps")
    ax.set(xscale="log", yscale="log", xlabel="1/eps (eps: weight error, log scale)",
           ylabel="units n for median error <= eps (log)")
    ax.set_title("one weight: units needed, poly(1/eps) against log(1/eps)", fontsize=9)
    legend(ax, loc="upper left")

    ax = axes[1, 0]
    for method in ("relu", "single"):
        ns = s["layer_ns"]
        errs = [[r["output_error"] for r in layer if r["method"] == method and r["n"] == n] for n in ns]
        ax.plot(ns, [float(np.median(e)) for e in errs], "-", marker=MARKERS[method], color=COLORS[ROLE[method]],
                label=LABELS[method] + (f", median of {len(s['seeds'])} seeds" if len(s["seeds"]) > 1 else ""))
        if len(s["seeds"]) > 1:
            ax.fill_between(ns, [min(e) for e in errs], [max(e) for e in errs], color=COLORS[ROLE[method]],
                            alpha=0.2, linewidth=0)
    ax.axhline(zero_median, color=COLORS["random"], linestyle=":", label=f"everything pruned (output 0): {zero_median:.2f}")
    ax.set(yscale="log", xlabel="random units per input n (count; random/target parameters = 2n)",
           ylabel="max output error, ||x|| <= 1 (log)")
    ax.set_title(f"one {s['d']} x {s['d']} layer: error against units ({s['samples']} inputs)", fontsize=9)
    legend(ax, loc="lower left")

    ax = axes[1, 1]
    inv = [1 / e for e in s["layer_epss"]]
    for method in ("relu", "single"):
        pts = [(1 / e, layer_needed[e][method]) for e in s["layer_epss"] if layer_needed[e][method] is not None]
        if pts:
            ax.plot(*zip(*pts), "-", marker=MARKERS[method], color=COLORS[ROLE[method]], label=LABELS[method])
    ax.plot(inv, [strong_lth.lower_bound_width(1, e) for e in s["layer_epss"]], "--", color=COLORS["bound"],
            label="lower bound's shape: width d log2(1/eps), per input")
    ax.axhline(max(s["layer_ns"]), color=COLORS["chance"], linestyle=":", linewidth=1,
               label=f"largest n tried ({max(s['layer_ns'])})")
    ax.set(xscale="log", xlabel="1/eps (eps: max output error, log scale)",
           ylabel="units per input n for median error <= eps")
    ax.set_ylim(0, max(s["layer_ns"]) * 1.15)
    ax.set_title(f"one {s['d']} x {s['d']} layer: width factor needed (width = d n)", fontsize=9)
    legend(ax, loc="center right")
    title(fig, "Over-parameterisation needed to approximate a weight and a layer by pruning random weights")

    # caption numbers, all from the computed points
    def reached(needed: dict, method: str) -> list[float]:
        return [e for e in needed if needed[e][method] is not None]

    expo = {m: loglog_slope([1 / e for e in reached(weight_needed, m)],
                            [weight_needed[e][m] for e in reached(weight_needed, m)])
            if len(reached(weight_needed, m)) >= 3 else math.nan for m in strong_lth.METHODS}
    both = [e for e in s["epss"] if weight_needed[e]["single"] is not None and weight_needed[e]["relu"] is not None]
    relu_ratio = [weight_needed[e]["relu"] / strong_lth.lower_bound_width(1, e) for e in reached(weight_needed, "relu")]
    parts = []
    if both:
        e = min(both)
        parts.append(f"One weight, median over {s['trials']} targets: to reach eps = {e:g} the single product needs "
                     f"n = {weight_needed[e]['single']} random units, the linear diamond "
                     f"{weight_needed[e]['linear']}, the ReLU diamond {weight_needed[e]['relu']}")
    parts.append(f"as a power of 1/eps the units needed grow with exponent {expo['single']:.2f} (single), "
                 f"{expo['linear']:.2f} (linear diamond), {expo['relu']:.2f} (ReLU diamond)")
    if relu_ratio:
        parts.append(f"the ReLU diamond's n stays within {min(relu_ratio):.1f}-{max(relu_ratio):.1f}x of log2(1/eps), "
                     f"the lower bound's shape, over eps = {max(reached(weight_needed, 'relu')):g} to "
                     f"{min(reached(weight_needed, 'relu')):g}")
    lr, ls = reached(layer_needed, "relu"), reached(layer_needed, "single")
    n_top = max(s["layer_ns"])
    parts.append(f"one {s['d']} x {s['d']} layer (median of {len(s['seeds'])} seeds): the ReLU diamond reaches an output "
                 f"error of {min(lr):g} with n = {layer_needed[min(lr)]['relu']} units per input" if lr else
                 f"one {s['d']} x {s['d']} layer: the ReLU diamond reaches none of the eps within n <= {n_top}")
    parts[-1] += (f", the single product only {min(ls):g} (n = {layer_needed[min(ls)]['single']}) within n <= {n_top}"
                  if ls else f", the single product none of them within n <= {n_top}")
    parts[-1] += (f"; at n = {n_top} the errors are {layer_median['relu', n_top]:.2g} (ReLU diamond) and "
                  f"{layer_median['single', n_top]:.2g} (single), everything pruned {zero_median:.2g}")
    ours = "; ".join(parts) + "."
    weight_holds = expo["single"] >= 0.7 and expo["relu"] <= 0.35
    layer_holds = bool(lr) and (not ls or min(lr) < min(ls)) and layer_median["relu", n_top] < layer_median["single", n_top]
    verdict = "holds" if weight_holds and layer_holds else "partly" if weight_holds or layer_holds else \
        "does not show at this scale"
    setup = (f"theory.strong_lth, seed {SEED}. One weight: diamond_sweep over n = {', '.join(map(str, s['ns']))} "
             f"(all three constructions) and n = {s['single_ns'][0]}..{s['single_ns'][-1]} (single product alone), "
             f"{s['trials']} targets w ~ U[-1/2, 1/2]; units_needed at eps = {', '.join(f'{e:g}' for e in s['epss'])}. "
             f"One layer: approximate_network on a random {s['d']} x {s['d']} target (random_target, seeds "
             f"{', '.join(map(str, s['seeds']))}) at n = {', '.join(map(str, s['layer_ns']))} units per input "
             f"(the toolkit's layer solver takes n <= {strong_lth.MAX_ROW}), error on {s['samples']} inputs from the "
             f"unit ball. The lower bound's constant is not given by the theorem: the curve has constant 1. Verdict "
             f"rule: holds if the single product's units grow with exponent >= 0.7 in 1/eps and the ReLU diamond's "
             f"with <= 0.35, and in the layer the ReLU diamond reaches a smaller eps and a smaller error at the "
             f"largest n than the single product. Scale {ctx.scale}.")
    extra = {"theory": {"seed": SEED, **s, "exponents": expo, **theory_provenance(threads)}}
    return Result(fig, rows, Caption(claim=CLAIM, ours=ours, verdict=verdict, setup=setup), extra)


FIGURE = Figure(
    name="overparameterisation",
    title="Over-parameterisation needed for one weight and one layer: Malach et al. against Pensia et al.",
    reproduces="Malach et al. 2020 and Pensia et al. 2020, as in the lecture slides \"From model pruning to sparse "
               "updates and the LTH\", Part II",
    small_minutes=0.4,
    make=make,
    paper_datasets=(),
)
