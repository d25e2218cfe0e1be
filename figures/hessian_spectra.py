"""Figure 1: Hessian eigenvalue densities of the one-shot lottery ticket W^k_LOT = W^k * M at
several rewind points k, one panel per fraction R of weights kept (Tartaglione 2022, "The rise of
the lottery heroes: why zero-shot pruning is hard", Fig. 2).

The object is the paper's: ``lot -R R -I 1 -k K`` trains the dense network from W^0 (keeping W^k),
keeps the R % largest-magnitude trained weights (mask M) and writes ``level_1/rewind.pt`` = W^k * M;
its ``level_0/rewind.pt`` is the dense W^k of the R = 100 % panel. The Hessian is that of the mean
training loss over the whole training split, in the full parameter space (what PyHessian, which the
paper used, computes for a model whose pruned weights are zero), from ``analysis.hessian.analyze``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from .core import Caption, Context, Figure, Result, levels
from .style import legend, subplots, title

DENSITY_POINTS = 500  # points per density curve kept for the plot and the CSV (of analyze's 2000)


def settings(ctx: Context) -> dict:
    """This scale's LOT runs (flags, kept percentages R, rewind points k) and Hessian settings."""
    from analysis.hessian import Settings

    return ctx.pick(
        tiny=dict(base=["--model", "mnist1d_mlp", "--mnist1d-samples", "500", "--train-for", "2ep",
                        "--batch-size", "40", "-I", "1"],
                  keeps=[10], rewinds=["0", "1ep"],  # the runs of lot-vs-rise's tiny scale
                  hessian=Settings(top_k=0, trace=False, density=True, space="full", slq_probes=2,
                                   lanczos_steps=8)),
        # The MNIST-1D MLP is the cheapest model whose LOT/RISE gap shows at this scale (SMALL_SCALE.md),
        # and the figure `lot-vs-rise` trains the same R = 10 % runs, so they are shared. k up to 4 of
        # 30 epochs covers the paper's first 19 of 180 epochs (about 11 % of training). 4 probes x 30
        # Lanczos steps over all 4,000 training examples: 30 passes, 3 to 7 s a checkpoint.
        small=dict(base=["--model", "mnist1d_mlp", "-I", "1"],
                   keeps=[10, 25, 50], rewinds=["0", "2ep", "4ep"],
                   hessian=Settings(top_k=0, trace=False, density=True, space="full", slq_probes=4,
                                    lanczos_steps=30)),
        # ResNet-32 on CIFAR-10 as in the paper, rewinds within its first 19 epochs, whole training set
        paper=dict(base=["--preset", "resnet32_cifar10", "-I", "1"],
                   keeps=[10, 25, 50], rewinds=["0", "1ep", "2ep", "5ep", "10ep", "19ep"],
                   hessian=Settings(top_k=0, trace=False, density=True, space="full", slq_probes=4,
                                    lanczos_steps=80)),
    )


def cached_analyze(ctx: Context, checkpoint: Path, hessian_settings) -> dict:
    """``analysis.hessian.analyze`` of ``checkpoint``, cached under ``ctx.runs/analysis-cache/`` by
    the checkpoint (path, size, modification time) and the settings, so that a re-plot does not
    recompute the spectrum. Returns analyze's dict (eigenvalues in nats per squared weight unit)."""
    from analysis.hessian import analyze
    from training.engine.checkpoint import atomic_write_text

    stat = checkpoint.stat()
    key = json.dumps([str(checkpoint.resolve()), stat.st_size, stat.st_mtime_ns, asdict(hessian_settings)],
                     sort_keys=True)
    cache = ctx.runs / "analysis-cache" / f"hessian-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    result = analyze(checkpoint, hessian_settings, data_dir=ctx.data_dir)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps(result))
    return result


def _near_zero_mass(result: dict, eps: float) -> float:
    """Fraction of the spectrum (SLQ quadrature weight, averaged over probes) with |eigenvalue| < eps."""
    nodes = np.asarray(result["density"]["nodes"])
    weights = np.asarray(result["density"]["weights"])
    return float((weights * (np.abs(nodes) < eps)).sum(axis=1).mean())


def _k_label(rewind: str) -> str:
    return "k = 0" if rewind == "0" else f"k = {rewind.replace('ep', ' ep').replace('it', ' it')}"


