"""What every command of the project does with an error caused by its user's input.

A bad value, a missing folder or an undecodable image ends a command with one
line on stderr, ``PROG: error: MESSAGE`` (argparse's own format), and exit
status 2, not with a traceback through DALI's C++ context. An unexpected
internal error keeps its traceback::

    def main(argv: Sequence[str] | None = None) -> int:
        parser = get_args_parser()
        args = parser.parse_args(argv)
        with exit_on_user_error(parser, fields={"prob": "--mix-prob"}):
            config = MixConfig(prob=args.mix_prob, ...)
            ...
        return 0

Configuration dataclasses name their fields (``batch_size must be >= 1``); the
line names the flag the user typed instead (``--batch-size must be >= 1``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping

from dali_cutmix.files import DatasetError

__all__ = [
    "SCRIPT_PREFIX",
    "USER_ERRORS",
    "command_name",
    "exit_on_user_error",
    "one_line",
    "positive_int",
]

logger = logging.getLogger(__name__)

# Errors that come from the user's input or data: configuration values (ValueError, which
# DatasetError and BadImageError are), and OS errors that name a path (missing, not
# writable). DALI's own failures are RuntimeErrors and keep their traceback.
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, OSError)


def _flags(parser: argparse.ArgumentParser, fields: Mapping[str, str]) -> dict[str, str]:
    """Internal name -> the flag that sets it: the parser's ``dest``s, then ``fields``."""
    flags = {
        action.dest: max(action.option_strings, key=len)
        for action in parser._actions  # argparse has no public list of its actions
        if action.option_strings and action.dest != argparse.SUPPRESS
    }
    return flags | dict(fields)


def _name_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with the internal names of settings replaced by their flags.

    A name is replaced where it stands alone (not inside a path, a quoted
    string or a longer identifier) and either is a snake_case identifier, which prose never is, or
    opens the message, as in the dataclasses' ``"{name} must be ..."``.
    """
    for name, flag in sorted(flags.items(), key=lambda item: -len(item[0])):
        alone = rf"(?<![\w./'\"-]){re.escape(name)}(?![\w./'\"-])"
        pattern = alone if "_" in name else rf"^{alone}"
        message = re.sub(pattern, flag, message)
    return message


def one_line(error: BaseException) -> str:
    """The error's message on one line (DALI-style multi-line messages joined by spaces)."""
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip())


def _is_user_error(error: Exception, catch: tuple[type[Exception], ...]) -> bool:
    if not isinstance(error, catch):
        return False
    # An OSError about no particular path (say, a broken pipe) is not the user's input.
    return not isinstance(error, OSError) or error.filename is not None


@contextlib.contextmanager
def exit_on_user_error(
    parser: argparse.ArgumentParser,
    *,
    fields: Mapping[str, str] | None = None,
    status: int = 2,
    catch: tuple[type[Exception], ...] = USER_ERRORS,
) -> Iterator[None]:
    """Ends the command with ``PROG: error: MESSAGE`` on stderr and ``status`` on a user error.

    Args:
        parser: the command's parser: its ``prog`` starts the line, and each
            ``dest`` in a configuration error's message is replaced by its flag
            (``batch_size`` -> ``--batch-size``).
        fields: further internal names and their flags, for settings whose
            field is named unlike the flag (``{"prob": "--mix-prob"}``).
        status: the exit status (2, argparse's status for bad usage).
        catch: the exception types that count as user errors; an ``OSError``
            counts only when it names a path.

    Raises:
        SystemExit: with ``status``, after printing the line. Every other
            exception passes through unchanged, traceback included.
    """
    try:
        yield
    except Exception as error:
        if not _is_user_error(error, catch):
            raise
        message = one_line(error)
        if not isinstance(error, DatasetError):  # a dataset's message names paths, not flags
            message = _name_flags(message, _flags(parser, fields or {}))
        logger.debug("user error", exc_info=True)
        print(f"{parser.prog}: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(status) from None


# The installed console scripts are named dali-cutmix-<command> (see pyproject.toml).
SCRIPT_PREFIX = "dali-cutmix-"


def command_name(module: str) -> str:
    """How the user started a command, for its usage and error lines and the commands it prints.

    ``module`` is the command's module as imported (``train`` in the repository,
    ``dali_cutmix.train`` once installed: pass ``__package__`` or ``__spec__.name``).
    Started as a console script, the command is that script (``dali-cutmix-train``);
    otherwise ``python -m MODULE``.
    """
    script = os.path.basename(sys.argv[0])
    return script if script.startswith(SCRIPT_PREFIX) else f"python -m {module}"


def positive_int(text: str) -> int:
    """An argparse ``type``: an int >= 1 (argparse then names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value
