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

__all__ = ["CHECKPOINT_NAME", "check_resumable", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pth"
# Settings that may change between the interrupted run and its continuation.
_FREE_TO_CHANGE = {
    "resume",
    "output_dir",
    "print_freq",
    "stop_after_steps",
    "data.workers",
    "data.cache_dir",
    "deterministic",
}


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


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resumable(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuses to continue a run with settings that change what it computes.

    Args:
        saved, current: ``TrainConfig.to_dict()`` of the checkpoint and of this run.

    Raises:
        ValueError: naming each setting that differs, with both values.
    """
    old, new = _flatten(saved), _flatten(current)
    changed = sorted(
        k for k in old.keys() | new.keys() if k not in _FREE_TO_CHANGE and old.get(k) != new.get(k)
    )
    if changed:
        details = "; ".join(
            f"{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now" for k in changed[:6]
        )
        raise ValueError(f"--resume needs the flags of the interrupted run ({details})")
