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

Each of SR, A_gain, TL_gain and LTS also gets a confidence interval: a percentile bootstrap over
replicates (``bootstrap_interval``; 95 % and 2,000 resamples by default, fixed seed, so a rerun gives
the same numbers). Whole replicates are resampled with replacement and every metric is recomputed
from the resample, so the interval of a sparse row's gain also carries the chance of how many
replicates succeed. Given several indexes (one per model), ``overlaps`` names the models whose
intervals overlap: a ranking of them on that metric is not supported by the data.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

from training.engine.checkpoint import atomic_write_text
from training.cli import ArgumentParser, add_threads_flag, check_threads, run_command, set_threads, writable_dir
from training.data import DATASET_SPECS
from training.errors import UserError
from training.engine.provenance import provenance

from .figure_io import pyplot, save_png, unique_labels
from .trajectory import check_options, gain, remove_outputs, resolve_device

TYPES = ("Dense", "Best Sparse", "Sparsest Matching")
SPARSE = TYPES[1:]
RESAMPLES = 2000  # the interval's ends move by about 1.5 % of its width from one seed to another
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
SAHU_SEARCHES = 50  # ticket searches per architecture in Sahu et al.
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


T = TypeVar("T")


def bootstrap_interval(values: Sequence[T], statistic: Callable[[list[T]], Optional[float]] = statistics.fmean,
                       resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                       seed: int = BOOTSTRAP_SEED) -> tuple[Optional[float], Optional[float]]:
    """Percentile-bootstrap confidence interval of ``statistic(values)``: ``resamples`` resamples of
    ``values`` drawn with replacement (numpy's ``default_rng(seed)``, so the same call gives the same
    interval), the statistic of each, and their ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    quantiles. Returns ``(low, high)`` in the statistic's units; resamples whose statistic is None
    (undefined, e.g. no successful replicate drawn) are left out, and ``(None, None)`` comes back
    when ``values`` is empty or no resample has a value."""
    import numpy as np

    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    values = list(values)
    if not values:
        return None, None
    draws = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    stats = [s for s in (statistic([values[i] for i in row]) for row in draws) if s is not None]
    if not stats:
        return None, None
    low, high = np.quantile(stats, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def _gains(chosen: dict) -> dict:
    """One replicate's success and, per sparse row type, its A_gain and TL_gain (%, None when
    undefined): what the bootstrap resamples."""
    dense = chosen["Dense"]
    record = {"success": chosen["Sparsest Matching"] is not None}
    for kind in SPARSE:
        s = chosen[kind]
        a = None if s is None else gain(s["test_accuracy"], dense["test_accuracy"])
        tl = (gain(s["trajectory_length"], dense["trajectory_length"])
              if s is not None and s.get("trajectory_length") is not None and dense.get("trajectory_length") else None)
        record[kind] = {"accuracy_gain": a, "trajectory_length_gain": tl}
    return record


def _success_rate(records: list[dict]) -> float:
    return 100 * sum(r["success"] for r in records) / len(records)


def _mean_gain(kind: str, field: str) -> Callable[[list[dict]], Optional[float]]:
    def statistic(records: list[dict]) -> Optional[float]:
        values = [r[kind][field] for r in records if r["success"] and r[kind][field] is not None]
        return statistics.fmean(values) if values else None
    return statistic


def _lts(records: list[dict]) -> Optional[float]:
    a_gain = _mean_gain("Best Sparse", "accuracy_gain")(records)
    return None if a_gain is None else a_gain * _success_rate(records) / 100


def _interval(pair: tuple[Optional[float], Optional[float]]) -> Optional[list[float]]:
    return None if pair[0] is None else [pair[0], pair[1]]


def metrics(replicates: list[dict], resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
            seed: int = BOOTSTRAP_SEED) -> dict:
    """Sahu et al.'s table from replicate records {"stages": [...]} where each stage has density,
    val_accuracy, test_accuracy (fractions) and optionally trajectory_length. Returns
    ``replicates``, ``successes``, ``success_rate`` (SR, %), ``lts_score`` and per row type
    ``rows[TYPE][FIELD] = (mean, std)``: test_accuracy (%), accuracy_gain (A_gain, %), density (%),
    trajectory_length, trajectory_length_gain (TL_gain, %) and ``n`` (replicates averaged).

    Confidence intervals (``bootstrap_interval`` over replicates, [low, high] in the metric's
    units, None when undefined): ``success_rate_ci``, ``lts_score_ci`` and, for the sparse rows,
    ``rows[TYPE]["accuracy_gain_ci"]`` and ``rows[TYPE]["trajectory_length_gain_ci"]``;
    ``bootstrap`` states the method, resamples, confidence, seed and replicates."""
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
    records = [_gains(c) for c in chosen]

    def interval(statistic):
        return _interval(bootstrap_interval(records, statistic, resamples, confidence, seed))

    for kind in SPARSE:
        for field in ("accuracy_gain", "trajectory_length_gain"):
            rows[kind][f"{field}_ci"] = interval(_mean_gain(kind, field))
    return {"replicates": len(chosen), "successes": len(successes), "success_rate": sr,
            "lts_score": None if best_gain is None else best_gain * sr / 100,
            "success_rate_ci": interval(_success_rate), "lts_score_ci": interval(_lts), "rows": rows,
            "bootstrap": {"method": "percentile bootstrap over replicates (whole replicates resampled with "
                                    "replacement, every metric recomputed from each resample)",
                          "resamples": resamples, "confidence": confidence, "seed": seed,
                          "replicates": len(chosen)}}


def interval_note(bootstrap: dict, replicates: Sequence[int]) -> str:
    """One sentence saying what the brackets and interval error bars are: the method, the
    confidence, the resamples and the replicates (one count per model)."""
    reps = (f"{replicates[0]} replicates" if len(replicates) == 1
            else f"replicates of each model ({', '.join(map(str, replicates))})")
    return (f"Brackets and interval error bars: {100 * bootstrap['confidence']:g}% percentile-bootstrap "
            f"confidence intervals over the {reps}, {bootstrap['resamples']:,} resamples of whole replicates "
            f"(seed {bootstrap['seed']}); {PAPER} run {SAHU_SEARCHES} ticket searches per architecture, and "
            "fewer replicates give wider intervals.")


def _fmt_interval(ci: Optional[list[float]], digits: int) -> str:
    return "" if ci is None else f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _rows(result: dict) -> list[list[str]]:
    def fmt(pair, digits=2, ci=None):
        mean, std = pair
        return "-" if mean is None else f"{mean:.{digits}f} +- {std:.{digits}f}{_fmt_interval(ci, digits)}"

    lines = []
    for kind in TYPES:
        r = result["rows"][kind]
        extra = [f"{result['success_rate']:.0f}%{_fmt_interval(result.get('success_rate_ci'), 0)}",
                 "-" if result["lts_score"] is None
                 else f"{result['lts_score']:.4f}{_fmt_interval(result.get('lts_score_ci'), 4)}"] \
            if kind == "Dense" else ["", ""]
        lines.append([kind, fmt(r["density"]), fmt(r["trajectory_length"]),
                      fmt(r["trajectory_length_gain"], ci=r.get("trajectory_length_gain_ci")),
                      fmt(r["test_accuracy"]), fmt(r["accuracy_gain"], ci=r.get("accuracy_gain_ci")), *extra])
    return lines


HEAD = ["Network Type", "Weights %", "Trajectory Length", "TL_gain % [CI]", "Test Accuracy %",
        "A_gain % [CI]", "SR (Success Rate) [CI]", "LTS (Lottery Ticket Score) [CI]"]


def table(result: dict) -> str:
    """The metrics laid out like Sahu et al.'s Table 2 (tab-separated, mean +- std over replicates,
    then the bootstrap confidence interval in brackets for SR, A_gain, TL_gain and LTS)."""
    return "\n".join("\t".join(line) for line in [HEAD, *_rows(result)])


def comparison_table(results: list[dict]) -> str:
    """``table`` for several models, one block of rows per model, with a leading Model column."""
    lines = [["Model", "Replicates", *HEAD]]
    for result in results:
        lines += [[result["label"], str(result["replicates"]), *row] for row in _rows(result)]
    return "\n".join("\t".join(line) for line in lines)


# (name, unit, how to read the point value and the interval) of every metric with an interval
def _metric(field: str, kind: Optional[str] = None):
    def read(result: dict) -> tuple[Optional[float], Optional[list[float]]]:
        if kind is None:
            return result[field], result.get(f"{field}_ci")
        return result["rows"][kind][field][0], result["rows"][kind].get(f"{field}_ci")
    return read


INTERVAL_METRICS = (("SR", _metric("success_rate")), ("LTS", _metric("lts_score")),
                    ("A_gain of Best Sparse", _metric("accuracy_gain", "Best Sparse")),
                    ("A_gain of Sparsest Matching", _metric("accuracy_gain", "Sparsest Matching")),
                    ("TL_gain of Best Sparse", _metric("trajectory_length_gain", "Best Sparse")),
                    ("TL_gain of Sparsest Matching", _metric("trajectory_length_gain", "Sparsest Matching")))


def overlaps(results: list[dict]) -> list[dict]:
    """For each metric of ``INTERVAL_METRICS``, the pairs of models (by ``label``) whose confidence
    intervals overlap: ``[{"metric", "pairs": [[label_a, label_b], ...]}]``, metrics without an
    overlapping pair (or without intervals) left out. Overlapping intervals mean the data do not
    support ranking those two models on that metric."""
    found = []
    for name, read in INTERVAL_METRICS:
        pairs = []
        for i, a in enumerate(results):
            for b in results[i + 1:]:
                ca, cb = read(a)[1], read(b)[1]
                if ca is not None and cb is not None and ca[0] <= cb[1] and cb[0] <= ca[1]:
                    pairs.append([a["label"], b["label"]])
        if pairs:
            found.append({"metric": name, "pairs": pairs})
    return found


def overlap_warnings(found: list[dict], confidence: float = CONFIDENCE) -> list[str]:
    """One ``warning: ...`` line per metric of ``overlaps``' answer."""
    return [f"warning: {o['metric']}: the {100 * confidence:g}% intervals overlap for "
            + ", ".join(f"{a} and {b}" for a, b in o["pairs"])
            + f", so the data do not support a ranking of these models by {o['metric']} (more replicates "
              f"narrow the intervals; Sahu et al. use {SAHU_SEARCHES} per architecture)"
            for o in found]


def caption(result: dict) -> str:
    """What the table and the figure show, with every abbreviation and the intervals spelt out."""
    chance = result.get("chance_accuracy")
    base = (f" The accuracy axis starts at chance accuracy ({chance:.1f}%, 1 / {result['num_classes']} classes)."
            if chance is not None else " The accuracy axis starts at 0%.")
    return (f"Ticket search after {PAPER}: {result['replicates']} replicates, {result['successes']} with a "
            f"winning ticket. Test accuracy and weights remaining: mean +- std over replicates. "
            f"{interval_note(result['bootstrap'], [result['replicates']])} {ABBREVIATIONS}{base}")


def comparison_caption(results: list[dict]) -> str:
    """``caption`` for several models: each model's replicates and successes, the intervals, the
    abbreviations."""
    models = "; ".join(f"{r['label']}: {r['replicates']} replicates, {r['successes']} with a winning ticket"
                       for r in results)
    return (f"Ticket search after {PAPER}, {len(results)} models ({models}). "
            f"{interval_note(results[0]['bootstrap'], [r['replicates'] for r in results])} Where two models' "
            f"intervals overlap, the data do not rank them. {ABBREVIATIONS}")


def read_index(index_path: str | Path) -> dict:
    """Read a ``ticket-search-*.json`` index and each replicate's ``summary.json``; return
    ``{"runs": [folder, ...], "replicates": [{"run", "stages"}], "num_classes": int or None,
    "model": the model's name or None}``.
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
    classes = DATASET_SPECS[dataset].classes if isinstance(dataset, str) and dataset in DATASET_SPECS else None
    model = ((index.get("config") or {}).get("model") or {}).get("model")
    return {"runs": [r["run"] for r in replicates], "replicates": replicates, "num_classes": classes,
            "model": model if isinstance(model, str) else None}


def from_index(index_path: str | Path, trajectory: bool = True, pairs: int = 8, points: int = 500,
               device: str = "auto", data_dir: Optional[str] = None, resamples: int = RESAMPLES,
               confidence: float = CONFIDENCE) -> dict:
    """Read a ``ticket-search-*.json`` index (re-reading each run's summary) and compute the metrics
    with their bootstrap intervals (``metrics``), with trajectory lengths of the chosen checkpoints
    unless ``trajectory`` is False. Adds ``index``, ``model``, ``label`` (the model's name, else the
    index's file name), ``runs``, ``num_classes`` and ``chance_accuracy`` (%, None when the dataset
    is unknown)."""
    read = read_index(index_path)
    replicates = read["replicates"]
    chosen = [select(rep["stages"]) for rep in replicates]  # refuse missing validation data before any work
    if not trajectory:  # TL_gain is left out, whatever a summary may hold
        for rep in replicates:
            for stage in rep["stages"]:
                stage.pop("trajectory_length", None)
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
    result = metrics(replicates, resamples, confidence)
    result["index"] = str(index_path)
    result["model"] = read["model"]
    result["label"] = read["model"] or Path(index_path).stem
    result["runs"] = read["runs"]
    result["num_classes"] = read["num_classes"]
    result["chance_accuracy"] = None if read["num_classes"] is None else 100 / read["num_classes"]
    return result


HELP = f"""\
Ticket-search metrics of {PAPER} (their Table 2), from the replicate runs of a
`python -m training ticket-search`. Per replicate: Dense = the unpruned network; Best Sparse = the
sparse stage with the highest validation accuracy; Sparsest Matching = the sparsest stage whose
validation accuracy is at least Dense's (a winning ticket). Test accuracies are reported. Give
several index files (one ticket search per model) to compare the models.

abbreviations:
  SR      Success Rate: % of replicates that found a Sparsest Matching ticket
  A_gain  Accuracy Gain: (A_sparse - A_dense) / A_dense x 100, test accuracy, in %
  TL_gain Trajectory Length Gain: (TL_sparse - TL_dense) / TL_dense x 100, in %, where TL is the
          trajectory length (python -m analysis.trajectory --help)
  LTS     Lottery Ticket Score: A_gain of Best Sparse x SR / 100
  Sparse rows average over the successful replicates only; Dense over all.

statistics:
  SR, A_gain, TL_gain and LTS each get a confidence interval (default 95%, --confidence): a
  percentile bootstrap over replicates, --resamples resamples (default {RESAMPLES:,}) of whole
  replicates drawn with replacement, every metric recomputed from each; the seed is fixed, so a
  rerun gives the same intervals. {PAPER.split(",")[0]} use {SAHU_SEARCHES} ticket searches per
  architecture; few replicates give wide intervals (on MNIST-1D, one model's LTS moved from 1.01
  with 20 replicates to 0.49 with 40). With several index files, a warning names every metric on
  which two models' intervals overlap: the data then do not support ranking those models.

reads:   the runs/ticket-search-HASH.json index (or several), each replicate's summary.json and
         (unless --no-trajectory) the final.pt checkpoints of the chosen stages
prints:  the table (tab-separated, mean +- std over replicates, [confidence interval] for SR,
         A_gain, TL_gain and LTS; with several indexes a Model column), a line on how the
         intervals were computed, the overlap warnings (stderr), then a caption explaining it all
writes:  --out/tickets.json (every number, the intervals, the bootstrap's settings and the thread
         count), --out/tickets.tsv (the table) and --out/tickets.png (one index: test accuracy
         above chance and weights remaining per network type, and SR, LTS, A_gain and TL_gain
         with their intervals as error bars; several: those four metrics side by side per model).
         Files an earlier call left there are removed first.
"""

EPILOG = """\
examples (the search needs a validation split; it writes runs/ticket-search-HASH.json):
  python -m training ticket-search --replicates 50 --val-fraction 0.1
  python -m analysis.tickets $(ls -t runs/ticket-search-*.json | head -1)
  python -m analysis.tickets runs/ticket-search-AAAA.json runs/ticket-search-BBBB.json   # two models
"""


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m analysis.tickets", description=HELP, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("index", nargs="+",
                   help="the runs/ticket-search-HASH.json file a search wrote; several (one per model) to compare")
    p.add_argument("--no-trajectory", action="store_true", help="skip trajectory lengths and TL_gain (faster)")
    p.add_argument("--pairs", type=int, default=8, help="arcs per trajectory length (default 8)")
    p.add_argument("--points", type=int, default=500, help="points per arc, at least 3 (default 500)")
    p.add_argument("--resamples", type=int, default=RESAMPLES,
                   help=f"bootstrap resamples for the confidence intervals, at least 100 (default {RESAMPLES})")
    p.add_argument("--confidence", type=float, default=CONFIDENCE,
                   help=f"confidence level of the intervals, in (0, 1) (default {CONFIDENCE})")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--data-dir", help="dataset folder (default: $LTH_DATA_DIR, else ./data)")
    add_threads_flag(p)
    p.add_argument("--out", default="tickets-out",
                   help="folder for tickets.json, tickets.tsv and tickets.png (default: tickets-out)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; return the exit status (0, 2 for bad input, 130 on Ctrl-C)."""
    args = parser().parse_args(argv)

    def body() -> None:
        check_threads(args.threads)
        if args.resamples < 100:
            raise UserError(f"--resamples must be at least 100, got {args.resamples}")
        if not 0 < args.confidence < 1:
            raise UserError(f"--confidence must lie in (0, 1), e.g. 0.95, got {args.confidence}")
        if not args.no_trajectory:
            check_options(args.pairs, args.points)
            resolve_device(args.device)
        for index in args.index:  # a wrong index is reported before the output folder is touched
            read_index(index)
        out = writable_dir(args.out)
        remove_outputs(out, OUTPUTS)
        threads = set_threads(args.threads)
        results = [from_index(index, not args.no_trajectory, args.pairs, args.points, args.device, args.data_dir,
                              args.resamples, args.confidence) for index in args.index]
        for result, label in zip(results, unique_labels([r["label"] for r in results])):
            result["label"] = label
        notes = interval_note(results[0]["bootstrap"], [r["replicates"] for r in results])
        if len(results) == 1:
            data = results[0]
            data["caption"] = caption(data)
            text = table(data)
        else:
            found = overlaps(results)
            data = {"models": results, "bootstrap": {k: v for k, v in results[0]["bootstrap"].items()
                                                     if k != "replicates"},
                    "overlaps": found, "warnings": overlap_warnings(found, args.confidence),
                    "caption": comparison_caption(results)}
            text = comparison_table(results)
        data["provenance"] = {**provenance(), "threads": threads}
        print(text)
        print(notes)
        for line in data.get("warnings", []):
            print(line, file=sys.stderr)
        print()
        print(data["caption"])
        atomic_write_text(out / "tickets.json", json.dumps(data, indent=1) + "\n")
        atomic_write_text(out / "tickets.tsv", text + "\n")
        save_png(figure(data) if len(results) == 1 else comparison_figure(results), out / "tickets.png", dpi=120)
        print(f"wrote {out / 'tickets.json'}, {out / 'tickets.tsv'} and {out / 'tickets.png'}")

    return run_command(body)


def _interval_bars(ax, xs, values: list[tuple[Optional[float], Optional[list[float]]]], width: float, color,
                   label: Optional[str], digits: int):
    """Bars at ``xs`` of the point values, the confidence intervals as error bars, each annotated
    with ``value [low, high]``; a missing value is written as ``n/a``. Returns the BarContainer
    (None when no value is present)."""
    present = [(x, p, ci) for x, (p, ci) in zip(xs, values) if p is not None]
    for x, (p, _) in zip(xs, values):
        if p is None:
            ax.annotate("n/a", (x, 0), textcoords="offset points", xytext=(0, 3), ha="center", va="bottom",
                        fontsize=7)
    if not present:  # no empty bars: they would still claim a legend entry
        return None
    heights = [p for _, p, _ in present]
    # a percentile interval can (rarely) miss its point estimate: clamp rather than fail
    err = [[max(0.0, p - ci[0]) if ci else 0.0 for _, p, ci in present],
           [max(0.0, ci[1] - p) if ci else 0.0 for _, p, ci in present]]
    bars = ax.bar([x for x, _, _ in present], heights, width, yerr=err if present else None, capsize=4,
                  color=color, label=label, error_kw={"elinewidth": 1.2})
    for x, p, ci in present:
        top = ci[1] if ci else p
        note = f"{p:.{digits}f}" + (f"\n[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")
        ax.annotate(note, (x, max(top, p, 0.0)), textcoords="offset points", xytext=(0, 2), ha="center",
                    va="bottom", fontsize=7)
    return bars


def _limits(ax, values, floor: Optional[float] = None) -> None:
    """y limits holding every bar, interval and zero, with room above for the annotations."""
    ends = [0.0] + [v for p, ci in values if p is not None for v in ([p] + (ci or []))]
    low, high = min(ends), max(ends)
    span = high - low or 1.0
    ax.set_ylim(low - 0.08 * span if floor is None else floor, high + 0.35 * span)


def interval_panels(axes, results: list[dict]) -> None:
    """Draw SR, LTS, A_gain and TL_gain (the last two for Best Sparse and Sparsest Matching) with
    their confidence intervals as error bars on the four ``axes``, one group of bars per result
    (model), against the dense network's 0 where a gain is shown."""
    import numpy as np

    xs = np.arange(len(results))
    ticks = [f"{r.get('label') or 'this search'}\n({r['replicates']} replicates)" for r in results]
    conf = f"{100 * results[0]['bootstrap']['confidence']:g}%"
    panels = [
        (axes[0], [("SR", None)], "SR = success rate (% of replicates)", f"SR with {conf} interval", 0),
        (axes[1], [("LTS", None)], "LTS = A_gain(Best Sparse) x SR / 100 (%)", f"LTS with {conf} interval", 2),
        (axes[2], [("A_gain of Best Sparse", "Best Sparse"), ("A_gain of Sparsest Matching", "Sparsest Matching")],
         "A_gain = accuracy gain (% of dense test accuracy)", f"A_gain with {conf} intervals", 2),
        (axes[3], [("TL_gain of Best Sparse", "Best Sparse"),
                   ("TL_gain of Sparsest Matching", "Sparsest Matching")],
         "TL_gain = trajectory length gain (% of dense)", f"TL_gain with {conf} intervals", 1),
    ]
    read = dict(INTERVAL_METRICS)
    colors = {"Best Sparse": "C1", "Sparsest Matching": "C2"}
    for ax, metrics_, ylabel, title, digits in panels:
        width = 0.6 if len(metrics_) == 1 else 0.38
        drawn = []
        for j, (name, kind) in enumerate(metrics_):
            offset = 0.0 if len(metrics_) == 1 else (j - 0.5) * width
            values = [read[name](r) for r in results]
            drawn += values
            _interval_bars(ax, xs + offset, values, width, colors.get(kind, "0.55"), kind, digits)
        if all(p is None for p, _ in drawn):
            why = ("not computed (--no-trajectory)" if ax is axes[3] else "no replicate found a winning ticket")
            ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", fontsize=8)
            ax.set_yticks([0])
        if ax is axes[0]:
            _limits(ax, drawn, floor=0.0)
            ax.set_ylim(0, max(ax.get_ylim()[1], 125))
            ax.set_yticks(range(0, 101, 20))
        else:
            _limits(ax, drawn)
            ax.axhline(0, color="k", linestyle="--", linewidth=1, label="0 = the dense network")
            ax.legend(fontsize=7, loc="best")
        ax.set_xticks(xs)
        ax.set_xticklabels(ticks, fontsize=8)
        ax.set_xlim(-0.6, len(results) - 0.4)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(title, fontsize=9)


def _caption_text(fig, text: str, width: int) -> float:
    """Write the caption under the axes; return the fraction of the figure's height it takes."""
    import textwrap

    text = "\n".join(textwrap.wrap(text, width))
    fig.text(0.01, 0.01, text, ha="left", va="bottom", fontsize=7.5)
    return (0.25 + 0.13 * (text.count("\n") + 1)) / fig.get_figheight()  # 7.5 pt lines, in inches


def figure(result: dict):
    """One ticket search: test accuracy (bars from chance accuracy up, mean +- std, value written on
    each bar) and weights remaining (%) per network type above; SR, LTS, A_gain and TL_gain with
    their bootstrap confidence intervals as error bars below (``interval_panels``); the caption
    under the axes explains every abbreviation."""
    plt = pyplot()
    fig = plt.figure(figsize=(13, 10))
    grid = fig.add_gridspec(2, 4, height_ratios=[1.15, 1])
    top_axes = [fig.add_subplot(grid[0, 0:2]), fig.add_subplot(grid[0, 2:4])]
    bottom_axes = [fig.add_subplot(grid[1, i]) for i in range(4)]
    kinds = [k for k in TYPES if result["rows"][k]["test_accuracy"][0] is not None]
    names = [f"{k}\n(n = {result['rows'][k].get('n', '?')})" for k in kinds]
    colors = ["C0", "C1", "C2"][: len(kinds)]
    chance = result.get("chance_accuracy")
    base = chance if chance is not None else 0.0

    ax = top_axes[0]
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
    ax.set_title(f"test accuracy (mean ± std): {result['successes']} of {result['replicates']} replicates found "
                 "a winning ticket", fontsize=10)

    ax = top_axes[1]
    means = [result["rows"][k]["density"][0] for k in kinds]
    stds = [result["rows"][k]["density"][1] for k in kinds]
    ax.bar(names, means, yerr=stds, capsize=4, color=colors)
    ax.set_ylim(0, 105)
    ax.set(ylabel="weights remaining (% of prunable weights)")
    ax.set_title("sparsity of the chosen stages (mean ± std)", fontsize=10)

    interval_panels(bottom_axes, [result])
    bottom = _caption_text(fig, caption(result), 185)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


def comparison_figure(results: list[dict]):
    """Several models side by side: SR, LTS, A_gain and TL_gain (2 x 2 panels) with their bootstrap
    confidence intervals as error bars (``interval_panels``), the caption under the axes."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(max(12, 2.6 * len(results) + 5), 10))
    interval_panels(list(axes.ravel()), results)
    bottom = _caption_text(fig, comparison_caption(results), int(16 * fig.get_figwidth()))
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


if __name__ == "__main__":
    sys.exit(main())
