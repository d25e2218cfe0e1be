"""Ticket-search metrics of seed 003 from the replicate runs of ``python -m training ticket-search``.

Per replicate, among the sparse stages (level >= 1), chosen on the validation split and reported
on the test split:
- Best Sparse: the stage with the highest validation accuracy, whatever its sparsity;
- Sparsest Matching: the sparsest stage whose validation accuracy is at least the dense stage's.
A replicate succeeds when it has a matching stage (a winning ticket). Then (seed 003, sec. 2.1):
SR = N_success / N_total x 100; A_gain = (A_sparse - A_dense) / A_dense x 100 (test accuracy);
TL_gain = (TL_sparse - TL_dense) / TL_dense x 100; LTS = A_gain(Best Sparse) x SR, with SR taken as
a fraction so that the score stays on A_gain's scale (seed 003's Table 2 values cannot be
recomputed from its own columns either way). Gains are averaged over successful replicates.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Optional

from training.checkpoint import atomic_write_text
from training.errors import UserError

from .figure_io import pyplot, save_png
from .trajectory import gain

TYPES = ("Dense", "Best Sparse", "Sparsest Matching")


def select(stages: list[dict]) -> dict:
    """Dense, Best Sparse and Sparsest Matching stages of one replicate (the last two may be None)."""
    if not stages or any("val_accuracy" not in s for s in stages):
        raise UserError("ticket-search metrics need validation accuracies: run the search with --val-fraction > 0")
    dense, sparse = stages[0], stages[1:]
    best = max(sparse, key=lambda s: (s["val_accuracy"], -s["density"]), default=None)
    matching = [s for s in sparse if s["val_accuracy"] >= dense["val_accuracy"]]
    sparsest = min(matching, key=lambda s: s["density"], default=None)
    return {"Dense": dense, "Best Sparse": best, "Sparsest Matching": sparsest}


def _mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def metrics(replicates: list[dict]) -> dict:
    """Seed 003's table from replicate records {"stages": [...]} where each stage has density,
    val_accuracy, test_accuracy and optionally trajectory_length."""
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
                      "trajectory_length": _mean_std(tl), "trajectory_length_gain": _mean_std(tl_gain)}
    best_gain = rows["Best Sparse"]["accuracy_gain"][0]
    return {"replicates": len(chosen), "successes": len(successes), "success_rate": sr,
            "lts_score": None if best_gain is None else best_gain * sr / 100, "rows": rows}


def table(result: dict) -> str:
    """The metrics laid out like seed 003's Table 2."""
    def fmt(pair, digits=2):
        mean, std = pair
        return "-" if mean is None else f"{mean:.{digits}f} +- {std:.{digits}f}"

    head = ["Network Type", "Weights %", "Trajectory Length", "Trajectory Length Gain %", "Test Accuracy",
            "Accuracy Gain %", "Success Rate", "LTS Score"]
    lines = ["\t".join(head)]
    for kind in TYPES:
        r = result["rows"][kind]
        extra = [f"{result['success_rate']:.0f}%", "-" if result["lts_score"] is None else f"{result['lts_score']:.4f}"] \
            if kind == "Dense" else ["", ""]
        lines.append("\t".join([kind, fmt(r["density"]), fmt(r["trajectory_length"]), fmt(r["trajectory_length_gain"]),
                                fmt(r["test_accuracy"]), fmt(r["accuracy_gain"]), *extra]))
    return "\n".join(lines)


def from_index(index_path: str | Path, trajectory: bool = True, pairs: int = 8, points: int = 500,
               device: str = "auto", data_dir: Optional[str] = None) -> dict:
    """Read a ``ticket-search-*.json`` index (re-reading each run's summary) and compute the metrics,
    with trajectory lengths of the chosen checkpoints unless ``trajectory`` is False."""
    index_path = Path(index_path)
    if not index_path.exists():
        raise UserError(f"{index_path} does not exist; give the ticket-search-*.json index a search wrote")
    try:
        index = json.loads(index_path.read_text())
        runs = [Path(r["run"]) for r in index["replicates"]]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{index_path} is not a ticket-search index") from None
    replicates = []
    for run in runs:
        summary = run / "summary.json"
        if not summary.exists():
            raise UserError(f"{summary} is missing; finish the search first (run the same command again)")
        stages = json.loads(summary.read_text())["levels"]
        replicates.append({"run": str(run), "stages": stages})
    if trajectory:
        from .trajectory import analyze as trajectory_of

        for rep in replicates:
            chosen = select(rep["stages"])
            for stage in {id(s): s for s in chosen.values() if s is not None}.values():
                path = Path(rep["run"]) / stage["checkpoints"]["final"]
                stage["trajectory_length"] = trajectory_of([str(path)], pairs, points, device=device,
                                                           data_dir=data_dir)[0]["mean"]
    result = metrics(replicates)
    result["runs"] = [r["run"] for r in replicates]
    return result


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.tickets",
                                description="Seed 003's ticket-search metrics (Best Sparse, Sparsest Matching, SR, "
                                            "A_gain, LTS Score, TL_gain) from a ticket search's index file.",
                                epilog="example:\n  python -m training ticket-search --replicates 5\n"
                                       "  python -m analysis.tickets runs/ticket-search-*.json",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("index", help="the runs/ticket-search-HASH.json file a search wrote")
    p.add_argument("--no-trajectory", action="store_true", help="skip trajectory lengths (faster)")
    p.add_argument("--pairs", type=int, default=8, help="arcs per trajectory length (default 8)")
    p.add_argument("--points", type=int, default=500, help="points per arc (default 500)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir")
    p.add_argument("--out", default="tickets-out")
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        result = from_index(args.index, not args.no_trajectory, args.pairs, args.points, args.device, args.data_dir)
        text = table(result)
        print(text)
        atomic_write_text(out / "tickets.json", json.dumps(result, indent=1) + "\n")
        atomic_write_text(out / "tickets.tsv", text + "\n")
        _plot(result, out / "tickets.png")
        print(f"wrote {out / 'tickets.json'}, {out / 'tickets.tsv'} and {out / 'tickets.png'}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _plot(result: dict, path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    kinds = [k for k in TYPES if result["rows"][k]["test_accuracy"][0] is not None]
    for ax, key, label in ((axes[0], "test_accuracy", "test accuracy (%)"), (axes[1], "density", "weights remaining (%)")):
        means = [result["rows"][k][key][0] for k in kinds]
        stds = [result["rows"][k][key][1] for k in kinds]
        ax.bar(kinds, means, yerr=stds, capsize=4, color=["C0", "C1", "C2"][: len(kinds)])
        ax.set(ylabel=label)
    axes[0].set_title(f"SR {result['success_rate']:.0f}% over {result['replicates']} replicates")
    if result["rows"]["Dense"]["test_accuracy"][0] is not None:
        low = min(m for m in [result["rows"][k]["test_accuracy"][0] for k in kinds])
        axes[0].set_ylim(max(0, low - 5), None)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
