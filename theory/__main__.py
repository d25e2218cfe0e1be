"""Command line: ``python -m theory {lueker,diamond,network} [flags]``; each writes JSON and a PNG."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from .subset_sum import InputError


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
    parser = argparse.ArgumentParser(prog="python -m theory",
                                     description="Numerical checks of subset-sum and strong-LTH theory (seed 001).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{lueker,diamond,network}")

    def common(p):
        p.add_argument("--out", default="theory-out", help="folder for the JSON and PNG (default: theory-out)")
        p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("lueker", help="Lueker's theorem: failure probability, n needed, worst case",
                       description="Monte-Carlo check of Lueker's Theorem 2.4 with eps = 2*eta. "
                                   "Example: python -m theory lueker --eps 1e-2,1e-3 --trials 1000")
    p.add_argument("--ns", type=_ints, default=list(range(4, 41, 4)), help="n values (default 4,8,...,40)")
    p.add_argument("--eps", type=_floats, default=[1e-1, 1e-2, 1e-3, 1e-4], help="eps values (default 1e-1..1e-4)")
    p.add_argument("--trials", type=int, default=200, help="trials per point (default 200)")
    p.add_argument("--n-max", type=int, default=48, help="largest n searched for the n-needed table (default 48)")
    p.add_argument("--worst-ns", type=_ints, default=[4, 8, 12, 16], help="n for the exact worst-case distribution")
    common(p)

    p = sub.add_parser("diamond", help="one weight: single product vs linear and ReLU diamonds",
                       description="Error of the three constructions against the number of random units.")
    p.add_argument("--ns", type=_ints, default=[1, 2, 4, 6, 8, 12, 16, 20, 24, 28, 32], help="unit counts")
    p.add_argument("--trials", type=int, default=300, help="target weights (default 300)")
    common(p)

    p = sub.add_parser("network", help="prune a random network to approximate a target MLP",
                       description="Approximate a target MLP by pruning the random ReLU-diamond network. "
                                   "Pensia et al.'s scale: --widths 784,500,10 --n 21 --eps 0.01")
    p.add_argument("--widths", type=_ints, default=[20, 10, 5], help="random target widths (default 20,10,5)")
    p.add_argument("--weights", help=".npz with arrays W0, W1, ... of shapes (d_out, d_in) to use as the target")
    p.add_argument("--n", type=int, default=21, help="random units per target weight (default 21)")
    p.add_argument("--eps", type=float, default=0.01, help="per-entry tolerance reported (default 0.01)")
    p.add_argument("--sweep", type=_ints, default=[2, 4, 8, 12, 16, 20, 24], help="n values for the error curve")
    p.add_argument("--samples", type=int, default=1000, help="inputs sampled from the unit ball (default 1000)")
    common(p)
    return parser


def _load_weights(path: str) -> list[np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            names = sorted((k for k in f.files if k.startswith("W") and k[1:].isdigit()), key=lambda k: int(k[1:]))
            if not names:
                raise InputError(f"{path} has no arrays named W0, W1, ...")
            return [np.asarray(f[k], dtype=np.float64) for k in names]
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read target weights from {path}: {exc}") from None


def main(argv: Optional[list[str]] = None) -> int:
    args = make_parser().parse_args(argv)
    out = Path(args.out)
    progress = not args.no_progress
    from . import experiments

    try:
        if getattr(args, "trials", 1) < 1:
            raise InputError(f"--trials must be at least 1, got {args.trials}")
        if args.command == "lueker":
            r = experiments.run_lueker(out, args.ns, args.eps, args.trials, args.n_max, args.worst_ns, args.seed, progress)
            print(f"smallest C consistent with the failure rates: {r['smallest_C']['from_ci_low']:.3f} "
                  f"(lower 95% limits), {r['smallest_C']['from_point_estimate']:.3f} (point estimates)")
            print(f"{'eps':>8} {'ln(1/eps)':>9} {'n 50%':>6} {'n 99%':>6}")
            for row in r["n_needed"]:
                print(f"{row['eps']:>8g} {row['log_inv_eps']:>9.2f} {str(row['n_50']):>6} {str(row['n_99']):>6}")
        elif args.command == "diamond":
            r = experiments.run_diamond(out, args.ns, args.trials, seed=args.seed, progress=progress)
            print(f"{'eps':>8} {'single':>7} {'relu':>6}   (units for median error <= eps)")
            for row in r["units_needed_median"]:
                print(f"{row['eps']:>8g} {str(row['single']):>7} {str(row['relu']):>6}")
        else:
            weights = _load_weights(args.weights) if args.weights else None
            if weights is None and (len(args.widths) < 2 or min(args.widths) < 1):
                raise InputError(f"--widths needs at least two positive widths, got {args.widths}")
            r = experiments.run_network(out, weights, args.widths, args.n, args.eps, args.sweep, args.samples,
                                        args.seed, progress)
            s = r["result"]
            print(f"target {r['settings']['widths']}: {s['target_parameters']:,} weights, n = {s['n']} units each")
            print(f"within eps = {s['eps']:g}: {100 * s['fraction_within_eps']:.2f}% of weights "
                  f"({100 * s['trivial_fraction']:.2f}% already had |w| <= eps)")
            print(f"kept / target parameters: {s['kept_to_target']:.2f}x; random / target: {s['random_to_target']:.1f}x")
            print(f"max output error over the unit ball: {s['output_error']:.3g}; solved in {s['seconds']:.1f} s")
        print(f"wrote {out / (args.command + '.json')} and {out / (args.command + '.png')}")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
