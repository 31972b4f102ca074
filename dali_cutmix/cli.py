"""What every command of the project shares: how it ends on its user's error, its common flags.

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
line names the flag the user typed instead (``--batch-size must be >= 1``). A
command that returns its exit status (``python -m train``) prints the same line
with :func:`report_user_error`.

The flags several commands share (:func:`add_shared_flags`), a configuration
built from the flags named like its fields (:func:`from_flags`) and the JSON
report a command writes (:func:`write_json`) have their one home here too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from dali_cutmix.config import MAX_SIDE
from dali_cutmix.files import NOT_A_FILE, DatasetError, write_whole
from dali_cutmix.procs import Terminated, exit_on_sigterm

__all__ = [
    "ABORTED",
    "SCRIPT_PREFIX",
    "SHARED_FLAGS",
    "USER_ERRORS",
    "aborted",
    "add_count",
    "add_report_flag",
    "add_shared_flags",
    "bad_file_advice",
    "check_folder",
    "check_outside",
    "typed_dests",
    "command_line",
    "command_name",
    "exit_on_user_error",
    "interruptible",
    "from_flags",
    "one_line",
    "other_command",
    "non_negative_int",
    "path_arg",
    "dali_memory_named",
    "positive_int",
    "worker_count",
    "worker_limit",
    "worker_limit_rule",
    "replace_names",
    "report_user_error",
    "start_command",
    "started_as_script",
    "write_json",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

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


def _name_pattern(name: str) -> str:
    alone = rf"(?<![\w./'\"-]){re.escape(name)}(?![\w./'\"-])"
    # Snake-case names never occur in prose; a plain word only where a message names a value.
    return alone if "_" in name else alone + r"(?= must| \()"


def replace_names(message: str, names: Iterable[str], flag: Callable[[str], str]) -> str:
    """``message`` with each of ``names`` that stands for a setting replaced by ``flag(name)``.

    A name is replaced where it stands alone (not inside a path, a quoted string
    or a longer identifier) and either is a snake_case identifier, which prose
    never is, or comes before `` must`` or `` (``, as in the dataclasses'
    ``"{name} must be ..."`` and ``"{name} ({value}) must be ..."``; the longest name first.
    """
    ordered = sorted(names, key=len, reverse=True)
    if not ordered:
        return message
    pattern = "|".join(_name_pattern(name) for name in ordered)
    return re.sub(pattern, lambda match: flag(match.group(0)), message)


def one_line(error: BaseException | str) -> str:
    """The error's message on one line (DALI-style multi-line messages joined by spaces)."""
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip())


def _is_user_error(error: Exception, catch: tuple[type[Exception], ...]) -> bool:
    if not isinstance(error, catch):
        return False
    # An OSError about no particular path (say, a broken pipe) is not the user's input.
    return not isinstance(error, OSError) or error.filename is not None


def report_user_error(
    parser: argparse.ArgumentParser,
    error: Exception | str,
    *,
    fields: Mapping[str, str] | None = None,
    name_flags: Callable[[str], str] | None = None,
    status: int = 2,
) -> int:
    """Prints ``PROG: error: MESSAGE`` on stderr for ``error``; returns ``status``, to exit with.

    Args:
        parser: the command's parser: its ``prog`` starts the line, and each
            ``dest`` in a configuration error's message is replaced by its flag
            (``batch_size`` -> ``--batch-size``).
        error: the exception, or the message to print. A ``ValueError`` is about
            the configuration and its message names settings; a dataset's
            (``DatasetError``), a file's (``OSError``) or a given message names paths.
        fields: further internal names and their flags, for settings whose
            field is named unlike the flag (``{"prob": "--mix-prob"}``).
        name_flags: how a configuration error's message names the flags instead
            of the parser's ``dest``s and ``fields`` (``python -m train`` names
            them as the user typed them).
        status: the exit status returned (2, argparse's status for bad usage).
    """
    text = one_line(error)
    if isinstance(error, ValueError) and not isinstance(error, DatasetError):
        if name_flags is None:
            flags = _flags(parser, fields or {})
            text = replace_names(text, flags, flags.__getitem__)
        else:
            text = name_flags(text)
    print(f"{parser.prog}: error: {text}", file=sys.stderr, flush=True)
    return status