def make(ctx: Context) -> Result:
    s = settings(ctx)
    hs = replace(s["hessian"], device=ctx.device)
    keeps, rewinds = s["keeps"], s["rewinds"]
    runs = ctx.sweep("lot", {"keep": keeps, "rewind": rewinds}, s["base"])
    by_point = {(r, k): run for (r, k), run in zip(((r, k) for r in keeps for k in rewinds), runs)}
    if ctx.threads is not None:
        from training.cli import set_threads
        set_threads(ctx.threads)

    # (R, k) -> (checkpoint, run folder, analyze result); R = 100: the dense W^k of the first R's runs,
    # whose level 0 (the dense training from W^0) is the same run for every R
    spectra: dict[tuple[int, str], tuple[Path, Path, dict]] = {}
    for (keep, rewind), run in by_point.items():
        lv = levels(run)
        spectra[(keep, rewind)] = (run / lv[1]["checkpoints"]["rewind"], run, None)
        if keep == keeps[0]:
            spectra[(100, rewind)] = (run / lv[0]["checkpoints"]["rewind"], run, None)
    spectra = {key: (ckpt, run, cached_analyze(ctx, ckpt, hs)) for key, (ckpt, run, _) in spectra.items()}

    panels = [*keeps, 100]
    rows = []
    stats: dict[tuple[int, str], dict] = {}
    for rewind in rewinds:
        dense = spectra[(100, rewind)][2]
        # "near zero": within 1 % of the dense network's largest eigenvalue at the same k
        eps = 0.01 * float(np.max(dense["density"]["nodes"]))
        for keep in panels:
            ckpt, run, res = spectra[(keep, rewind)]
            stats[(keep, rewind)] = dict(near_zero_mass=_near_zero_mass(res, eps), eps=eps,
                                         lambda_max=float(np.max(res["density"]["nodes"])),
                                         weight_density=res["weight_density"], iteration=res["iteration"])
    cols = 2 if len(panels) > 2 else len(panels)
    fig, axes = subplots(-(-len(panels) // cols), cols, width=4.6, height=3.2)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    colors = [__import__("matplotlib").colormaps["viridis"](x) for x in np.linspace(0.0, 0.85, len(rewinds))]
    dashes = ["-", "--", "-.", ":"]
    for ax, keep in zip(axes.flat, panels):
        for i, rewind in enumerate(rewinds):
            ckpt, run, res = spectra[(keep, rewind)]
            grid = np.asarray(res["density"]["grid"])
            dens = np.asarray(res["density"]["density"])
            pick = np.linspace(0, len(grid) - 1, min(DENSITY_POINTS, len(grid))).round().astype(int)
            grid, dens = grid[pick], np.maximum(dens[pick], 1e-12)
            st = stats[(keep, rewind)]
            ax.plot(grid, dens, color=colors[i], linestyle=dashes[i % len(dashes)], linewidth=1.2,
                    label=f"{_k_label(rewind)} (near 0: {100 * st['near_zero_mass']:.0f} %, "
                          f"λmax {st['lambda_max']:.2g})")
            for x, y in zip(grid, dens):
                rows.append(dict(keep_percent=keep, rewind=rewind, rewind_iteration=st["iteration"],
                                 eigenvalue=float(x), density=float(y),
                                 near_zero_mass=st["near_zero_mass"], near_zero_eps=st["eps"],
                                 lambda_max=st["lambda_max"], weight_density=st["weight_density"],
                                 space=res["space"], examples=res["examples"], seed=0,
                                 checkpoint=str(ckpt), folder=str(run)))
        ax.axvline(0.0, color="0.5", linestyle=":", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("Hessian eigenvalue λ (nats / weight²)")
        ax.set_title(f"R = {keep} % kept" + (" (dense W^k, reference)" if keep == 100 else " (W^k · M)"))
        legend(ax, loc="upper right", title="rewind point (share near 0, largest λ)", title_fontsize=7)
    # one x and y range for all panels, so that a narrower (flatter) spectrum looks narrower
    xs = [r["eigenvalue"] for r in rows]
    top = max(r["density"] for r in rows)
    for ax in axes.flat[:len(panels)]:
        ax.set_xlim(min(xs), max(xs))
        ax.set_ylim(1e-6 * top, 3 * top)
    for ax in axes[:, 0]:
        ax.set_ylabel("spectral density (per unit λ, log scale)")
    title(fig, "Hessian eigenvalue density of the one-shot ticket W^k·M at rewind points k\n"
               f"({hs.space} parameter space, mean loss over {spectra[(100, rewinds[0])][2]['examples']:,} training examples)")

    # The paper: low R (10, 25 %) makes the landscape flat with a peak near zero; R = 50 % stays close to
    # dense. Two measures at each k: the share of the spectrum near 0 against the dense one, and the
    # largest eigenvalue (the curvature scale), which a flatter landscape lowers.
    def excess(keep: int, rewind: str) -> float:
        return stats[(keep, rewind)]["near_zero_mass"] - stats[(100, rewind)]["near_zero_mass"]

    low = [r for r in keeps if r <= 25]
    peak_points = sum(excess(r, k) > 0.05 for r in low for k in rewinds)
    peak_everywhere = peak_points == len(low) * len(rewinds)
    monotone = [k for k in rewinds
                if all(stats[(a, k)]["lambda_max"] < stats[(b, k)]["lambda_max"] for a, b in zip(panels, panels[1:]))]
    if peak_everywhere and len(monotone) == len(rewinds):
        verdict = "holds"
    elif peak_points or monotone:
        verdict = "partly"
    else:
        verdict = "does not show at this scale"
    ks = ", ".join(rewinds)
    per_r = "; ".join(
        f"R = {r} %: " + ", ".join(f"{100 * stats[(r, k)]['near_zero_mass']:.0f}" for k in rewinds) for r in panels)
    ratio = "; ".join(
        f"R = {r} %: " + ", ".join(f"{stats[(r, k)]['lambda_max'] / stats[(100, k)]['lambda_max']:.2f}" for k in rewinds)
        for r in keeps)
    dense_lam = ", ".join(f"{stats[(100, k)]['lambda_max']:.3g}" for k in rewinds)
    ours = (f"Largest eigenvalue of W^k·M over that of the dense W^k ({dense_lam} nats/weight² at k = {ks}): {ratio}; "
            f"it grows with R at {len(monotone)} of {len(rewinds)} rewind points, so the fewer weights kept, the "
            f"flatter the landscape. Share of the spectrum within 1 % of the dense largest eigenvalue of 0 (%, "
            f"k = {ks}): {per_r}. The near-zero share at R ≤ 25 % exceeds the dense one by more than 5 points at "
            f"{peak_points} of {len(low) * len(rewinds)} (R, k) points"
            + (f" (the dense spectrum itself has {100 * min(stats[(100, k)]['near_zero_mass'] for k in rewinds):.0f} "
               f"to {100 * max(stats[(100, k)]['near_zero_mass'] for k in rewinds):.0f} % of its mass there)."))
    caption = Caption(
        claim="Tartaglione 2022, \"The rise of the lottery heroes\", Fig. 2 (ResNet-32, CIFAR-10, I = 1, Hessian "
              "on W^k_LOT = W^k · M over the full training set, k in the first 19 epochs): \"when R is low "
              "(R = 10% [...] or R = 25% [...]), the distribution changes significantly. In particular, a peak to "
              "values close to zero is observed: locally, the loss landscape is flat. Contrarily, for a higher R "
              "regime (R = 50 %) the distribution is richer and similar to the reference\" (the dense model). The "
              "paper states no trend with k for the spectra; its Sec. 2 adds that at R = 10 % the one-shot ticket "
              "stays below 60 % (dense 92.92 %) whatever k up to 20.",
        ours=ours, verdict=verdict,
        setup=f"`lot {' '.join(s['base'])}` over R = {', '.join(map(str, keeps))} % and k = {', '.join(rewinds)}; "
              f"Hessian by `analysis.hessian.analyze` on each run's level_1/rewind.pt (W^k · M) and level_0/rewind.pt "
              f"(dense W^k, R = 100 %): {hs.space} space (PyHessian's object), {hs.mode} mode, all training examples, "
              f"stochastic Lanczos quadrature with {hs.slq_probes} probes x {hs.lanczos_steps} steps, Gaussian "
              f"smoothing of width span/100. Verdict rule: holds if at every k the largest eigenvalue grows with R (flatter "
              f"landscape at lower R) and the near-zero share at R ≤ 25 % exceeds the dense one by more than 5 points; "
              f"partly if either shows anywhere. "
              f"Scale {ctx.scale}."
              + (" The MNIST-1D MLP is used because it is the cheapest model whose one-shot LOT falls behind at this "
                 "scale, and its R = 10 % runs are shared with the figure lot-vs-rise; k up to 4 of 30 epochs "
                 "spans about the same share of training as the paper's first 19 of 180 epochs."
                 if ctx.scale == "small" else ""))
    return Result(fig, rows, caption, extra={"hessian_settings": asdict(hs)})


FIGURE = Figure(
    name="hessian-spectra",
    title="Hessian eigenvalue densities of the one-shot ticket at several rewind points",
    reproduces="Tartaglione 2022, \"The rise of the lottery heroes\", Fig. 2",
    small_minutes=0.5,
    make=make,
    paper_datasets=("cifar10",),
)
