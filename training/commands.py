"""The commands of ``python -m training``: each one is a ``Command`` declared by the module that
implements it, and ``registry()`` lists them in the order ``--help`` shows them.

A new algorithm is a new module that exports a ``Command`` plus one line in ``registry()``;
``training/__main__.py`` builds the parser and dispatches by looping over the registry, and
``python -m training sweep`` can run every command whose ``sweepable`` is set.

The helpers below are what the run commands share: the ``run`` flag group (``add_run_flags``),
``-R``/``--keep`` as a percentage (``keep_to_fraction``) and the checks every run makes before any
work starts (``prepare_run``).
"""
from __future__ import annotations

import argparse
import contextlib
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from training.cli import add_threads_flag, check_threads, set_threads, writable_dir
from training.engine import loggers
from training.errors import UserError

if TYPE_CHECKING:
    from training.hparams import Config

TARTAGLIONE = 'Tartaglione 2022, "The rise of the lottery heroes"'
HAVINGA = 'Havinga & Sawhney, "An analysis of neural network pruning in relation to the LTH"'
SAHU = 'Sahu et al., "Not all lotteries are made equal"'

RUN_SECTIONS = ("dataset", "model", "training", "pruning")  # the hyperparameters of a pruning run
Runner = Callable[[], Any]


@dataclass(frozen=True)
class Command:
    """One subcommand of ``python -m training``.

    ``add_flags(parser)`` adds the command's flags to its own sub-parser; ``prepare(args)`` checks
    everything that can be checked without running (flags, configuration, a writable output
    folder), raising ``UserError``, and returns the function that runs the command (it returns
    what the run function returns: a ``Run``, a ticket search's index, ...). A command with
    ``main`` set takes its raw arguments instead (``sweep`` has a parser of its own): ``main(argv)``
    returns the exit status, and ``add_flags``/``prepare`` are unused."""

    name: str
    help: str  # one line in ``python -m training --help``
    description: str = ""  # the command's --help, wrapped to 100 columns
    epilog: Optional[str] = None  # printed as written (examples, notes)
    add_flags: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    prepare: Optional[Callable[[argparse.Namespace], Runner]] = None
    resumable: bool = True  # Ctrl-C says that running the same command again resumes
    sweepable: bool = True  # ``python -m training sweep`` may run it over a grid
    main: Optional[Callable[[list[str]], int]] = None


def registry() -> list[Command]:
    """Every command of ``python -m training``, in the order ``--help`` lists them."""
    from training.algorithms import at_init, continuous_sparsification, controls, edge_popup, imp, rise, ticket_search
    from training import interop, run_index
    from training.algorithms import stochastic_sparsification
    from training.compression import command as compression

    return [imp.IMP, imp.LOT, rise.RISE, continuous_sparsification.CS, stochastic_sparsification.ISS,
            edge_popup.EDGE_POPUP,
            compression.COMPRESS, interop.IMPORT_MASK,
            ticket_search.TICKET_SEARCH, at_init.AT_INIT, imp.TRAIN, controls.CONTROL, run_index.RUNS, LIST, SWEEP]


def find(name: str, commands: Optional[Sequence[Command]] = None) -> Command:
    """The registered command called ``name``; ``UserError`` (one line) when there is none."""
    commands = registry() if commands is None else commands
    for command in commands:
        if command.name == name:
            return command
    raise UserError(f"unknown command {name!r}; choose one of: {', '.join(c.name for c in commands)}")


def wrap(text: str) -> str:
    """Wrap a description for ``RawDescriptionHelpFormatter`` (which keeps the epilogs' layout)."""
    return textwrap.fill(text, 100)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The ``run`` group every run command has: preset, output and data folders, device, threads,
    precision, memory format, compilation, determinism (``training.hparams.ExecutionHparams`` says
    which of them are part of the run's identity)."""
    from training.hparams import PRECISIONS

    run = parser.add_argument_group("run")
    run.add_argument("--preset", help="start from a paper's setup (python -m training list); flags override it")
    run.add_argument("--out", default="runs", help="folder that holds run folders (default: runs)")
    run.add_argument("--data-dir", help="dataset folder (default: $LTH_DATA_DIR, else ./data)")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto; part of the run's "
                     "identity when not the CPU)")
    add_threads_flag(run, default=1, help="CPU threads for torch (default: 1, so that a run's numbers do not "
                     "depend on the machine); the thread count changes a CPU run's results, so another count "
                     "is another run folder")
    run.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                     help="arithmetic of the training and evaluation passes: fp32 (exact, the default), tf32 (a "
                          "GPU's TF32 matrix units), bf16 (autocast), fp16 (autocast with a gradient scaler); "
                          "masks stay exact under each")
    run.add_argument("--channels-last", action="store_true",
                     help="channels-last memory format for 2-D convolutions (faster on GPUs; no effect on a "
                          "model without 2-D convolutions)")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile the model for training (a slower first step, faster ones after)")
    run.add_argument("--deterministic", action="store_true",
                     help="deterministic GPU kernels (torch.use_deterministic_algorithms, no cuDNN autotuning): "
                          "bit-identical reruns on the same GPU, slower; CPU runs are always deterministic")
    run.add_argument("--no-progress", action="store_true", help="no progress bars or summary table")
    run.add_argument("--allow-diverged", action="store_true",
                     help="go on after a level that ends at chance (test accuracy at the majority class's share, "
                          "or a training loss never below a uniform prediction's); without it such a level stops "
                          "the run with exit status 1 when later levels would build on it (it is always marked "
                          "in summary.json and warned about)")
    loggers.add_log_flags(run)  # --log, --log-project, ... (not part of the identity)


