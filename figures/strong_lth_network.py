"""Figure 12: a target MLP approximated by pruning a random network, at Pensia et al.'s scale
(a 784-500-10 target, 21 random units per target weight; lecture slides "From model pruning to
sparse updates and the LTH", Part II). The small scale prunes for a 784-100-10 target with the
same construction.

No training: ``theory.strong_lth.approximate_network`` builds the random ReLU-diamond network
(twice as deep, n hidden units per target input), solves every entry's two subset-sum problems
exactly, and measures the output error over inputs from the unit ball; the single-product
construction (Malach et al.) prunes the same random network for comparison.
"""
from __future__ import annotations

import math

import numpy as np

from .core import Caption, Context, Figure, Result, mean_sd
from .lueker import numba_threads, theory_provenance
from .style import COLORS, legend, subplots, title

PENSIA_N = 21  # random units per target weight in Pensia et al.'s experiment
PENSIA_KEPT_TO_TARGET = 9.39  # kept / target parameters they report for it
EPS = 0.01
METHODS = ("relu", "single")
LABELS = {"relu": "ReLU diamond (Pensia et al.)", "single": "single product (Malach et al.)"}
ROLE = {"relu": "relu-diamond", "single": "single-product"}
MARKERS = {"relu": "o", "single": "s"}
CLAIM = ("Pensia et al., \"Optimal lottery tickets via SubsetSum: logarithmic over-parameterization is sufficient\" "
         "(2020), as in the lecture slides \"From model pruning to sparse updates and the LTH\" (Part II): a target "
         "network of width d and depth l is approximated to eps on the unit ball by pruning a random network a factor "
         "O(log(d l / eps)) wider and twice as deep (\"a D log D random net contains ALL networks of size D\"), "
         "against the O(d^4 l^2) of Malach et al., \"Proving the lottery ticket hypothesis: pruning is all you need\". "
         f"Their experiment approximates a 784-500-10 MNIST network with n = {PENSIA_N} random weights per target "
         f"weight; the pruned network keeps {PENSIA_KEPT_TO_TARGET}x the target's parameters.")


def settings(ctx: Context) -> dict:
    """This scale's target widths, the n of the detailed run, the n swept, the inputs sampled from
    the unit ball, and the seeds (each a target and a random network)."""
    return ctx.pick(
        tiny=dict(widths=[20, 10, 5], n=8, sweep=[2, 4, 8], samples=200, seeds=[0]),
        # Pensia's input width and construction with a 100-unit hidden layer: a fifth of their
        # 397,000 target weights, so the sweep and two seeds take well under a minute on 2 cores
        small=dict(widths=[784, 100, 10], n=PENSIA_N, sweep=[2, 4, 8, 12, 16, 21, 24, 28, 32], samples=1000,
                   seeds=[0, 1]),
        paper=dict(widths=[784, 500, 10], n=PENSIA_N, sweep=[2, 4, 8, 12, 16, 21, 24, 28, 32], samples=10000,
                   seeds=[0, 1, 2]),
    )


