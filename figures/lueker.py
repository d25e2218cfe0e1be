"""Figure 10: Lueker's subset-sum theorem by simulation (lecture slides "From model pruning to
sparse updates and the LTH", Part II): the failure probability against n for several eps beside
Theorem 2.4's bound, the n needed against ln(1/eps), and the exact worst-case error against n.

No training: every number comes from ``theory.lueker`` (Monte-Carlo trials of n values drawn from
U[-1, 1], exact interval-union coverage checks). Convention of ``theory.lueker``: eps = 2*eta,
failure means some target in [-1/2, 1/2] is farther than eps from every subset sum.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import numpy as np

from .core import Caption, Context, Figure, Result
from .style import COLORS, legend, subplots, title

SEED = 0
TARGET_FAILURE = 0.01  # the theorem's bound is read at this failure probability (1 %)
CLAIM = ("Lueker, \"Exponentially small bounds on the expected optimum of the partition and subset sum problems\" "
         "(1998), Theorem 2.4 as stated in the lecture slides \"From model pruning to sparse updates and the LTH\" "
         "(Part II): for X_1..X_n i.i.d. U[-1, 1] and n/2 >= C ln(1/eta), every value in [-1/2, 1/2] is within 2 eta "
         "of a subset sum except with probability at most exp(-(n/2 - C ln(1/eta))^2 / (2n)); so \"every number "
         "... can be approximated by taking a subset of log(1/eps) RVs\": n = O(log(1/eps)) values suffice, where "
         "picking a single value (Malach et al.'s lemma) needs about 1/eps of them, a poly(1/eps) dependence.")


@contextmanager
def numba_threads(threads: Optional[int]) -> Iterator[int]:
    """Run the theory kernels on ``threads`` numba threads (None: numba's choice; capped at numba's
    pool) and restore the previous count afterwards. Yields the count in use. Results do not depend
    on it (each kernel's iterations are independent), only the time."""
    import numba

    from theory.cli import set_threads

    before = numba.get_num_threads()
    try:
        yield set_threads(None if threads is None else min(threads, numba.config.NUMBA_NUM_THREADS))
    finally:
        numba.set_num_threads(before)


def theory_provenance(threads: int) -> dict:
    """Versions of the theory kernels' libraries and the numba threads used."""
    import numba

    return {"numba": numba.__version__, "numpy": np.__version__, "numba_threads": int(threads)}


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ln y against ln x (the exponent a of y ~ x^a); nan below two points."""
    if len(x) < 2:
        return float("nan")
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def line_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares (slope, intercept, R^2) of y against x; nans below three points."""
    if len(x) < 3:
        return float("nan"), float("nan"), float("nan")
    x, y = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(np.sum((y - (slope * x + intercept)) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    return float(slope), float(intercept), 1.0 - residual / total if total > 0 else 1.0


def settings(ctx: Context) -> dict:
    """This scale's grid: n and eps of the failure curves, eps of the n-needed search (up to
    ``n_max``), the n of the exact worst case, and the trials (independent draws) of each."""
    return ctx.pick(
        tiny=dict(ns=[2, 4, 8, 12], epss=[1e-1, 1e-2], trials=30, needed_epss=[1e-1, 3e-2, 1e-2], needed_trials=30,
                  n_max=24, worst_ns=[4, 6, 8], worst_trials=30),
        # eps down to 1e-4 keeps every coverage check under a second (1e-5 costs 10x: its interval
        # union has ~1/eps pieces); 400 trials put the 99 % point within about one n
        small=dict(ns=list(range(2, 33, 2)), epss=[1e-1, 1e-2, 1e-3, 1e-4], trials=400,
                   needed_epss=[1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4], needed_trials=400, n_max=36,
                   worst_ns=list(range(4, 17, 2)), worst_trials=400),
        # more trials and a decade smaller eps; a coverage check costs about 1/eps, so this is hours
        # on 2 cores and minutes on a many-core machine (the kernels run over all its cores)
        paper=dict(ns=list(range(2, 49, 2)), epss=[1e-1, 1e-2, 1e-3, 1e-4, 1e-5], trials=5000,
                   needed_epss=[1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5], needed_trials=2000,
                   n_max=48, worst_ns=list(range(4, 21, 2)), worst_trials=1000),
    )


def bound_n(eps: float, C: float, failure: float = TARGET_FAILURE, limit: int = 100_000) -> Optional[int]:
    """Smallest n at which Theorem 2.4's bound (constant ``C``) is at most ``failure``."""
    from theory.lueker import lueker_bound

    return next((n for n in range(1, limit) if lueker_bound(n, eps, C) <= failure), None)


def make(ctx: Context) -> Result:
    from theory import lueker

    s = settings(ctx)
    with numba_threads(ctx.threads) as threads:
        grid = lueker.failure_grid(s["ns"], s["epss"], s["trials"], SEED, progress=ctx.progress)
        needed = lueker.samples_needed(s["needed_epss"], s["needed_trials"], s["n_max"], SEED, progress=ctx.progress)
        worst = {n: lueker.worst_case_samples(n, s["worst_trials"], SEED) for n in s["worst_ns"]}
    c_low = lueker.smallest_constant(grid, "ci_low")
    c_point = lueker.smallest_constant(grid, "p")

    rows: list[dict] = []
    for e in grid:
        rows.append(dict(panel="failure", series=f"eps={e.eps:g}", n=e.n, eps=e.eps, failures=e.failures,
                         trials=e.trials, failure_probability=e.p, ci_low=e.ci_low, ci_high=e.ci_high,
                         bound=lueker.lueker_bound(e.n, e.eps, c_low), bound_C=c_low, seed=SEED))
    for r in needed:
        for q in ("50", "99"):
            rows.append(dict(panel="n_needed", series=f"{q} % of trials cover", eps=r["eps"],
                             log_inv_eps=r["log_inv_eps"], n=r[f"n_{q}"], reached=r[f"n_{q}"] is not None,
                             n_max=s["n_max"], trials=s["needed_trials"], seed=SEED))
        rows.append(dict(panel="n_needed", series=f"Theorem 2.4 bound <= {100 * TARGET_FAILURE:g} %", eps=r["eps"],
                         log_inv_eps=r["log_inv_eps"], n=bound_n(r["eps"], c_low), reached=True, bound_C=c_low,
                         seed=SEED))
    for n, w in worst.items():
        for stat, value in (("median", float(np.median(w))), ("p90", float(np.quantile(w, 0.9)))):
            rows.append(dict(panel="worst_case", series=stat, n=n, eps_star=value, trials=s["worst_trials"], seed=SEED))

    cmap = __import__("matplotlib").colormaps["viridis"]
    eps_color = {e: cmap(i / max(1, len(s["epss"]) - 1) * 0.85) for i, e in enumerate(s["epss"])}
    fig, axes = subplots(1, 3, width=4.6, height=4.8)
    ax = axes[0, 0]
    for e in s["epss"]:
        pts = [r for r in rows if r["panel"] == "failure" and r["eps"] == e]
        ns = [r["n"] for r in pts]
        p = np.array([100 * r["failure_probability"] for r in pts])
        err = [p - [100 * r["ci_low"] for r in pts], [100 * r["ci_high"] for r in pts] - p]
        ax.errorbar(ns, p, yerr=err, fmt="o-", ms=3, color=eps_color[e], label=f"measured, eps = {e:g}")
        ax.plot(ns, [100 * r["bound"] for r in pts], "--", color=eps_color[e], alpha=0.7, linewidth=1)
    ax.plot([], [], "--", color=COLORS["bound"], label=f"Theorem 2.4 bound, C = {c_low:.2f} (dashed, one per eps)")
    ax.set(xlabel="n (values drawn from U[-1, 1], count)", ylabel="failure probability (% of trials)")
    ax.set_title("P(some t in [-1/2, 1/2] not within eps)\n95 % Wilson intervals", fontsize=9)
    legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)

    ax = axes[0, 1]
    styles = {"50": ("o-", COLORS["ticket"]), "99": ("s-", COLORS["lot"])}
    for q, (fmt, color) in styles.items():
        pts = [r for r in rows if r["panel"] == "n_needed" and r["series"].startswith(f"{q} %") and r["reached"]]
        ax.plot([r["log_inv_eps"] for r in pts], [r["n"] for r in pts], fmt, color=color,
                label=f"measured: {q} % of trials cover")
    fit99 = [(r["log_inv_eps"], r["n"]) for r in rows if r["panel"] == "n_needed" and r["series"].startswith("99 %")
             and r["reached"]]
    slope, intercept, r2 = line_fit(*zip(*fit99)) if len(fit99) >= 3 else (math.nan, math.nan, math.nan)
    if math.isfinite(slope):
        xs = np.array([fit99[0][0], fit99[-1][0]])
        ax.plot(xs, slope * xs + intercept, ":", color=COLORS["lot"], linewidth=1,
                label=f"line fit to 99 %: {slope:.2f} n per unit (R² = {r2:.3f})")
    bpts = [r for r in rows if r["panel"] == "n_needed" and r["series"].startswith("Theorem")]
    ax.plot([r["log_inv_eps"] for r in bpts], [r["n"] for r in bpts], "--", color=COLORS["bound"],
            label=f"Theorem 2.4 bound (C = {c_low:.2f}) <= {100 * TARGET_FAILURE:g} %")
    ax.set(xlabel="ln(1/eps) (eps: distance on the real line)", ylabel="n needed (values, count)")
    ax.set_title(f"n needed against ln(1/eps)\n{s['needed_trials']} trials, searched up to n = {s['n_max']}",
                 fontsize=9)
    ax.set_ylim(bottom=0)
    legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1)

    ax = axes[0, 2]
    wn = list(worst)
    med = [r["eps_star"] for r in rows if r["panel"] == "worst_case" and r["series"] == "median"]
    p90 = [r["eps_star"] for r in rows if r["panel"] == "worst_case" and r["series"] == "p90"]
    ax.plot(wn, med, "o-", color=COLORS["ticket"], label="median over trials")
    ax.plot(wn, p90, "s--", color=COLORS["lot"], label="90th percentile")
    w_slope, _, w_r2 = line_fit(wn, np.log(med)) if len(wn) >= 3 else (math.nan, math.nan, math.nan)
    ax.set(yscale="log", xlabel="n (values drawn from U[-1, 1], count)",
           ylabel="worst-case error eps*(n) (distance, log scale)")
    ax.set_title(f"exact worst-case error over [-1/2, 1/2]\n{s['worst_trials']} trials per n", fontsize=9)
    legend(ax, loc="upper right")
    title(fig, "Lueker's theorem: subset sums of n = O(log 1/eps) random values cover [-1/2, 1/2] to eps")

    # caption numbers, all from the rows
    n99 = {r["eps"]: r["n"] for r in rows if r["panel"] == "n_needed" and r["series"].startswith("99 %")}
    n50 = {r["eps"]: r["n"] for r in rows if r["panel"] == "n_needed" and r["series"].startswith("50 %")}
    reached = [e for e in s["needed_epss"] if n99[e] is not None]
    big, small_eps = s["needed_epss"][0], s["needed_epss"][-1]
    elasticity = loglog_slope([1 / e for e in reached], [n99[e] for e in reached]) if len(reached) >= 2 else math.nan
    parts = []
    if n99[big] is not None and n99[small_eps] is not None:
        parts.append(f"99 % of {s['needed_trials']} trials cover [-1/2, 1/2] with n = {n99[big]} values at eps = "
                     f"{big:g} and n = {n99[small_eps]} at eps = {small_eps:g} (50 %: {n50[big]} and {n50[small_eps]}): "
                     f"1/eps grows {big / small_eps:,.0f}x, n grows {n99[small_eps] / n99[big]:.1f}x")
    else:
        parts.append(f"99 % coverage was reached within n <= {s['n_max']} for {len(reached)} of "
                     f"{len(s['needed_epss'])} eps values")
    parts.append(f"n_99 against ln(1/eps) is a line of slope {slope:.2f} (R² = {r2:.3f}); as a power of 1/eps its "
                 f"exponent is {elasticity:.2f} (a single-value search, 1/eps, has exponent 1)")
    parts.append(f"the smallest C for which Theorem 2.4's bound lies above every measured rate (Wilson lower limits) "
                 f"is C = {c_low:.2f} ({c_point:.2f} from the point estimates); with it the bound falls to "
                 f"{100 * TARGET_FAILURE:g} % at n = {bound_n(big, c_low)} (eps = {big:g}) to "
                 f"{bound_n(small_eps, c_low)} (eps = {small_eps:g}), a loose but also logarithmic guarantee")
    if math.isfinite(w_slope):
        parts.append(f"the exact worst-case error's median falls by a factor {math.exp(-w_slope):.2f} per added value "
                     f"(R² = {w_r2:.3f} for ln eps* against n), i.e. n ~ {-1 / w_slope:.2f} ln(1/eps)")
    ours = "; ".join(parts) + "."
    if len(reached) == len(s["needed_epss"]) and r2 >= 0.9 and elasticity < 0.5:
        verdict = "holds"
    elif len(reached) >= 2 and elasticity < 1:
        verdict = "partly"
    else:
        verdict = "does not show at this scale"
    setup = (f"theory.lueker (numba kernels, exact coverage checks), seed {SEED}: failure_grid over n = "
             f"{s['ns'][0]}..{s['ns'][-1]} and eps = {', '.join(f'{e:g}' for e in s['epss'])} with {s['trials']} trials; "
             f"samples_needed for eps = {', '.join(f'{e:g}' for e in s['needed_epss'])} ({s['needed_trials']} trials, "
             f"n <= {s['n_max']}); worst_case_samples at n = {', '.join(map(str, s['worst_ns']))} ({s['worst_trials']} "
             f"trials). Each trial's values are drawn once and its prefixes used for every n, so the curves are "
             f"monotone in n. Verdict rule: holds if 99 % coverage is reached for every eps, n_99 is a line in "
             f"ln(1/eps) (R² >= 0.9) and its exponent as a power of 1/eps is below 0.5. Scale {ctx.scale}."
             + (" Small: eps down to 1e-4 keeps each coverage check under a second on 2 cores; 400 trials." if
                ctx.scale == "small" else ""))
    extra = {"theory": {"seed": SEED, **s, "smallest_C": {"from_ci_low": c_low, "from_point_estimate": c_point},
                        "n99_line_fit": {"slope": slope, "intercept": intercept, "r2": r2},
                        "n99_power_exponent": elasticity, "convention": "eps = 2*eta",
                        **theory_provenance(threads)}}
    return Result(fig, rows, Caption(claim=CLAIM, ours=ours, verdict=verdict, setup=setup), extra)


FIGURE = Figure(
    name="lueker",
    title="Lueker's subset-sum theorem: failure probability and the n needed against eps",
    reproduces="Lueker 1998, Theorem 2.4, as in the lecture slides \"From model pruning to sparse updates and the "
               "LTH\", Part II",
    small_minutes=0.3,
    make=make,
    paper_datasets=(),
)
