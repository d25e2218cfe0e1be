"""Edge-popup against width (Ramanujan et al., "What's hidden in a randomly weighted neural
network?", the strong lottery ticket part of the lecture slides "From model pruning to sparse
updates and the LTH"): the test accuracy of the subnetwork found in a frozen random network, against
the width multiplier and the fraction k of weights kept, beside the same network trained densely."""
from __future__ import annotations

from .core import Caption, Context, Figure, Result, levels, mean_sd, pct
from .style import COLORS, chance_line, legend, subplots, title

RAMANUJAN = 'Ramanujan et al., "What\'s hidden in a randomly weighted neural network?"'
# edge-popup's own training defaults (training.algorithms.edge_popup.TRAINING_DEFAULTS): the dense networks get
# the same, so that the only difference is what is trained (the weights or the choice of weights)
TRAINING = ["--lr", "0.1", "--momentum", "0.9", "--weight-decay", "1e-4", "--schedule", "cosine"]
KEEP_COLORS = ["C3", "C1", "C2", "C4", "C5"]


def settings(ctx: Context) -> dict:
    """This scale's model, data flags, widths, fractions kept and seeds."""
    return ctx.pick(
        tiny=dict(model="mnist1d_mlp", common=["--mnist1d-samples", "500", "--train-for", "2ep", "--batch-size", "40"],
                  widths=[1, 2], keeps=[0.5], seeds=[0]),
        # the MNIST-1D CNN at its default 30 epochs (measured, k = 0.5: 56.6 % at width 1, 64.0 % at 2, 68.3 %
        # at 4, dense 88.9-90.5 %): the trend shows within 3 widths; width 4 costs 40 s a run, so two k
        small=dict(model="mnist1d_cnn", common=[], widths=[1, 2, 4], keeps=[0.3, 0.5], seeds=[0]),
        # the paper's CIFAR-10 Conv nets: 100 epochs, SGD 0.1 cosine on the scores
        paper=dict(model="conv4", common=["--dataset", "cifar10", "--train-for", "100ep"],
                   widths=[0.5, 1, 2], keeps=[0.3, 0.5, 0.7], seeds=[0, 1]),
    )


def width_model(model: str, width: float) -> str:
    """The model name at ``width`` (``MODEL`` at 1, else ``MODEL_xW``), as ``edge-popup --width`` names it."""
    from training.models import width_name

    return width_name(model, width)