def make(ctx: Context) -> Result:
    from theory import strong_lth

    s = settings(ctx)
    ns = sorted(set(s["sweep"]) | {s["n"]})
    rows: list[dict] = []
    entries: dict[str, np.ndarray] = {}
    zero: dict[int, float] = {}
    with numba_threads(ctx.threads) as threads:
        for seed in s["seeds"]:
            target = strong_lth.random_target(s["widths"], seed)
            x = strong_lth.unit_ball(s["samples"], s["widths"][0], seed=seed + 7)  # approximate_network's inputs
            zero[seed] = float(np.abs(strong_lth.relu_network(target, x)).max())
            for n in ns:
                for method in METHODS:
                    r = strong_lth.approximate_network(target, n, EPS, s["samples"], seed, method)
                    if seed == s["seeds"][0] and n == s["n"]:
                        entries[method] = np.concatenate([blk.entry_errors.ravel() for blk in r.blocks])
                    rows.append(dict(panel="sweep", series=method, seed=seed, widths="-".join(map(str, s["widths"])),
                                     samples=s["samples"], zero_network_error=zero[seed], **r.summary(EPS)))

    def stat(method: str, n: int, key: str) -> tuple[float, float]:
        return mean_sd([r[key] for r in rows if r["panel"] == "sweep" and r["series"] == method and r["n"] == n])

    positive = np.concatenate([e[e > 0] for e in entries.values()])
    floor = max(float(np.quantile(positive, 0.001)), 1e-12) if len(positive) else 1e-12
    top = max(max(float(e.max()) for e in entries.values()), EPS) * 1.5
    bins = np.logspace(math.log10(floor), math.log10(top), 41)
    for method, e in entries.items():
        counts, _ = np.histogram(np.clip(e, floor, None), bins=bins)
        for lo, hi, c in zip(bins[:-1], bins[1:], counts):
            rows.append(dict(panel="entry_errors", series=method, seed=s["seeds"][0], n=s["n"], bin_low=float(lo),
                             bin_high=float(hi), count=int(c)))

    seeds_note = f"mean ± SD over {len(s['seeds'])} seeds" if len(s["seeds"]) > 1 else f"seed {s['seeds'][0]}"
    fig, axes = subplots(2, 2, width=5.0, height=3.6)
    ax = axes[0, 0]
    for method in METHODS:
        ax.hist(np.clip(entries[method], floor, None), bins=bins, histtype="step", linewidth=1.6,
                color=COLORS[ROLE[method]], label=LABELS[method])
    ax.axvline(EPS, color=COLORS["bound"], linestyle="--", linewidth=1, label=f"eps = {EPS:g}")
    ax.set(xscale="log", yscale="log", xlabel="entry error, sup over |x_j| <= 1 (weight units, log)",
           ylabel="target weights (count, log)")
    ax.set_title(f"every target weight's error at n = {s['n']} (seed {s['seeds'][0]})", fontsize=9)
    legend(ax, loc="upper left")

    ax = axes[0, 1]
    for method in METHODS:
        m, sd = zip(*(stat(method, n, "output_error") for n in ns))
        ax.errorbar(ns, m, yerr=sd, fmt="-", marker=MARKERS[method], color=COLORS[ROLE[method]], label=LABELS[method])
    zero_mean = mean_sd(list(zero.values()))[0]
    ax.axhline(zero_mean, color=COLORS["random"], linestyle=":", label=f"everything pruned (output 0): {zero_mean:.3g}")
    ax.axhline(EPS, color=COLORS["bound"], linestyle="--", linewidth=1, label=f"eps = {EPS:g}")
    ax.axvline(s["n"], color=COLORS["chance"], linewidth=0.8, alpha=0.6,
               label=f"n = {s['n']}" + (" (Pensia et al.'s)" if s["n"] == PENSIA_N else ""))
    ax.set(yscale="log", xlabel="random units per target weight n (count)",
           ylabel="max output error, ||x|| <= 1 (log)")
    ratio = stat("relu", ns[0], "random_to_target")[0] / ns[0]  # random / target parameters per unit of n
    top_axis = ax.secondary_xaxis("top", functions=(lambda k: k * ratio, lambda r: r / ratio))
    top_axis.set_xlabel("random / target parameters (ratio)", fontsize=8)
    top_axis.tick_params(labelsize=8)
    ax.set_title(f"output error ({seeds_note}, {s['samples']} inputs)", fontsize=9)
    legend(ax, loc="lower left")

    ax = axes[1, 0]
    for method in METHODS:
        m, sd = zip(*(stat(method, n, "fraction_within_eps") for n in ns))
        ax.errorbar(ns, [100 * v for v in m], yerr=[100 * v for v in sd], fmt="-", marker=MARKERS[method],
                    color=COLORS[ROLE[method]], label=LABELS[method])
    trivial = stat("relu", ns[0], "trivial_fraction")[0]
    ax.axhline(100 * trivial, color=COLORS["random"], linestyle=":",
               label=f"|w| <= eps already (empty subset): {100 * trivial:.1f} %")
    ax.set(xlabel="random units per target weight n (count)", ylabel=f"target weights within eps = {EPS:g} (%)")
    ax.set_ylim(0, 105)
    ax.set_title("fraction of weights approximated to eps", fontsize=9)
    legend(ax, loc="upper left")

    ax = axes[1, 1]
    for method in METHODS:
        m, sd = zip(*(stat(method, n, "kept_to_target") for n in ns))
        ax.errorbar(ns, m, yerr=sd, fmt="-", marker=MARKERS[method], color=COLORS[ROLE[method]],
                    label=f"kept, {LABELS[method]}")
    ax.plot(ns, [stat("relu", n, "random_to_target")[0] for n in ns], "--", color=COLORS["random"],
            label="the random network before pruning")
    ax.plot([PENSIA_N], [PENSIA_KEPT_TO_TARGET], "*", ms=12, color=COLORS["dense"],
            label=f"Pensia et al., trained 784-500-10 ({PENSIA_KEPT_TO_TARGET}x)")
    ax.set(yscale="log", xlabel="random units per target weight n (count)",
           ylabel="parameters / target parameters (ratio, log)")
    ax.set_title("size of the pruned and the random network", fontsize=9)
    legend(ax, loc="upper left")
    title(fig, f"Pruning a random network to approximate a {'-'.join(map(str, s['widths']))} target MLP "
               "(random target weights, U[-1, 1]/sqrt(fan-in))")

    n, top_n = s["n"], ns[-1]
    relu_err, single_err = stat("relu", n, "output_error"), stat("single", n, "output_error")
    relu_in, single_in = stat("relu", n, "fraction_within_eps"), stat("single", n, "fraction_within_eps")
    kept = stat("relu", n, "kept_to_target")
    target_params = next(r["target_parameters"] for r in rows if r["panel"] == "sweep")
    ours = (f"Target {'-'.join(map(str, s['widths']))} ({target_params:,} weights, random), {seeds_note}. At n = {n} "
            f"random units per target weight the ReLU diamond puts {100 * relu_in[0]:.1f} % of the weights within "
            f"eps = {EPS:g} (single product {100 * single_in[0]:.1f} %; {100 * trivial:.1f} % have |w| <= eps already) "
            f"and its max output error is {relu_err[0]:.3g} (single product {single_err[0]:.3g}, everything pruned "
            f"{zero_mean:.3g}); the pruned network keeps {kept[0]:.2f}x the target's parameters (Pensia et al.: "
            f"{PENSIA_KEPT_TO_TARGET}x) out of a random network {stat('relu', n, 'random_to_target')[0]:.0f}x its size. "
            f"At n = {top_n}: output error {stat('relu', top_n, 'output_error')[0]:.3g} (ReLU diamond) against "
            f"{stat('single', top_n, 'output_error')[0]:.3g} (single product).")
    relu_top, single_top = stat("relu", top_n, "output_error")[0], stat("single", top_n, "output_error")[0]
    n_eps = {m: next((k for k in ns if stat(m, k, "output_error")[0] <= EPS), None) for m in METHODS}
    ours += (f" Relative to the target's largest output on the unit ball ({zero_mean:.3g}) the ReLU diamond's error "
             f"at n = {n} is {100 * relu_err[0] / zero_mean:.0f} %. The mean output error first reaches eps at n = "
             + (f"{n_eps['relu']}" if n_eps["relu"] else f"none up to {top_n}") + " (ReLU diamond); the single "
             "product " + (f"at n = {n_eps['single']}." if n_eps["single"] else f"does not within n <= {top_n}."))
    if n_eps["relu"] is not None and relu_in[0] >= 0.9 and relu_top * 3 <= single_top:
        verdict = "holds"
    elif relu_top < single_top:
        verdict = "partly"
    else:
        verdict = "does not show at this scale"
    setup = (f"theory.strong_lth.approximate_network on random_target({s['widths']}, seed) for seeds "
             f"{', '.join(map(str, s['seeds']))}, n = {', '.join(map(str, ns))}, both constructions on the same random "
             f"network (random weights U[-1, 1]), eps = {EPS:g}, output error on {s['samples']} inputs from the unit "
             f"ball. The target is random, not a trained MNIST network: the figure checks the approximation, not "
             f"accuracy; its layers have norm about 1, as the theorem assumes, so its outputs on the unit ball are "
             f"small and eps = {EPS:g} is an absolute, not a relative, error. Verdict rule: holds if the ReLU diamond's mean output error reaches eps within n <= {top_n} "
             f"(a logarithmic over-parameterisation), >= 90 % of the weights are within eps at n = {n}, and at "
             f"n = {top_n} its error is at least 3x below the single product's; partly if it is only below the "
             f"single product's. "
             f"Scale {ctx.scale}."
             + (" Small: Pensia et al.'s input width and n with a 100-unit hidden layer (a fifth of their weights) "
                "keeps the figure within a minute on 2 cores; the paper scale is their 784-500-10." if
                ctx.scale == "small" else ""))
    extra = {"theory": {"eps": EPS, **s, "ns": ns, "zero_network_error": zero, "n_reaching_eps": n_eps,
                        **theory_provenance(threads)}}
    return Result(fig, rows, Caption(claim=CLAIM, ours=ours, verdict=verdict, setup=setup), extra)


FIGURE = Figure(
    name="strong-lth-network",
    title="Pruning a random network to approximate a target MLP (strong lottery tickets by subset sum)",
    reproduces="Pensia et al. 2020, \"Optimal lottery tickets via SubsetSum\", their MLP experiment, as in the "
               "lecture slides \"From model pruning to sparse updates and the LTH\", Part II",
    small_minutes=0.7,
    make=make,
    paper_datasets=(),
)
