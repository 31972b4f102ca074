"""Distributed set-up, device-side metric sums, the metrics file, the plot, Ctrl-C."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from .config import LOCK_NAME
from .status import Terminated, leaving, wait_until_left

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- distributed


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """This process's place in the run; ``world_size == 1`` without torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    # gloo group for the host's own flags (a stop, say), whatever the main backend: its
    # CPU tensors never wait for the GPU; None: the default group (gloo already)
    control: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(use_gpu: bool) -> DistInfo:
    """Joins the torchrun process group (NCCL on GPU, gloo on CPU) if there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu")
    if use_gpu:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    control = None
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_gpu else "gloo")
        if use_gpu:
            control = dist.new_group(backend="gloo")
        _note_siblings(control)
    info = DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
    return dataclasses.replace(info, control=control)


def rank_0s(path: Path, info: DistInfo) -> Path:
    """Rank 0's ``path`` on every rank (``path`` itself outside torchrun).

    The default output folder, ``runs/<date-time>``, is read from each rank's clock as it
    parses its flags; ranks that start on either side of a second's turn would otherwise
    name two folders, and a rank other than 0 would tell the user to resume from, and scan
    into, a folder that holds nothing.
    """
    if not info.distributed:
        return path
    shared = [str(path)]
    dist.broadcast_object_list(shared, src=0, group=info.control)
    return Path(shared[0])


# The process ids of the other ranks on this host, gathered as the process group starts.
_siblings: tuple[int, ...] = ()


def _note_siblings(control: Any) -> None:
    global _siblings
    places: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(places, (socket.gethostname(), os.getpid()), group=control)
    host = socket.gethostname()
    _siblings = tuple(pid for where, pid in places if where == host and pid != os.getpid())


def outlive_siblings(status: int, timeout: float = 10.0) -> None:
    """Waits until this host's other ranks have exited, at most ``timeout`` seconds.

    torchrun ends every rank still running (SIGTERM) as soon as one exits with a
    non-zero status, and lists each as failed, ``exitcode: -15``. A rank about to
    exit with one (rank 0 after a stop, the rank whose file failed) calls this
    first: the others, which exit 0 once they agreed, are then gone instead of
    killed in their teardown (a second or more for DALI and CUDA, under load).
    Ranks that call it too are not waited for: each leaves a marker file while it
    waits (:func:`train.status.leaving`), and exits with ``status`` if torchrun ends
    it meanwhile. Ranks on other hosts are not waited for.
    """
    with leaving(status):
        wait_until_left(_siblings, timeout)


def agreed(flag: bool, info: DistInfo) -> bool:
    """``flag`` of any rank (every rank must call it at the same point): a host-side
    all-reduce on the control group, which does not wait for the GPU."""
    if not info.distributed:
        return flag
    value = torch.tensor([float(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=info.control)
    return bool(value.item())


def lowest_rank_with(flag: bool, info: DistInfo) -> int | None:
    """The lowest rank whose ``flag`` is set, ``None`` where no rank's is (every rank must
    call it at the same point): as :func:`agreed`, a host-side all-reduce."""
    if not info.distributed:
        return 0 if flag else None
    value = torch.tensor([float(info.rank if flag else info.world_size)])
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=info.control)
    lowest = int(value.item())
    return None if lowest == info.world_size else lowest


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks (a copy; the input is left alone)."""
    tensor = tensor.clone()
    if info.distributed:
        dist.all_reduce(tensor)
    return tensor


