"""Figure 8: structured pruning (L1-norm filters, network slimming), pruned and fine-tuned, against
training the pruned architecture from scratch, Scratch-E and Scratch-B (Liu et al., "Rethinking the
value of network pruning", as discussed by Havinga & Sawhney sec. 3.2)."""
from __future__ import annotations

from .core import Caption, Context, Figure, Result, levels, mean_sd, pct
from .style import COLORS, dense_line, subplots, title

SCORES = (("l1-filter", "L1-norm filters (Li et al.)", []), ("slimming", "network slimming (Liu et al. 2017)",
                                                            ["--bn-l1", "1e-4"]))
METHODS = (("fine-tune", "pruned, then fine-tuned"), ("scratch-e", "Scratch-E (same epochs, from scratch)"),
           ("scratch-b", "Scratch-B (same compute, from scratch)"))


def settings(ctx: Context) -> dict:
    return ctx.pick(
        tiny=dict(base=["--model", "mnist1d_cnn_bn", "--mnist1d-samples", "500", "--train-for", "2ep",
                        "--batch-size", "40", "--levels", "2", "--finetune", "1"], fractions=[0.5], seeds=[0]),
        # the batch-norm MNIST-1D CNN is the one offline model slimming can prune. Removing 30 % and
        # 50 % of the channels once leaves about half and a quarter of the weights; removing 75 %
        # (9 % of the weights) makes Scratch-B train 14x longer, about 10 minutes for the figure
        small=dict(base=["--model", "mnist1d_cnn_bn", "--levels", "2", "--finetune", "10"], fractions=[0.3, 0.5],
                   seeds=[0, 1, 2]),
        paper=dict(base=["--model", "vgg16", "--dataset", "cifar10", "--train-for", "160ep", "--lr", "0.1",
                         "--schedule", "step", "--milestones", "80ep,120ep", "--momentum", "0.9",
                         "--weight-decay", "1e-4", "--batch-size", "64", "--levels", "2", "--finetune", "40"],
                   fractions=[0.5, 0.7], seeds=[0, 1, 2]),
    )


