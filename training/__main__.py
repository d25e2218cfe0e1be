"""Command line: ``python -m training COMMAND [flags]``; ``--help`` on each explains it."""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .cli import ArgumentParser, add_threads_flag, check_threads, run_command, set_threads, writable_dir
from .errors import UserError
from .hparams import build_config
from .runs import resolve_device

TARTAGLIONE = 'Tartaglione 2022, "The rise of the lottery heroes"'
HAVINGA = 'Havinga & Sawhney, "An analysis of neural network pruning in relation to the LTH"'
SAHU = 'Sahu et al., "Not all lotteries are made equal"'

EPILOG_IMP = f"""\
examples:
  python -m training imp                                  # demo: MNIST-1D CNN, 5 levels, 20% pruned per level
  python -m training imp --levels 10 --rewind 2ep         # late rewinding / k-epoch warm-up (Tartaglione 2022, Alg. 2)
  python -m training imp --keep 10 --levels 2             # one-shot: train, keep 10%, train the ticket (= lot -R 10 -I 1)
  python -m training imp --preset resnet32_cifar10 --data-dir ~/datasets --device cuda
  python -m training imp --score lamp --fraction 0.16     # LAMP pruning ({SAHU})
  python -m training imp --target-density 0.2 --levels 2 --finetune 10   # prune once, fine-tune 10 epochs (Liu et al.)

--levels counts trained networks (level 0 is dense), so --levels L prunes L - 1 times.
--finetune E: each pruned level continues the previous level's trained weights for E epochs at
--finetune-lr (default: the schedule's last rate) instead of rewinding (Han et al.; Liu et al.).
Run the same command again to resume a killed run; add levels by raising --levels.
"""

EPILOG_LOT = f"""\
examples:
  python -m training lot -R 10 -I 1 -k 2ep     # 1-LOT: train, keep 10%, rewind to W^k, train the ticket
  python -m training lot -R 80 -I 5            # 5 iterations keeping 80% each (density 0.8^5 = 33%)
  python -m training lot --preset resnet32_cifar10 -R 25 -I 1 -k 5ep --device cuda

I counts pruning iterations as in {TARTAGLIONE}:
the run trains I + 1 networks (the dense one, then one ticket per iteration), so
`lot -R R -I I` is `imp --keep R --levels I+1` and writes the same run folder.
Run the same command again to resume; raise -I to add iterations.
"""

EPILOG_TRAIN = """\
examples:
  python -m training train --save-at 0,1ep,2ep,5ep       # dense run with checkpoints for rewinding
  python -m training train --model mnist1d_cnn --train-for 2000it
"""


def _wrap(text: str) -> str:
    """Wrap a description for ``RawDescriptionHelpFormatter`` (which keeps the epilogs' layout)."""
    return textwrap.fill(text, 100)


RUN_COMMANDS = ("imp", "lot", "rise", "ticket-search", "at-init", "train", "control")
RESUME_HINT = "interrupted: run the same command again to resume"