def cleanup_distributed(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- metrics


def correct_topk(output: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> torch.Tensor:
    """Number of samples whose class is among the top-k logits, for each k.

    Args:
        output: logits ``[B, C]``.
        target: int64 labels ``[B]`` or soft targets ``[B, C]`` (their argmax
            is the label, so a CutMix target counts for its larger part).

    Returns:
        float32 ``[len(ks)]`` on ``output``'s device; no host synchronisation.
    """
    if target.dim() == 2:
        target = target.argmax(dim=1)
    maxk = min(max(ks), output.shape[1])
    top = output.topk(maxk, dim=1).indices
    hits = top.eq(target.view(-1, 1))
    return torch.stack([hits[:, : min(k, maxk)].any(dim=1).sum() for k in ks]).float()


class EpochSums(NamedTuple):
    """Sums over the images seen so far (of one epoch, on one rank or over all ranks).

    Checkpoints hold them as the plain list ``[loss_sum, count, correct1, correct5]``
    (:meth:`to_saved`), which loads with ``weights_only=True``.
    """

    loss_sum: float = 0.0  # sum over images of the per-image loss
    count: float = 0.0  # images
    correct1: float = 0.0  # images whose class is the top-1 logit
    correct5: float = 0.0  # images whose class is among the top-5 logits

    @classmethod
    def from_saved(cls, saved: Sequence[float] | None) -> EpochSums | None:
        """The sums of a checkpoint's list (``None``: nothing saved)."""
        return None if saved is None else cls(*(float(v) for v in saved))

    def to_saved(self) -> list[float]:
        return [float(v) for v in self]

    def reduced(self, info: DistInfo) -> EpochSums:
        """The sums over all ranks (every rank must call it)."""
        if not info.distributed:
            return self
        values = torch.tensor(self, dtype=torch.float64, device=info.device)
        dist.all_reduce(values)
        return EpochSums(*values.tolist())


class SumMeter:
    """Running :class:`EpochSums` kept on the device; read (and synchronised) only on demand."""

    def __init__(self, device: torch.device, initial: EpochSums | None = None) -> None:
        self.values = torch.tensor(initial or EpochSums(), dtype=torch.float64, device=device)

    def update(self, loss: torch.Tensor, count: int, correct: torch.Tensor) -> None:
        """Adds a batch: mean ``loss`` (0-d), its size, correct counts ``[2]``; all on device."""
        loss = loss.detach().double()
        # full_like is a kernel, not a host-to-device copy (which would wait for the GPU).
        batch = torch.stack([loss * count, torch.full_like(loss, count)])
        self.values += torch.cat([batch, correct.double()])

    def sums(self) -> EpochSums:
        """This rank's sums; synchronises."""
        return EpochSums(*self.values.tolist())

    def summary(self, info: DistInfo) -> dict[str, float]:
        """Loss and accuracies (in %) over all ranks; synchronises."""
        sums = EpochSums(*reduce_sum(self.values, info).tolist())
        count = max(sums.count, 1.0)
        return {
            "loss": sums.loss_sum / count,
            "acc1": 100 * sums.correct1 / count,
            "acc5": 100 * sums.correct5 / count,
            "samples": count,
        }


class MetricsError(Exception):
    """A line of ``metrics.jsonl`` that is not a record: the user's to repair (status 2)."""


class BusyFolderError(Exception):
    """Another run writes to the output folder now (status 2)."""


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[bool]:
    """Holds an exclusive lock on ``folder`` (made if missing) while the block runs; gives
    whether it is locked (``False`` where the file system takes no locks).

    Two runs started together with the same ``--output-dir`` both passed the check for a
    run there (neither had written yet), then appended their epochs to one
    ``metrics.jsonl`` and overwrote each other's checkpoint, without a word. The lock is
    ``flock`` on ``folder/.lock``, which holds the holder's pid; the system releases it
    when the process ends, however it ends. Where the file system takes no locks (some
    network ones), the block runs unlocked.

    Raises:
        BusyFolderError: another process holds the lock.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        locked = _take_lock(fd, folder)
        if locked is False:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise BusyFolderError(
                f"--output-dir {folder}: another run is writing there now (process "
                f"{holder}); give another folder, or wait until that run ends"
            )
        if locked:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield bool(locked)
    finally:
        os.close(fd)  # releases the lock


def _take_lock(fd: int, folder: Path) -> bool | None:
    """Takes the exclusive lock on ``fd`` without waiting: ``True`` taken, ``False`` another
    process holds it, ``None`` where the file system takes no locks (some network ones)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:  # ENOLCK
        logger.debug("no lock on %s (%s); the run goes on unlocked", folder, error)
        return None
    return True


@contextlib.contextmanager
def folder_unlocked(folder: Path) -> Iterator[bool]:
    """Whether no process holds ``folder``'s lock (:func:`folder_lock`), which this one
    then holds while the block runs; ``True`` without a lock file, or where the file
    system takes no locks."""
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR)
    except FileNotFoundError:
        yield True
        return
    try:
        yield _take_lock(fd, folder) is not False
    finally:
        os.close(fd)


class MetricsFile:
    """One JSON object per line; only rank 0 writes. Appends, so a resumed run continues it.

    Epochs are numbered from 1, as in the log and the plot.
    """

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        self.created = False  # by this object's first write: no earlier run's records in it

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self.created = self.created or not self.path.exists()
            with self.path.open("a") as file:
                file.write(json.dumps(record, sort_keys=True) + "\n")

    def discard(self) -> None:
        """Removes the file if this object created it (a run that then wrote no checkpoint:
        its records would block the same command run again)."""
        if not self.created:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:  # a folder made read-only: the failure's line names the file
            return
        self.created = False

    def read(self) -> list[dict[str, Any]]:
        """The records; a last line cut short (a write that met a full disk) is left out.

        Raises:
            MetricsError: another line is not a JSON object (damaged on a disk, edited).
                It is not skipped: a resume rewrites the file, which would lose the line
                without a word.
        """
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        lines = [(n, line) for n, line in enumerate(data.splitlines(), 1) if line.strip()]
        if lines and not data.endswith(b"\n"):
            try:
                json.loads(lines[-1][1])
            except ValueError:
                lines.pop()
        records = []
        for number, line in lines:
            try:  # a byte that is not UTF-8 is a ValueError too
                record = json.loads(line.decode())
                why = None if isinstance(record, dict) else f"a JSON {type(record).__name__}"
            except json.JSONDecodeError as error:  # its "line 1" is of the line alone
                why = f"{error.msg.removesuffix(' at')} at column {error.colno}"
            except ValueError as error:
                why = str(error)
            if why is not None:
                raise MetricsError(
                    f"{self.path} line {number} is not a JSON record ({why}); the file is only "
                    "the run's history of epochs (the checkpoint holds the run): repair or "
                    "delete that line, then run the command again"
                )
            records.append(record)
        return records

    def resume_at(self, epochs_done: int) -> None:
        """Makes the file agree with a checkpoint after ``epochs_done`` epochs, before appending.

        Epochs numbered from 0 (a file of an older version) are numbered from 1. The
        record of an epoch is written just before its checkpoint, so a run that died in
        between (a second Ctrl-C, a kill) left a record of an epoch the checkpoint does
        not hold; it is dropped, as that epoch is trained again.
        """
        records = self.read()
        data = self.path.read_bytes() if self.path.exists() else b""
        torn = bool(data) and not data.endswith(b"\n")  # a record cut short: left out
        if not self.enabled or not (records or torn):
            return
        renumbered = bool(records) and records[0].get("epoch") == 0
        if renumbered:
            records = [r | {"epoch": r["epoch"] + 1} for r in records]
        kept = [r for r in records if r.get("epoch", 0) <= epochs_done]
        dropped = [str(r.get("epoch")) for r in records if r.get("epoch", 0) > epochs_done]
        if not renumbered and not dropped and not torn:
            return  # already in agreement: nothing to rewrite
        if dropped:
            logger.warning(
                "%s: dropped the record of epoch(s) %s, which the checkpoint does not hold "
                "(the run ended before it was written); they are trained again",
                self.path,
                ", ".join(dropped),
            )
        partial = self.path.with_name(self.path.name + ".tmp")
        partial.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        os.replace(partial, self.path)


def warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    """The warmup's length in optimizer steps: the learning rate's linear warmup and the
    ``--model-ema`` average's copying both end there."""
    return round(warmup_epochs * steps_per_epoch)


def plot_curves(records: list[dict[str, Any]], path: Path) -> Path | None:
    """Loss and accuracy against epoch, as a PNG; ``None`` without records."""
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in records]  # 1-based
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in records], "o-", label="train (mixed)")
    ax_loss.plot(epochs, [r["val_loss"] for r in records], "o-", label="val")
    # log scale: the first epoch's validation loss can be huge (BatchNorm
    # statistics gathered at the warmup's peak learning rate).
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax_acc.plot(epochs, [r["train_acc1"] for r in records], "o-", label="train top-1 (argmax)")
    ax_acc.plot(epochs, [r["val_acc1"] for r in records], "o-", label="val top-1")
    ax_acc.plot(epochs, [r["val_acc5"] for r in records], "o-", label="val top-5")
    if all("ema_val_acc1" in r for r in records):  # --model-ema
        ax_loss.plot(epochs, [r["ema_val_loss"] for r in records], "o-", label="val, EMA")
        ax_acc.plot(epochs, [r["ema_val_acc1"] for r in records], "o-", label="val top-1, EMA")
    ax_acc.set(xlabel="epoch", ylabel="%", title="accuracy", ylim=(0, 100))
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs: no tick at 1.25
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- Ctrl-C