@contextlib.contextmanager
def exit_on_user_error(
    parser: argparse.ArgumentParser,
    *,
    fields: Mapping[str, str] | None = None,
    name_flags: Callable[[str], str] | None = None,
    status: int = 2,
    catch: tuple[type[Exception], ...] = USER_ERRORS,
) -> Iterator[None]:
    """Ends the command with ``PROG: error: MESSAGE`` on stderr and ``status`` on a user error.

    Args:
        parser, fields, name_flags, status: as for :func:`report_user_error`.
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
        logger.debug("user error", exc_info=True)
        code = report_user_error(parser, error, fields=fields, name_flags=name_flags, status=status)
        raise SystemExit(code) from None


@contextlib.contextmanager
def dali_memory_named(flags: str) -> Iterator[None]:
    """DALI's error for memory it could not get (``std::bad_alloc``, CUDA's) becomes a
    ``MemoryError`` advising to lower ``flags``, for :func:`exit_on_user_error` with
    ``catch=(MemoryError,)`` to end the command in one line: ``--batch-size 100000000``
    was a 43-line traceback."""
    try:
        yield
    except RuntimeError as error:
        from dali_cutmix.scan import out_of_memory

        if not out_of_memory(error):
            raise
        raise MemoryError(f"DALI ran out of memory for these sizes: lower {flags}") from None


# The installed console scripts are named dali-cutmix-<command> (see pyproject.toml).
SCRIPT_PREFIX = "dali-cutmix-"


def started_as_script() -> bool:
    """True when this process runs one of the installed console scripts (``dali-cutmix-*``)."""
    return os.path.basename(sys.argv[0]).startswith(SCRIPT_PREFIX)


def other_command(script: str, module: str) -> str:
    """Another command of the project, named the way the running one was started, for advice
    in messages: ``dali-cutmix-SCRIPT`` under a console script, else ``python -m MODULE``."""
    return SCRIPT_PREFIX + script if started_as_script() else f"python -m {module}"


def command_name(module: str) -> str:
    """How the user started a command, for its usage and error lines and the commands it prints.

    ``module`` is the command's module as imported (``train`` in the repository,
    ``dali_cutmix.train`` once installed: pass ``__package__`` or ``__spec__.name``).
    Started as a console script, the command is that script (``dali-cutmix-train``);
    otherwise ``python -m MODULE``.
    """
    return os.path.basename(sys.argv[0]) if started_as_script() else f"python -m {module}"


def check_folder(path: str | os.PathLike[str], flag: str, *, probe_existing: bool = True) -> None:
    """``path`` is a folder that takes files, or one can be made there; nothing is made yet (a
    probe folder is made and removed in it, or in the nearest existing parent). With
    ``probe_existing=False`` an existing folder is taken as it is: a cache that may be read
    only, where what is needed is there already.

    Commands check their output folders before the long work, so that a typo
    costs nothing. Raises ``ValueError`` naming ``flag`` and the path.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{flag} {path}: not a folder")
        if not probe_existing:
            return
        probed = path  # the folder is there; can it take files (a read-only mount, /proc)?
    else:
        probed = path.absolute().parent
        while not probed.exists():
            probed = probed.parent
        if not probed.is_dir():
            raise ValueError(f"{flag} {path}: cannot be made, {probed} is not a folder")
    # A folder made and removed at once: os.access answers yes to root, and on file systems
    # that refuse folders anyway (read-only mounts, /proc), where the real mkdir then failed
    # with a traceback.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".check-", dir=probed))
    except OSError as error:
        if probed is path:
            raise ValueError(f"{flag} {path}: cannot be written ({error.strerror})") from None
        refused = error.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        reason = "is not writable" if refused else f"takes no folder ({error.strerror})"
        raise ValueError(f"{flag} {path}: cannot be made, {probed} {reason}") from None


