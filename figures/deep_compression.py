"""Deep Compression of a lottery ticket (Han, Mao & Dally, "Deep Compression", ICLR 2016, Table 2,
as the lecture slides "From model pruning to sparse updates and the LTH" open with it): the size
of every layer after pruning, +quantisation and +Huffman coding, and the test accuracy after
each stage, for an IMP ticket and for the paper's own threshold pruning of the dense network."""
from __future__ import annotations

from pathlib import Path

from training.compression import CompressionSettings, compress

from .core import Caption, Context, Figure, Result, levels, pct
from .style import COLORS, chance_line, dense_line, legend, subplots, title

HAN = 'Han, Mao & Dally, "Deep Compression", ICLR 2016'
STAGES = (("pruned", "pruned (P)"), ("quantised", "+quantised (P+Q)"), ("huffman", "+Huffman (P+Q+H)"))
SOURCES = (("imp", "IMP ticket"), ("threshold", "threshold pruning (Han et al.)"))


def settings(ctx: Context) -> dict:
    """This scale's IMP and dense-training flags and the compression settings of each source."""
    return ctx.pick(
        tiny=dict(common=["--model", "mnist1d_mlp", "--mnist1d-samples", "500", "--train-for", "2ep",
                          "--batch-size", "40"], imp=["--fraction", "0.5", "--levels", "3"], train=[],
                  imp_settings=CompressionSettings(centroid_epochs=1),
                  threshold=CompressionSettings(prune_quality=1.0, retrain=1, centroid_epochs=1)),
        # the MNIST-1D CNN default; IMP halves the weights 4 times (6.25 %), the threshold of 1.5 standard
        # deviations keeps about 13 % of Gaussian weights; 10 epochs of retraining as Han et al. retrain
        small=dict(common=["--model", "mnist1d_cnn"], imp=["--fraction", "0.5", "--levels", "5"], train=[],
                   imp_settings=CompressionSettings(),
                   threshold=CompressionSettings(prune_quality=1.5, retrain=10)),
        paper=dict(common=[], imp=["--preset", "lenet300_mnist", "--levels", "12"],
                   train=["--preset", "deep_compression_lenet300"],
                   imp_settings=CompressionSettings(fc_bits=6),
                   threshold=CompressionSettings(prune_quality=1.75, retrain=10, fc_bits=6)),
    )


def _compress(ctx: Context, folder: Path, s: CompressionSettings) -> dict:
    return compress(folder, s, out=ctx.runs, data_dir=ctx.data_dir, device=ctx.device, progress=ctx.progress).report


