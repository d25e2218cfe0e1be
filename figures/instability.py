"""Figure 4: instability (the test-error barrier between two copies trained from one rewind point
with different data orders) against the rewind point k, for the dense network and for an IMP
ticket, with the 2 % stability threshold (Frankle et al. 2020, "Linear mode connectivity and the
lottery ticket hypothesis", as in the lecture slides "From model pruning to sparse updates and the
LTH")."""
from __future__ import annotations

import json
from pathlib import Path

from .core import Caption, Context, Figure, FigureError, Result, levels
from .pruning_at_init import RESNET20, TINY
from .style import COLORS, legend, subplots, title


def settings(ctx: Context) -> dict:
    """This scale's flags: ``base`` (every run), the rewind points ``ks`` (as ``--save-at`` / ``-k``
    values), the IMP flags of the ticket (one IMP run per k, rewound to that k), the seed, the points
    on each path and the training examples the path's training loss is evaluated on."""
    return ctx.pick(
        tiny=dict(base=TINY, ks=["0", "5it"], imp=["--target-density", "0.25", "--levels", "2"], seed=0,
                  points=5, train_samples=100),
        # the MNIST-1D CNN at the defaults (lr 0.05, 30 epochs; 32 iterations an epoch): its dense network was
        # measured above the 2 % threshold at k = 0 (3.1 %) and stable by k = 16 iterations; the ticket is two
        # rounds of IMP to 10 % of the weights (84 %, against 89 % dense), trained from each k
        small=dict(base=["--model", "mnist1d_cnn"], ks=["0", "4it", "16it", "2ep"],
                   imp=["--target-density", "0.1", "--levels", "3"], seed=0, points=30, train_samples=1000),
        # Frankle et al. 2020's ResNet-20 on CIFAR-10 and its IMP subnetwork at 16.8 % (8 rounds of 20 %)
        paper=dict(base=RESNET20, ks=["0", "100it", "500it", "2000it", "5000it"],
                   imp=["--fraction", "0.2", "--levels", "9"], seed=0, points=30, train_samples=None),
    )


