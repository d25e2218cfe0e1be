"""The one exception type that means "the user asked for something invalid"."""


class UserError(Exception):
    """Bad input: the message is one line that says what was wrong and how to fix it.

    Command-line entry points print it as ``error: <message>`` and exit with status 2; library
    callers can catch it like any other exception.
    """


class RunStopped(UserError):
    """A run stopped itself because going on would mean nothing (a level ended at chance before
    others that depend on it): one line, exit status 1, the run's files kept."""

    exit_code = 1


class TrainingDiverged(RunStopped):
    """The training loss became NaN or infinite: the level cannot finish (exit status 1)."""
