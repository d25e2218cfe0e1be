"""``python -m figures list | all | NAME...``: regenerate the papers' figures from real runs."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from training.cli import ArgumentParser, check_threads, run_command, set_threads, writable_dir
from training.errors import UserError

from training.sweep import add_backend_flags, backend_options, check_backend

from .core import SCALE_HELP, SCALES, Context, Figure, FigureError, write_outputs

EPILOG = """\
examples:
  python -m figures list                        # every figure, what it reproduces, its time
  python -m figures ticket-vs-controls          # one figure at the small scale (MNIST-1D, CPU)
  python -m figures all                         # every figure and the gallery page
  python -m figures all --scale paper --data-dir ~/datasets --device cuda --backend ray --gpus-per-run 0.25

Each figure writes OUT/NAME.png, .pdf, .csv (every plotted number, one row per point), .json
(provenance: version, git commit, scale, the run folders and their configs, wall time) and .md
(its caption: the paper's claim, what these runs show, and whether the claim holds here);
OUT/index.md and OUT/index.html show them all. Runs live in hash-named folders under --runs:
a second call re-plots without training, an interrupted one resumes, and figures share runs.
"""


def make_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m figures", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Regenerate the figures of the lottery-ticket papers from real runs of this toolkit, "
                    "each with its data, provenance and an honest caption.")
    parser.add_argument("what", nargs="+", metavar="list|all|NAME",
                        help="`list` (the figures), `all` (every figure and the gallery), or figure names")
    parser.add_argument("--scale", default="small", choices=SCALES,
                        help="; ".join(f"{k}: {v}" for k, v in SCALE_HELP.items()))
    parser.add_argument("--out", help="folder for the figures and the gallery (default: gallery/SCALE)")
    parser.add_argument("--runs", default="runs", help="folder of the run folders, shared with `python -m training` "
                        "(default: runs)")
    add_backend_flags(parser)  # where runs execute: this process, Ray tasks or Slurm jobs, as for sweeps
    parser.add_argument("--data-dir", help="dataset folder (default: $LTH_DATA_DIR, else ./data)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch in every run and analysis (default 1, as Ray and Slurm "
                             "workers get one per CPU: the same numbers on every backend and machine; results "
                             "differ with the thread count)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def print_list(figures: Sequence[Figure]) -> None:
    width = max(len(f.name) for f in figures)
    print(f"{'name':<{width}}  {'small':>7}  reproduces")
    for f in figures:
        print(f"{f.name:<{width}}  {f.small_minutes:>5.1f} m  {f.reproduces}")
    print(f"\n{len(figures)} figures, about {sum(f.small_minutes for f in figures):.0f} minutes in all at the small "
          "scale on 2 CPU cores (runs shared between figures are trained once)")


def choose(what: Sequence[str], known: dict[str, Figure]) -> list[Figure]:
    """The figures named on the command line (``all``: every one); ``UserError`` for an unknown name."""
    if list(what) == ["all"]:
        return list(known.values())
    if "all" in what or "list" in what:
        raise UserError("`list` and `all` stand alone; give them without figure names")
    unknown = [w for w in what if w not in known]
    if unknown:
        raise UserError(f"unknown figure {unknown[0]!r} (give `list`, `all`, or names from: {', '.join(known)})")
    return [known[w] for w in dict.fromkeys(what)]


def check_paper_data(chosen: Sequence[Figure], data_dir: Optional[str]) -> None:
    """At the paper scale, read every dataset the figures need now, not after hours of runs."""
    from training.data import load_dataset
    from training.hparams import DatasetHparams

    for name in sorted({d for f in chosen for d in f.paper_datasets}):
        load_dataset(DatasetHparams(dataset=name), data_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = make_parser().parse_args(argv)

    def body() -> int:
        from .gallery import write_gallery
        from .registry import by_name

        known = by_name()
        if args.what == ["list"]:
            print_list(list(known.values()))
            return 0
        chosen = choose(args.what, known)
        check_threads(args.threads)
        check_backend(args.backend)
        if not args.cpus_per_run > 0 or not args.gpus_per_run >= 0:
            raise UserError("--cpus-per-run must be positive and --gpus-per-run non-negative")
        if args.timeout_min < 1:
            raise UserError(f"--timeout-min must be at least 1, got {args.timeout_min}")
        out = writable_dir(args.out or Path("gallery") / args.scale)
        runs = writable_dir(args.runs, flag="--runs")
        if args.scale == "paper":
            check_paper_data(chosen, args.data_dir)
        set_threads(args.threads)  # for the analyses figures run in this process
        order = [known_f.name for known_f in known.values()]
        done: list[tuple[Figure, str, float]] = []
        failed: list[tuple[Figure, str]] = []
        for i, figure in enumerate(chosen, 1):
            print(f"[{i}/{len(chosen)}] {figure.name}: {figure.title}", file=sys.stderr, flush=True)
            ctx = Context(scale=args.scale, runs=runs, data_dir=args.data_dir, device=args.device,
                          threads=args.threads, progress=not args.no_progress, backend=backend_options(args))
            start = time.perf_counter()
            try:
                result = figure.make(ctx)
            except FigureError as exc:
                if len(chosen) == 1:
                    raise
                print(f"error: figure {figure.name}: {exc}", file=sys.stderr)
                failed.append((figure, str(exc)))
                continue
            seconds = time.perf_counter() - start
            write_outputs(figure, result, ctx, out, seconds)
            write_gallery(out, order)
            done.append((figure, result.caption.verdict, seconds))
        if done:
            width = max(len(f.name) for f, _, _ in done)
            print(f"{'figure':<{width}}  {'time':>7}  verdict")
            for f, verdict, seconds in done:
                print(f"{f.name:<{width}}  {seconds:>6.0f}s  {verdict}")
        for f, error in failed:
            print(f"{f.name}: failed: {error}")
        print(f"gallery: {out / 'index.html'}")
        return 1 if failed else 0

    return run_command(body, "interrupted: run the same command again to resume (finished runs are kept)")


if __name__ == "__main__":
    sys.exit(main())