class StopFlag:
    """Set by the first Ctrl-C (or SIGTERM); the loop stops at the next step boundary.

    Stopping between steps keeps model, optimizer and loader consistent, so the
    checkpoint written then resumes exactly. A second Ctrl-C interrupts at once,
    except while a checkpoint is written (:meth:`holding`): torch.save cut short
    leaves no checkpoint, so the abort waits until the file is whole.
    """

    def __init__(self) -> None:
        self.requested = False
        self._held = False
        self._abort: int | None = None  # the signal of an abort held back

    def request(self, signum: int, frame: Any) -> None:
        if self.requested:
            if self._held:
                self._abort = signum
                logger.warning("aborting once the checkpoint being written is complete")
                return
            raise _interrupt(signum)
        self.requested = True
        if int(os.environ.get("RANK", "0")) == 0:  # torchrun forwards it to every rank: one line
            again = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"  # as the one received
            logger.warning(
                "stopping after this step and writing a checkpoint (%s again to abort)", again
            )

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """A second Ctrl-C inside waits for the block's end, then interrupts."""
        self._held = True
        try:
            yield
        finally:
            self._held = False
        if self._abort is not None:
            raise _interrupt(self._abort)


def _interrupt(signum: int) -> KeyboardInterrupt:
    """The abort of a second signal: SIGTERM's says so (exit status 143, not Ctrl-C's 130)."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    flag = StopFlag()
    previous = {sig: signal.signal(sig, flag.request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
