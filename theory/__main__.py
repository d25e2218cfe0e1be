"""Command line: ``python -m theory {lueker,diamond,network} [flags]``; each writes JSON and a PNG."""
from __future__ import annotations

import argparse
import math
import sys
import zipfile
from typing import Optional, Sequence

import numpy as np

from .cli import ArgumentParser, add_threads_flag, check_threads, run_command, set_threads, writable_dir
from .subset_sum import MAX_ENUMERATION, InputError

MAX_N = 10_000  # values per Lueker trial (the covers kernel's public limit)
MAX_UNITS = 48  # random units per target weight: the exact subset-sum solver's limit
MAX_TRIALS = 100_000
MAX_SAMPLES = 100_000
MAX_WIDTH = 100_000
MAX_SEED = 2 ** 32 - 1
MAX_VALUES = 100_000_000  # numbers held at once (800 MB of float64)
MAX_DIAMOND_TRIALS = 3_000  # the single-product sweep draws trials x 4096 units twice

PAPERS = ("Lueker, \"Exponentially small bounds on the expected optimum of the partition and subset sum problems\" "
          "(1998); Malach et al., \"Proving the lottery ticket hypothesis: pruning is all you need\" (2020); "
          "Pensia et al., \"Optimal lottery tickets via SubsetSum: logarithmic over-parameterization is "
          "sufficient\" (2020); as presented in the lecture slides \"From model pruning to sparse updates and "
          "the LTH\".")


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def make_parser() -> argparse.ArgumentParser:
    """The ``python -m theory`` parser (three subcommands)."""
    parser = ArgumentParser(
        prog="python -m theory",
        description="Numerical checks of the subset-sum route to strong lottery tickets: Lueker's theorem, and "
                    "the constructions of Malach et al. and Pensia et al. Papers: " + PAPERS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{lueker,diamond,network}")

    def common(p):
        p.add_argument("--out", default="theory-out",
                       help="folder for COMMAND.json and COMMAND.png, replaced on each call (default: theory-out)")
        p.add_argument("--seed", type=int, default=0, help=f"random seed, 0 to {MAX_SEED} (default: 0)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_threads_flag(p)

    p = sub.add_parser("lueker", help="Lueker's theorem: failure probability, n needed, worst case",
                       description="Monte-Carlo check of Theorem 2.4 of Lueker, \"Exponentially small bounds on the "
                                   "expected optimum of the partition and subset sum problems\" (1998), as stated "
                                   "in the lecture slides \"From model pruning to sparse updates and the LTH\", "
                                   "with eps = 2*eta. Example: python -m theory lueker --eps 1e-2,1e-3 --trials 1000")
    p.add_argument("--ns", type=_ints, default=list(range(4, 41, 4)),
                   help=f"n values, each 1 to {MAX_N} (default 4,8,...,40)")
    p.add_argument("--eps", type=_floats, default=[1e-1, 1e-2, 1e-3, 1e-4],
                   help="eps values, each in (0, 1) (default 1e-1,1e-2,1e-3,1e-4)")
    p.add_argument("--trials", type=int, default=200, help=f"trials per point, 1 to {MAX_TRIALS:,} (default 200)")
    p.add_argument("--n-max", type=int, default=48,
                   help=f"largest n searched for the n-needed table, 1 to {MAX_N}; only a search limit: "
                        "answers below it do not depend on it (default 48)")
    p.add_argument("--worst-ns", type=_ints, default=[4, 8, 12, 16],
                   help=f"n for the exact worst-case distribution, each 1 to {MAX_ENUMERATION} (default 4,8,12,16)")
    common(p)

    p = sub.add_parser("diamond", help="one weight: single product vs linear and ReLU diamonds",
                       description="Error against the number of random units for one target weight: the single "
                                   "product of Malach et al., \"Proving the lottery ticket hypothesis: pruning is "
                                   "all you need\" (2020), the linear diamond, and the ReLU diamond of Pensia et "
                                   "al., \"Optimal lottery tickets via SubsetSum\" (2020).")
    p.add_argument("--ns", type=_ints, default=[1, 2, 4, 6, 8, 12, 16, 20, 24, 28, 32],
                   help=f"unit counts, each 1 to {MAX_UNITS}")
    p.add_argument("--trials", type=int, default=300, help=f"target weights, 1 to {MAX_DIAMOND_TRIALS:,} (default 300)")
    common(p)

    p = sub.add_parser("network", help="prune a random network to approximate a target MLP",
                       description="Approximate a target MLP by pruning the random ReLU-diamond network of Pensia "
                                   "et al., \"Optimal lottery tickets via SubsetSum: logarithmic "
                                   "over-parameterization is sufficient\" (2020), beside Malach et al.'s single "
                                   "product. Pensia et al.'s scale: --widths 784,500,10 --n 21 --eps 0.01")
    p.add_argument("--widths", type=_ints, default=None,
                   help=f"random target widths, at least two, each 1 to {MAX_WIDTH:,} (default 20,10,5); "
                        "not with --weights, whose arrays give the widths")
    p.add_argument("--weights", help=".npz with 2-D arrays W0, W1, ... of shapes (d_out, d_in) to use as the target")
    p.add_argument("--n", type=int, default=21, help=f"random units per target weight, 1 to {MAX_UNITS} (default 21)")
    p.add_argument("--eps", type=float, default=0.01, help="per-entry tolerance reported, in (0, 1) (default 0.01)")
    p.add_argument("--sweep", type=_ints, default=[2, 4, 8, 12, 16, 20, 24],
                   help=f"n values for the error curve, each 1 to {MAX_UNITS} (default 2,4,8,12,16,20,24)")
    p.add_argument("--samples", type=int, default=1000,
                   help=f"inputs sampled from the unit ball, 1 to {MAX_SAMPLES:,} (default 1000)")
    common(p)
    return parser


# ---------------------------------------------------------------------------------------------
# Checks, all before any work starts


def _int_in(flag: str, value: int, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise InputError(f"{flag} must be an integer from {lo:,} to {hi:,}, got {value}")
    return value


def _ints_in(flag: str, values: Sequence[int], lo: int, hi: int) -> list[int]:
    """The distinct values, sorted; each must lie in [lo, hi]."""
    if not values:
        raise InputError(f"{flag} needs at least one value (comma-separated integers from {lo:,} to {hi:,})")
    for v in values:
        if not lo <= v <= hi:
            raise InputError(f"{flag} values must be integers from {lo:,} to {hi:,}, got {v}")
    return sorted(set(values))


def _eps_in(flag: str, value: float, several: bool = False) -> float:
    if not (math.isfinite(value) and 0 < value < 1):
        raise InputError(f"{flag} {'values must be numbers' if several else 'must be a number'} in (0, 1), "
                         f"got {value}")
    return value


def _memory(what: str, count: int) -> None:
    if count > MAX_VALUES:
        raise InputError(f"{what} needs {count:,} numbers at once, more than the {MAX_VALUES:,} allowed; "
                         "lower one of them")


def _fail_weights(path: str, why: str) -> InputError:
    return InputError(f"--weights {path} is not a readable .npz of 2-D number arrays W0, W1, ...: {why}")


def load_weights(path: str) -> list[np.ndarray]:
    """The target layers W0, W1, ... of a NumPy ``.npz`` file as float64 (d_out, d_in) arrays.

    Raises ``InputError`` (one line) for anything else: a missing or unreadable file, not an
    ``.npz`` archive, object arrays (never loaded: loading them would run code from the file),
    arrays that are not finite 2-D numbers, or layers whose shapes do not chain."""
    try:
        archive = np.load(path, allow_pickle=False)
    except IsADirectoryError:
        raise _fail_weights(path, "it is a folder") from None
    except OSError as exc:
        raise _fail_weights(path, (exc.strerror or str(exc)).lower()) from None
    except (ValueError, zipfile.BadZipFile, EOFError):
        raise _fail_weights(path, "it is not a NumPy .npz archive") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _fail_weights(path, "it is a single .npy array, not an .npz archive")
    layers = []
    with archive:
        names = sorted((k for k in archive.files if k.startswith("W") and k[1:].isdigit()), key=lambda k: int(k[1:]))
        if not names:
            present = ", ".join(archive.files) or "none"
            raise _fail_weights(path, f"it has no arrays named W0, W1, ... (it has: {present})")
        if names != [f"W{k}" for k in range(len(names))]:
            raise _fail_weights(path, f"the layers must be numbered W0, W1, ... without gaps, got {', '.join(names)}")
        for name in names:
            try:
                array = archive[name]
            except ValueError:
                raise _fail_weights(path, f"{name} holds Python objects, not numbers") from None
            except (OSError, zipfile.BadZipFile, EOFError):
                raise _fail_weights(path, f"{name} cannot be read (the archive is damaged)") from None
            if array.dtype.kind not in "biuf":
                raise _fail_weights(path, f"{name} has dtype {array.dtype}, not real numbers")
            if array.ndim != 2 or array.size == 0:
                raise _fail_weights(path, f"{name} has shape {array.shape}; each layer must be a non-empty "
                                          "2-D array (d_out, d_in)")
            array = array.astype(np.float64)
            if not np.all(np.isfinite(array)):
                raise _fail_weights(path, f"{name} has NaN or infinite entries")
            layers.append(array)
    for k in range(1, len(layers)):
        if layers[k].shape[1] != layers[k - 1].shape[0]:
            raise _fail_weights(path, f"W{k} expects {layers[k].shape[1]} inputs but W{k - 1} has "
                                      f"{layers[k - 1].shape[0]} outputs")
    return layers


def check_args(args: argparse.Namespace) -> Optional[list[np.ndarray]]:
    """Check every numeric option of ``args`` (deduplicating lists in place); return the target
    weights of ``network --weights`` (None otherwise). Raises ``InputError`` naming the flag."""
    check_threads(getattr(args, "threads", None))
    _int_in("--seed", args.seed, 0, MAX_SEED)
    if args.command == "lueker":
        args.ns = _ints_in("--ns", args.ns, 1, MAX_N)
        if not args.eps:
            raise InputError("--eps needs at least one value (comma-separated numbers in (0, 1))")
        args.eps = list(dict.fromkeys(_eps_in("--eps", e, several=True) for e in args.eps))
        _int_in("--trials", args.trials, 1, MAX_TRIALS)
        _int_in("--n-max", args.n_max, 1, MAX_N)
        args.worst_ns = _ints_in("--worst-ns", args.worst_ns, 1, MAX_ENUMERATION)
        _memory(f"--trials {args.trials} x largest of --ns/--n-max {max(args.ns[-1], args.n_max)}",
                args.trials * max(args.ns[-1], args.n_max))
        return None
    if args.command == "diamond":
        args.ns = _ints_in("--ns", args.ns, 1, MAX_UNITS)
        _int_in("--trials", args.trials, 1, MAX_DIAMOND_TRIALS)
        return None
    _int_in("--n", args.n, 1, MAX_UNITS)
    _eps_in("--eps", args.eps)
    args.sweep = _ints_in("--sweep", args.sweep, 1, MAX_UNITS)
    _int_in("--samples", args.samples, 1, MAX_SAMPLES)
    if args.weights and args.widths is not None:
        raise InputError("give --weights or --widths, not both: the target's arrays set its widths")
    if args.widths is None:
        args.widths = [20, 10, 5]
    if args.weights:
        weights = load_weights(args.weights)
        shapes = [W.shape for W in weights]
        source = f"--weights {args.weights}"
    else:
        if len(args.widths) < 2:
            raise InputError(f"--widths needs at least two widths (inputs, ..., outputs), got {args.widths}")
        for w in args.widths:
            if not 1 <= w <= MAX_WIDTH:
                raise InputError(f"--widths values must be integers from 1 to {MAX_WIDTH:,}, got {w}")
        weights = None
        shapes = list(zip(args.widths[1:], args.widths[:-1]))
        source = f"--widths {','.join(map(str, args.widths))}"
    units = max(args.n, args.sweep[-1])
    largest = max(d_out * d_in for d_out, d_in in shapes)
    _memory(f"{source} with {units} units per weight (--n/--sweep)", 4 * largest * units)
    _memory(f"--samples {args.samples} x the widest layer of {source}",
            args.samples * max(max(s) for s in shapes))
    return weights


# ---------------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> None:
    weights = check_args(args)
    threads = set_threads(args.threads)  # a count above numba's pool is refused here, before any work
    out = writable_dir(args.out)
    progress = not args.no_progress
    from . import experiments  # matplotlib and the kernels: only once the input is known to be good

    provenance = experiments.provenance_record(threads)

    if args.command == "lueker":
        r = experiments.run_lueker(out, args.ns, args.eps, args.trials, args.n_max, args.worst_ns, args.seed, progress,
                                    provenance=provenance)
        print(f"smallest C consistent with the failure rates: {r['smallest_C']['from_ci_low']:.3f} "
              f"(lower 95% limits), {r['smallest_C']['from_point_estimate']:.3f} (point estimates)")
        print(f"{'eps':>8} {'ln(1/eps)':>9} {'n 50%':>6} {'n 99%':>6}   (None: above --n-max {args.n_max})")
        for row in r["n_needed"]:
            print(f"{row['eps']:>8g} {row['log_inv_eps']:>9.2f} {str(row['n_50']):>6} {str(row['n_99']):>6}")
    elif args.command == "diamond":
        r = experiments.run_diamond(out, args.ns, args.trials, seed=args.seed, progress=progress,
                                    provenance=provenance)
        print(f"{'eps':>8} {'single':>7} {'relu':>6}   (units for median error <= eps)")
        for row in r["units_needed_median"]:
            print(f"{row['eps']:>8g} {str(row['single']):>7} {str(row['relu']):>6}")
    else:
        r = experiments.run_network(out, weights, args.widths, args.n, args.eps, args.sweep, args.samples,
                                    args.seed, progress, provenance=provenance)
        s = r["result"]
        print(f"target {r['settings']['widths']}: {s['target_parameters']:,} weights, n = {s['n']} units each")
        print(f"within eps = {s['eps']:g}: {100 * s['fraction_within_eps']:.2f}% of weights "
              f"({100 * s['trivial_fraction']:.2f}% already had |w| <= eps)")
        print(f"kept / target parameters: {s['kept_to_target']:.2f}x; random / target: {s['random_to_target']:.1f}x")
        print(f"max output error over the unit ball: {s['output_error']:.3g} (everything pruned: "
              f"{r['zero_network_error']:.3g}); solved in {s['seconds']:.1f} s")
    print(f"wrote {out / (args.command + '.json')} and {out / (args.command + '.png')}")


def main(argv: Optional[list[str]] = None) -> int:
    """Run ``python -m theory`` with ``argv``; return the exit status (0, 2 bad input, 130 Ctrl-C)."""
    args = make_parser().parse_args(argv)
    return run_command(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
