"""Checkpoints: written atomically and durably, read back with ``weights_only=True``.

A checkpoint holds only tensors and plain containers of numbers and strings
(state dicts of the model, optimizer, scheduler, scaler and loader, the epoch,
the step within it and the resolved configuration), so loading it runs no
pickled code.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import CHECKPOINT_NAME

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointError",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
]


logger = logging.getLogger(__name__)


class CheckpointError(Exception):
    """A checkpoint that reads but cannot be used (its weights fit no model of its config)."""


def _partial_prefix(path: Path) -> str:
    """The start of the names of ``path``'s temporary files, of any host and process."""
    return f".{path.name}.tmp-"


def _temporary(path: Path, pid: int | str) -> Path:
    # Host and pid in the name: ranks on several machines may share the folder.
    return path.with_name(f"{_partial_prefix(path)}{socket.gethostname()}-{pid}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_partial_checkpoints(folder: Path) -> None:
    """Deletes every partial temporary checkpoint file in ``folder``, of any host: called
    by a run that holds the folder's lock, where no other run writes. Those of another
    host name (a new pod or container after a restart) were kept for good, up to a whole
    checkpoint each, since :func:`_remove_stale` cannot tell whether their process lives."""
    for partial in folder.glob(_partial_prefix(folder / CHECKPOINT_NAME) + "*"):
        try:
            size = partial.stat().st_size
            partial.unlink()
        except OSError:  # gone meanwhile, or not ours to delete: the save goes on without it
            continue
        logger.info(
            "removed %s (%.1f MB), left by a run killed while writing it", partial, size / 1e6
        )


def _remove_stale(path: Path) -> None:
    """Deletes the partial temporary files of processes of this host that were killed."""
    prefix = _temporary(path, "").name
    for stale in path.parent.glob(f"{prefix}*"):
        pid = stale.name[len(prefix) :]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Writes ``state`` to ``path`` so that ``path`` always holds one whole checkpoint.

    The bytes go to a temporary file in the same folder and reach the disk
    (``fsync``) before the file is renamed over ``path`` (``os.replace``, atomic);
    the folder is synced after the rename. A process killed while writing
    (SIGKILL, a second Ctrl-C) or a machine losing power leaves the previous
    checkpoint intact and loadable; the next save removes the killed process's
    partial temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path, os.getpid())
    try:
        with open(tmp, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    _remove_stale(path)
    return path


def _unreadable(path: Path, error: Exception) -> str:
    """Why ``torch.load`` refused ``path``, in the user's terms (torch's own message advises
    ``weights_only=False``, which would run whatever the file holds)."""
    whole = path.is_file() and os.access(path, os.R_OK)
    if isinstance(error, OSError) and not whole:  # permissions, a folder
        return f"it cannot be read ({error.strerror or error})"
    if not zipfile.is_zipfile(path):  # torch says OSError "Invalid argument" at some lengths
        what = "it is not a whole file written by torch.save (cut short, or another kind of file"
        if path.suffix == ".json":
            return f"{what}: a run's config.json starts a new run with --config)"
        return f"{what}; a run writes RUN/{CHECKPOINT_NAME})"
    if isinstance(error, pickle.UnpicklingError):
        return (
            "it holds objects other than tensors, numbers, strings and containers, which are "
            "not loaded (torch.load(weights_only=True)), so it was not written by this training"
        )
    if isinstance(error, OSError):  # an I/O error of a whole file
        return f"it cannot be read ({error.strerror or error})"
    return f"damaged ({' '.join(str(error).split())[:200]})"


def _damaged_entry(path: Path) -> str | None:
    """The first entry of the checkpoint's zip archive whose bytes do not match the CRC-32
    that ``torch.save`` wrote for them, or ``None``: ``torch.load`` does not compare them,
    so bytes changed on a disk or in a copy loaded as weights (finite ones without a word;
    NaNs read as a diverged run). Reading the whole file costs 0.15 s for 400 MB from
    the page cache on the 2-core CPU machine (``torch.load`` itself 0.26 s).
    ``None`` also where the file is no zip archive: ``torch.load`` then says why."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Reads a checkpoint onto the CPU without unpickling arbitrary objects.

    Raises:
        ValueError: the file is not a checkpoint of this application.
    """
    damaged = _damaged_entry(path)
    if damaged is not None:
        raise ValueError(
            f"{path} is not a readable checkpoint: it is damaged (the bytes of its entry "
            f"{damaged} do not match the checksum torch.save wrote: changed on the disk or in "
            "a copy since); "
            "resume from an intact copy of it if there is one, else start a new run"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load's errors vary with the bytes (KeyError on text)
        why = _unreadable(path, error)
        raise ValueError(f"{path} is not a readable checkpoint: {why}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a training checkpoint (it holds a {type(state).__name__})")
    missing = {"model", "optimizer", "scheduler", "epoch", "step", "loader"} - set(state)
    if missing and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(  # torch.save(model.state_dict()): "missing ['epoch', ...]" before
            f"{path} is not a training checkpoint: it holds a model's weights only ("
            f"{len(state)} tensors), without the optimizer, schedule and data position a run "
            "continues from; give a run's RUN_DIR/checkpoint.pth"
        )
    if missing:
        raise ValueError(f"{path} is not a training checkpoint (missing {sorted(missing)})")
    return state


def load_weights(module: torch.nn.Module, weights: dict[str, Any], path: Path, what: str) -> None:
    """``module.load_state_dict(weights)``; weights of another shape or names (a checkpoint
    edited, or of another model) or that are not finite (saved after a divergence by a version
    that did not stop there) raise :class:`CheckpointError` naming ``path`` and ``what``."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        raise CheckpointError(
            f"{path}: its {what} weights do not fit {type(module).__name__} of its configuration "
            f"({detail[:240]}{'...' if len(detail) > 240 else ''})"
        ) from None
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{path}: its {what} weights are not finite (NaN or inf in {name}): training "
                "had diverged when it was written; start a new run with a lower --lr"
            )
