"""Figure 5: Zhou et al.'s mask criteria and mask-0 actions ("Deconstructing lottery tickets: zeros,
signs, and the supermask", as presented in the lecture slides): untrained supermask accuracy of each
criterion across kept fractions against random masks, and accuracy after training each criterion's
mask under each mask-0 action."""
from __future__ import annotations

from pathlib import Path

from analysis.supermask import BIASES, DEFAULT_BIASES, MASK_0, criteria_table, density_sweep

from .core import Caption, Context, Figure, Result, levels, mean_sd, pct
from .style import COLORS, chance_line, dense_line, density_axis, legend, subplots, title

CRITERIA = ("large_final", "large_final_same_sign", "magnitude_increase", "movement", "large_init",
            "large_final_diff_sign")
MASK_0_LABELS = {"zero": "pruned weights at 0", "init": "pruned weights frozen at W0",
                 "freeze_init_zero_mask": "0 if moved toward 0, else frozen at W0"}


def settings(ctx: Context) -> dict:
    return ctx.pick(
        tiny=dict(base=["--model", "mnist1d_mlp", "--mnist1d-samples", "500", "--train-for", "2ep",
                        "--batch-size", "40"], seeds=[0], densities=[0.2, 0.5], trained_density=0.2,
                  trained_criteria=["large_final", "random"], random_seeds=2),
        # the fully connected MNIST-1D network: its supermasks sit clearly above chance (the CNN's
        # only once its random biases are zeroed) and a training costs about a second
        small=dict(base=["--model", "mnist1d_mlp"], seeds=[0, 1, 2], densities=[0.05, 0.1, 0.2, 0.5, 0.8],
                   trained_density=0.2, trained_criteria=["large_final", "large_final_same_sign",
                                                          "magnitude_increase", "movement", "random"],
                   random_seeds=5),
        paper=dict(base=["--preset", "lenet300_mnist"], seeds=[0, 1, 2], densities=[0.05, 0.1, 0.2, 0.5, 0.8],
                   trained_density=0.2, trained_criteria=["large_final", "large_final_same_sign",
                                                          "magnitude_increase", "movement", "random"],
                   random_seeds=5),
    )


