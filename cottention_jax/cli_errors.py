"""One-line errors for the command-line tools (standard library only: `cottention-launch` never imports jax).

A user's mistake (a bad flag or config value, a missing or unwritable path, a damaged checkpoint or
tokenizer, a workdir another run holds) ends a command in one line on stderr and a non-zero status;
`--debug` shows the traceback instead. Any other error is internal and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno

__all__ = ["OneLineParser", "add_debug_flag", "is_user_error", "one_line"]

# The project's errors whose message is written for the user (a one-line exit, rc 1): divergence, a workdir
# another run holds, a checkpoint that cannot be saved or resumed, missing or corrupt data (their messages
# carry the command that rebuilds it). Known by name, so that nothing is imported to recognise them
# (`cottention-generate` must not import the training modules, which need the [train] extra).
_RUN_STOPPING = frozenset(
    {
        "TrainingDivergedError",
        "WorkdirLockedError",
        "CheckpointError",
        "CorruptDataError",
        "MissingDataError",
        "DataSourceError",
    }
)

# The OSErrors that the user's environment causes: a missing or misnamed path, permissions, a read-only
# or full disk. Any other OSError (a lost connection...) keeps its traceback.
_USER_OSERRORS = (FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError, IsADirectoryError)
_USER_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.ENOTEMPTY})


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, `PROG: error: MESSAGE (see PROG --help)`, exit status 2
    (not the usage block: an invalid choice already lists the valid ones). Subcommands inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error instead of its one-line message"
    )


def is_run_stopping(err: BaseException) -> bool:
    """Whether `err` is one of the project's errors written for the user (_RUN_STOPPING), or a subclass."""
    return any(c.__name__ in _RUN_STOPPING and c.__module__.startswith("cottention_jax.") for c in type(err).__mro__)


def is_user_error(err: BaseException) -> bool:
    """Whether `err` is the user's to act on, said in one line: a ValueError (bad input: a config, a flag, a
    file's content, by this project's convention), an error of _RUN_STOPPING, or an OSError of the
    environment. Anything else is an internal error and keeps its traceback."""
    if isinstance(err, ValueError) or is_run_stopping(err):
        return True
    return isinstance(err, _USER_OSERRORS) or (isinstance(err, OSError) and err.errno in _USER_ERRNOS)


def joined(err: BaseException) -> str:
    """An error's message on one line (its own lines joined)."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def one_line(err: BaseException, prog: str) -> str:
    """`PROG: ErrorType: message` on one line."""
    return f"{prog}: {type(err).__name__}: {joined(err)}"
