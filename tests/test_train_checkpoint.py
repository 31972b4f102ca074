"""Checkpoints of ``python -m train``: safe to load, and never lost to a crash while writing."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _state(value: float) -> dict:
    """A checkpoint of 4 MB whose every weight is ``value``."""
    return {
        "model": {"w": torch.full((1_000_000,), value)},
        "optimizer": {},
        "scheduler": {"last_epoch": int(value)},
        "epoch": int(value),
        "step": 0,
        "loader": [None],
    }


def _refusal(path: Path) -> str:
    """The message of the ValueError that ``load_checkpoint(path)`` must raise."""
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    return str(info.value)


def test_checkpoint_round_trip_is_atomic_and_safe(tmp_path: Path) -> None:
    state = {
        "model": {"w": torch.arange(3.0)},
        "optimizer": {},
        "scheduler": {"last_epoch": 3},
        "epoch": 1,
        "step": 2,
        "loader": [{"dali_checkpoint": "abc"}],
        "meter": None,
    }
    path = save_checkpoint(state, tmp_path / "checkpoint.pth")
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["loader"] == state["loader"] and loaded["step"] == 2
    torch.save({"model": Path("x")}, tmp_path / "evil.pth")  # arbitrary pickled objects
    assert _refusal(tmp_path / "evil.pth") == (
        f"{tmp_path / 'evil.pth'} is not a readable checkpoint: it holds objects other than "
        "tensors, numbers, strings and containers, which are not loaded "
        "(torch.load(weights_only=True)), so it was not written by this training"
    )
    torch.save({"weights": torch.zeros(1), "epoch": 3}, tmp_path / "other.pth")
    assert _refusal(tmp_path / "other.pth") == (
        f"{tmp_path / 'other.pth'} is not a training checkpoint (missing ['loader', 'model', "
        "'optimizer', 'scheduler', 'step'])"
    )
    # torch.save(model.state_dict()): said "missing ['epoch', 'loader', ...]" of weights
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "weights.pth")
    assert _refusal(tmp_path / "weights.pth") == (
        f"{tmp_path / 'weights.pth'} is not a training checkpoint: it holds a model's weights "
        "only (2 tensors), without the optimizer, schedule and data position a run continues "
        "from; give a run's RUN_DIR/checkpoint.pth"
    )
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:100])
    assert _refusal(tmp_path / "cut.pth") == (
        f"{tmp_path / 'cut.pth'} is not a readable checkpoint: it is not a whole file written "
        "by torch.save (cut short, or another kind of file; a run writes RUN/checkpoint.pth)"
    )
    (tmp_path / "text.pth").write_text("hello\n")  # torch.load raised KeyError: 101
    with pytest.raises(ValueError, match="text.pth is not a readable checkpoint: it is not a"):
        load_checkpoint(tmp_path / "text.pth")
    with pytest.raises(ValueError, match="is not a readable checkpoint: it cannot be read"):
        load_checkpoint(tmp_path)  # a folder: IsADirectoryError
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="a run's config.json starts a new run with --config"):
        load_checkpoint(tmp_path / "config.json")


def test_a_checkpoint_whose_bytes_changed_is_refused_as_damaged(tmp_path: Path) -> None:
    # torch.load does not compare the CRCs it wrote: finite bytes written over the weights
    # resumed without a word, and NaNs were blamed on a diverged run.
    path = save_checkpoint(_state(1.0), tmp_path / "checkpoint.pth")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = torch.full((1024,), 2.0).numpy().tobytes()  # finite
    (tmp_path / "finite.pth").write_bytes(bytes(data))
    assert _refusal(tmp_path / "finite.pth") == (
        f"{tmp_path / 'finite.pth'} is not a readable checkpoint: it is damaged (the bytes of "
        "its entry archive/data/0 do not match the checksum torch.save wrote: changed on the "
        "disk or in a copy since); resume from an intact copy of it if there is one, else "
        "start a new run"
    )
    data[middle : middle + 4] = b"\xff\xff\xff\xff"  # a NaN
    (tmp_path / "nan.pth").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="nan.pth is not a readable checkpoint: it is damaged"):
        load_checkpoint(tmp_path / "nan.pth")


@pytest.mark.parametrize("length", [5_000, 20_000, 65_536])
def test_a_checkpoint_cut_short_says_so_where_torch_says_invalid_argument(
    tmp_path: Path, length: int
) -> None:
    # It read "it cannot be read (Invalid argument)": torch raised an OSError at these lengths.
    path = save_checkpoint(_state(1.0), tmp_path / "checkpoint.pth")
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:length])
    assert _refusal(tmp_path / "cut.pth") == (
        f"{tmp_path / 'cut.pth'} is not a readable checkpoint: it is not a whole file written "
        "by torch.save (cut short, or another kind of file; a run writes RUN/checkpoint.pth)"
    )


# The child writes a checkpoint, then dies by SIGKILL half-way through writing the next.
_KILLED_WHILE_WRITING = """
import io, os, signal, sys
from pathlib import Path
import torch
from tests.test_train_checkpoint import _state
from train.checkpoint import save_checkpoint

