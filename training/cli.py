"""What every command line of the toolkit shares: one-line errors, quiet Ctrl-C, output folders
that are checked before any work starts.

``analysis`` uses these too; ``theory`` stands alone and keeps its own copy of the few lines it
needs (``theory/cli.py``).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable, NoReturn, Optional, Sequence, Union

from training.errors import UserError



class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` with the toolkit's error contract: a mistake on the command line (an unknown
    flag, a value of the wrong type, a missing argument) is one line, ``error: ...``, and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args: Optional[Sequence[str]] = None,  # type: ignore[override]
                   namespace: Optional[argparse.Namespace] = None) -> argparse.Namespace:
        """``argparse``'s, except that unknown arguments are reported by the subcommand's parser,
        so that the error points to ``python -m training imp --help``, where the flags are listed,
        rather than to the top-level help (argparse hands a subcommand's leftovers to the top level)."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self._chosen_parser(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _chosen_parser(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The innermost subcommand parser that ``parsed`` went through (``self`` without subcommands)."""
        parser: argparse.ArgumentParser = self
        while parser._subparsers is not None:
            action = next((a for a in parser._subparsers._group_actions
                           if isinstance(a, argparse._SubParsersAction)), None)
            chosen = getattr(parsed, action.dest, None) if action is not None else None
            if action is None or chosen not in action.choices:
                break
            parser = action.choices[chosen]
        return parser


def _exit_interrupted(signum, frame) -> None:  # pragma: no cover - exercised through a subprocess
    os.write(2, b"interrupted\n")
    os._exit(130)


def quiet_interrupts_during_import() -> None:
    """When the process was started as ``python -m PACKAGE...``, make Ctrl-C during the slow
    imports (torch takes a second) print ``interrupted`` and exit 130 instead of a traceback.

    ``run_command`` puts Python's own handler back once the command's body starts, so that
    ``KeyboardInterrupt`` unwinds normally (files are closed, locks released) from then on. A
    library import (``import training`` in a notebook) is left alone."""
    if sys.argv[:1] == ["-m"]:
        try:
            signal.signal(signal.SIGINT, _exit_interrupted)
        except ValueError:  # not the main thread
            pass


def run_command(body: Callable[[], Optional[int]], interrupted: str = "interrupted") -> int:
    """Run a command's body; return its exit status.

    ``UserError`` prints ``error: MESSAGE`` (one line) and returns 2 (``RunStopped``: 1); Ctrl-C prints
    ``interrupted`` (``interrupted``'s text) and returns 130; anything else is a bug and raises."""
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:
        pass
    try:
        status = body()
        return 0 if status is None else int(status)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; nothing to report
        return 0


def writable_dir(path: Union[str, Path], flag: str = "--out") -> Path:
    """Create folder ``path`` (and its parents) if needed and check that a file can be written in
    it; return it as a ``Path``. Raises ``UserError`` with one line naming ``flag`` otherwise.

    Commands call this before any work starts, so that nothing computed is lost to an output
    folder that cannot be written."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} is a file, not a folder; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {folder} cannot be created: {exc.strerror or exc}") from None
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"{flag} {folder} is not writable: {exc.strerror or exc}") from None
    return folder


def add_threads_flag(parser, default: Optional[int] = None, help: Optional[str] = None) -> None:
    """``--threads N`` on ``parser`` (or an argument group): CPU threads for torch. It changes
    results (the order of floating-point sums), so commands record it in their outputs'
    provenance, and run commands (``default`` 1) in the run's identity."""
    parser.add_argument("--threads", type=int, default=default,
                        help=help or "CPU threads for torch (default: torch's choice); results can differ with "
                                     "the thread count")


def check_threads(threads: Optional[int]) -> None:
    """``UserError`` unless ``threads`` is None (torch's choice) or at least 1."""
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")


def set_threads(threads: Optional[int]) -> int:
    """Give torch ``threads`` CPU threads (None: leave torch's choice); return the count in use."""
    import torch

    check_threads(threads)
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