def make(ctx: Context) -> Result:
    s = settings(ctx)
    imp_run = ctx.run("imp", [*s["common"], *s["imp"]])
    dense_run = ctx.run("train", [*s["common"], *s["train"]])
    dense_acc = levels(dense_run)[0]["test_accuracy"]
    reports = {"imp": _compress(ctx, imp_run, s["imp_settings"]),
               "threshold": _compress(ctx, dense_run, s["threshold"])}
    rows = []
    for source, label in SOURCES:
        report = reports[source]
        for layer in report["layers"]:
            for stage, stage_label in STAGES:
                rows.append(dict(source=label, layer=layer["layer"], stage=stage_label, weights=layer["weights"],
                                 fraction_kept=layer["fraction_kept"], rate=layer[f"rate_{stage}"],
                                 factor=1 / layer[f"rate_{stage}"], test_accuracy=None, folder=report["folder"]))
        for st in report["stages"]:
            rows.append(dict(source=label, layer="network", stage=st["label"], weights=None, fraction_kept=None,
                             rate=st["rate"], factor=st["factor"], test_accuracy=st["test_accuracy"],
                             file_bytes=st.get("file_bytes"), folder=report["folder"]))

    fig, axes = subplots(1, 3, width=4.2, height=3.6)
    colors = ("C0", "C1", "C2")
    for ax, (source, label) in zip(axes[0, :2], SOURCES):
        layers = reports[source]["layers"]
        width = 0.8 / len(STAGES)
        for i, ((stage, stage_label), color) in enumerate(zip(STAGES, colors)):
            xs = [j + (i - 1) * width for j in range(len(layers))]
            ax.bar(xs, [100 * r[f"rate_{stage}"] for r in layers], width, color=color, label=stage_label)
        ax.axhline(100, color=COLORS["dense"], linestyle="--", linewidth=1, label="dense float32 (100 %)")
        ax.set_yscale("log")
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([f"{r['layer']}\n{100 * r['fraction_kept']:.0f} % kept" for r in layers], fontsize=6,
                           rotation=30, ha="right")
        ax.set_ylabel("size (% of dense float32, log scale)")
        ax.set_ylim(top=ax.get_ylim()[1] * 20)  # room for the legend above the bars
        ax.set_title(f"{label}: size per layer")
        legend(ax, loc="upper center", ncol=2)
    ax = axes[0, 2]
    for (source, label), marker, color in zip(SOURCES, ("o-", "s--"), (COLORS["imp"], "C3")):
        stages = reports[source]["stages"]
        ax.plot(range(len(stages)), [100 * st["test_accuracy"] for st in stages], marker, color=color, label=label)
        for x, st in enumerate(stages):
            ax.annotate(f"{st['factor']:.0f}x", (x, 100 * st["test_accuracy"]), textcoords="offset points",
                        xytext=(3, 4 if source == "imp" else -10), fontsize=6, color=color)
    dense_line(ax, 100 * dense_acc, f"dense network ({pct(dense_acc)})")
    chance_line(ax)
    ax.set_xticks(range(4))
    ax.set_xticklabels(["source,\ndense float32", "P", "P+Q", "P+Q+H"])
    ax.set_xlabel("stage (labels: compression factor of the whole network)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy after each stage")
    legend(ax, loc="lower left")
    title(fig, "Deep Compression of a ticket: prune, quantise by weight sharing, Huffman-code")

    # verdict: the paper's claims are that quantisation and Huffman coding cost no accuracy (LeNet-300-100:
    # 1.58 % error against 1.64 %) and that the three stages together compress 35-49x
    lossless = {k: r["stages"][3]["test_accuracy"] >= r["stages"][1]["test_accuracy"] - 0.01 for k, r in reports.items()}
    factor = {k: r["stages"][3]["factor"] for k, r in reports.items()}
    big = factor["threshold"] >= 35
    verdict = "holds" if all(lossless.values()) and big else (
        "partly" if any(lossless.values()) or big else "does not show at this scale")

    def describe(key: str, label: str) -> str:
        st = reports[key]["stages"]
        total = reports[key]["layers"][-1]
        return (f"{label}: {100 * total['fraction_kept']:.1f} % of the weights kept; {st[1]['factor']:.1f}x after "
                f"pruning, {st[2]['factor']:.1f}x with quantisation, {st[3]['factor']:.1f}x with Huffman coding "
                f"({st[3]['file_bytes']} bytes on disk against {st[0]['bytes']:.0f} dense); test accuracy "
                f"{pct(st[1]['test_accuracy'])} pruned, {pct(st[2]['test_accuracy'])} quantised "
                f"({'no loss' if lossless[key] else 'a loss'} of more than 1 point: "
                f"{100 * (st[3]['test_accuracy'] - st[1]['test_accuracy']):+.1f} points). ")

    ours = (f"Dense network {pct(dense_acc)}. " + describe("imp", "IMP ticket") +
            describe("threshold", "Han et al.'s threshold pruning of the dense network") +
            "Decoded weights equal the quantised ones bit for bit in both files.")
    claim = (f"{HAN} (Table 2 and the slides): pruning, trained quantisation and Huffman coding shrink LeNet-300-100 "
             "from 1070 KB to 27 KB (40x) at 1.58 % error against 1.64 % dense; 8 % of the weights kept (12x), "
             "3.1 % of the size after quantisation (32x) and 2.49 % after Huffman coding (40x); LeNet-5 39x, "
             "AlexNet 35x, VGG-16 49x, without loss of accuracy.")
    imp_s, thr = s["imp_settings"], s["threshold"]
    setup = (f"`imp {' '.join([*s['common'], *s['imp']])}` (its last level compressed) and "
             f"`train {' '.join([*s['common'], *s['train']])}` pruned with threshold "
             f"{thr.prune_quality} standard deviations per layer and retrained {thr.retrain} epochs; then k-means "
             f"weight sharing ({imp_s.conv_bits}-bit convolutions, {imp_s.fc_bits}-bit fully connected, linear "
             f"initialisation), {imp_s.centroid_epochs} epochs of centroid fine-tuning, relative indices of "
             f"{imp_s.conv_index_bits}/{imp_s.fc_index_bits} bits, Huffman coding (`python -m training compress`). "
             "Biases count as float32. Verdict rule: holds if quantisation and Huffman coding cost at most 1 point "
             "for both sources and the threshold-pruned network reaches 35x (the paper's smallest factor); partly "
             f"if one of the two; does not show otherwise. Scale {ctx.scale}.")
    if ctx.scale == "small":
        setup += (" The MNIST-1D CNN has 12K weights, so its 8-bit codebooks (255 float32 values per convolution) "
                  "and its biases weigh far more than in LeNet-300-100's 266K weights.")
    extra = {"compressions": {k: r["folder"] for k, r in reports.items()}, "factors": factor, "lossless": lossless}
    return Result(fig, rows, Caption(claim=claim, ours=ours, verdict=verdict, setup=setup), extra)


FIGURE = Figure(
    name="deep-compression",
    title="Deep Compression of a ticket: size and accuracy after pruning, quantisation and Huffman coding",
    reproduces=f"{HAN}, Table 2 (LeNet-300-100, 40x), as the lecture slides \"From model pruning to sparse updates "
               "and the LTH\" present it",
    small_minutes=0.5,
    make=make,
    paper_datasets=("mnist",),
)
