"""``python -m train``: a torchvision ResNet trained with CutMix mixed inside a DALI pipeline.

Run ``python -m train --help`` for the flags, the resume rules and the exit
statuses (:mod:`train.status`). ``torchrun --nproc_per_node N -m train ...``
runs the same on N processes with DDP. ``--model-ema`` keeps torchvision's moving
average of the weights (:mod:`train.ema`), evaluated after every epoch beside the
model; ``--resume CHECKPOINT --test-only`` evaluates a checkpoint and trains nothing.

Nothing done is lost: a stop (Ctrl-C, SIGTERM, ``--stop-after-steps``) and an
error of the data loader both write a checkpoint at the last step done first.
Resuming from a checkpoint whose loader state cannot be used (one written after
a loader error, or with other training files, e.g. a scan's clean list) keeps
the model, optimizer and steps done and continues the epoch at the same step:
the torchvision loader seeks there in its seeded order; the DALI loader starts
its reader's first shuffle of the current files and drops as many batches as
the epoch had done, so the epoch keeps its number of steps.

This module only parses and runs: the run is :func:`train.runner.run`, the epochs
:class:`train.trainer.Trainer`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from dali_cutmix.cli import ABORTED, TERMINATED, aborted, report_user_error, stop_behind
from dali_cutmix.procs import exit_with

from .cli import get_args_parser
from .config import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    TrainConfig,
    claims_run_dir,
    drop_unused_run_dir,
    first_missing,
    parse_config,
)
from .status import (
    DataFailure,
    ExitStatus,
    Terminated,
    host_siblings,
    leaving,
    resume_command,
    wait_until_left,
)

# the project's top-level packages, in a clone and installed (dali_cutmix.train, ...)
_OUR_LOGGERS = ("train", "pipelines", "dali_cutmix")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` (training's steps handle it as
    a stop, :func:`train.utils.stop_on_signals`), once: the process is then leaving with
    status 143, and a SIGTERM after it is ignored. ``timeout`` sends it twice, to the
    command and to its group: the second, raised while the first was being answered (in
    the abort line's parsing of the flags), ended the run in two tracebacks and status 1
    (3 tries of about 45 at 1 s, in ``import torch``). One process only: under torchrun a
    rank's SIGTERM is torchrun's own, sent to end it at once."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _aborted(rank: int, what: str, sigterm: bool) -> int:
    """:func:`dali_cutmix.cli.aborted`'s line from rank 0 alone: torchrun forwards a Ctrl-C
    to every rank, and each printed it."""
    if rank != 0:
        return TERMINATED if sigterm else ABORTED
    return aborted(get_args_parser(), what, sigterm)


# How long a rank other than its host's first waits, after a usage error, for torchrun to
# end it (:func:`_said_once`); torchrun ends the other ranks within 0.1 s (its
# --monitor-interval) of the first's exit.
QUIET_WAIT = 10.0


def _first_on_host() -> bool:
    """Whether this process says a usage error at once: outside torchrun, or its host's
    first rank (``LOCAL_RANK`` 0)."""
    alone = int(os.environ.get("WORLD_SIZE", "1")) <= 1
    return alone or int(os.environ.get("LOCAL_RANK", "0")) == 0


def _said_once(
    say: Callable[[], object], *, first: bool | None = None, timeout: float | None = None
) -> int:
    """A usage error, said once under torchrun instead of by every rank; returns status 2.

    The ranks parse the same flags and list the same folders, so each meets the same
    error, and each printed it: 8 identical lines on an 8-GPU node, and a rank still
    tearing down when torchrun ended it was listed as killed (-15). The first rank
    that failed says it (``say()``): ``first`` where the ranks agreed on the failure
    (:func:`train.engine.settle`), else each host's first rank. The others wait without
    a word for torchrun's SIGTERM, which comes once the first has exited, and then exit
    with status 2 at once; one that waits ``timeout`` seconds (:data:`QUIET_WAIT`) in
    vain (the error was its own) says its own. While it waits it leaves the marker of a
    leaving rank, so that the first does not wait for it
    (:func:`train.utils.outlive_siblings`).
    """
    if _first_on_host() if first is None else first:
        say()
        return ExitStatus.USAGE
    with leaving(ExitStatus.USAGE):
        time.sleep(QUIET_WAIT if timeout is None else timeout)
    say()
    return ExitStatus.USAGE


def _parse(argv: list[str], rank: int) -> TrainConfig:
    """:func:`train.config.parse_config`, whose error line (and argparse's usage) a rank
    other than its host's first keeps to itself (:func:`_said_once`); its ``--help``
    too, which the first rank shows."""
    if _first_on_host():
        try:
            return parse_config(argv, claim=rank == 0)
        except SystemExit as exit:
            if exit.code and int(os.environ.get("WORLD_SIZE", "1")) > 1:
                # the others meet it too, some later (a loaded machine): torchrun ended one
                # still parsing, which it listed as killed (-15); it waits for them to be
                # waiting themselves (their markers), at most QUIET_WAIT
                wait_until_left(host_siblings(), QUIET_WAIT)
            raise
    out, err = io.StringIO(), io.StringIO()

    def replay() -> None:
        sys.stdout.write(out.getvalue())
        sys.stderr.write(err.getvalue())
        sys.stderr.flush()

    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            config = parse_config(argv, claim=rank == 0)
    except SystemExit as exit:
        if exit.code:  # not --help
            _said_once(replay)
        raise
    replay()  # a warning given while parsing
    return config


def _terminated(interrupt: BaseException) -> bool:
    return isinstance(interrupt, Terminated) or isinstance(interrupt.__cause__, Terminated)


# What stops a write to the output folder that the user can fix there.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
_NOT_ALLOWED = (errno.EACCES, errno.EPERM, errno.EROFS)
_TOO_LARGE = (errno.EFBIG,)  # a file-size limit: ulimit -f, a scheduler's, the file system's


def _write_failure(error: BaseException, config: TrainConfig) -> str | None:
    """The line for a write to the run's folder that failed (a full disk, a folder made
    read-only mid-run), from ``error`` or the errors it came from; ``None`` for any other
    error. It ended in a traceback (torch.save's own RuntimeError after the OSError)."""
    seen: BaseException | None = error
    while seen is not None and not (
        isinstance(seen, OSError) and seen.errno in _NO_ROOM + _NOT_ALLOWED + _TOO_LARGE
    ):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    name = seen.filename or config.output_dir
    folder = config.output_dir
    if not Path(name).absolute().is_relative_to(folder.absolute()):
        return None
    if seen.errno in _TOO_LARGE:
        fix = "raise the limit on a file's size (ulimit -f) or write to another file system"
    else:
        fix = "free space there" if seen.errno in _NO_ROOM else f"make {folder} writable"
    checkpoint = folder / CHECKPOINT_NAME
    if checkpoint.exists():
        ranks = int(os.environ.get("WORLD_SIZE", "1"))
        return (
            f"cannot write {name} ({seen.strerror}); the last checkpoint written, "
            f"{checkpoint}, is intact: {fix}, then continue with: "
            f"{resume_command(checkpoint, ranks)}"
        )
    metrics = folder / METRICS_NAME  # this run's records, left where it could not remove them
    if metrics.exists():
        fix += f", remove {metrics}"
    return f"cannot write {name} ({seen.strerror}); no checkpoint was written: {fix}, and run again"


# What gloo (and NCCL) say in the ranks left when another rank of the job is gone.
_PEER_GONE = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Broken pipe",
    "remote process exited or there was a network error",
)


