"""How ``python -m train`` ends: its exit statuses, and the commands that continue a run.

A script can tell the outcomes apart by the status alone:

====  =======================================================================
0     trained to the last epoch, resumed a run that had nothing left to do, or
      evaluated a checkpoint (``--test-only``)
1     an unexpected internal error (Python's status; its traceback is printed)
2     the command line, the dataset or the checkpoint is wrong; nothing was
      trained by this command (one line on stderr says what and where)
3     stopped (Ctrl-C, SIGTERM, ``--stop-after-steps``) with a checkpoint:
      run the printed ``--resume`` command to continue
4     a file of the dataset does not decode: the line names it, the scan to
      run and the command that continues with the scan's clean list (from a
      checkpoint holding every step done, or the same command again when the
      file failed before training started)
5     training diverged: the weights stopped being finite (a loss of NaN or
      inf, say from too high a learning rate), or the loss stayed NaN or inf
      (float16 overflowing every step); nothing of that epoch was saved,
      the last checkpoint is kept (the line names it) and a new run with a lower
      ``--lr`` is the way on
6     the run's folder could not be written (a full disk, a folder made read-only):
      the line names the file and the cause; the last checkpoint is intact, and the
      command that continues from it is printed
130   aborted by a second Ctrl-C, or by one before the first step (the last checkpoint
      written, if any, is intact; the line says which)
143   aborted by SIGTERM before the first step (as 130; during training SIGTERM
      stops as the first Ctrl-C does, status 3)
====  =======================================================================

Under ``torchrun``, torchrun stops all ranks as soon as one exits with a
non-zero status, reports it as a failure (its own exit status is 1) and lists
each rank's status. A stop is therefore reported by rank 0 alone (the others
exit 0 once the checkpoint is written); a data failure by the rank that met the
bad file, once rank 0 has written the checkpoint that every rank took part in; a
usage error that every rank meets by the first rank that met it, once
(``train.__main__._said_once``).
"""

from __future__ import annotations

import contextlib
import enum
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dali_cutmix.cli import command_name, other_command

__all__ = [
    "EXIT_STATUS_HELP",
    "DataFailure",
    "ExitStatus",
    "launcher",
    "leaving",
    "leaving_marker",
    "resume_command",
]


class ExitStatus(enum.IntEnum):
    """The exit statuses of ``python -m train`` (see the module's table)."""

    FINISHED = 0
    ERROR = 1
    USAGE = 2
    STOPPED = 3
    DATA = 4
    DIVERGED = 5
    OUTPUT = 6
    ABORTED = 130
    TERMINATED = 143


EXIT_STATUS_HELP = """\
exit status:
  0    trained to the last epoch, or --resume of a run with nothing left to do, or
       --test-only evaluated the checkpoint
  1    unexpected internal error (with a traceback); or, under torchrun, another rank
       of the job is gone (killed or failed): one line, with the command that continues
  2    invalid flag, dataset, file list (--train-list/--val-list) or checkpoint: one line
       on stderr says what; nothing trained
  3    stopped by Ctrl-C, SIGTERM or --stop-after-steps; checkpoint written, the last
       line is the command that continues (%(prog)s --resume RUN/checkpoint.pth)
  4    a file does not decode: the line names it, the scan to run and the command that
       continues with its clean list (--train-list/--val-list); a checkpoint holds every
       step done if training had started
  5    training diverged (the weights, or the loss for 3 progress updates, became NaN or
       inf): nothing of that epoch was saved; start a new run with a lower --lr
  6    the run's folder could not be written (disk full, read-only): the line names the
       file; the last checkpoint is intact and the command that continues is printed
  130  aborted by a second Ctrl-C, or one before the first step; the last checkpoint
       written, if any, is intact
  143  aborted by SIGTERM before the first step (as 130; during training SIGTERM stops
       as Ctrl-C does: 3)
"""


def launcher(world_size: int) -> str:
    """``python -m train`` (as the user started it), or the ``torchrun`` line for ``world_size``
    ranks on one node."""
    if world_size == 1:
        return command_name(__package__)
    return f"torchrun --nproc_per_node {world_size} -m {__package__}"


class Terminated(KeyboardInterrupt):
    """SIGTERM while no step is running (the run starting, its end), or a second one while a
    step runs: taken as Ctrl-C is there, with status 143. Python's default ended the process
    at once, without a word, leaving an empty run folder behind."""