def make(ctx: Context) -> Result:
    s = settings(ctx)
    widths, keeps, seeds = s["widths"], s["keeps"], s["seeds"]
    base = ["--model", s["model"], *s["common"]]
    popup = ctx.sweep("edge-popup", {"keep": keeps, "width": widths, "seed": seeds}, base)
    dense = ctx.sweep("train", {"model": [width_model(s["model"], w) for w in widths], "seed": seeds},
                      [*s["common"], *TRAINING])
    rows = []
    points = [(k, w, seed) for k in keeps for w in widths for seed in seeds]
    for (keep, width, seed), run in zip(points, popup):
        entry = levels(run)[-1]
        rows.append(dict(series=f"edge-popup, k = {keep:g}", algorithm="edge-popup", keep=keep, width=width,
                         model=width_model(s["model"], width), seed=seed, density=entry["density"],
                         weights=entry["weights_prunable"], weights_used=entry["weights_kept"],
                         test_accuracy=entry["test_accuracy"], folder=str(run)))
    for (width, seed), run in zip([(w, seed) for w in widths for seed in seeds], dense):
        entry = levels(run)[-1]
        rows.append(dict(series="dense, weights trained", algorithm="train", keep=1.0, width=width,
                         model=width_model(s["model"], width), seed=seed, density=entry["density"],
                         weights=entry["weights_prunable"], weights_used=entry["weights_kept"],
                         test_accuracy=entry["test_accuracy"], folder=str(run)))

    def stats(series: str, width: float) -> tuple[float, float]:
        return mean_sd([r["test_accuracy"] for r in rows if r["series"] == series and r["width"] == width])

    fig, axes = subplots(1, 2, width=4.6, height=3.6)
    ax, kax = axes[0, 0], axes[0, 1]
    dense_series = "dense, weights trained"
    d_mean = [stats(dense_series, w) for w in widths]
    ax.errorbar(widths, [100 * m for m, _ in d_mean], yerr=[100 * sd for _, sd in d_mean], fmt="o--",
                color=COLORS["dense"], label="same network, weights trained (dense)")
    for keep, color in zip(keeps, KEEP_COLORS):
        series = f"edge-popup, k = {keep:g}"
        m = [stats(series, w) for w in widths]
        ax.errorbar(widths, [100 * a for a, _ in m], yerr=[100 * sd for _, sd in m], fmt="s-", color=color,
                    label=f"edge-popup subnetwork, k = {100 * keep:g} % kept")
    chance_line(ax)
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [f"{w:g}x" for w in widths])
    ax.minorticks_off()
    ax.set_xlabel(f"width multiplier of {s['model']} (hidden layers, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Against width")
    legend(ax, loc="lower right")
    for width, color in zip(widths, ["C0", "C9", "C8", "C6", "C5"]):
        m = [stats(f"edge-popup, k = {k:g}", width) for k in keeps]
        kax.errorbar([100 * k for k in keeps], [100 * a for a, _ in m], yerr=[100 * sd for _, sd in m], fmt="s-",
                     color=color, label=f"edge-popup, width {width:g}x")
        kax.axhline(100 * stats(dense_series, width)[0], color=color, linestyle="--", linewidth=1,
                    label=f"dense, width {width:g}x")
    chance_line(kax)
    kax.set_xlabel("weights kept in every layer, k (%)")
    kax.set_ylabel("test accuracy (%)")
    kax.set_title("Against k (dashed: dense at that width)")
    kax.set_xlim(0, 100)
    legend(kax, loc="lower right", ncol=2)
    title(fig, f"Subnetworks of frozen random networks (edge-popup) against width, {len(seeds)} seed(s)")

    # verdict: for every k the subnetwork gets better with width and its gap to the dense network of
    # the same width closes; it holds fully if the best k at the widest width comes within 1 point
    narrow, wide = widths[0], widths[-1]
    facts = []
    for keep in keeps:
        series = f"edge-popup, k = {keep:g}"
        a0, a1 = stats(series, narrow)[0], stats(series, wide)[0]
        g0, g1 = stats(dense_series, narrow)[0] - a0, stats(dense_series, wide)[0] - a1
        facts.append(dict(keep=keep, narrow=a0, wide=a1, gap_narrow=g0, gap_wide=g1))
    rises = all(f["wide"] > f["narrow"] for f in facts)
    closes = all(f["gap_wide"] < f["gap_narrow"] for f in facts)
    best_gap = min(f["gap_wide"] for f in facts)
    if rises and closes and best_gap <= 0.01:
        verdict = "holds"
    elif rises and closes:
        verdict = "partly"
    else:
        verdict = "does not show at this scale"
    ours = "; ".join(
        f"{'At' if i == 0 else 'at'} k = {100 * f['keep']:g} % the subnetwork goes from {pct(f['narrow'])} (width "
        f"{narrow:g}x) to {pct(f['wide'])} (width {wide:g}x), {-100 * f['gap_narrow']:+.1f} then "
        f"{-100 * f['gap_wide']:+.1f} points against the dense network of that width"
        for i, f in enumerate(facts))
    ours += (f". The dense networks reach {pct(d_mean[0][0])} at width {narrow:g}x and {pct(d_mean[-1][0])} at "
             f"{wide:g}x. The subnetwork {'improves' if rises else 'does not always improve'} with width, the gap "
             f"{'closes' if closes else 'does not always close'}, and at width {wide:g}x the best k is "
             f"{-100 * best_gap:+.1f} points against dense.")
    caption = Caption(
        claim=f"{RAMANUJAN} (abstract, quoted in the lecture slides \"From model pruning to sparse updates and the "
              "LTH\"): as randomly weighted networks with fixed weights grow wider and deeper, an untrained subnetwork "
              "approaches a network with learned weights in accuracy; a subnetwork of a random Wide ResNet-50 "
              "(fewer weights than a ResNet-34) matches a trained ResNet-34 on ImageNet.",
        ours=ours, verdict=verdict,
        setup=f"`edge-popup --model {s['model']} {' '.join(s['common'])} --keep K --width W` (its defaults: signed "
              f"Kaiming constant weights, SGD 0.1 cosine on the scores) for K in {', '.join(f'{k:g}' for k in keeps)} "
              f"and W in {', '.join(f'{w:g}' for w in widths)}; the same networks trained densely by `train --model "
              f"{s['model']}_xW {' '.join([*s['common'], *TRAINING])}` (edge-popup's training settings, so only what "
              f"is trained differs); seeds {', '.join(map(str, seeds))}. Verdict rule: holds if for every k the "
              "subnetwork is better at the widest width than at the narrowest, its gap to the dense network closes, "
              "and the best k comes within 1 point of dense at the widest width; partly without the last; does not "
              f"show otherwise. Scale {ctx.scale}."
              + (" Small: the MNIST-1D CNN at its default 30 epochs, where the width trend was measured (k = 50 %: "
                 "about 57 %, 64 % and 68 % at widths 1, 2 and 4); width 4 costs about 40 s a run on one core, so "
                 "two values of k and one seed keep the figure near 2-3 minutes." if ctx.scale == "small" else ""))
    return Result(fig, rows, caption, {"facts": facts})


FIGURE = Figure(
    name="edge-popup-width",
    title="Edge-popup subnetworks of random networks against width and k",
    reproduces=f"{RAMANUJAN}, as in the lecture slides: wider random networks hide better subnetworks",
    small_minutes=2.5,
    make=make,
    paper_datasets=("cifar10",),
)