def peer_gone(error: BaseException, config: TrainConfig, rank: int) -> str | None:
    """The line for a collective that failed because another rank of the job is gone
    (killed outright, as by the out-of-memory killer, or crashed), ``None`` for any other
    error. The ranks left printed a 40-line traceback of the backend's
    (``... Connection reset by peer. ... GLHF!``) and nothing of the run's."""
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    said = str(error)
    why = next((words for words in _PEER_GONE if words in said), None)
    if ranks < 2 or not isinstance(error, RuntimeError) or why is None:
        return None
    checkpoint = config.output_dir / CHECKPOINT_NAME
    if checkpoint.exists():
        then = (
            f"the last checkpoint written, {checkpoint}, is intact: continue with: "
            f"{resume_command(checkpoint, ranks)}"
        )
    else:
        then = "no checkpoint was written"
    return (
        f"rank {rank}: another rank of the job is gone ({why}): it was killed or it failed "
        f"(its own output, or torchrun's list of the ranks' statuses, says which); {then}"
    )


def log_level(rank: int) -> int:
    """Rank 0 logs the run; under torchrun the other ranks only warnings and errors."""
    return logging.INFO if rank == 0 else logging.WARNING


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m train``; returns its exit status (see :mod:`train.status`).

    Errors caused by the input (flags, folders, file lists, checkpoints, an
    undecodable image) end with one line on stderr
    (:func:`dali_cutmix.cli.report_user_error`); any other error keeps its traceback.
    """
    rank = int(os.environ.get("RANK", "0"))
    # The project's loggers at the rank's level; other libraries' at WARNING (torch logged
    # its FakeTensor cache statistics at exit after a Ctrl-C in its import).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    for name in _OUR_LOGGERS:
        logging.getLogger(name).setLevel(log_level(rank))
    argv = sys.argv[1:] if argv is None else list(argv)
    with _sigterm_as_interrupt():
        return _main(argv, rank)


def _main(argv: list[str], rank: int) -> int:
    runs = first_missing(Path("runs"))  # made with the default output folder, if missing
    try:
        # a bad flag ends the process here, status 2; rank 0 makes the default output folder
        config = _parse(argv, rank)
    except (KeyboardInterrupt, ImportError) as error:  # --resume loads torch, -j DALI
        interrupt = stop_behind(error)  # a stop inside DALI's import is its ImportError
        if not isinstance(interrupt, KeyboardInterrupt):
            raise
        return _aborted(rank, "nothing was started", _terminated(interrupt))
    claims = claims_run_dir(argv)  # a new runs/<date-time>, made by rank 0
    # the folders rank 0 makes for the run's (the claimed one's runs/, a new --output-dir
    # and its missing parents), removed with it where it ends having written nothing
    made = (runs or config.output_dir.absolute()) if claims else first_missing(config.output_dir)
    made = made if rank == 0 else None
    try:
        status = _train(config, argv, rank, new_run_dir=claims)
    except (KeyboardInterrupt, ImportError) as error:  # a second Ctrl-C (the first stops at
        # the next step), or one while the run was starting (generating or listing data,
        # building the loaders, importing them); the run's folder: rank 0's under torchrun
        # (train.runner.RunInterrupted)
        interrupt = stop_behind(error)
        if not isinstance(interrupt, KeyboardInterrupt):
            raise
        folder = getattr(error, "output_dir", config.output_dir)
        checkpoint = folder / CHECKPOINT_NAME
        if config.test_only:  # an evaluation writes nothing: not "the last one written"
            what = f"the evaluation wrote nothing; the checkpoint is intact: {config.resume}"
        elif checkpoint.exists():
            what = f"the last checkpoint written is intact: {checkpoint}"
        elif config.resume is not None:
            what = f"this run wrote no checkpoint; the one it resumed is intact: {config.resume}"
        else:
            what = "no checkpoint was written"
        return _aborted(rank, what, _terminated(interrupt))
    finally:
        if made is not None:  # a run that failed before its first epoch leaves no folder
            drop_unused_run_dir(config.output_dir, made)
    if status in _ALONE:
        from .utils import outlive_siblings

        outlive_siblings(status)  # torchrun would kill the ranks that exit 0 a moment later
    return status


# The statuses a rank may exit with while the others exit 0 (rank 0's stop or divergence,
# the rank whose data failed or whose shard could not be read); not a second Ctrl-C,
# which every rank gets and which should end the run at once.
_ALONE = (
    ExitStatus.USAGE,
    ExitStatus.STOPPED,
    ExitStatus.DIVERGED,
    ExitStatus.DATA,
    ExitStatus.OUTPUT,
)


def _train(config: TrainConfig, argv: list[str], rank: int, *, new_run_dir: bool) -> int:
    # Imported once the flags are good: torch and DALI take seconds to load, and --help
    # or a bad flag answers without them.
    from dali_cutmix.files import DatasetError

    from .checkpoint import CheckpointError
    from .engine import FIRST_FAILED, PeerLoaderError
    from .runner import EXIT_STATUS, run
    from .utils import BusyFolderError, MetricsError

    try:
        status = EXIT_STATUS[run(config).outcome]
    except DataFailure as failure:  # a bad file: the scan to run, then how to go on
        if failure.checkpoint is None and new_run_dir:
            # the runs/<date-time> of a run that failed before training goes (nothing in
            # it): a scan into it left a run-named folder with no run; beside it instead
            run_dir = config.output_dir
            failure.scan_dir = run_dir.with_name(f"{run_dir.name}-{failure.scan_dir.name}")
        return report_user_error(get_args_parser(), failure.message(argv), status=ExitStatus.DATA)
    except (DatasetError, CheckpointError, MetricsError, BusyFolderError) as error:
        say = functools.partial(report_user_error, get_args_parser(), error)
        failed = getattr(error, FIRST_FAILED, None)  # where the ranks agreed on it
        return _said_once(say, first=None if failed is None else failed == rank)
    except PeerLoaderError:  # while building the loaders, or --test-only's evaluation
        logging.getLogger("train").warning(
            "rank %d stops: another rank's data loader failed; that rank says how to go on", rank
        )
        return ExitStatus.FINISHED
    except Exception as error:  # a write to the run's folder: one line, else the traceback
        failed = _write_failure(error, config)
        if failed is not None:
            return report_user_error(get_args_parser(), failed, status=ExitStatus.OUTPUT)
        gone = peer_gone(error, config, rank)
        if gone is None:
            raise
        return report_user_error(get_args_parser(), gone, status=ExitStatus.ERROR)
    # torchrun stops every rank as soon as one exits with a non-zero status: only rank 0,
    # which writes the checkpoint and says how to continue, reports a stop.
    return status if rank == 0 else ExitStatus.FINISHED


def entry() -> NoReturn:
    """The command (``python -m train``, ``dali-cutmix-train``): :func:`main`, then the
    process ends with its status, also on a Ctrl-C or SIGTERM during the interpreter's
    teardown (:func:`dali_cutmix.procs.exit_with`)."""
    exit_with(main())


if __name__ == "__main__":
    entry()
