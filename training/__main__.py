"""Command line: ``python -m training {imp,train,list} [flags]``; ``--help`` on each explains it."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

import torch

from .errors import UserError
from .hparams import build_config

EPILOG_IMP = """\
examples:
  python -m training imp                                  # demo: MNIST-1D CNN, 5 levels, 20%% per level
  python -m training imp --levels 10 --rewind 2ep         # late rewinding / k-epoch warm-up (seed 000 Alg. 2)
  python -m training imp --keep 10 --levels 2             # I-LOT-R with R = 10%% (keep 10%% per iteration)
  python -m training imp --preset resnet32_cifar10 --data-dir ~/datasets --device cuda
  python -m training imp --score lamp --fraction 0.16     # LAMP pruning (seed 003)

Run the same command again to resume a killed run; add levels by raising --levels.
"""

EPILOG_TRAIN = """\
examples:
  python -m training train --save-at 0,1ep,2ep,5ep       # dense run with checkpoints for rewinding
  python -m training train --model mnist1d_cnn --train-for 2000it
"""


def _common(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("run")
    run.add_argument("--preset", help="start from a paper's setup (python -m training list); flags override it")
    run.add_argument("--out", default="runs", help="folder that holds run folders (default: runs)")
    run.add_argument("--data-dir", help="dataset folder (default: $LTH_DATA_DIR, else ./data)")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    run.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars or summary table")


def make_parser() -> argparse.ArgumentParser:
    from .hparams import add_flags

    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Lottery-ticket experiments: IMP / I-LOT-R with rewinding, RISE-R, ticket search, pruning "
                    "at initialisation, controls on tickets, dense training. Each command has --help.")
    sub = parser.add_subparsers(dest="command", metavar="{imp,lot,rise,ticket-search,at-init,train,control,list}")

    imp = sub.add_parser("imp", aliases=["lot"],
                         help="iterative magnitude pruning with rewinding; `lot` is seed 000's I-LOT-R (Alg. 1/2)",
                         description="Train, prune a fraction of the remaining weights, rewind the survivors to "
                                     "step k, repeat. Writes a run folder with a checkpoint per level. As `lot`: "
                                     "I-LOT-R with -R (percent kept per iteration), -I (iterations), -k (warm-up).",
                         epilog=EPILOG_IMP, formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("-I", "--levels", type=int, default=5,
                     help="number of trained networks: level 0 is dense, each later level is pruned (default: 5)")
    imp.add_argument("-R", "--keep", type=float, metavar="R",
                     help="keep R%% of the remaining weights per level (seed 000's R); same as --fraction 1-R/100")
    _common(imp)
    add_flags(imp, ["dataset", "model", "training", "pruning"])

    rise = sub.add_parser("rise", help="RISE-R (seed 000 Alg. 3): retrain from W^k, non-kept weights frozen at W^k",
                          description="Train dense, keep R%% of the weights by magnitude, then train from W^k "
                                      "updating only the kept weights while the others stay frozen at their W^k "
                                      "values (seed 000 eq. 2).",
                          epilog="examples:\n  python -m training rise -R 10 -k 2ep\n"
                                 "  python -m training rise --preset resnet32_cifar10 -R 25 -k 5ep --device cuda",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    rise.add_argument("-R", "--keep", type=float, default=20.0, metavar="R",
                      help="percent of the weights kept and trained (default: 20)")
    _common(rise)
    add_flags(rise, ["dataset", "model", "training", "pruning"])

    search = sub.add_parser("ticket-search", help="seed 003's winning-ticket search: LAMP stages over replicate seeds",
                            description="K stages of train / prune 16%% by LAMP / rewind to the initial weights "
                                        "(seed 003 Alg. 1), with early stopping on a 10%% validation split, repeated "
                                        "over --replicates seeds. Any flag overrides those defaults.",
                            epilog="examples:\n  python -m training ticket-search --replicates 3\n"
                                   "  python -m training ticket-search --preset resnet32_cifar10 --stages 5 "
                                   "--replicates 50 --device cuda",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    search.add_argument("--stages", type=int, default=5, help="K, the number of train-prune-rewind stages (default 5)")
    search.add_argument("--replicates", type=int, default=1, help="independent searches, seeds seed..seed+N-1")
    _common(search)
    add_flags(search, ["dataset", "model", "training", "pruning"])

    at_init = sub.add_parser("at-init", help="prune at initialisation (SNIP, SynFlow, magnitude, random), then train",
                             description="Score W^0, prune once to --target-density, train the sparse network "
                                         "from W^0 (pruning at initialisation, for comparison with IMP tickets).",
                             epilog="examples:\n  python -m training at-init --score synflow --target-density 0.1\n"
                                    "  python -m training at-init --score snip --target-density 0.1",
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    at_init.add_argument("--keep", type=float, default=None, metavar="R", help="percent of weights kept")
    _common(at_init)
    add_flags(at_init, ["dataset", "model", "training", "pruning"])

    train = sub.add_parser("train", help="plain dense training (a level-0 run)",
                           description="Train the dense network once and save checkpoints at the given steps.",
                           epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--save-at", default="", help="extra checkpoints, e.g. '0,500it,2ep' (saved as level_0/step_<iteration>.pt)")
    _common(train)
    add_flags(train, ["dataset", "model", "training"])

    control = sub.add_parser("control", help="a control on an IMP run's ticket: reinit, random-prune, reshuffle, ...",
                             description="Train a control on level L of a finished IMP/LOT run (seed 002, "
                                         "Liu et al., Zhou et al.); the branch lives in RUN/branches/.",
                             epilog="controls: reinit, scratch-e, scratch-b, random-prune, reshuffle, signed-constant\n"
                                    "example:\n  python -m training control reinit runs/imp-f6ec9936304d --level 4",
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    control.add_argument("name", help="which control (see below)")
    control.add_argument("run", help="the IMP run folder")
    control.add_argument("--level", type=int, required=True, help="which level's mask")
    control.add_argument("--seed", type=int, help="seed of the control's randomness (default: run seed + 1)")
    control.add_argument("--data-dir", help="dataset folder (default: $LTH_DATA_DIR, else ./data)")
    control.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    control.add_argument("--threads", type=int, help="CPU threads for torch")
    control.add_argument("--no-progress", action="store_true", help="no progress bars or summary table")

    sub.add_parser("list", help="list models, datasets and presets")
    return parser


def _list() -> None:
    from .data import DATASETS
    from .models import MODELS
    from .presets import PRESETS

    print("models:")
    for name, fn in sorted(MODELS.items()):
        print(f"  {name:<20} {(fn.__doc__ or '').strip().splitlines()[0]}")
    print("datasets:")
    for name, info in DATASETS.items():
        print(f"  {name:<20} {info['classes']} classes")
    print("presets:")
    for name, info in PRESETS.items():
        print(f"  {name:<20} {info['source']}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    command = args.command or "imp"
    if args.command is None:  # `python -m training` alone runs the demo
        args = parser.parse_args(["imp", *(argv if argv is not None else sys.argv[1:])])
    try:
        if command == "list":
            _list()
            return 0
        if args.threads is not None:
            if args.threads < 1:
                raise UserError(f"--threads must be at least 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        if command == "control":
            from .controls import run_control

            run_control(args.run, args.name, args.level, args.seed, data_dir=args.data_dir, device=args.device,
                        progress=not args.no_progress)
            return 0
        if command == "ticket-search":
            from .ticket_search import DEFAULTS, run_ticket_search

            config = build_config(args, ["dataset", "model", "training", "pruning"], args.preset, DEFAULTS)
            run_ticket_search(config, args.stages, args.replicates, out=args.out, data_dir=args.data_dir,
                              device=args.device, progress=not args.no_progress)
            return 0
        if command in ("imp", "lot", "rise", "at-init"):
            if args.keep is not None:
                if "fraction" in vars(args):
                    raise UserError("give either --keep (R) or --fraction, not both")
                if not 0 < args.keep < 100:
                    raise UserError(f"--keep (R) is a percentage in (0, 100), got {args.keep}")
                args.fraction = 1 - args.keep / 100
            config = build_config(args, ["dataset", "model", "training", "pruning"], args.preset)
            common = dict(out=args.out, data_dir=args.data_dir, device=args.device, progress=not args.no_progress)
            if command == "rise":
                from .rise import run_rise

                run_rise(config, **common)
            elif command == "at-init":
                from .at_init import run_at_init

                run_at_init(config, **common)
            else:
                from .imp import run_imp

                run_imp(config, args.levels, **common)
        else:
            from .imp import run_train

            config = build_config(args, ["dataset", "model", "training"], args.preset)
            run_train(config, args.save_at, out=args.out, data_dir=args.data_dir, device=args.device,
                      progress=not args.no_progress)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
