"""Ticket-search metrics of Sahu et al., "Not all lotteries are made equal", from the replicate runs
of ``python -m training ticket-search``.

Per replicate, among the sparse stages (level >= 1), chosen on the validation split and reported
on the test split:
- Best Sparse: the stage with the highest validation accuracy, whatever its sparsity;
- Sparsest Matching: the sparsest stage whose validation accuracy is at least the dense stage's.
A replicate succeeds when it has a matching stage (a winning ticket). Then (Sahu et al., sec. 2.1):
SR (Success Rate) = N_success / N_total x 100; A_gain = (A_sparse - A_dense) / A_dense x 100 (test
accuracy); TL_gain = (TL_sparse - TL_dense) / TL_dense x 100 (TL: trajectory length);
LTS (Lottery Ticket Score) = A_gain(Best Sparse) x SR, with SR taken as a fraction so that the score
stays on A_gain's scale (the paper's Table 2 values cannot be recomputed from its own columns
either way). Gains are averaged over successful replicates.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Optional

from training.checkpoint import atomic_write_text
from training.cli import ArgumentParser, run_command, writable_dir
from training.data import DATASETS
from training.errors import UserError

from .figure_io import pyplot, save_png
from .trajectory import check_options, gain, remove_outputs, resolve_device

TYPES = ("Dense", "Best Sparse", "Sparsest Matching")
OUTPUTS = ("tickets.json", "tickets.tsv", "tickets.png")
PAPER = 'Sahu et al., "Not all lotteries are made equal"'
ABBREVIATIONS = (
    "SR = Success Rate: % of replicates with a Sparsest Matching ticket (a sparse stage whose validation "
    "accuracy is at least the dense network's); "
    "A_gain = Accuracy Gain = (A_sparse - A_dense) / A_dense x 100, test accuracy, in %; "
    "TL_gain = Trajectory Length Gain = (TL_sparse - TL_dense) / TL_dense x 100, in %; "
    "LTS = Lottery Ticket Score = A_gain(Best Sparse) x SR / 100. "
    "Best Sparse = the sparse stage with the highest validation accuracy. "
    "Sparse rows average over the successful replicates only, Dense over all.")


def select(stages: list[dict]) -> dict:
    """Dense, Best Sparse and Sparsest Matching stages of one replicate (the last two may be None)."""
    if not stages or any("val_accuracy" not in s for s in stages):
        raise UserError("ticket-search metrics need validation accuracies: run the search with --val-fraction > 0")
    dense, sparse = stages[0], stages[1:]
    best = max(sparse, key=lambda s: (s["val_accuracy"], -s["density"]), default=None)
    matching = [s for s in sparse if s["val_accuracy"] >= dense["val_accuracy"]]
    sparsest = min(matching, key=lambda s: s["density"], default=None)
    return {"Dense": dense, "Best Sparse": best, "Sparsest Matching": sparsest}


def _mean_std(values: list[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def metrics(replicates: list[dict]) -> dict:
    """Sahu et al.'s table from replicate records {"stages": [...]} where each stage has density,
    val_accuracy, test_accuracy (fractions) and optionally trajectory_length. Returns
    ``replicates``, ``successes``, ``success_rate`` (SR, %), ``lts_score`` and per row type
    ``rows[TYPE][FIELD] = (mean, std)``: test_accuracy (%), accuracy_gain (A_gain, %), density (%),
    trajectory_length, trajectory_length_gain (TL_gain, %) and ``n`` (replicates averaged)."""
    chosen = [select(r["stages"]) for r in replicates]
    successes = [c for c in chosen if c["Sparsest Matching"] is not None]
    sr = 100 * len(successes) / len(chosen)
    rows = {}
    for kind in TYPES:
        pool = chosen if kind == "Dense" else successes
        picks = [(c[kind], c["Dense"]) for c in pool]
        acc = [100 * s["test_accuracy"] for s, _ in picks]
        a_gain = [gain(s["test_accuracy"], d["test_accuracy"]) for s, d in picks]
        tl = [s["trajectory_length"] for s, _ in picks if s.get("trajectory_length") is not None]
        tl_gain = [gain(s["trajectory_length"], d["trajectory_length"]) for s, d in picks
                   if s.get("trajectory_length") is not None and d.get("trajectory_length")]
        rows[kind] = {"test_accuracy": _mean_std(acc), "accuracy_gain": _mean_std(a_gain),
                      "density": _mean_std([100 * s["density"] for s, _ in picks]),
                      "trajectory_length": _mean_std(tl), "trajectory_length_gain": _mean_std(tl_gain),
                      "n": len(picks)}
    best_gain = rows["Best Sparse"]["accuracy_gain"][0]
    return {"replicates": len(chosen), "successes": len(successes), "success_rate": sr,
            "lts_score": None if best_gain is None else best_gain * sr / 100, "rows": rows}


def table(result: dict) -> str:
    """The metrics laid out like Sahu et al.'s Table 2 (tab-separated, mean +- std)."""
    def fmt(pair, digits=2):
        mean, std = pair
        return "-" if mean is None else f"{mean:.{digits}f} +- {std:.{digits}f}"

    head = ["Network Type", "Weights %", "Trajectory Length", "TL_gain %", "Test Accuracy %",
            "A_gain %", "SR (Success Rate)", "LTS (Lottery Ticket Score)"]
    lines = ["\t".join(head)]
    for kind in TYPES:
        r = result["rows"][kind]
        extra = [f"{result['success_rate']:.0f}%", "-" if result["lts_score"] is None else f"{result['lts_score']:.4f}"] \
            if kind == "Dense" else ["", ""]
        lines.append("\t".join([kind, fmt(r["density"]), fmt(r["trajectory_length"]), fmt(r["trajectory_length_gain"]),
                                fmt(r["test_accuracy"]), fmt(r["accuracy_gain"]), *extra]))
    return "\n".join(lines)


