"""Checkpoints: written atomically, read back with ``weights_only=True``.

A checkpoint holds only tensors and plain containers of numbers and strings
(state dicts of the model, optimizer, scheduler, scaler and loader, the epoch,
the step within it and the resolved configuration), so loading it runs no
pickled code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT_NAME", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pth"


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Writes ``state`` to ``path`` via a temporary file and ``os.replace``.

    A crash (or a second Ctrl-C) while writing leaves the previous checkpoint intact.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Reads a checkpoint onto the CPU without unpickling arbitrary objects.

    Raises:
        ValueError: the file is not a checkpoint of this application.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"model", "optimizer", "scheduler", "epoch", "step", "loader"} - set(state)
    if missing:
        raise ValueError(f"{path} is not a training checkpoint (missing {sorted(missing)})")
    return state