def bad_file_advice(
    error: Exception,
    root: Path,
    file_list: Path | None,
    module: str,
    verb: str,
    argv: Sequence[str] | None,
) -> str:
    """The undecodable file ``error`` names, then the way on for the command ``module``
    (which reads ``--data`` and ``--file-list``): the scan, and the command again on the good
    files only, ``verb`` saying what it does to them; or, where the file came from a list of
    the user's own, the line to delete (scanning the folder would replace the list's subset).

    The command again is the user's own, ``argv`` (default ``sys.argv[1:]``), with the
    list added (and ``--data``, where the folder was the default one): it was ``--data`` and
    ``--file-list`` alone, which lost every other flag (a batch size, ``--out``), and
    failed where the default batch was larger than the good files."""
    from dali_cutmix.files import bad_file_problem

    problem = bad_file_problem(error)
    if file_list is not None:
        listed = shlex.quote(str(file_list))
        return f"{problem} It is listed in --file-list {listed}: delete its line there."
    folder = shlex.quote(str(root))
    scan = f"{other_command('scan', 'dali_cutmix.scan')} {folder} --out DIR"
    words = list(sys.argv[1:] if argv is None else argv)
    if not any(w == "--data" or w.startswith("--data=") for w in words):
        words += ["--data", str(root)]
    again = f"{command_name(module)} {shlex.join(words)} --file-list DIR/files.txt"
    return (
        f"{problem} Find every bad file with: {scan} (DIR: any writable folder); "
        f"then {verb} the good ones with: {again}"
    )


ABORTED = 130  # the shell's status for a process ended by Ctrl-C (128 + SIGINT)
TERMINATED = 143  # 128 + SIGTERM


def aborted(parser: argparse.ArgumentParser, what: str, sigterm: bool = False) -> int:
    """Says on one line that Ctrl-C (or ``sigterm``: SIGTERM) ended the command and ``what``
    became of its work (no traceback); returns :data:`ABORTED` (143 for SIGTERM), to exit
    with."""
    print(
        f"{parser.prog}: aborted by {'SIGTERM' if sigterm else 'Ctrl-C'}; {what}",
        file=sys.stderr,
        flush=True,
    )
    return TERMINATED if sigterm else ABORTED


def interruptible(
    parser: argparse.ArgumentParser, what: str | Callable[[], str], body: Callable[[], int]
) -> int:
    """``body()`` (a command's work, returning its status) with SIGTERM and Ctrl-C ending it
    cleanly: SIGTERM through every ``finally`` (status 143; the child processes that
    ``subprocess.run`` and the pools started are ended too), each with one line saying
    ``what`` became of the work (:func:`aborted`; a callable is asked then) instead of a
    traceback (SIGTERM's was no word at all)."""
    try:
        with exit_on_sigterm():
            return body()
    except (KeyboardInterrupt, Terminated, ImportError) as error:
        stop = stop_behind(error)
        if stop is None:
            raise
        sigterm = isinstance(stop, Terminated)
        return aborted(parser, what if isinstance(what, str) else what(), sigterm=sigterm)


def stop_behind(error: BaseException) -> BaseException | None:
    """The Ctrl-C or SIGTERM (a ``KeyboardInterrupt``, a ``SystemExit`` such as
    :class:`~dali_cutmix.procs.Terminated`) that ``error`` is or was caused by; ``None``
    where there is none.

    A stop that lands while an extension module initialises (DALI's ``backend_impl``,
    loaded a second or so into a command) reaches the command as that import's
    ``ImportError: initialization failed``, caused by the stop: a traceback and status 1
    instead of the one line of a stop.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt | SystemExit):
            return seen
        seen = seen.__cause__ if isinstance(seen, ImportError) else None
    return None


def _int_from(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse ``type``: an int >= 1 (argparse then names the flag in its error)."""
    return _int_from(text, 1)


def int_up_to(high: int) -> Callable[[str], int]:
    """An argparse ``type``: an int from 1 to ``high``."""

    def parse(text: str) -> int:
        value = _int_from(text, 1)
        if value > high:
            raise argparse.ArgumentTypeError(f"expected an int from 1 to {high}, got {value}")
        return value

    return parse