def resume_command(checkpoint: Path, world_size: int, *extra: str) -> str:
    """The command that continues from ``checkpoint`` (its configuration is in it)."""
    return " ".join([launcher(world_size), "--resume", shlex.quote(str(checkpoint)), *extra])


def leaving_marker(pid: int) -> Path:
    """The file a rank about to exit with a non-zero status leaves while it waits for the
    others (:func:`train.utils.outlive_siblings`): a rank that is leaving too is not waited for."""
    return Path(tempfile.gettempdir()) / f"dali-cutmix-leaving-{pid}"


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (exited and not yet reaped by torchrun counts as not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:  # Linux; elsewhere nothing is waited for
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until_left(pids: Iterable[int], timeout: float) -> None:
    """Waits until each of ``pids`` has exited or leaves its :func:`leaving_marker`, at most
    ``timeout`` seconds."""
    pids = tuple(pids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [pid for pid in pids if running(pid) and not leaving_marker(pid).exists()]:
            return
        time.sleep(0.05)


def host_siblings() -> tuple[int, ...]:
    """The other children of this process's parent (torchrun's ranks on this host, before
    the process group can tell them); none off Linux."""
    parent, mine, found = os.getppid(), os.getpid(), []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == mine:
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if len(fields) > 1 and fields[1] == str(parent):
                found.append(int(entry.name))
    return tuple(found)


@contextlib.contextmanager
def leaving(status: int) -> Iterator[None]:
    """Within the block this process is a rank about to exit with ``status``: it leaves its
    :func:`leaving_marker`, and SIGTERM (torchrun ending it, once another rank has
    exited non-zero) exits with ``status`` at once, the marker removed. Python's default
    ended it as killed, which torchrun listed as ``exitcode: -15``, and left the marker
    in the temporary folder. Main thread only (a signal handler)."""
    marker = leaving_marker(os.getpid())

    def ended(signum: int, frame: Any) -> None:
        marker.unlink(missing_ok=True)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)  # torchrun ends the rank: nothing of its teardown is waited for

    previous = signal.signal(signal.SIGTERM, ended)
    try:
        marker.touch()
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        marker.unlink(missing_ok=True)


class DataFailure(Exception):
    """A file of the dataset failed to decode; what to do depends on where the run got to.

    Attributes:
        problem: what is wrong, naming the file.
        split: ``"train"`` or ``"val"``.
        folder: the split's dataset folder, to scan.
        scan_dir: where the scan should write its clean list.
        checkpoint: the checkpoint holding every step done, or ``None`` when the
            file failed before this command trained anything.
        world_size: ranks of the run (for the command's launcher).
        file_list: the user's own ``--train-list``/``--val-list`` the file came
            from, if any: the fix is then an edit of that list (a scan of the
            folder would replace the chosen subset by the whole folder).
    """

    def __init__(
        self,
        problem: str,
        *,
        split: str,
        folder: Path,
        scan_dir: Path,
        checkpoint: Path | None,
        world_size: int,
        file_list: Path | None = None,
    ) -> None:
        super().__init__(problem)
        self.problem, self.split, self.folder = problem, split, folder
        self.scan_dir, self.checkpoint, self.world_size = scan_dir, checkpoint, world_size
        self.file_list = file_list

    def message(self, argv: list[str]) -> str:
        """One line: the problem, the scan to run and the command that continues.

        Args:
            argv: this command's arguments, repeated when no checkpoint was written.
        """
        flag = f"--{self.split}-list"
        if self.file_list is not None:
            listed = shlex.quote(str(self.file_list))
            if self.checkpoint is None:
                then = f"then run the same command again: {launcher(self.world_size)} "
                then += shlex.join(argv)
            else:
                then = "then continue with: " + resume_command(
                    self.checkpoint, self.world_size, flag, listed
                )
            return f"{self.problem} It is listed in {flag} {listed}: delete its line there; {then}"
        files = shlex.quote(str(self.scan_dir / "files.txt"))
        scan = f"{other_command('scan', 'dali_cutmix.scan')} {shlex.quote(str(self.folder))}"
        scan += f" --out {shlex.quote(str(self.scan_dir))}"
        if self.checkpoint is None:
            again = " ".join(
                filter(None, [launcher(self.world_size), shlex.join(argv), flag, files])
            )
            then = f"then run again with: {again}"
        else:
            then = "then continue with: " + resume_command(
                self.checkpoint, self.world_size, flag, files
            )
        return f"{self.problem} Find every bad file with: {scan}; {then}"
