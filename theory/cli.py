"""What theory's command line shares with the toolkit's others: one-line errors, quiet Ctrl-C and
output folders checked before any work starts. ``theory`` stands alone (no torch, no
``training``), so it keeps its own copy of these few lines (see ``training/cli.py``)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable, NoReturn, Optional, Union



class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` with the toolkit's error contract: a mistake on the command line (an unknown
    flag, a value of the wrong type, a missing argument) is one line, ``error: ...``, and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

def _exit_interrupted(signum, frame) -> None:  # pragma: no cover - exercised through a subprocess
    os.write(2, b"interrupted\n")
    os._exit(130)


def quiet_interrupts_during_import() -> None:
    """Under ``python -m theory``, Ctrl-C during the imports prints ``interrupted``, exits 130."""
    if sys.argv[:1] == ["-m"]:
        try:
            signal.signal(signal.SIGINT, _exit_interrupted)
        except ValueError:
            pass


def run_command(body: Callable[[], Optional[int]]) -> int:
    """Run a command's body: ``InputError`` -> one line and 2, Ctrl-C -> ``interrupted`` and 130."""
    from .subset_sum import InputError  # numba: imported after the quiet Ctrl-C handler is in place

    # Under `python -m theory` the quiet handler stays for the whole command: numba swallows a
    # KeyboardInterrupt raised inside its ctypes callbacks (LLVM compilation, its kernel cache), so
    # Ctrl-C must end the process at once; the outputs are written with SIGINT blocked
    # (experiments.write_outputs), so an exit never leaves half of them. Elsewhere (a library call,
    # the tests) Python's own handler raises KeyboardInterrupt as usual.
    try:
        if signal.getsignal(signal.SIGINT) is not _exit_interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:
        pass
    try:
        status = body()
        return 0 if status is None else int(status)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemError as exc:
        # Ctrl-C while numba unpickles a cached kernel surfaces as a SystemError caused by it
        if not _caused_by_interrupt(exc):
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; nothing to report
        return 0


def _caused_by_interrupt(exc: BaseException) -> bool:
    """Whether a ``KeyboardInterrupt`` is anywhere in ``exc``'s chain of causes."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def writable_dir(path: Union[str, Path], flag: str = "--out") -> Path:
    """Create ``path`` if needed and check a file can be written there; return it. ``InputError``
    (one line naming ``flag``) otherwise."""
    from .subset_sum import InputError

    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{flag} {folder} is a file, not a folder; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{flag} {folder} cannot be created: {exc.strerror or exc}") from None
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise InputError(f"{flag} {folder} is not writable: {exc.strerror or exc}") from None
    return folder


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: the threads numba runs its parallel kernels on (the subset-sum solver,
    Lueker's trials, the per-weight solves of ``network``), as ``training``'s flag of the same name
    does for torch. Each kernel's iterations are independent, so results do not depend on it; the
    count is recorded in each command's JSON all the same."""
    parser.add_argument("--threads", type=int,
                        help="CPU threads for numba's parallel kernels (default: numba's choice, all cores or "
                             "$NUMBA_NUM_THREADS); results do not depend on it, only the time")


def check_threads(threads: Optional[int]) -> None:
    """``InputError`` unless ``threads`` is None (numba's choice) or at least 1."""
    from .subset_sum import InputError

    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")


def set_threads(threads: Optional[int]) -> int:
    """Give numba's parallel kernels ``threads`` threads (None: leave numba's choice); return the
    count in use. ``InputError`` when ``threads`` is below 1 or above numba's pool
    (``NUMBA_NUM_THREADS``, fixed when numba starts)."""
    import numba

    from .subset_sum import InputError

    check_threads(threads)
    if threads is not None:
        most = numba.config.NUMBA_NUM_THREADS
        if threads > most:
            raise InputError(f"--threads must be from 1 to {most} here (numba's pool, NUMBA_NUM_THREADS), "
                             f"got {threads}")
        numba.set_num_threads(threads)
    return numba.get_num_threads()