def make(ctx: Context) -> Result:
    s = settings(ctx)
    runs = ctx.sweep("train", {"seed": s["seeds"]}, s["base"])
    rows = []
    dense = []
    for seed, run in zip(s["seeds"], runs):
        final = Path(run) / levels(run)[0]["checkpoints"]["final"]
        dense.append(levels(run)[0]["test_accuracy"])
        sweep = density_sweep(final, s["densities"], CRITERIA, seeds=s["random_seeds"], biases=DEFAULT_BIASES,
                              device=ctx.device, data_dir=ctx.data_dir)
        for r in sweep["rows"]:
            rows.append(dict(panel="untrained", seed=seed, density=r["density"], criterion=r["criterion"],
                             mask_1=r["mask_1"], mask_0="", random_seed=r["seed"], accuracy=r["accuracy"],
                             run=str(run)))
        table = criteria_table(final, s["trained_density"], train_masks=True, device=ctx.device,
                               data_dir=ctx.data_dir, criteria=s["trained_criteria"], biases=DEFAULT_BIASES)
        for r in table["rows"]:
            for action in MASK_0:
                rows.append(dict(panel="trained", seed=seed, density=s["trained_density"], criterion=r["criterion"],
                                 mask_1="init", mask_0=action, random_seed=None,
                                 accuracy=r[f"trained_accuracy_{action}"], run=r[f"trained_checkpoint_{action}"]))

    def untrained(criterion: str, d: float) -> tuple[float, float]:
        # per seed first (random masks: the mean over their seeds), then mean ± SD over the runs' seeds
        per_seed = []
        for seed in s["seeds"]:
            acc = [r["accuracy"] for r in rows if r["panel"] == "untrained" and r["criterion"] == criterion
                   and r["density"] == d and r["mask_1"] == "signed_constant" and r["seed"] == seed]
            per_seed.append(sum(acc) / len(acc))
        return mean_sd(per_seed)

    def trained(criterion: str, action: str) -> tuple[float, float]:
        return mean_sd([r["accuracy"] for r in rows if r["panel"] == "trained" and r["criterion"] == criterion
                        and r["mask_0"] == action])

    dense_mean, dense_sd = mean_sd(dense)
    fig, axes = subplots(1, 2, width=5.2, height=4.0)
    ax = axes[0, 0]
    ds = s["densities"]
    for i, criterion in enumerate([*CRITERIA, "random"]):
        stats = [untrained(criterion, d) for d in ds]
        style = dict(color=COLORS["random"], linestyle="--", marker="s") if criterion == "random" else \
            dict(color=f"C{i}", marker="o")
        ax.errorbar([100 * d for d in ds], [100 * m for m, _ in stats], yerr=[100 * sd for _, sd in stats],
                    label=criterion.replace("_", " ") + (f" ({s['random_seeds']} masks per run)"
                                                         if criterion == "random" else ""), **style)
    chance_line(ax)
    density_axis(ax, "weights kept by the mask (%, log scale)")
    ax.set_ylabel("untrained test accuracy (%)")
    ax.set_title("Supermasks on W0: kept weights = sign(W0) x std, biases 0", fontsize=9)
    legend(ax, loc="upper left", fontsize=7)

    ax = axes[0, 1]
    crit = s["trained_criteria"]
    width = 0.8 / len(MASK_0)
    for j, action in enumerate(MASK_0):
        stats = [trained(c, action) for c in crit]
        ax.bar([i + (j - 1) * width for i in range(len(crit))], [100 * m for m, _ in stats], width,
               yerr=[100 * sd for _, sd in stats], color=f"C{j + 6}", label=f"mask-0: {MASK_0_LABELS[action]}")
    dense_line(ax, 100 * dense_mean, f"dense network ({pct(dense_mean, dense_sd)})")
    chance_line(ax)
    ax.set_xticks(range(len(crit)))
    ax.set_xticklabels([c.replace("_", "\n") for c in crit], fontsize=7)
    ax.set_ylabel("test accuracy after training (%)")
    ax.set_title(f"Masks keeping {100 * s['trained_density']:.0f} % trained from W0", fontsize=9)
    ax.set_ylim(0, 100)
    legend(ax, loc="upper right", fontsize=7)
    title(fig, f"Zhou et al.'s mask criteria (mean ± SD over {len(s['seeds'])} trained networks)")

    best = max(CRITERIA, key=lambda c: max(untrained(c, d)[0] for d in ds))
    best_d = max(ds, key=lambda d: untrained(best, d)[0])
    best_acc = untrained(best, best_d)
    rand = untrained("random", best_d)
    same_sign_gain = max(untrained("large_final_same_sign", d)[0] - untrained("large_final", d)[0] for d in ds)
    zero = {c: trained(c, "zero")[0] for c in crit}
    init = {c: trained(c, "init")[0] for c in crit}
    fz = {c: trained(c, "freeze_init_zero_mask")[0] for c in crit}
    above_chance = best_acc[0] - rand[0] > 2 * max(rand[1], 0.01)
    verdict = ("holds" if above_chance and best_acc[0] > 0.5 else "partly" if above_chance
               else "does not show at this scale")
    ours = (f"The best untrained supermask is {best.replace('_', ' ')} at {100 * best_d:.0f} % kept: "
            f"{pct(*best_acc)} against {pct(*rand)} for random masks of the same size (chance 10 %); "
            f"the same-sign variant of large final adds up to {100 * same_sign_gain:+.1f} points. Trained at "
            f"{100 * s['trained_density']:.0f} % kept, large final reaches {pct(zero['large_final'])} with pruned "
            f"weights at 0, {pct(init['large_final'])} frozen at W0 and {pct(fz['large_final'])} with "
            f"0-if-moved-toward-0; random masks {pct(zero['random'])} / {pct(init['random'])} / {pct(fz['random'])} "
            f"(dense {pct(dense_mean, dense_sd)}). Supermasks beat random masks by far but stay "
            f"{'far ' if best_acc[0] < 0.5 else ''}below the paper's 86 %: MNIST-1D is much harder than MNIST "
            "for an untrained network.")
    caption = Caption(
        claim="Zhou et al. (2019), as in the lecture slides: the mask criterion alone makes a supermask: with no "
              "training, the large_final_same_sign mask on the initial weights (kept weights as signed constants) "
              "reaches 86 % test accuracy on MNIST; criteria that keep large final weights work best, and "
              "setting pruned weights to zero (or to zero when they moved toward zero) trains better than "
              "freezing them at their initial values.",
        ours=ours, verdict=verdict,
        setup=f"`train {' '.join(s['base'])}` over seeds {', '.join(map(str, s['seeds']))}; masks per layer from "
              f"W0 and the trained weights; untrained evaluation with {BIASES[DEFAULT_BIASES]}; mask-1 = signed "
              f"constants (their strongest supermasks); trained networks use the run's schedule from W0. "
              f"Scale {ctx.scale}.")
    return Result(fig, rows, caption, extra={"biases": DEFAULT_BIASES})


FIGURE = Figure(
    name="mask-criteria",
    title="Supermasks and mask criteria: untrained and trained accuracy per criterion",
    reproduces="Zhou et al. 2019, \"Deconstructing lottery tickets\", as in the lecture slides",
    small_minutes=0.5,
    make=make,
    paper_datasets=("mnist",),
)