def caption(result: dict) -> str:
    """What the table and the figure show, with every abbreviation spelt out."""
    chance = result.get("chance_accuracy")
    base = (f" The accuracy axis starts at chance accuracy ({chance:.1f}%, 1 / {result['num_classes']} classes)."
            if chance is not None else " The accuracy axis starts at 0%.")
    return (f"Ticket search after {PAPER}: {result['replicates']} replicates, {result['successes']} with a "
            f"winning ticket. {ABBREVIATIONS}{base}")


def read_index(index_path: str | Path) -> dict:
    """Read a ``ticket-search-*.json`` index and each replicate's ``summary.json``; return
    ``{"runs": [folder, ...], "replicates": [{"run", "stages"}], "num_classes": int or None}``.
    Raises ``UserError`` for anything missing or unreadable (nothing is computed yet)."""
    index_path = Path(index_path)
    if not index_path.is_file():
        raise UserError(f"{index_path} does not exist; give the ticket-search-*.json index a search wrote"
                        if not index_path.exists() else f"{index_path} is a folder; give the ticket-search-*.json "
                                                        "index file inside it")
    try:
        index = json.loads(index_path.read_text())
        runs = [Path(r["run"]) for r in index["replicates"]]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise UserError(f"{index_path} is not a ticket-search index") from None
    if not runs:
        raise UserError(f"{index_path} lists no replicates")
    replicates = []
    for run in runs:
        if not run.exists() and (index_path.parent / run.name).exists():
            run = index_path.parent / run.name  # the search ran from another folder
        summary = run / "summary.json"
        if not summary.exists():
            raise UserError(f"{summary} is missing; finish the search first (run the same command again)")
        try:
            stages = json.loads(summary.read_text())["levels"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise UserError(f"{summary} is damaged; run the search command again to rewrite it") from None
        replicates.append({"run": str(run), "stages": stages})
    dataset = ((index.get("config") or {}).get("dataset") or {}).get("dataset")
    classes = DATASETS.get(dataset, {}).get("classes") if isinstance(dataset, str) else None
    return {"runs": [r["run"] for r in replicates], "replicates": replicates, "num_classes": classes}


def from_index(index_path: str | Path, trajectory: bool = True, pairs: int = 8, points: int = 500,
               device: str = "auto", data_dir: Optional[str] = None) -> dict:
    """Read a ``ticket-search-*.json`` index (re-reading each run's summary) and compute the metrics,
    with trajectory lengths of the chosen checkpoints unless ``trajectory`` is False. Adds ``runs``,
    ``num_classes`` and ``chance_accuracy`` (%, None when the dataset is unknown)."""
    read = read_index(index_path)
    replicates = read["replicates"]
    chosen = [select(rep["stages"]) for rep in replicates]  # refuse missing validation data before any work
    if trajectory:
        check_options(pairs, points)
        todo = []
        for rep, picks in zip(replicates, chosen):
            for stage in {id(s): s for s in picks.values() if s is not None}.values():
                path = Path(rep["run"]) / stage["checkpoints"]["final"]
                if not path.is_file():
                    raise UserError(f"{path} is missing; the ticket search did not finish this stage")
                todo.append((stage, path))
        from .trajectory import analyze as trajectory_of

        for stage, path in todo:
            stage["trajectory_length"] = trajectory_of([str(path)], pairs, points, device=device,
                                                       data_dir=data_dir)[0]["mean"]
    result = metrics(replicates)
    result["runs"] = read["runs"]
    result["num_classes"] = read["num_classes"]
    result["chance_accuracy"] = None if read["num_classes"] is None else 100 / read["num_classes"]
    return result


HELP = f"""\
Ticket-search metrics of {PAPER} (their Table 2), from the replicate runs of one
`python -m training ticket-search`. Per replicate: Dense = the unpruned network; Best Sparse = the
sparse stage with the highest validation accuracy; Sparsest Matching = the sparsest stage whose
validation accuracy is at least Dense's (a winning ticket). Test accuracies are reported.

abbreviations:
  SR      Success Rate: % of replicates that found a Sparsest Matching ticket
  A_gain  Accuracy Gain: (A_sparse - A_dense) / A_dense x 100, test accuracy, in %
  TL_gain Trajectory Length Gain: (TL_sparse - TL_dense) / TL_dense x 100, in %, where TL is the
          trajectory length (python -m analysis.trajectory --help)
  LTS     Lottery Ticket Score: A_gain of Best Sparse x SR / 100
  Sparse rows average over the successful replicates only; Dense over all.

reads:   the runs/ticket-search-HASH.json index, each replicate's summary.json and (unless
         --no-trajectory) the final.pt checkpoints of the chosen stages
prints:  the table (tab-separated, mean +- std over replicates), then a caption explaining it
writes:  --out/tickets.json (every number), --out/tickets.tsv (the table) and --out/tickets.png
         (test accuracy above chance, and weights remaining, per network type). Files an earlier
         call left there are removed first.
"""

EPILOG = """\
example (the search needs a validation split; it writes runs/ticket-search-HASH.json):
  python -m training ticket-search --replicates 5 --val-fraction 0.1
  python -m analysis.tickets $(ls -t runs/ticket-search-*.json | head -1)
"""


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m analysis.tickets", description=HELP, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("index", help="the runs/ticket-search-HASH.json file a search wrote")
    p.add_argument("--no-trajectory", action="store_true", help="skip trajectory lengths and TL_gain (faster)")
    p.add_argument("--pairs", type=int, default=8, help="arcs per trajectory length (default 8)")
    p.add_argument("--points", type=int, default=500, help="points per arc, at least 3 (default 500)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--data-dir", help="dataset folder (default: $LTH_DATA_DIR, else ./data)")
    p.add_argument("--out", default="tickets-out",
                   help="folder for tickets.json, tickets.tsv and tickets.png (default: tickets-out)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; return the exit status (0, 2 for bad input, 130 on Ctrl-C)."""
    args = parser().parse_args(argv)

    def body() -> None:
        if not args.no_trajectory:
            check_options(args.pairs, args.points)
            resolve_device(args.device)
        read_index(args.index)  # a wrong index is reported before the output folder is touched
        out = writable_dir(args.out)
        remove_outputs(out, OUTPUTS)
        result = from_index(args.index, not args.no_trajectory, args.pairs, args.points, args.device, args.data_dir)
        result["caption"] = caption(result)
        text = table(result)
        print(text)
        print()
        print(result["caption"])
        atomic_write_text(out / "tickets.json", json.dumps(result, indent=1) + "\n")
        atomic_write_text(out / "tickets.tsv", text + "\n")
        _plot(result, out / "tickets.png")
        print(f"wrote {out / 'tickets.json'}, {out / 'tickets.tsv'} and {out / 'tickets.png'}")

    return run_command(body)


def figure(result: dict):
    """Test accuracy (bars from chance accuracy up, mean +- std, value written on each bar) and
    weights remaining (%) per network type, with the abbreviations explained under the axes."""
    import textwrap

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
    kinds = [k for k in TYPES if result["rows"][k]["test_accuracy"][0] is not None]
    names = [f"{k}\n(n = {result['rows'][k].get('n', '?')})" for k in kinds]
    colors = ["C0", "C1", "C2"][: len(kinds)]
    chance = result.get("chance_accuracy")
    base = chance if chance is not None else 0.0

    ax = axes[0]
    means = [result["rows"][k]["test_accuracy"][0] for k in kinds]
    stds = [result["rows"][k]["test_accuracy"][1] for k in kinds]
    bars = ax.bar(names, [m - base for m in means], bottom=base, yerr=stds, capsize=4, color=colors)
    for bar, k, m, s in zip(bars, kinds, means, stds):
        a_gain = result["rows"][k]["accuracy_gain"][0]
        note = f"{m:.1f} ± {s:.1f}%" + (f"\nA_gain {a_gain:+.1f}%" if k != "Dense" and a_gain is not None else "")
        ax.annotate(note, (bar.get_x() + bar.get_width() / 2, m + s), textcoords="offset points", xytext=(0, 3),
                    ha="center", va="bottom", fontsize=8)
    label = (f"chance: {chance:.1f}% (1 / {result['num_classes']} classes)" if chance is not None
             else "0% (chance unknown)")
    ax.axhline(base, color="k", linestyle="--", linewidth=1, label=label)
    # written on the line, not in a legend box that would cover the bars' values
    ax.annotate(label, (1, base), xycoords=("axes fraction", "data"), xytext=(-4, 3), textcoords="offset points",
                ha="right", va="bottom", fontsize=8)
    top = max(m + s for m, s in zip(means, stds)) if means else 100
    low = min([base] + [m - s for m, s in zip(means, stds)])  # below chance, a bar hangs under the line
    span = max(top - low, 1.0)
    # a little room under the baseline keeps the chance line visible
    ax.set_ylim(max(0.0, low - 0.03 * span), min(100 + 0.03 * span, top + 0.35 * span + 1))
    ax.set(ylabel=f"test accuracy (%), axis from {'chance' if chance is not None else '0%'}")
    lts = "-" if result["lts_score"] is None else f"{result['lts_score']:.2f}"
    ax.set_title(f"test accuracy: SR {result['success_rate']:.0f}% over {result['replicates']} replicates, "
                 f"LTS {lts}", fontsize=10)

    ax = axes[1]
    means = [result["rows"][k]["density"][0] for k in kinds]
    stds = [result["rows"][k]["density"][1] for k in kinds]
    ax.bar(names, means, yerr=stds, capsize=4, color=colors)
    ax.set_ylim(0, 105)
    ax.set(ylabel="weights remaining (% of prunable weights)")
    ax.set_title("sparsity of the chosen stages", fontsize=10)

    text = "\n".join(textwrap.wrap(caption(result), 175))
    fig.text(0.01, 0.01, text, ha="left", va="bottom", fontsize=7.5)
    fig.tight_layout(rect=(0, 0.06 + 0.028 * text.count("\n"), 1, 1))
    return fig


def _plot(result: dict, path: Path) -> None:
    save_png(figure(result), path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
