"""Command line: ``python -m training COMMAND [flags]``; ``--help`` on each explains it.

The commands are declared by the modules that implement them (``training.commands.registry``):
the parser and the dispatch below are loops over that registry."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional

from training import commands
from training.cli import ArgumentParser, run_command
from training.errors import UserError

RESUME_HINT = "interrupted: run the same command again to resume"


def make_parser(parser_class: type = ArgumentParser) -> argparse.ArgumentParser:
    """The parser of every registered command; ``parser_class`` lets the sweep raise instead of exiting."""
    raw = argparse.RawDescriptionHelpFormatter
    registered = commands.registry()
    parser = parser_class(
        prog="python -m training", formatter_class=raw,
        description=commands.wrap(
            "Lottery-ticket experiments: IMP with rewinding, ticket search, pruning at initialisation, "
            "controls on tickets, dense training, and the two algorithms of " + commands.TARTAGLIONE + ": "
            "I-LOT-R (lottery tickets found in I pruning iterations keeping R% of the weights at each, "
            "rewinding to the weights W^k after k warm-up steps) and RISE-R (train from W^k only the "
            "R% kept weights, the others frozen at their W^k values). Each command has --help."))
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(c.name for c in registered) + "}")
    for command in registered:
        if command.main is not None:  # listed for --help; `main` hands its arguments over before parsing
            sub.add_parser(command.name, help=command.help, add_help=False)
            continue
        command.add_flags(sub.add_parser(command.name, help=command.help, description=commands.wrap(command.description),
                                         epilog=command.epilog, formatter_class=raw))
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the command; return the exit status
    (0, 2 for bad input with one ``error:`` line on stderr, 130 after Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from training.engine import distributed

    distributed.quiet_other_ranks()  # under torchrun, rank 0 prints for the run
    own = next((c for c in commands.registry() if c.main is not None and argv[:1] == [c.name]), None)
    if own is not None:
        return own.main(argv[1:])
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `python -m training` alone runs the demo
        args = parser.parse_args(["imp", *argv])
    command = commands.find(args.command)
    interrupted = RESUME_HINT if command.resumable else "interrupted"
    return run_command(lambda: _run(command.name, args), interrupted)


def _run(command: str, args: argparse.Namespace) -> None:
    result = prepare(command, args)()
    # the last line names what the command wrote, with or without --no-progress, so that a script
    # can find it (progress bars and tables go before it)
    if isinstance(result, dict) and result.get("path"):
        print(f"index: {result['path']}")
    elif hasattr(result, "dir"):
        print(f"run folder: {result.dir}")


def prepare(command: str, args: argparse.Namespace) -> Callable[[], Any]:
    """Check everything about one parsed command that can be checked without running it (flags,
    configuration, a writable ``--out``) and return the function that runs it; that function
    returns what the run function returns (a ``Run``, or a ticket search's index)."""
    found = commands.find(command)
    if found.prepare is None:
        raise UserError(f"{command} takes its own arguments: python -m training {command} --help")
    if getattr(args, "preset", None):
        from training.presets import check_preset_command

        check_preset_command(args.preset, command)
    return found.prepare(args)


if __name__ == "__main__":
    sys.exit(main())