def run_flags(own: Callable[[argparse.ArgumentParser], None],
              sections: Sequence[str] = RUN_SECTIONS,
              defaults: Optional[dict] = None) -> Callable[[argparse.ArgumentParser], None]:
    """``add_flags`` of a run command: its ``own`` flags, the ``run`` group, then one flag per
    hyperparameter of ``sections``, whose help shows the command's own ``defaults`` where given."""

    def add(parser: argparse.ArgumentParser) -> None:
        from training.hparams import add_flags

        own(parser)
        add_run_flags(parser)
        add_flags(parser, list(sections), defaults)

    return add


def keep_to_fraction(args: argparse.Namespace, default_keep: Optional[float] = None) -> None:
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


def prepare_run(args: argparse.Namespace, run: Callable[..., Any], *, sections: Sequence[str] = RUN_SECTIONS,
                defaults: Optional[dict] = None, finetune_allowed: bool = False,
                adjust: Optional[Callable[[argparse.Namespace], None]] = None,
                check: Optional[Callable[["Config"], None]] = None) -> Runner:
    """The checks of a run command, before any work starts: threads, device and the other execution
    settings (``config.execution``: precision, channels-last, compile, deterministic), the command's
    ``adjust(args)`` (its own flags checked and turned into hyperparameters), the configuration
    (dataclass defaults, then ``defaults``, the preset, the flags) with its training, pruning, model
    and dataset settings, the command's own ``check(config)``, and a writable ``--out``. Returns
    the function that sets the threads and calls ``run(config, out=..., data_dir=..., device=...,
    progress=...)``, returning what it returns."""
    from training.data import check_dataset_name
    from training.hparams import build_config, check_pruning
    from training.engine.loop import check_training
    from training.models import check_model_name
    from training.engine.runs import resolve_device
    from training.engine.loop import check_execution
    from training.hparams import ExecutionHparams

    check_threads(args.threads)
    device = resolve_device(args.device)
    if adjust is not None:
        adjust(args)
    config = build_config(args, list(sections), args.preset, defaults)
    config.execution = ExecutionHparams(device=device.type, threads=args.threads, precision=args.precision,
                                        channels_last=args.channels_last, compile=args.compile,
                                        deterministic=args.deterministic)
    check_execution(config.execution, device)
    check_training(config.training)
    if "pruning" in sections:
        check_pruning(config.pruning, finetune_allowed=finetune_allowed)
    check_model_name(config.model.model)
    if check is not None:
        check(config)
    check_dataset_name(config.dataset.dataset)
    writable_dir(args.out)  # before any work: a run must not be lost to an unwritable --out
    common = dict(out=args.out, data_dir=args.data_dir, device=args.device, progress=not args.no_progress)

    def go() -> Any:
        set_threads(args.threads)
        from training.engine.runs import allowing_diverged

        allow = allowing_diverged() if args.allow_diverged else contextlib.nullcontext()
        with loggers.logging_to(loggers.settings_from_args(args)), allow:
            return run(config, **common)

    return go


def _list() -> None:
    from training.data import DATASET_SPECS
    from training.models import MODELS
    from training.presets import PRESETS

    print("models:")
    for name, fn in sorted(MODELS.items()):
        print(f"  {name:<20} {(fn.__doc__ or '').strip().splitlines()[0]}")
    print("datasets:")
    for name, spec in DATASET_SPECS.items():
        print(f"  {name:<20} {spec.classes} classes")
    print("presets:")
    for name, info in PRESETS.items():
        only = f" (for {' and '.join(info['commands'])})" if info.get("commands") else ""
        print(f"  {name:<20} {info['source']}{only}")


def _sweep(argv: list[str]) -> int:
    from training.sweep import main

    return main(argv)


LIST = Command("list", help="list models, datasets and presets",
               description="List the models, datasets and presets (--preset NAME) with their sources.",
               prepare=lambda args: _list, resumable=False, sweepable=False)
SWEEP = Command("sweep", help="one run command over a grid of flag values (python -m training sweep --help)",
                main=_sweep, resumable=False, sweepable=False)
