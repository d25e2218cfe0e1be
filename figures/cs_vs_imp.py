"""Continuous sparsification against IMP (Savarese et al., "Winning the lottery with continuous
sparsification", Fig. 3 and the abstract's speed claim): ticket test accuracy against the weights
remaining, and the search cost in epochs of every ticket, for the same model and seeds."""
from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import median
from typing import Optional

from .core import Caption, Context, Figure, Result, levels, mean_sd, pct
from .style import COLORS, chance_line, dense_line, density_axis, legend, subplots, title

SAVARESE = 'Savarese et al., "Winning the lottery with continuous sparsification"'


def settings(ctx: Context) -> dict:
    """This scale's IMP and CS flags, seeds, CS mask initialisations s_0 and rounds."""
    return ctx.pick(
        tiny=dict(common=["--model", "mnist1d_mlp", "--mnist1d-samples", "500", "--train-for", "2ep",
                          "--batch-size", "40"],
                  imp=["--fraction", "0.5", "--levels", "3", "-k", "0"],
                  # a faster mask rate, so that 20 steps move s at all
                  cs=["--rounds", "2", "-k", "0", "--mask-lr", "0.01"], mask_inits=[0.05, 0.0], seeds=[0],
                  iss=["--rounds", "2", "-k", "0"]),
        # the MNIST-1D defaults (CNN, SGD 0.05, 30 epochs a level or round; CS Adam 5e-3 on the mask, beta_T 1000,
        # lambda 5e-6): s_0 = 0.05 / -0.03 / -0.2 put the round-1 tickets at 23 % / 19 % / 13 % of the weights and
        # round 3's at 15 % / 11 % / 4.9 % (measured, seed 0); IMP at 20 % a level reaches 5.5 % in 13 levels. Two
        # seeds: about 5 minutes on 2 shared cores (one seed took 2.6 minutes)
        small=dict(common=["--model", "mnist1d_cnn"],
                   imp=["--fraction", "0.2", "--levels", "14", "-k", "0"],
                   cs=["--rounds", "3", "-k", "0"], mask_inits=[0.05, -0.03, -0.2], seeds=[0, 1],
                   # ISS at its (the paper's) defaults, s_0 = 1, SGD 20 on s, lambda 1e-8: measured 100 %, 60 %
                   # and 54 % of the weights after rounds 1-3 (seed 0); it prunes slowly, as the paper's 30 rounds say
                   iss=["--rounds", "3", "-k", "0"]),
        # sec. 4.1: IMP 30 rounds of 40 epochs, CS at most 4 rounds with s_0 swept over [-0.03, 0.03]
        paper=dict(common=[], imp=["--preset", "conv6_cifar10", "--levels", "30", "-k", "0"],
                   cs=["--preset", "cs_conv6_cifar10", "--rounds", "4"],
                   mask_inits=[-0.03, -0.02, -0.01, 0.0, 0.01, 0.02, 0.03], seeds=[0],
                   iss=["--preset", "conv6_cifar10", "--rounds", "30", "-k", "0"]),
    )