# Threads or worker processes a command may start: WORKERS_PER_CPU per CPU, and at least
# MIN_WORKER_LIMIT on a small machine. DALI's thread pool aborted the process (SIGABRT,
# "terminate called without an active exception") at --threads 100000.
WORKERS_PER_CPU = 4
MIN_WORKER_LIMIT = 16


def worker_limit() -> int:
    """The most threads or worker processes a command takes on this machine."""
    return max(MIN_WORKER_LIMIT, WORKERS_PER_CPU * (os.cpu_count() or 1))


def worker_limit_rule() -> str:
    """How :func:`worker_limit` is set, for an error: "the larger of 16 and 4 per CPU of ..."."""
    return (
        f"the larger of {MIN_WORKER_LIMIT} and {WORKERS_PER_CPU} per CPU of this machine's "
        f"{os.cpu_count() or 1}"
    )


def worker_count(text: str) -> int:
    """An argparse ``type``: an int in ``[1, worker_limit()]``."""
    value, limit = _int_from(text, 1), worker_limit()
    if value > limit:
        raise argparse.ArgumentTypeError(
            f"expected an int >= 1 and at most {limit} ({worker_limit_rule()}), got {value}"
        )
    return value


def non_negative_int(text: str) -> int:
    """An argparse ``type``: an int >= 0 (argparse then names the flag in its error)."""
    return _int_from(text, 0)


def path_arg(text: str) -> Path:
    """An argparse ``type``: a path that is not empty (argparse then names the flag in its
    error). ``Path("")`` is the working folder, so ``--out ""`` (a script's unset variable)
    wrote into it and ``--data ""`` read it, without a word."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path; give a path (. for the working folder)")
    return Path(text)


# The flags several commands share: name -> (flag, help). Each command gives the default.
# The largest values of the shared flags that have one: a side DALI's resize and the
# mixing take (config.MAX_SIDE), a batch size DALI holds (an int32).
_SHARED_BOUNDS = {"crop_size": MAX_SIDE, "batch_size": 2**31 - 1}

SHARED_FLAGS: dict[str, tuple[str, str]] = {
    "batch_size": ("--batch-size", "samples per batch"),
    "threads": ("--threads", "DALI CPU threads"),
    "crop_size": ("--crop-size", "side of the crops, pixels"),
    "seed": ("--seed", "DALI's seed for the draws"),
}


def add_count(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    default: int,
    help: str,
    *,
    type: Callable[[str], int] = positive_int,
) -> None:
    """Adds ``flag``, a whole number whose help ends with its default, said once.

    ``type`` parses it: ints >= 1 by default; ``int`` where the configuration
    checks the value and names the flag itself.
    """
    parser.add_argument(flag, type=type, default=default, help=f"{help} (default: %(default)s)")


def add_shared_flags(
    parser: argparse.ArgumentParser,
    *,
    help: Mapping[str, str] | None = None,
    type: Callable[[str], int] = positive_int,
    **defaults: int,
) -> None:
    """Adds the shared flags named in ``defaults``, in that order, each with its default.

    ``add_shared_flags(parser, threads=2)`` adds ``--threads``, default 2 (see
    :func:`add_count`, which ``type`` is passed to; ``--seed`` is any int). ``help``
    words a flag for this command (``{"batch_size": "samples in the grid"}``).
    """
    for name, default in defaults.items():
        flag, text = SHARED_FLAGS[name]
        kind = int if name == "seed" else worker_count if name == "threads" else type
        if kind is positive_int and name in _SHARED_BOUNDS:  # 2**31 was a traceback in DALI
            kind = int_up_to(_SHARED_BOUNDS[name])
        add_count(parser, flag, default, (help or {}).get(name, text), type=kind)


def add_report_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """Adds ``--out``: the file where the command also writes ``what`` (:func:`write_json`)."""
    parser.add_argument(
        "--out", type=path_arg, help=f"also write the {what} as JSON here (default: stdout only)"
    )


def check_report_path(path: Path | None, flag: str = "--out") -> None:
    """``flag``'s file ``path`` (when given) can be written, so that a typo stops the command
    before its work, not with a traceback after it; nothing is left (a probe file is made
    and removed in its folder, or :func:`check_folder` probes where that folder would be
    made). Raises ``ValueError`` naming the flag and the path."""
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder or not writable; give a file")
    if path.exists() and not path.is_file():  # a FIFO, a device: it was replaced by a file
        raise ValueError(f"{flag} {path} is {NOT_A_FILE}; give a file")
    folder = Path(os.path.realpath(path)).parent  # a link's target is written
    if not folder.is_dir():
        check_folder(folder, f"{flag} {path}: its folder")
        return
    try:
        handle, probe = tempfile.mkstemp(prefix=".check-", dir=folder)
    except OSError as error:
        raise ValueError(
            f"{flag} {path} cannot be written ({error.strerror}); give a file in another folder"
        ) from None
    os.close(handle)
    os.unlink(probe)


def typed_dests(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The ``dest`` of every flag typed in ``argv``, which ``parser`` (a fresh one: its
    defaults are dropped) parses; ``SystemExit`` where ``argv`` does not parse."""
    for action in parser._actions:  # argparse has no public list of its actions
        action.default = argparse.SUPPRESS  # so that only typed flags reach the namespace
    return set(vars(parser.parse_args(argv)))