def make(ctx: Context) -> Result:
    from analysis.connectivity import STABLE_BARRIER, instability
    from training.cli import set_threads

    s = settings(ctx)
    base = [*s["base"], "--seed", str(s["seed"])]
    dense_run = ctx.run("train", [*base, "--save-at", ",".join(s["ks"])])
    dense_ckpts = sorted((dense_run / "level_0").glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    if len(dense_ckpts) != len(s["ks"]):  # two k that fall on one iteration would shift every later point
        raise FigureError(f"the rewind points {', '.join(s['ks'])} gave {len(dense_ckpts)} checkpoints in "
                          f"{dense_run}; give rewind points on distinct iterations")
    tickets = ctx.sweep("imp", {"rewind": s["ks"]}, [*base, *s["imp"]])
    ticket_level = len(levels(tickets[0])) - 1
    ticket_ckpts = [run / f"level_{ticket_level}" / "rewind.pt" for run in tickets]

    set_threads(ctx.threads)  # the copies train in this process
    rows, paths = [], {}
    for series, ckpts, runs in (("dense", dense_ckpts, [dense_run] * len(dense_ckpts)),
                                ("ticket", ticket_ckpts, tickets)):
        for k, ckpt, run in zip(s["ks"], ckpts, runs):
            # the run's own trained network: the dense run, or the ticket rewound to this k
            accuracy = levels(run)[-1]["test_accuracy"]
            r = instability(ckpt, points=s["points"], device=ctx.device, data_dir=ctx.data_dir,
                            progress=ctx.progress, train_samples=s["train_samples"])
            for copy in r["copies"]:  # the two trained copies are branch runs: list them as runs used
                folder = Path(copy).parent.parent
                if (folder / "config.json").is_file():
                    ctx.used[str(folder)] = json.loads((folder / "config.json").read_text())
            rows.append(dict(series=series, k=k, k_iteration=r["k_iteration"], k_epoch=r["k_epoch"],
                             density=r["density"] if r["density"] is not None else 1.0,
                             test_barrier=r["test_barrier"], train_barrier=r["train_barrier"],
                             error_a=r["test_error"][0], error_b=r["test_error"][-1], stable=int(r["stable"]),
                             test_accuracy=accuracy,
                             seed=s["seed"], checkpoint=str(ckpt), folder=str(run)))
            paths[(series, k)] = r
    density = rows[-1]["density"]
    dense_accuracy = rows[0]["test_accuracy"]
    ticket_accuracy = [r["test_accuracy"] for r in rows if r["series"] == "ticket"]
    labels = {"dense": "dense network",
              "ticket": f"IMP ticket ({100 * density:.1f} % of the weights, rewound to $W^k$)"}

    fig, axes = subplots(1, 2, width=5.0, height=3.8)
    ax = axes[0, 0]
    for series in ("dense", "ticket"):
        pts = [r for r in rows if r["series"] == series]
        ax.plot([r["k_iteration"] for r in pts], [100 * r["test_barrier"] for r in pts], "o-",
                color=COLORS[series], label=labels[series])
    ax.axhline(100 * STABLE_BARRIER, color=COLORS["bound"], linestyle=":", linewidth=1,
               label=f"stability threshold ({100 * STABLE_BARRIER:g} %)")
    top = max(100 * r["test_barrier"] for r in rows)
    ax.set_ylim(min(0.0, 100 * min(r["test_barrier"] for r in rows)) - 0.1, 1.35 * max(top, 100 * STABLE_BARRIER))
    ax.set_xscale("symlog", linthresh=1)
    ticks = sorted({r["k_iteration"] for r in rows})
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("rewind point k (iterations, symmetric log scale)")
    ax.set_ylabel("test error barrier (% points)")
    ax.set_title("(a) instability against the rewind point")
    legend(ax, loc="upper right")
    ax = axes[0, 1]
    first, last = s["ks"][0], s["ks"][-1]
    for series in ("dense", "ticket"):
        for k, style in ((first, "-"), (last, "--")):
            r = paths[(series, k)]
            ax.plot(r["alpha"], [100 * e for e in r["test_error"]], style, marker=".", color=COLORS[series],
                    label=f"{labels[series].split(' (')[0]}, k = {r['k_iteration']} it")
    ax.set_xlabel("interpolation coefficient α (0: copy 1, 1: copy 2)")
    ax.set_ylabel("test error (%)")
    ax.set_title("(b) test error along the path between the two copies")
    legend(ax, loc="best")
    title(fig, "Instability against the rewind point k (one network each, two copies per k)")

    def describe(series: str) -> tuple[str, bool, bool, list[int]]:
        pts = [r for r in rows if r["series"] == series]
        text = ", ".join(f"{100 * r['test_barrier']:.1f} at k = {r['k_iteration']}" for r in pts)
        stable_at = [r["k_iteration"] for r in pts if r["stable"]]
        return text, not pts[0]["stable"], bool(pts[-1]["stable"]), stable_at

    parts, emerges = [], {}
    for series in ("dense", "ticket"):
        text, unstable_at_0, stable_at_end, stable_at = describe(series)
        emerges[series] = unstable_at_0 and stable_at_end
        state = ("unstable at k = 0 and stable from k = " + str(stable_at[0]) + " iterations" if emerges[series]
                 else "already stable at k = 0" if not unstable_at_0 else "unstable at every k measured")
        name = labels[series].split(" (")[0]
        parts.append(f"{name[0].upper() + name[1:]}: barrier {text} (% points, k in iterations): {state}")
    ours = "; ".join(parts) + (f". The ticket keeps {100 * density:.1f} % of the weights; trained from W^k it "
                               f"reaches " + ", ".join(f"{100 * a:.1f} %" for a in ticket_accuracy)
                               + f" test accuracy at these k (the dense network {100 * dense_accuracy:.1f} %).")
    if emerges["dense"] and emerges["ticket"]:
        verdict = "holds"
    elif emerges["dense"] or emerges["ticket"]:
        verdict = "partly"
        if not emerges["ticket"] and rows[len(s["ks"])]["stable"]:
            gap = dense_accuracy - ticket_accuracy[0]
            ours += (" The sparse ticket is stable from initialisation (as Frankle et al. 2020 report for their "
                     "smallest network, LeNet on MNIST)" + (f", yet {100 * gap:.1f} points below the dense network at "
                     "k = 0: stability alone does not make it matching here." if gap > 0 else "."))
    else:
        verdict = "does not show at this scale"
    caption = Caption(
        claim="Frankle et al. 2020 (\"Linear mode connectivity and the lottery ticket hypothesis\", as in the lecture "
              "slides \"From model pruning to sparse updates and the LTH\"): two copies of a network trained from the "
              "same point W^k with different data orders end in one linearly connected minimum (test-error barrier "
              "below 2 %) once k is a little way into training, but not at k = 0 for the standard vision networks; "
              "sparse IMP subnetworks are matching exactly when they are stable, so rewinding to such k, not to "
              "initialisation, finds tickets (\"connectivity emerges early in training, but not at init\").",
        ours=ours, verdict=verdict,
        setup=f"`train {' '.join(base)} --save-at {','.join(s['ks'])}` (dense: W^k at each k) and `imp {' '.join(base)} "
              f"{' '.join(s['imp'])} -k K` for K in {', '.join(s['ks'])} (the ticket of level {ticket_level} rewound to "
              f"W^K); then `analysis.connectivity.instability` on each W^k: two copies with data-order seeds 1 and 2 "
              f"trained to the end of the run's schedule, {s['points']} points on the path"
              + (f", the training loss on {s['train_samples']} examples" if s["train_samples"] else "")
              + f". Scale {ctx.scale}."
              + (" The small scale uses the MNIST-1D CNN at the toolkit's defaults, whose dense network was measured "
                 "unstable at k = 0 and stable within the first epoch, so the k grid is dense there; one network "
                 "per curve keeps the figure near 3 minutes (each point trains two copies)."
                 if ctx.scale == "small" else "")
              + (" The paper scale is Frankle et al. 2020's ResNet-20 on CIFAR-10 (160 epochs, lr 0.1 dropped at 80 "
                 "and 120) and its IMP subnetwork at 16.8 % of the weights." if ctx.scale == "paper" else ""))
    return Result(fig, rows, caption)


FIGURE = Figure(
    name="instability",
    title="Instability (error barrier) against the rewind point, dense network and IMP ticket",
    reproduces="Frankle et al. 2020, \"Linear mode connectivity and the lottery ticket hypothesis\", as in the "
               "lecture slides",
    small_minutes=1.0,
    make=make,
)
