"""The command line: ``python -m analysis.hessian ckpt.pt [more.pt ...]``.

Checks every flag, the output folder and every checkpoint before the first computation, then runs
``spectrum.analyze`` on each checkpoint and writes ``hessian.json`` (every number and setting)
and, with a density, ``hessian_density.png`` (log scale, all checkpoints overlaid, like Fig. 2 of
Tartaglione 2022, "The rise of the lottery heroes"). Files of an earlier call that this call did
not produce are removed from ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from training.engine.checkpoint import atomic_write_text
from training.cli import ArgumentParser, add_threads_flag, check_threads, run_command, set_threads, writable_dir
from training.engine.provenance import provenance

from . import spectrum
from .operator import tune_allocator
from .spectrum import Settings

JSON_NAME, DENSITY_NAME = "hessian.json", "hessian_density.png"
OUTPUTS = (JSON_NAME, DENSITY_NAME)  # every file a call may write to --out


def make_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m analysis.hessian",
        description="Top eigenvalues, trace and spectral density of the loss Hessian of one or more checkpoints, "
                    "over the checkpoint's own training data. With no flags all three are computed.",
        epilog="examples:\n"
               "  RUN=$(ls -td runs/imp-* | head -1)       # the latest IMP run\n"
               "  python -m analysis.hessian $RUN/level_3/rewind.pt\n"
               "  python -m analysis.hessian $RUN/level_*/final.pt --density --out fig2   # overlaid densities,\n"
               "      as in Fig. 2 of Tartaglione 2022, \"The rise of the lottery heroes\"\n"
               "  python -m analysis.hessian $RUN/level_4/final.pt --space ticket --samples 2000 --top-k 10\n"
               "  python -m analysis.hessian $RUN/level_4/final.pt --backend pyhessian   # cross-check with PyHessian 0.1\n"
               "\n"
               "Eigenvalues Lanczos did not converge to within --eig-steps are printed and stored apart\n"
               "(ritz_values, converged in hessian.json), never as top eigenvalues, with a warning.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoint files written by `python -m training`")
    d = Settings()
    p.add_argument("--top-k", type=int, default=None,
                   help=f"number of top eigenvalues, at most the Hessian's dimension (default {d.top_k})")
    p.add_argument("--trace", action="store_true", help="compute the trace (with --top-k/--density: only those asked)")
    p.add_argument("--density", action="store_true", help="compute the spectral density")
    p.add_argument("--space", default=d.space, choices=["full", "ticket"],
                   help="full: all parameters; ticket: only the unpruned coordinates (P H P)")
    p.add_argument("--samples", type=int, help="use N training examples (seeded choice) instead of all")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"examples per batch (default {d.batch_size})")
    p.add_argument("--probes", type=int, default=d.probes, help=f"Rademacher probes for the trace (default {d.probes})")
    p.add_argument("--slq-probes", type=int, default=d.slq_probes,
                   help=f"probes for the density, each a Lanczos run; all advance together, sharing each "
                        f"batch's cached forward pass (default {d.slq_probes})")
    p.add_argument("--lanczos-steps", type=int, default=d.lanczos_steps,
                   help=f"Lanczos steps per density probe (default {d.lanczos_steps})")
    p.add_argument("--eig-steps", type=int, default=d.eig_steps,
                   help=f"most Lanczos steps for the top eigenvalues, at least --top-k (default {d.eig_steps})")
    p.add_argument("--eig-tol", type=float, default=d.eig_tol,
                   help=f"relative residual at which a top eigenvalue counts as converged (default {d.eig_tol:g})")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed for --samples and the probes; each estimator draws from its own stream, so a "
                        "result does not depend on which others were asked (default 0)")
    p.add_argument("--mode", default=d.mode, choices=["eval", "train"],
                   help="eval: batch norm running statistics, no dropout (default); train: batch statistics "
                        "(refused with active dropout unless --allow-dropout)")
    p.add_argument("--allow-dropout", action="store_true",
                   help="accept --mode train on a model with dropout: each product then draws new dropout "
                        "masks, so the operator is random and not symmetric (a warning says so)")
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "float64"], help="arithmetic (default float32)")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda (default auto)")
    p.add_argument("--hvp", default=d.strategy, choices=["auto", "rop", "loop", "batched"],
                   help="how Hessian-vector products are computed: rop (R-operator with cached forward "
                        "passes), loop or batched (autograd double backward); auto picks rop on CPU where the "
                        "model allows, batched on CUDA (rop has not been measured on a GPU) (default auto)")
    p.add_argument("--dataset", help="dataset to use when a checkpoint does not name one")
    p.add_argument("--data-dir", help="dataset folder (default: $LTH_DATA_DIR, else ./data)")
    p.add_argument("--backend", default="ours", choices=["ours", "pyhessian"],
                   help="pyhessian: also run PyHessian 0.1's top eigenvalue and trace, for cross-checking")
    p.add_argument("--out", default="hessian-out",
                   help=f"folder for {JSON_NAME} and {DENSITY_NAME}; files of an earlier call that this call "
                        f"does not write are removed (default hessian-out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_flag(p)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = make_parser().parse_args(argv)
    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    check_threads(args.threads)
    chosen = args.top_k is not None or args.trace or args.density
    settings = Settings(
        top_k=(args.top_k if args.top_k is not None else (0 if chosen else Settings.top_k)),
        trace=args.trace or not chosen, density=args.density or not chosen, space=args.space,
        samples=args.samples, batch_size=args.batch_size, probes=args.probes, slq_probes=args.slq_probes,
        lanczos_steps=args.lanczos_steps, eig_steps=args.eig_steps, eig_tol=args.eig_tol, seed=args.seed, mode=args.mode,
        device=args.device, dtype=args.dtype, strategy=args.hvp, allow_dropout=args.allow_dropout)
    settings.check()
    out = writable_dir(args.out)
    for path in args.checkpoints:  # every checkpoint checked before the first computation
        spectrum.load_checked(Path(path), settings, args.dataset)
    tune_allocator()
    threads = set_threads(args.threads)
    results = []
    for path in args.checkpoints:
        r = spectrum.analyze(path, settings, args.data_dir, args.dataset, progress=not args.no_progress)
        if args.backend == "pyhessian":
            r["pyhessian"] = spectrum.pyhessian_crosscheck(path, settings, args.data_dir, args.dataset)
        results.append(r)
        _print_summary(r)
    record = {"results": results, "provenance": {**provenance(), "threads": threads}}
    atomic_write_text(out / JSON_NAME, json.dumps(record, indent=1) + "\n")
    written = [out / JSON_NAME]
    if settings.density:
        spectrum.plot_densities(results, out / DENSITY_NAME)
        written.append(out / DENSITY_NAME)
    print("wrote " + " and ".join(str(p) for p in written))
    for name in OUTPUTS:
        stale = out / name
        if stale not in written and stale.exists():
            stale.unlink()
            print(f"removed {stale} (an earlier call's; this call did not produce it)")


def _print_summary(r: dict) -> None:
    print(f"{r['checkpoint']}: {r['model']} on {r['dataset']}, {r['space']} space ({r['dim']:,} dims), "
          f"{r['mode']} mode, {r['examples']:,} examples")
    if r["skipped_parameters"]:
        print(f"  skipped (no gradient): {', '.join(r['skipped_parameters'])}")
    if "ritz_values" in r:
        asked, top = len(r["ritz_values"]), len(r["top_eigenvalues"])
        pairs = [f"{v:.4g} (res {e:.1e})" for v, e in zip(r["top_eigenvalues"], r["residuals"])]
        if pairs:
            print(f"  top eigenvalues: {', '.join(pairs)}")
        rest = [f"{v:.4g} (res {e:.1e}{'' if ok else ', NOT converged'})"
                for v, e, ok in zip(r["ritz_values"][top:], r["ritz_residuals"][top:], r["converged"][top:])]
        if rest:
            print(f"  further Ritz values ({asked - top} of the {asked} asked; not top eigenvalues): {', '.join(rest)}")
    if "trace" in r:
        print(f"  trace: {r['trace']['mean']:.4g} +- {r['trace']['std_error']:.2g} ({r['trace']['probes']} probes)")
    if "pyhessian" in r:
        ph = r["pyhessian"]
        print(f"  PyHessian 0.1: top eigenvalue {ph['top_eigenvalue']:.4g}, trace {ph['trace']:.4g} "
              f"({ph['trace_probes']} probes), {ph['seconds']:.1f} s")
    print(f"  {r['hessian_vector_products']} Hessian-vector products and {r['quadratic_forms']} quadratic forms "
          f"({r['hvp_strategy']}) in {r['data_passes']} passes, {r['seconds']:.1f} s")
    for note in r.get("warnings", []):
        print(f"warning: {note}", file=sys.stderr)