def check_outside(out: Path, out_flag: str, data: Path, data_words: str) -> None:
    """``out`` (``out_flag``'s file or folder) is not ``data`` nor inside it, the folder of
    class folders a command reads: what it wrote there was read back as data (``scan
    train --out train/scan`` made a class of its report, ``preview --out`` in a class
    folder a training image). Links are followed. Raises ``ValueError`` naming both."""
    written, read = Path(out).resolve(), Path(data).resolve()
    if written == read or written.is_relative_to(read):
        raise ValueError(
            f"{out_flag} {out} is inside {data_words} {data}, where what it writes would be "
            "read as part of the set (a folder as a class, an image as a sample); "
            "give a place outside it"
        )


def write_json(path: Path, data: Any) -> Path:
    """Writes ``data`` as indented JSON and a newline into ``path``, making its folder; returns
    ``path`` (every command's report, and the scan's). The file is replaced whole
    (:func:`dali_cutmix.files.write_whole`): a full disk left an empty one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2) + "\n"
    return write_whole(path, lambda part: part.write_text(text))


# Seconds between two updates of a progress bar written to a file or a pipe (a log).
LOG_INTERVAL = 60.0


def progress_bar(**kwargs: Any) -> Any:
    """A tqdm bar: live on a terminal, and into a file or a pipe (a log) at most once every
    :data:`LOG_INTERVAL` seconds, so that it does not flood the log."""
    from tqdm import tqdm  # here: a command's --help does not wait for it

    on_terminal = sys.stderr.isatty()
    return tqdm(
        dynamic_ncols=on_terminal,
        mininterval=0.1 if on_terminal else LOG_INTERVAL,
        maxinterval=10.0 if on_terminal else LOG_INTERVAL,  # tqdm's monitor refreshes then
        **kwargs,
    )


def start_command(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """``argv`` (default ``sys.argv[1:]``) parsed, with the tools' time-stamped INFO logging."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    # torch's own INFO lines stay out: "FakeTensor cache stats: ..." (an atexit log) followed
    # the one-line message of a Ctrl-C that came before torch had set its loggers' levels
    logging.getLogger("torch").setLevel(logging.WARNING)
    return parser.parse_args(argv)


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command as the user typed it (:func:`command_name`, then ``argv`` or ``sys.argv[1:]``),
    recorded in a report."""
    return " ".join([command_name(module), *(sys.argv[1:] if argv is None else argv)])


def from_flags(cls: type[T], args: argparse.Namespace, **values: Any) -> T:
    """A configuration dataclass ``cls`` of the flags named like its fields, then ``values``.

    ``values`` gives the fields whose flag is named otherwise (``prob=args.mix_prob``)
    or whose value is resolved from the flags; they win over a flag of the same name.
    """
    named = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
    }
    return cls(**(named | values))