def make(ctx: Context) -> Result:
    s = settings(ctx)
    rows = []
    for score, _, flags in SCORES:
        runs = ctx.sweep("imp", {"fraction": s["fractions"], "seed": s["seeds"]},
                         [*s["base"], "--score", score, *flags])
        points = [(f, seed) for f in s["fractions"] for seed in s["seeds"]]
        for (fraction, seed), run in zip(points, runs):
            dense, pruned = levels(run)[0], levels(run)[1]
            common = dict(score=score, fraction=fraction, seed=seed, density=pruned["density"], run=str(run))
            rows.append(dict(common, method="dense", test_accuracy=dense["test_accuracy"],
                             backprop_macs=dense["backprop_macs"]))
            rows.append(dict(common, method="fine-tune", test_accuracy=pruned["test_accuracy"],
                             backprop_macs=dense["backprop_macs"] + pruned["backprop_macs"]))
            for control in ("scratch-e", "scratch-b"):
                branch = ctx.sweep("control", {"level": [1]}, [control, str(run)])[0]
                last = levels(branch)[-1]
                rows.append(dict(common, method=control, test_accuracy=last["test_accuracy"],
                                 backprop_macs=last["backprop_macs"], run=str(branch)))

    def stat(score: str, fraction: float, method: str) -> tuple[float, float]:
        return mean_sd([r["test_accuracy"] for r in rows
                        if r["score"] == score and r["fraction"] == fraction and r["method"] == method])

    def density(score: str, fraction: float) -> float:
        return mean_sd([r["density"] for r in rows if r["score"] == score and r["fraction"] == fraction])[0]

    fig, axes = subplots(1, 2, width=4.6, height=3.8, sharey=True)
    width = 0.8 / len(METHODS)
    for ax, (score, label, _) in zip(axes[0], SCORES):
        for j, (method, mlabel) in enumerate(METHODS):
            stats = [stat(score, f, method) for f in s["fractions"]]
            ax.bar([i + (j - 1) * width for i in range(len(s["fractions"]))], [100 * m for m, _ in stats], width,
                   yerr=[100 * sd for _, sd in stats], color=COLORS[method], label=mlabel)
        dense, dense_sd = mean_sd([r["test_accuracy"] for r in rows if r["score"] == score and r["method"] == "dense"])
        dense_line(ax, 100 * dense, f"dense network ({pct(dense, dense_sd)})")
        ax.set_xticks(range(len(s["fractions"])))
        ax.set_xticklabels([f"{100 * f:.0f} % of channels removed\n{100 * density(score, f):.1f} % of weights kept"
                            for f in s["fractions"]], fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("test accuracy (%)")
        low = min(100 * r["test_accuracy"] for r in rows)
        ax.set_ylim(max(0, low - 10), 100)
    title(fig, f"Structured pruning: fine-tuning against training from scratch (mean ± SD over {len(s['seeds'])} "
               f"seed{'s' if len(s['seeds']) > 1 else ''})")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.06))

    facts = []
    wins_b = wins_e = total = 0
    for score, label, _ in SCORES:
        for f in s["fractions"]:
            ft, e, b = (stat(score, f, m) for m, _ in METHODS)
            facts.append(f"{score} at {100 * density(score, f):.1f} % of the weights: fine-tuned {pct(*ft)}, "
                         f"Scratch-E {pct(*e)}, Scratch-B {pct(*b)}")
            total += 1
            # Liu et al. claim "comparable or better": within one standard deviation counts as comparable
            wins_b += b[0] >= ft[0] - max(ft[1], b[1])
            wins_e += e[0] >= ft[0] - max(ft[1], e[1])
    verdict = ("holds" if wins_b == total and wins_e >= total / 2 else "partly" if wins_b >= total / 2
               else "does not show at this scale")
    ours = ("; ".join(facts) + f". Scratch-B is comparable to (within one SD) or better than the fine-tuned network in {wins_b} of "
            f"{total} settings and Scratch-E in {wins_e} of {total}.")
    caption = Caption(
        claim="Liu et al. (2019), as discussed by Havinga & Sawhney (sec. 3.2): for structured pruning, training "
              "the pruned architecture from scratch is comparable to or better than fine-tuning the pruned "
              "model: Scratch-B (the dense network's compute budget) is mostly comparable, Scratch-E (the same "
              "epochs) is compared with fine-tuning; so the architecture, not the inherited weights, carries the "
              "value (unlike Li et al.'s Table 1, where ResNet-56-pruned-B trained from scratch has 8.69 % error "
              "against 6.94 % fine-tuned).",
        ours=ours, verdict=verdict,
        setup=f"`imp {' '.join(s['base'])} --score SCORE --fraction F` (one pruning step, then fine-tuning at the "
              f"schedule's last learning rate) for F in {', '.join(map(str, s['fractions']))}, seeds "
              f"{', '.join(map(str, s['seeds']))}; slimming trains with `--bn-l1 1e-4`; then `control scratch-e|"
              f"scratch-b RUN --level 1` (Scratch-B trains longer by the dense/pruned compute ratio). Scale {ctx.scale}."
              + (" The small scale uses mnist1d_cnn_bn, the MNIST-1D CNN with a batch norm after every convolution, "
                 "because slimming ranks channels by their batch-norm scales." if ctx.scale == "small" else ""))
    return Result(fig, rows, caption)


FIGURE = Figure(
    name="structured-pruning",
    title="Structured pruning: fine-tuning against Scratch-E and Scratch-B",
    reproduces="Liu et al. 2019, \"Rethinking the value of network pruning\", as in Havinga & Sawhney sec. 3.2",
    small_minutes=3.5,
    make=make,
)