def level_epochs(folder: Path) -> dict[int, float]:
    """Epochs trained at each level of a run (``{level: epochs}``), from its ``metrics.jsonl``: the last
    evaluated epoch minus the first (a level that starts at W^k counts from k)."""
    spans: dict[int, list[float]] = {}
    for line in (Path(folder) / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            span = spans.setdefault(int(entry["level"]), [math.inf, -math.inf])
            span[0], span[1] = min(span[0], entry["epoch"]), max(span[1], entry["epoch"])
    return {level: hi - lo for level, (lo, hi) in spans.items()}


def imp_rows(folder: Path, seed: int) -> list[dict]:
    """One row per IMP level; the search cost of the ticket at level L is the training of levels
    0..L-1 (the mask of level L is read off level L-1's trained weights), in epochs and backprop MACs."""
    epochs = level_epochs(folder)
    rows, spent, macs = [], 0.0, 0.0
    for entry in levels(folder):
        level = entry["level"]
        rows.append(dict(series="IMP", algorithm="imp", mask_init="", seed=seed, level=level,
                         density=entry["density"], test_accuracy=entry["test_accuracy"],
                         search_epochs=spent, search_backprop_macs=macs, folder=str(folder)))
        spent += epochs.get(level, 0.0)
        macs = entry["cumulative_backprop_macs"]
    return rows


def cs_rows(folder: Path, seed: int, mask_init: float, algorithm: str = "cs") -> list[dict]:
    """One row per CS (or ISS) round's ticket (level R), with the search cost the run recorded (k
    warm-up iterations plus rounds 1..R; the ticket trainings are not part of the search)."""
    label = f"CS, s_0 = {mask_init:g}" if algorithm == "cs" else f"ISS, s_0 = {mask_init:g}"
    return [dict(series=label, algorithm=algorithm, mask_init=mask_init, seed=seed,
                 level=e["level"], density=e["density"], test_accuracy=e["test_accuracy"],
                 search_epochs=e["search"]["cumulative_epochs"],
                 search_backprop_macs=e["search"]["cumulative_backprop_macs"], folder=str(folder))
            for e in levels(folder) if e["level"] > 0]


def _mean_points(rows: list[dict], series: str) -> list[tuple[int, float, float, float, float]]:
    """``(level, density, accuracy mean, accuracy SD, search epochs mean)`` per level of ``series``,
    averaged over seeds."""
    out = []
    for level in sorted({r["level"] for r in rows if r["series"] == series}):
        pts = [r for r in rows if r["series"] == series and r["level"] == level]
        acc, sd = mean_sd([r["test_accuracy"] for r in pts])
        out.append((level, mean_sd([r["density"] for r in pts])[0], acc, sd,
                    mean_sd([r["search_epochs"] for r in pts])[0]))
    return out


def interpolate_log(density: float, curve: list[tuple[float, float]]) -> Optional[float]:
    """The value of ``curve`` (``(density, value)`` pairs) at ``density``, linear in log density;
    ``None`` outside the curve's range."""
    curve = sorted(curve)
    for (d0, v0), (d1, v1) in zip(curve, curve[1:]):
        if d0 <= density <= d1:
            if d1 == d0:
                return v0
            w = (math.log(density) - math.log(d0)) / (math.log(d1) - math.log(d0))
            return v0 + w * (v1 - v0)
    return None


def _flag(argv: list[str], flag: str) -> Optional[str]:
    """The value after ``flag`` in ``argv`` (``None`` if absent)."""
    return argv[argv.index(flag) + 1] if flag in argv else None


def make(ctx: Context) -> Result:
    s = settings(ctx)
    rows: list[dict] = []
    imp_runs = ctx.sweep("imp", {"seed": s["seeds"]}, [*s["common"], *s["imp"]])
    for seed, run in zip(s["seeds"], imp_runs):
        rows += imp_rows(run, seed)
    cs_runs = ctx.sweep("cs", {"mask-init": s["mask_inits"], "seed": s["seeds"]}, [*s["common"], *s["cs"]])
    points = [(m, seed) for m in s["mask_inits"] for seed in s["seeds"]]
    for (mask_init, seed), run in zip(points, cs_runs):
        rows += cs_rows(run, seed, mask_init)
    iss_runs = ctx.sweep("iss", {"seed": s["seeds"]}, [*s["common"], *s["iss"]])
    iss_init = float(_flag(s["iss"], "--mask-init") or 1.0)  # iss's default s_0
    for seed, run in zip(s["seeds"], iss_runs):
        rows += cs_rows(run, seed, iss_init, "iss")
    iss_series = f"ISS, s_0 = {iss_init:g}"

    imp = _mean_points(rows, "IMP")
    fraction = _flag(s["imp"], "--fraction")
    dense, dense_sd = mean_sd([r["test_accuracy"] for r in rows if r["series"] == "IMP" and r["level"] == 0])
    cs_dense = [levels(run)[0]["test_accuracy"] for run in cs_runs]
    cs_series = [f"CS, s_0 = {m:g}" for m in s["mask_inits"]]
    cmap_colors = ["C3", "C1", "C4", "C5", "C6", "C8", "C9", "C7"]
    iss_color = "C2"

    fig, axes = subplots(1, 2, width=5.0, height=3.8)
    ax, cost_ax = axes[0, 0], axes[0, 1]
    xs = [100 * d for _, d, _, _, _ in imp]
    ax.plot(xs, [100 * a for _, _, a, _, _ in imp], "o-", color=COLORS["imp"], label=f"IMP ({f'{100 * float(fraction):g} %' if fraction else 'preset rate'} pruned a level, from W0)")
    ax.fill_between(xs, [100 * (a - sd) for _, _, a, sd, _ in imp], [100 * (a + sd) for _, _, a, sd, _ in imp],
                    color=COLORS["imp"], alpha=0.2, linewidth=0)
    cost_ax.plot(xs[1:], [e for *_, e in imp[1:]], "o-", color=COLORS["imp"], label="IMP")
    pts = [p for p in _mean_points(rows, iss_series) if p[1] > 0]
    ix = [100 * d for _, d, _, _, _ in pts]
    ax.errorbar(ix, [100 * a for _, _, a, _, _ in pts], yerr=[100 * sd for _, _, _, sd, _ in pts], fmt="D:",
                color=iss_color, label=f"{iss_series} (rounds 1-{len(pts)})")
    cost_ax.plot(ix, [e for *_, e in pts], "D:", color=iss_color, label=iss_series)
    for series, color in zip(cs_series, cmap_colors):
        pts = [p for p in _mean_points(rows, series) if p[1] > 0]  # an empty ticket has no place on a log axis
        cx = [100 * d for _, d, _, _, _ in pts]
        ax.errorbar(cx, [100 * a for _, _, a, _, _ in pts], yerr=[100 * sd for _, _, _, sd, _ in pts], fmt="s--",
                    color=color, label=f"{series} (rounds 1-{len(pts)})")
        cost_ax.plot(cx, [e for *_, e in pts], "s--", color=color, label=series)
    dense_line(ax, 100 * dense, f"dense network ({pct(dense, dense_sd)})")
    chance_line(ax)
    for a in (ax, cost_ax):
        density_axis(a)
    ax.set_ylabel("ticket test accuracy (%)")
    ax.set_title("Tickets trained from W0")
    cost_ax.set_ylabel("search cost (epochs, cumulative)")
    cost_ax.set_title("Search epochs to find each ticket")
    legend(ax, loc="best")
    legend(cost_ax, loc="upper left")
    title(fig, f"Continuous sparsification against IMP and ISS (mean ± SD over {len(s['seeds'])} "
               f"seed{'s' if len(s['seeds']) > 1 else ''})")

    # the verdict: CS tickets against IMP at the same density (IMP interpolated in log density) and
    # the IMP search epochs to reach at least that sparsity against CS's
    imp_acc = [(d, a) for _, d, a, _, _ in imp]
    compared = []
    for series in cs_series:
        for level, d, a, _, e in _mean_points(rows, series):
            ref = interpolate_log(d, imp_acc)
            reach = next((ie for _, idens, _, _, ie in imp if idens <= d + 1e-12), None)
            compared.append(dict(series=series, level=level, density=d, acc=a, epochs=e, imp_acc=ref,
                                 ratio=None if reach is None or e <= 0 else reach / e))
    gaps = [c["acc"] - c["imp_acc"] for c in compared if c["imp_acc"] is not None]
    ratios = [c["ratio"] for c in compared if c["ratio"] is not None]
    better = sum(g > 0 for g in gaps)
    median_gap = median(gaps) if gaps else float("nan")
    median_ratio = median(ratios) if ratios else float("nan")
    quality = bool(gaps) and median_gap >= 0
    speed = bool(ratios) and median_ratio > 1
    verdict = "holds" if quality and speed else "partly" if quality or speed else "does not show at this scale"

    iss_pts = _mean_points(rows, iss_series)
    iss_last = iss_pts[-1] if iss_pts else None
    iss_text = "ISS: no ticket."
    if iss_last is not None:
        _, d, a, sd, e = iss_last
        ref = interpolate_log(d, imp_acc) if d > 0 else None
        iss_text = (f"ISS (defaults, {len(iss_pts)} rounds) ends at {100 * d:.1f} % of the weights with {pct(a, sd)} "
                    f"after {e:.0f} search epochs" + (f" (IMP at that density: {pct(ref)})" if ref is not None else "")
                    + ".")
    sparsest = min(compared, key=lambda c: c["density"]) if compared else None
    ours = (f"Dense network {pct(dense, dense_sd)}. {better} of {len(gaps)} CS tickets beat IMP at the same density "
            f"(IMP interpolated in log density; median difference {100 * median_gap:+.1f} points, range "
            f"{100 * min(gaps, default=math.nan):+.1f} to {100 * max(gaps, default=math.nan):+.1f}). ")
    if sparsest is not None:
        ours += (f"The sparsest CS ticket ({sparsest['series']}, round {sparsest['level']}) keeps "
                 f"{100 * sparsest['density']:.1f} % of the weights at {pct(sparsest['acc'])} after "
                 f"{sparsest['epochs']:.0f} search epochs" +
                 (f", where IMP reaches {pct(sparsest['imp_acc'])}" if sparsest["imp_acc"] is not None else "") + ". ")
    ours += (f"To reach at least a CS ticket's sparsity IMP trains {median_ratio:.1f}x as many epochs (median over "
             f"{len(ratios)} tickets; range {min(ratios, default=math.nan):.1f}-{max(ratios, default=math.nan):.1f}x): "
             f"CS is {'faster' if speed else 'not faster'}, and its tickets are "
             f"{'at least as good' if quality else 'worse'}. "
             f"{iss_text}")
    claim = (f"{SAVARESE} (Fig. 3 and abstract): CS finds tickets that outperform IMP's, with up to 5 times faster "
             "search measured in training epochs; on Conv-6 / CIFAR-10, in 2 rounds CS finds a ticket with over 77 % "
             "sparsity that beats every IMP ticket of 30 rounds, and the best CS tickets strictly dominate IMP above "
             "3 % of the weights remaining, each found in at most 4 rounds; ISS (Alg. 2) and IMP run 30 rounds.")
    setup = (f"`imp {' '.join([*s['common'], *s['imp']])}` and `cs {' '.join([*s['common'], *s['cs']])} --mask-init S` "
             f"for S in {', '.join(f'{m:g}' for m in s['mask_inits'])}, and `iss {' '.join([*s['common'], *s['iss']])}`, "
             f"seeds {', '.join(map(str, s['seeds']))}; all train their tickets from W0 with the same training settings. IMP's search cost for the ticket of "
             "level L is the training of levels 0..L-1; CS's is its search rounds 1..R (summary.json `search`). "
             "Verdict rule: holds if the median CS ticket is at least as accurate as IMP at its density and IMP's "
             "median epochs to reach that sparsity exceed CS's; partly if only one of the two; does not show "
             f"otherwise. Scale {ctx.scale}.")
    if ctx.scale == "small":
        cs_densities = [r["density"] for r in rows if r["algorithm"] == "cs"]
        setup += (" The small scale keeps the MNIST-1D defaults of both commands (no tuning for either; CS: Adam 5e-3 "
                  "on the mask, beta_T 1000, lambda 5e-6); s_0 sets the CS sparsity as in the paper, here chosen to "
                  f"spread the tickets over {100 * min(cs_densities):.1f}-{100 * max(cs_densities):.1f} % of the "
                  "weights.")
    extra = {"comparison": compared, "cs_dense_accuracy": cs_dense}
    return Result(fig, rows, Caption(claim=claim, ours=ours, verdict=verdict, setup=setup), extra)


FIGURE = Figure(
    name="cs-vs-imp",
    title="Continuous sparsification against IMP: ticket accuracy and search cost",
    reproduces=f"{SAVARESE}, Fig. 3 (left) and the abstract's search-speed claim",
    small_minutes=4.4,
    make=make,
    paper_datasets=("cifar10",),
)