def _common(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("run")
    run.add_argument("--preset", help="start from a paper's setup (python -m training list); flags override it")
    run.add_argument("--out", default="runs", help="folder that holds run folders (default: runs)")
    run.add_argument("--data-dir", help="dataset folder (default: $LTH_DATA_DIR, else ./data)")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    add_threads_flag(run)
    run.add_argument("--no-progress", action="store_true", help="no progress bars or summary table")


def make_parser(parser_class: type = ArgumentParser) -> argparse.ArgumentParser:
    """The parser of every command; ``parser_class`` lets the sweep raise instead of exiting."""
    from .hparams import add_flags

    raw = argparse.RawDescriptionHelpFormatter
    parser = parser_class(
        prog="python -m training", formatter_class=raw,
        description=_wrap("Lottery-ticket experiments: IMP with rewinding, ticket search, pruning at initialisation, "
                    "controls on tickets, dense training, and the two algorithms of " + TARTAGLIONE + ": "
                    "I-LOT-R (lottery tickets found in I pruning iterations keeping R% of the weights at each, "
                    "rewinding to the weights W^k after k warm-up steps) and RISE-R (train from W^k only the "
                    "R% kept weights, the others frozen at their W^k values). Each command has --help."))
    sub = parser.add_subparsers(dest="command", metavar="{imp,lot,rise,ticket-search,at-init,train,control,sweep,list}")

    imp = sub.add_parser("imp", help="iterative magnitude pruning with rewinding (Frankle & Carbin)",
                         description=_wrap("Train, prune a fraction of the remaining weights, rewind the survivors to "
                                     "step k, repeat (Frankle & Carbin's IMP; with k > 0, late rewinding). Writes a "
                                     "run folder with a checkpoint per level."),
                         epilog=EPILOG_IMP, formatter_class=raw)
    imp.add_argument("--levels", type=int, default=5,
                     help="number of trained networks: level 0 is dense, each later level is pruned (default: 5)")
    imp.add_argument("-R", "--keep", type=float, metavar="R",
                     help="keep R%% of the remaining weights per level; same as --fraction 1-R/100")
    _common(imp)
    add_flags(imp, ["dataset", "model", "training", "pruning"])

    lot = sub.add_parser("lot", help="I-LOT-R (Tartaglione 2022, Alg. 1/2): I pruning iterations keeping R%% each, "
                                     "rewinding to W^k",
                         description=_wrap("I-LOT-R with warm-up (" + TARTAGLIONE + ", Alg. 1 and 2): train the dense "
                                     "network from W^0, keeping W^k, its weights after k steps (-k); then I times: "
                                     "keep the R% largest-magnitude remaining weights (-R), rewind them to W^k, "
                                     "train them with the others held at zero. I = 1 is the one-shot experiment."),
                         epilog=EPILOG_LOT, formatter_class=raw)
    lot.add_argument("-I", "--iterations", type=int, default=4, metavar="I",
                     help="pruning iterations; the run trains I + 1 networks (I = 1: one-shot) (default: 4)")
    lot.add_argument("-R", "--keep", type=float, metavar="R",
                     help="percent of the remaining weights kept at every iteration (default: 80, i.e. --fraction 0.2)")
    _common(lot)
    add_flags(lot, ["dataset", "model", "training", "pruning"])

    rise = sub.add_parser("rise", help="RISE-R (Tartaglione 2022, Alg. 3): retrain from W^k, non-kept weights "
                                       "frozen at W^k",
                          description=_wrap("RISE-R (" + TARTAGLIONE + ", Alg. 3): train dense, keep R% of the "
                                      "weights by magnitude, then train from W^k updating only the kept weights "
                                      "while the others stay frozen at their W^k values (eq. 2)."),
                          epilog="examples:\n  python -m training rise -R 10 -k 2ep\n"
                                 "  python -m training rise --fraction 0.75 -k 2ep      # the same as -R 25\n"
                                 "  python -m training rise --preset resnet32_cifar10 -R 25 -k 5ep --device cuda",
                          formatter_class=raw)
    rise.add_argument("-R", "--keep", type=float, metavar="R",
                      help="percent of the weights kept and trained (default: 20 unless --fraction is given)")
    _common(rise)
    add_flags(rise, ["dataset", "model", "training", "pruning"])

    search = sub.add_parser("ticket-search", help="winning-ticket search (Sahu et al.): LAMP stages over replicate "
                                                  "seeds",
                            description=_wrap("Winning-ticket search of " + SAHU + " (Alg. 1): K stages of train / "
                                        "prune 16% by LAMP / rewind to the initial weights, with early stopping on "
                                        "a 10% validation split, repeated over --replicates seeds. Any flag "
                                        "overrides those defaults."),
                            epilog="examples:\n  python -m training ticket-search --replicates 3\n"
                                   "  python -m training ticket-search --preset resnet32_cifar10 --stages 5 "
                                   "--replicates 50 --device cuda",
                            formatter_class=raw)
    search.add_argument("--stages", type=int, default=5, help="K, the number of train-prune-rewind stages (default 5)")
    search.add_argument("--replicates", type=int, default=1, help="independent searches, seeds seed..seed+N-1")
    _common(search)
    add_flags(search, ["dataset", "model", "training", "pruning"])

    at_init = sub.add_parser("at-init", help="prune at initialisation (SNIP, SynFlow, magnitude, random), then train",
                             description=_wrap("Score W^0, prune once to --target-density, train the sparse network "
                                         "from W^0 (pruning at initialisation, for comparison with IMP tickets)."),
                             epilog="examples:\n  python -m training at-init --score synflow --target-density 0.1\n"
                                    "  python -m training at-init --score snip --target-density 0.1",
                             formatter_class=raw)
    at_init.add_argument("--keep", type=float, default=None, metavar="R", help="percent of weights kept")
    _common(at_init)
    add_flags(at_init, ["dataset", "model", "training", "pruning"])

    train = sub.add_parser("train", help="plain dense training (a level-0 run)",
                           description=_wrap("Train the dense network once and save checkpoints at the given steps."),
                           epilog=EPILOG_TRAIN, formatter_class=raw)
    train.add_argument("--save-at", default="", help="extra checkpoints, e.g. '0,500it,2ep' (saved as level_0/step_<iteration>.pt)")
    _common(train)
    add_flags(train, ["dataset", "model", "training"])

    control = sub.add_parser("control", help="a control on an IMP run's ticket: reinit, random-prune, reshuffle, ...",
                             description=_wrap("Train a control on level L of a finished IMP/LOT run (the controls "
                                         "compared by " + HAVINGA + "; Liu et al., \"Rethinking the value of "
                                         "network pruning\"; Zhou et al., \"Deconstructing lottery tickets\"); "
                                         "the branch lives in RUN/branches/."),
                             epilog="controls: reinit, scratch-e, scratch-b, random-prune, reshuffle, signed-constant\n"
                                    "A fine-tuned run (imp --finetune) is a parent like any other: every control trains\n"
                                    "from iteration 0 with the run's original schedule and length (Scratch-E/B), not the\n"
                                    "fine-tuning's.\n"
                                    "example:\n  python -m training control reinit runs/imp-f6ec9936304d --level 4",
                             formatter_class=raw)
    control.add_argument("name", help="which control (see below)")
    control.add_argument("run", help="the IMP run folder")
    control.add_argument("--level", type=int, required=True, help="which level's mask")
    control.add_argument("--seed", type=int, help="seed of the control's randomness (default: run seed + 1)")
    control.add_argument("--data-dir", help="dataset folder (default: $LTH_DATA_DIR, else ./data)")
    control.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    add_threads_flag(control)
    control.add_argument("--no-progress", action="store_true", help="no progress bars or summary table")

    sub.add_parser("list", help="list models, datasets and presets",
                   description=_wrap("List the models, datasets and presets (--preset NAME) with their sources."))
    # listed for --help; `main` hands `sweep ...` to training.sweep before this parser sees it
    sub.add_parser("sweep", help="one run command over a grid of flag values (python -m training sweep --help)",
                   add_help=False)
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
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the command; return the exit status
    (0, 2 for bad input with one ``error:`` line on stderr, 130 after Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:
        from .sweep import main as sweep_main

        return sweep_main(argv[1:])
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `python -m training` alone runs the demo
        args = parser.parse_args(["imp", *argv])
    command = args.command
    interrupted = RESUME_HINT if command in RUN_COMMANDS else "interrupted"
    return run_command(lambda: _run(command, args), interrupted)


def _keep_to_fraction(args: argparse.Namespace, default_keep: Optional[float] = None) -> None:
    """Turn -R/--keep (percent kept) into ``args.fraction``; ``default_keep`` applies only when
    neither --keep nor --fraction was given."""
    given_fraction = "fraction" in vars(args)  # flags from add_flags are absent unless given
    if args.keep is not None and given_fraction:
        raise UserError("give either --keep (R) or --fraction, not both")
    keep = args.keep if args.keep is not None else (None if given_fraction else default_keep)
    if keep is None:
        return
    if not 0 < keep < 100:
        raise UserError(f"--keep (R) is a percentage in (0, 100), got {keep}")
    args.fraction = 1 - keep / 100


def _run(command: str, args: argparse.Namespace) -> None:
    prepare(command, args)()


def prepare(command: str, args: argparse.Namespace) -> Callable[[], Any]:
    """Check everything about one parsed command that can be checked without running it (flags,
    configuration, a writable ``--out``) and return the function that runs it; that function
    returns what the run function returns (a ``Run``, or a ticket search's index)."""
    if command == "list":
        return _list
    check_threads(args.threads)
    common = dict(data_dir=args.data_dir, device=args.device, progress=not args.no_progress)

    def threads() -> None:
        set_threads(args.threads)

    resolve_device(args.device)
    if command == "control":
        from .controls import check_control, run_control

        check_control(args.run, args.name, args.level, args.seed)
        writable_dir(args.run, flag="RUN")  # the branch is written under RUN/branches/
        return lambda: (threads(), run_control(args.run, args.name, args.level, args.seed, **common))[1]
    if command == "lot":
        if args.iterations < 1:
            raise UserError(f"-I (pruning iterations) must be at least 1, got {args.iterations}; "
                            "for the dense network alone use `python -m training train`")
        args.levels = args.iterations + 1
    if command in ("imp", "lot", "at-init"):
        _keep_to_fraction(args)
    elif command == "rise":
        _keep_to_fraction(args, default_keep=20.0)
    sections = ["dataset", "model", "training"] + ([] if command == "train" else ["pruning"])
    if command == "ticket-search":
        from .ticket_search import DEFAULTS

        config = build_config(args, sections, args.preset, DEFAULTS)
    else:
        config = build_config(args, sections, args.preset)
    from .data import DATASETS
    from .loop import check_training
    from .models import check_model_name

    check_training(config.training)
    if "pruning" in sections:
        from .hparams import check_pruning

        check_pruning(config.pruning, finetune_allowed=command in ("imp", "lot"))
    check_model_name(config.model.model)
    if command in ("imp", "lot"):
        from .imp import check_finetune

        check_finetune(config, args.levels)
    elif config.pruning is not None and (config.pruning.finetune or config.pruning.finetune_lr is not None):
        raise UserError(f"--finetune and --finetune-lr apply to imp and lot only, not {command}")
    if config.dataset.dataset not in DATASETS:
        raise UserError(f"unknown dataset {config.dataset.dataset!r}; choose one of: {', '.join(DATASETS)}")
    writable_dir(args.out)  # before any work: a run must not be lost to an unwritable --out
    common["out"] = args.out
    if command == "ticket-search":
        from .ticket_search import run_ticket_search

        run = lambda: run_ticket_search(config, args.stages, args.replicates, **common)  # noqa: E731
    elif command == "rise":
        from .rise import run_rise

        run = lambda: run_rise(config, **common)  # noqa: E731
    elif command == "at-init":
        from .at_init import run_at_init

        run = lambda: run_at_init(config, **common)  # noqa: E731
    elif command in ("imp", "lot"):
        from .imp import run_imp

        run = lambda: run_imp(config, args.levels, **common)  # noqa: E731
    else:
        from .imp import run_train

        run = lambda: run_train(config, args.save_at, **common)  # noqa: E731
    return lambda: (threads(), run())[1]


if __name__ == "__main__":
    sys.exit(main())