path = Path(sys.argv[1])
save_checkpoint(_state(1.0), path)
real_save = torch.save

def dies_half_way(obj, file):
    buffer = io.BytesIO()
    real_save(obj, buffer)
    if isinstance(file, (str, os.PathLike)):  # a save that writes to a path
        file = open(file, "wb")
    file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = dies_half_way
save_checkpoint(_state(2.0), path)
"""


def test_a_process_killed_while_writing_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pth"
    command = [sys.executable, "-c", _KILLED_WHILE_WRITING, str(path)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    partial = sorted(p.name for p in tmp_path.iterdir() if p.name != "checkpoint.pth")
    assert len(partial) == 1 and partial[0].startswith(".checkpoint.pth.tmp-")
    loaded = load_checkpoint(path)  # the previous one, whole
    assert loaded["epoch"] == 1 and torch.equal(loaded["model"]["w"], _state(1.0)["model"]["w"])
    save_checkpoint(_state(3.0), path)  # the next save removes the dead writer's partial file
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]
    assert load_checkpoint(path)["epoch"] == 3


def test_a_checkpoint_reaches_the_disk_before_it_replaces_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What survives a power loss: the file's bytes, then the rename, then the folder entry."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync " + ("file" if stat.S_ISREG(os.fstat(fd).st_mode) else "folder"))
        real_fsync(fd)

    def replace(source, target) -> None:
        events.append(f"replace {Path(target).name}")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(_state(1.0), tmp_path / "checkpoint.pth")
    assert events == ["fsync file", "replace checkpoint.pth", "fsync folder"]


def test_weights_of_another_model_are_named_not_a_traceback(tmp_path: Path) -> None:
    # A checkpoint whose config was edited (arch resnet34 over resnet18 weights) failed in
    # load_state_dict with a page of missing keys and a traceback.
    weights = torch.nn.Linear(3, 3).state_dict()
    with pytest.raises(CheckpointError) as info:
        load_weights(torch.nn.Linear(2, 2), weights, tmp_path / "c.pth", "model")
    message = str(info.value)
    assert message.startswith(
        f"{tmp_path / 'c.pth'}: its model weights do not fit Linear of its configuration "
        "(Error(s) in loading state_dict for Linear: size mismatch for weight"
    )
    assert "\n" not in message and len(message) < 400


def test_weights_that_are_not_finite_are_refused_by_name(tmp_path: Path) -> None:
    # A checkpoint saved after a divergence (by a version that trained on) holds NaN weights:
    # resuming or testing it would report NaN losses and chance accuracy as if they were results.
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    weights = model.state_dict()
    load_weights(model, weights, tmp_path / "c.pth", "model")  # finite: loads
    weights["1.running_var"] = torch.tensor([1.0, float("inf")])
    with pytest.raises(CheckpointError) as info:
        load_weights(model, weights, tmp_path / "c.pth", "--model-ema")
    assert str(info.value) == (
        f"{tmp_path / 'c.pth'}: its --model-ema weights are not finite (NaN or inf in "
        "1.running_var): training had diverged when it was written; start a new run with a "
        "lower --lr"
    )
