"""``python -m train`` end to end on a tiny generated dataset, on the CPU.

Every run is deterministic (seeded initialisation, seeded loaders, one DALI
thread, fixed torch threads), so resumed and uninterrupted runs are compared
bit for bit.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import signalled_after, started_command, wait_for_text
from PIL import Image

import train.checkpoint
import train.config
import train.engine
import train.trainer
import train.utils
from dali_cutmix import synthetic
from dali_cutmix.files import BadImageError
from dali_cutmix.scan import main as scan_main
from dali_cutmix.synthetic import SyntheticSpec, generate
from train.__main__ import main
from train.checkpoint import save_checkpoint
from train.config import Device, TrainConfig, parse_config
from train.data import build_loaders
from train.runner import _set_up, _write_config, run
from train.trainer import Outcome
from train.utils import DistInfo

TINY = SyntheticSpec(num_classes=3, train_per_class=8, val_per_class=3, seed=0, size_scale=0.15)
REPO = Path(__file__).resolve().parents[1]
# python's arguments that start torchrun with two ranks
TORCHRUN_2 = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("data") / "tiny", TINY, workers=1, progress=False)


@pytest.fixture(scope="module")
def bad_tiny(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny`` with one training file that is not an image: the 2nd batch of epoch 1 has it
    with both loaders (seed 0), so the 1st step is done when it fails."""
    root = tmp_path_factory.mktemp("data") / "bad"
    shutil.copytree(tiny, root)
    (root / "train" / "s0000" / "s0000_00004.JPEG").write_bytes(b"not a JPEG")
    return root


def _argv(root: Path, out: Path, *extra: str) -> list[str]:
    """3 classes, 24 training images in 3 batches of 8, 9 validation images."""
    return [
        "--data",
        str(root),
        "--device",
        "cpu",
        "--arch",
        "resnet18",
        "--crop-size",
        "32",
        "-b",
        "8",
        "--epochs",
        "2",
        "-j",
        "1",
        "--output-dir",
        str(out),
        "--print-freq",
        "1",
        *extra,
    ]


def _config(root: Path, out: Path, *extra: str) -> TrainConfig:
    return parse_config(_argv(root, out, *extra))


def _logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.split(".")[0] == "train"]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pth", weights_only=True)["model"]


MODES = [
    ("dali", ["--cutmix-alpha", "0"]),
    ("dali", ["--mix-mode", "elem"]),
    ("dali", ["--mix-mode", "pair", "--mixup-alpha", "0.4", "--label-smoothing", "0.1"]),
    ("dali", ["--mix-mode", "batch", "--cutmix-minmax", "0.2", "0.6", "--channels-last"]),
    ("dali", ["--channels-last", "--amp", "bf16"]),  # a GPU run's feed: NHWC, bf16 autocast
    ("torchvision", ["--cutmix-alpha", "0"]),
    ("torchvision", ["--mixup-alpha", "0.4", "--switch-prob", "0.5", "--label-smoothing", "0.1"]),
    # torchvision's ResNet-50 recipe's augmentations, and timm's, with each loader
    ("dali", ["--auto-augment", "ta_wide", "--random-erase", "0.5", "--mixup-alpha", "0.2"]),
    ("dali", ["--aa", "rand-m9-n2-inc1", "--reprob", "0.5", "--interpolation", "nearest"]),
    ("dali", ["--auto-augment", "imagenet", "--cutmix-alpha", "0", "--channels-last"]),
    ("torchvision", ["--auto-augment", "ta_wide", "--random-erase", "0.5", "--mixup-alpha", "0.2"]),
    ("torchvision", ["--auto-augment", "ra", "--reprob", "0.5", "--cutmix-alpha", "0"]),
]


@pytest.mark.parametrize("loader, flags", MODES, ids=[" ".join([a, *b]) for a, b in MODES])
def test_a_few_steps_with_each_loader_and_mixing_mode(
    tiny: Path, tmp_path: Path, loader: str, flags: list[str]
) -> None:
    config = _config(tiny, tmp_path, "--loader", loader, "--stop-after-steps", "2", *flags)
    train_loader, _ = build_loaders(config, tiny, DistInfo())
    images, targets = next(iter(train_loader))
    shape = [8, 32, 32, 3] if config.channels_last else [8, 3, 32, 32]
    assert list(images.shape) == shape and images.dtype == torch.float32
    if config.mix.enabled:  # soft targets, smoothing included: every entry >= s / classes
        assert targets.shape == (8, 3) and targets.dtype == torch.float32
        assert torch.allclose(targets.sum(1), torch.ones(8))
        assert targets.min() >= config.mix.label_smoothing / 3 - 1e-6
    else:
        assert targets.shape == (8,) and targets.dtype == torch.int64
    run(config)
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 2)
    assert state["scheduler"]["last_epoch"] == 2
    initial = torch.load(tmp_path / "checkpoint.pth", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in initial.values() if v.is_floating_point())


@pytest.mark.parametrize("loader, moved", [("dali", False), ("torchvision", False), ("dali", True)])
def test_resumed_run_equals_uninterrupted_run(
    tiny: Path, tmp_path: Path, loader: str, moved: bool, caplog
) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run(_config(tiny, whole, "--loader", loader))
    root = tmp_path / "data"  # moved (to local disk, say) after the stop, when `moved`
    shutil.copytree(tiny, root)
    run(_config(root, parts, "--loader", loader, "--stop-after-steps", "4"))
    state = torch.load(parts / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 1)  # stopped inside the second epoch
    assert not torch.equal(state["model"]["fc.weight"], _weights(whole)["fc.weight"])
    checkpoint = str(parts / "checkpoint.pth")
    with pytest.raises(SystemExit):  # other settings would not continue the same run
        parse_config(["--resume", checkpoint, "--mixup-alpha", "0.3"])
    place = []
    if moved:  # the same classes elsewhere: the run goes on there, with the same next batch
        root = root.rename(tmp_path / "moved")
        place = ["--data", str(root)]
    resumed = parse_config(["--resume", checkpoint, *place])  # the checkpoint's configuration
    assert resumed.stop_after_steps is None and resumed.data.loader.value == loader
    assert resumed.data.root == root.resolve()
    with caplog.at_level(logging.INFO, logger="train.trainer"):
        assert run(resumed).outcome is Outcome.FINISHED
    said = f"the dataset's folder moved: {(tmp_path / 'data').resolve()}, now {root.resolve()}"
    assert (said in caplog.text) is moved
    assert "does not fit" not in caplog.text  # the saved data stream goes on
    a, b = _weights(whole), _weights(parts)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "weights differ after resuming"
    # the second epoch's time and pace are of the steps after the resume, and say so
    assert [r["resumed_at_step"] for r in _records(whole)] == [0, 0]
    assert [r["resumed_at_step"] for r in _records(parts)] == [0, 1]
    timing = {"time", "epoch_seconds", "train_images_per_s", "train_images_per_s_steady"}
    timing.add("resumed_at_step")
    strip = [{k: v for k, v in r.items() if k not in timing} for r in _records(whole)]
    assert strip == [{k: v for k, v in r.items() if k not in timing} for r in _records(parts)]


def _first_batches(config: TrainConfig, root: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(iter(loader)) for loader in build_loaders(config, root, DistInfo())]


def test_without_the_new_flags_the_dali_loaders_give_the_images_of_before(
    tiny: Path, tmp_path: Path
) -> None:
    """The same batches as ``make_loader`` called without augment and interpolation."""
    from pipelines.imagenet import make_loader

    ours = _first_batches(_config(tiny, tmp_path, "--cutmix-alpha", "0"), tiny)
    common = dict(batch_size=8, device="cpu", crop_size=32, resize_size=36, num_threads=1)
    before = [
        next(iter(make_loader(tiny / split, train=split == "train", seed=0, **common)))
        for split in ("train", "val")
    ]
    for (images, labels), (expected, expected_labels) in zip(ours, before):
        assert torch.equal(images, expected) and torch.equal(labels, expected_labels)


@pytest.mark.parametrize("loader", ["dali", "torchvision"])
def test_the_augmentation_flags_reach_the_training_loader_only(
    tiny: Path, tmp_path: Path, loader: str
) -> None:
    plain = _first_batches(_config(tiny, tmp_path, "--loader", loader, "--cutmix-alpha", "0"), tiny)
    flags = ["--auto-augment", "ta_wide", "--random-erase", "1", "--cutmix-alpha", "0"]
    augmented = _first_batches(_config(tiny, tmp_path, "--loader", loader, *flags), tiny)
    (images, labels), (val_images, val_labels) = augmented
    assert torch.equal(labels, plain[0][1]) and not torch.equal(images, plain[0][0])
    # Every image erased (p = 1): a box where all three channels are exactly the fill, 0.
    assert all((image == 0).all(dim=0).any() for image in images)
    assert not any((image == 0).all(dim=0).any() for image in plain[0][0])
    assert torch.equal(val_images, plain[1][0]) and torch.equal(val_labels, plain[1][1])


def test_gpu_run_set_up_turns_on_cudnn_autotuning(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    config = dataclasses.replace(_config(tiny, tmp_path), device=Device.GPU)
    _set_up(config, DistInfo())
    assert torch.backends.cudnn.benchmark is True
    _write_config(config, DistInfo())
    assert json.loads((tmp_path / "config.json").read_text())["device"] == "gpu"


def test_ctrl_c_stops_after_the_step_and_checkpoints(
    tiny: Path, tmp_path: Path, monkeypatch
) -> None:
    calls = []
    original = train.engine.correct_topk

    def interrupt_on_second_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(train.engine, "correct_topk", interrupt_on_second_step)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs in the background
    result = run(_config(tiny, tmp_path, "--loader", "torchvision", "--cutmix-alpha", "0"))
    assert (result.records, result.outcome) == ([], Outcome.STOPPED)  # no epoch completed
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 2)
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_signal_after_the_run_finished_keeps_its_status_and_says_nothing(
    tiny: Path, tmp_path: Path, signum: int
) -> None:
    # In the ~1.5 s of teardown after "finished", a Ctrl-C killed the process by SIGINT
    # (status -2, no word) or printed "Exception ignored ... KeyboardInterrupt".
    status, text = signalled_after(
        ["-m", "train", *_argv(tiny, tmp_path / "run", "--epochs", "1")],
        tmp_path / "log.txt",
        "finished 1 epoch",
        signum,
    )
    assert status == 0, text[-3000:]
    assert "Traceback" not in text and "Exception ignored" not in text, text[-3000:]
    assert "finished 1 epoch" in text.splitlines()[-1]


@pytest.mark.slow
def test_a_terminal_ctrl_c_during_torchvision_validation_stops_cleanly(tmp_path: Path) -> None:
    # One SIGINT to the process group, as a terminal sends it: the DataLoader's workers died
    # of it, and the run ended in "DataLoader worker exited unexpectedly" (exit 1).
    spec = dataclasses.replace(TINY, val_per_class=200)
    root = generate(tmp_path / "data", spec, workers=1, progress=False)
    argv = _argv(root, tmp_path / "run", "--loader", "torchvision", "-j", "2")
    log = tmp_path / "log.txt"
    with started_command(["-m", "train", *argv], log) as process:
        wait_for_text(log, "val 1:")
        time.sleep(0.5)  # inside the validation, its workers running
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=120) == 3, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text and "exited unexpectedly" not in text
    assert text.rstrip().endswith(
        f"stopped at epoch 2, step 0 of 3; continue with: python -m train --resume "
        f"{tmp_path / 'run' / 'checkpoint.pth'}"
    )


def test_ctrl_c_during_validation_stops_at_the_epoch_end(
    tiny: Path, tmp_path: Path, monkeypatch
) -> None:
    # It used to run one step of the next epoch before stopping.
    original = train.trainer.evaluate

    def interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(train.trainer, "evaluate", interrupted)
    argv = ("--loader", "torchvision", "--cutmix-alpha", "0", "--epochs", "2")
    result = run(_config(tiny, tmp_path, *argv))
    assert result.outcome is Outcome.STOPPED and [r["epoch"] for r in result.records] == [1]
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 0)


@pytest.mark.parametrize(
    "signals, status, by",
    [
        ((signal.SIGTERM, signal.SIGTERM), 143, "SIGTERM"),  # said Ctrl-C, status 130
        ((signal.SIGTERM, signal.SIGINT), 130, "Ctrl-C"),
        ((signal.SIGINT, signal.SIGTERM), 143, "SIGTERM"),
    ],
)
def test_a_second_signal_aborts_in_its_own_name_and_status(
    tiny: Path, tmp_path: Path, monkeypatch, capsys, signals: tuple, status: int, by: str
) -> None:
    # the first stops at the next step (here: the epoch's end); the second aborts at once
    original = train.trainer.evaluate

    def interrupted(*args, **kwargs):
        for signum in signals:
            signal.raise_signal(signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(train.trainer, "evaluate", interrupted)
    before = signal.getsignal(signal.SIGTERM)
    assert main(_argv(tiny, tmp_path, "--loader", "torchvision", "--cutmix-alpha", "0")) == status
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m train: aborted by {by}; no checkpoint was written"
    )
    assert signal.getsignal(signal.SIGTERM) == before


def _ctrl_c_in_first_save(monkeypatch: pytest.MonkeyPatch, presses: int) -> list[int]:
    """Makes the run's first ``torch.save`` receive ``presses`` SIGINTs as it starts; returns
    the list that counts the saves."""
    real_save = train.checkpoint.torch.save
    calls: list[int] = []

    def saving(*args, **kwargs):
        calls.append(1)
        for _ in range(presses if len(calls) == 1 else 0):
            signal.raise_signal(signal.SIGINT)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(train.checkpoint.torch, "save", saving)
    return calls


def test_a_second_ctrl_c_while_the_checkpoint_is_written_waits_for_it(
    tiny: Path, tmp_path: Path, monkeypatch
) -> None:
    # Cut short, torch.save left no checkpoint and a RuntimeError from its zip writer.
    calls = _ctrl_c_in_first_save(monkeypatch, presses=2)
    with pytest.raises(KeyboardInterrupt):
        run(_config(tiny, tmp_path, "--loader", "torchvision", "--cutmix-alpha", "0"))
    assert len(calls) == 1  # the first epoch's checkpoint, written whole before the abort
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 0)


def test_one_ctrl_c_while_the_checkpoint_is_written_is_a_stop_not_an_abort(
    tiny: Path, tmp_path: Path, monkeypatch
) -> None:
    calls = _ctrl_c_in_first_save(monkeypatch, presses=1)
    argv = ("--loader", "torchvision", "--cutmix-alpha", "0", "--epochs", "2")
    try:
        result = run(_config(tiny, tmp_path, *argv))
    except KeyboardInterrupt:  # would end the whole pytest session
        pytest.fail("one Ctrl-C during the checkpoint's write aborted the run")
    assert result.outcome is Outcome.STOPPED and len(calls) == 1
    assert [r["epoch"] for r in result.records] == [1]


def test_full_run_writes_metrics_config_plot_and_checkpoint(tiny: Path, tmp_path: Path) -> None:
    schedule = ("--lr-schedule", "step", "--lr-step-size", "1", "--warmup-epochs", "0")
    result = run(_config(tiny, tmp_path, *schedule, "--lr", "0.1"))
    records = result.records
    assert result.outcome is Outcome.FINISHED
    assert [r["epoch"] for r in records] == [1, 2] and records == _records(tmp_path)
    # each epoch's own rate (its last step's), as its progress bar showed it: the record
    # held the next epoch's, 0.01 and 0.001
    assert [r["lr"] for r in records] == [0.1, 0.1 * 0.1]
    for record in records:
        assert record["val_images"] == 9  # every validation image exactly once
        assert 0 <= record["val_acc1"] <= record["val_acc5"] <= 100
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["data"]["root"] == str(tiny) and saved["mix"]["cutmix_alpha"] == 1.0
    assert saved["world_size"] == 1  # a --config replay on other ranks derives a default lr
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["step"], len(state["loader"])) == (2, 0, 1)


def test_default_main_job_on_a_tiny_embedded_dataset(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(train.config, "EMBEDDED_SPEC", TINY)
    monkeypatch.setenv("DALI_CUTMIX_CACHE", str(tmp_path / "cache"))
    argv = ["--epochs", "1", "-b", "8", "--output-dir", str(tmp_path / "run")]
    assert main(argv) == 0
    # the dataset alone: the lock file a second process would have waited on is gone
    (dataset,) = (tmp_path / "cache").iterdir()
    assert synthetic.is_complete(dataset, TINY)
    (record,) = _records(tmp_path / "run")
    assert record["val_images"] == 9 and record["train_loss"] > 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["arch"] == "resnet18" and saved["data"]["train_crop_size"] == 64
    assert saved["data"]["embedded"] == TINY.to_dict()

    def fail(*args, **kwargs):
        raise AssertionError("the cached embedded dataset was generated again")

    monkeypatch.setattr(synthetic, "_write_all", fail)
    assert main([*argv[:-1], str(tmp_path / "again"), "--stop-after-steps", "1"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["dali", "torchvision"])
def test_two_process_gloo_ddp(tiny: Path, tmp_path: Path, loader: str) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "train",
        "--data",
        str(tiny),
        "--device",
        "cpu",
        "--crop-size",
        "32",
        "--arch",
        "resnet18",
        "-b",
        "4",
        "--epochs",
        "1",
        "-j",
        "1",
        "--loader",
        loader,
        "--output-dir",
        str(tmp_path),
        "--print-freq",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = _records(tmp_path)
    # Two shards of 12 training images (3 batches of 4 each), every val image once.
    assert record["train_images"] == 24 and record["val_images"] == 9
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert len(state["loader"]) == 2  # one loader state per rank


# ----------------------------------------------------------------------------- EMA, --test-only

# Augmentations of torchvision's and timm's recipes, and an average updated every 2 steps with
# torchvision's decay adjusted to 1 - min(1, (1 - 0.9) * 1 rank * 8 images * 2 steps / 2 epochs).
AUGMENTED = {
    "dali": ["--auto-augment", "ta_wide", "--random-erase", "0.5"],
    "torchvision": ["--auto-augment", "ra", "--ra-magnitude", "5", "--reprob", "0.5"],
}
EMA = ["--model-ema", "--model-ema-steps", "2", "--model-ema-decay", "0.9"]


@pytest.fixture(scope="module", params=["dali", "torchvision"])
def ema_run(
    request: pytest.FixtureRequest, tiny: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """(loader, output folder) of a finished 2-epoch run with the augmentations and EMA."""
    loader = request.param
    out = tmp_path_factory.mktemp(f"ema-{loader}")
    assert run(_config(tiny, out, "--loader", loader, *EMA, *AUGMENTED[loader])).records
    return loader, out


def test_model_ema_follows_torchvisions_rule_and_resumes_bit_exactly(
    ema_run: tuple[str, Path], tiny: Path, tmp_path: Path
) -> None:
    loader, whole = ema_run
    parts = tmp_path / "parts"
    flags = ["--loader", loader, *EMA, *AUGMENTED[loader]]
    run(_config(tiny, parts, *flags, "--stop-after-steps", "4"))
    stopped = torch.load(parts / "checkpoint.pth", weights_only=True)
    run(_config(tiny, tmp_path / "three", *flags, "--stop-after-steps", "3"))
    three = torch.load(tmp_path / "three" / "checkpoint.pth", weights_only=True)
    decay = 1 - min(1.0, (1 - 0.9) * (1 * 8 * 2 / 2))
    assert decay == pytest.approx(0.2)
    # The warmup is 0.4 epochs of 3 steps: round(1.2) = 1 step, the learning rate's. The
    # update after step 1 copies the weights; the one after step 3 (index 2) copies them
    # too, since the warmup reset the count, and counts. (Each epoch below 0.4, all of
    # epoch 1, used to copy: n_averaged was 1 after step 4.)
    assert int(three["model_ema"]["n_averaged"]) == 1
    assert all(torch.equal(three["model_ema"][f"module.{k}"], v) for k, v in three["model"].items())
    # Epoch 2's first step (index 0) averaged: ema = decay * ema + (1 - decay) * weights.
    assert (stopped["epoch"], stopped["step"], int(stopped["model_ema"]["n_averaged"])) == (1, 1, 2)
    for name, weights in stopped["model"].items():
        if weights.is_floating_point():  # parameters and BatchNorm statistics
            expected = decay * three["model"][name] + (1 - decay) * weights
            assert torch.equal(stopped["model_ema"][f"module.{name}"], expected), name
    assert (
        run(parse_config(["--resume", str(parts / "checkpoint.pth")])).outcome is Outcome.FINISHED
    )
    a, b = (torch.load(out / "checkpoint.pth", weights_only=True) for out in (whole, parts))
    assert a["model_ema"].keys() == b["model_ema"].keys()
    assert all(torch.equal(a["model_ema"][k], b["model_ema"][k]) for k in a["model_ema"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # Then the step with index 2 averaged again.
    assert int(a["model_ema"]["n_averaged"]) == 3
    for name, last in a["model"].items():
        if last.is_floating_point():
            expected = decay * stopped["model_ema"][f"module.{name}"] + (1 - decay) * last
            assert torch.equal(a["model_ema"][f"module.{name}"], expected), name
    timing = {"time", "epoch_seconds", "train_images_per_s", "train_images_per_s_steady"}
    timing.add("resumed_at_step")
    strip = [{k: v for k, v in r.items() if k not in timing} for r in _records(whole)]
    assert strip == [{k: v for k, v in r.items() if k not in timing} for r in _records(parts)]
    assert all(0 <= r["ema_val_acc1"] <= r["ema_val_acc5"] <= 100 for r in strip)
    assert [r["ema_val_images"] for r in strip] == [9, 9]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only machine's answer")
def test_a_gpu_runs_checkpoint_is_evaluated_on_the_cpu_with_device_cpu(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # It was refused ("resume it on a machine with a GPU"), where a run trained on a GPU
    # node is often evaluated on a laptop. Here a CPU run's checkpoint, marked as a bf16 GPU
    # run's: its model evaluated in fp32 gives the CPU run's own figures, to the digit.
    out = tmp_path / "run"
    assert main(_argv(tiny, out, "--epochs", "1")) == 0
    checkpoint = out / "checkpoint.pth"
    capsys.readouterr()
    assert main(["--resume", str(checkpoint), "--test-only"]) == 0
    on_cpu = capsys.readouterr().out
    state = torch.load(checkpoint, weights_only=True)
    state["config"] |= {"device": "gpu", "precision": "bf16"}
    gpu = save_checkpoint(state, tmp_path / "gpu" / "checkpoint.pth")
    with pytest.raises(SystemExit) as refused:  # no CUDA: the command to use instead
        main(["--resume", str(gpu), "--test-only"])
    assert refused.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith(
            f"or evaluate its model here on the CPU: python -m train --resume {gpu} --test-only "
            "--device cpu"
        )
    )
    assert main(["--resume", str(gpu), "--test-only", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == on_cpu.replace(str(checkpoint), str(gpu))
    assert (
        json.loads((gpu.parent / "test.json").read_text())["val_acc1"]
        == (json.loads((out / "test.json").read_text())["val_acc1"])
    )


def test_test_only_of_a_mid_epoch_checkpoint_counts_its_steps_in_words(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # it said "(trained 0 epochs and 1 steps)"
    out = tmp_path / "run"
    assert main(_argv(tiny, out, "--stop-after-steps", "1")) == 3
    capsys.readouterr()
    checkpoint = out / "checkpoint.pth"
    assert main(["--resume", str(checkpoint), "--test-only"]) == 0
    assert capsys.readouterr().out.startswith(f"{checkpoint} (trained 1 step): val top-1 ")
    assert main(["--resume", str(checkpoint), "--stop-after-steps", "3"]) == 3  # epoch 2, step 1
    capsys.readouterr()
    assert main(["--resume", str(checkpoint), "--test-only"]) == 0
    assert capsys.readouterr().out.startswith(f"{checkpoint} (trained 1 epoch and 1 step): ")


def test_test_only_evaluates_the_checkpoint_and_its_average_and_changes_nothing(
    ema_run: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, whole = ema_run
    folder = tmp_path / "run"
    shutil.copytree(whole, folder)
    checkpoint = folder / "checkpoint.pth"
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    capsys.readouterr()
    assert main(["--resume", str(checkpoint), "--test-only"]) == 0
    last = _records(folder)[-1]  # the evaluation after the last epoch, of the same weights
    names = [f"{ema}val_{m}" for ema in ("", "ema_") for m in ("loss", "acc1", "acc5", "images")]
    tested = json.loads((folder / "test.json").read_text())
    assert tested == {"checkpoint": str(checkpoint), "epochs_done": 2, "steps_done": 0} | {
        name: last[name] for name in names
    }
    assert capsys.readouterr().out == (
        f"{checkpoint} (trained 2 epochs): val top-1 {last['val_acc1']:.2f} %, top-5 "
        f"{last['val_acc5']:.2f} %; EMA top-1 {last['ema_val_acc1']:.2f} %, top-5 "
        f"{last['ema_val_acc5']:.2f} %\n"
    )
    after = {path.name: path.read_bytes() for path in folder.iterdir() if path.name != "test.json"}
    assert after == before  # not trained: checkpoint, metrics, config and plot as they were
    # A checkpoint without an average: the model alone, written where --output-dir says.
    plain = tmp_path / "plain" / "checkpoint.pth"
    state = torch.load(checkpoint, weights_only=True)
    save_checkpoint({k: v for k, v in state.items() if k != "model_ema"}, plain)
    other = tmp_path / "elsewhere"
    assert main(["--resume", str(plain), "--test-only", "--output-dir", str(other)]) == 0
    alone = json.loads((other / "test.json").read_text())
    assert alone == {"checkpoint": str(plain), "epochs_done": 2, "steps_done": 0} | {
        name: last[name] for name in names[:4]
    }
    assert sorted(p.name for p in plain.parent.iterdir()) == ["checkpoint.pth"]


# ----------------------------------------------------------------------------- stops and errors


def test_a_stop_exits_3_and_resume_alone_finishes_then_has_nothing_to_do(
    tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="train")
    checkpoint = tmp_path / "checkpoint.pth"
    assert main(_argv(tiny, tmp_path, "--stop-after-steps", "1")) == 3
    assert _logged(caplog)[-1] == (
        f"stopped at epoch 1, step 1 of 3; continue with: python -m train --resume {checkpoint}"
    )
    caplog.clear()
    assert main(["--resume", str(checkpoint)]) == 0
    assert re.match(
        r"finished 2 epochs \(training and validation took \d+ s in this command\): val top-1 ",
        _logged(caplog)[-1],
    )
    assert [r["train_images"] for r in _records(tmp_path)] == [24, 24]
    caplog.clear()
    written = (tmp_path / "config.json").read_bytes()
    (tmp_path / "config.json").write_bytes(written + b" ")  # as the last training wrote it
    (tmp_path / "curves.png").unlink()  # a run aborted as it plotted them: plotted now
    assert main(["--resume", str(checkpoint)]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert _logged(caplog) == [
        f"{checkpoint} already trained 2 of 2 epochs; nothing to do; give --epochs M > 2 to "
        f"train on (python -m train --resume {checkpoint} --epochs M)"
    ]
    # a command that trained nothing leaves the run's configuration as it trained
    assert (tmp_path / "config.json").read_bytes() == written + b" "
    assert main(["--resume", str(checkpoint), "--epochs", "3"]) == 0  # one more epoch
    assert [r["train_images"] for r in _records(tmp_path)] == [24, 24, 24]
    state = torch.load(checkpoint, weights_only=True)
    assert (state["epoch"], state["scheduler"]["last_epoch"], state["config"]["epochs"]) == (
        3,
        9,
        3,
    )
    # on into another folder: the model's epochs (it said "finished 1 epoch", that folder's)
    caplog.clear()
    more = ["--epochs", "4", "--output-dir", str(tmp_path / "more")]
    assert main(["--resume", str(checkpoint), *more]) == 0
    assert _logged(caplog)[-1].startswith("finished 4 epochs (")


def test_a_full_disk_at_the_second_checkpoint_ends_in_one_line_and_the_run_continues(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # It was a traceback (OSError [Errno 28], then torch.save's RuntimeError), status 1.
    import errno

    import train.trainer

    checkpoint = tmp_path / "checkpoint.pth"
    saves = []
    real_save = train.trainer.save_checkpoint

    def disk_fills(state, path):
        saves.append(path)
        if len(saves) == 2:  # the metrics record of epoch 2 was cut short too
            with (tmp_path / "metrics.jsonl").open("a") as file:
                file.write('{"epoch": 2, "train_lo')
            try:
                raise OSError(errno.ENOSPC, "No space left on device", str(path) + ".tmp")
            except OSError as error:
                raise RuntimeError("[enforce fail at inline_container.cc:672]") from error
        real_save(state, path)

    monkeypatch.setattr(train.trainer, "save_checkpoint", disk_fills)
    assert main(_argv(tiny, tmp_path)) == 6
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m train: error: cannot write {checkpoint}.tmp (No space left on device); "
        f"the last checkpoint written, {checkpoint}, is intact: free space there, then "
        f"continue with: python -m train --resume {checkpoint}"
    )
    monkeypatch.undo()
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    assert main(["--resume", str(checkpoint)]) == 0  # the record cut short is left out
    assert [r["epoch"] for r in _records(tmp_path)] == [1, 2]


def _first_save_fails(monkeypatch: pytest.MonkeyPatch, errno_: int, strerror: str) -> None:
    """``save_checkpoint`` meets ``errno_`` at the run's first checkpoint, as torch.save does
    (its RuntimeError after the OSError), and works from then on."""

    real_save = train.trainer.save_checkpoint

    def fails(state, path):
        monkeypatch.setattr(train.trainer, "save_checkpoint", real_save)
        try:
            raise OSError(errno_, strerror, str(path) + ".tmp")
        except OSError as error:
            raise RuntimeError("[enforce fail at inline_container.cc:672]") from error

    monkeypatch.setattr(train.trainer, "save_checkpoint", fails)


def test_resuming_a_copy_kept_in_the_run_folder_is_refused_not_run_over_the_newer_one(
    tiny: Path, tmp_path: Path, capsys
) -> None:
    # The copy was taken for the run's own checkpoint: continuing it overwrote the newer
    # checkpoint.pth and dropped the later epochs from metrics.jsonl ("the run ended before
    # it was written"). As with --output-dir naming the folder, it is refused.
    out = tmp_path / "run"
    assert main(_argv(tiny, out, "--epochs", "1")) == 0
    shutil.copy(out / "checkpoint.pth", out / "ep1.pth")
    assert main(["--resume", str(out), "--epochs", "2"]) == 0
    saved, records = (out / "checkpoint.pth").read_bytes(), _records(out)
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        main(["--resume", str(out / "ep1.pth"), "--epochs", "2"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m train: error: --resume {out / 'ep1.pth'} is not {out / 'checkpoint.pth'}, "
        "the checkpoint of the run in that folder, which continuing it there would overwrite "
        "(with the run's later epochs in metrics.jsonl); continue it in another folder with "
        "--output-dir NEW_FOLDER, or continue the run itself with: python -m train --resume "
        f"{out / 'checkpoint.pth'}"
    )
    assert (out / "checkpoint.pth").read_bytes() == saved and _records(out) == records
    other = tmp_path / "from-ep1"  # the way the line gives
    assert (
        main(["--resume", str(out / "ep1.pth"), "--epochs", "2", "--output-dir", str(other)]) == 0
    )
    assert [r["epoch"] for r in _records(other)] == [2]  # its own record from the copy on


def test_a_full_disk_at_the_first_checkpoint_leaves_nothing_that_blocks_running_again(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # epoch 1's record stayed in metrics.jsonl: the same command again said "--output-dir
    # ... already holds a run (metrics.jsonl); give another folder"
    import errno

    out = tmp_path / "run"
    argv = _argv(tiny, out, "--epochs", "1")
    _first_save_fails(monkeypatch, errno.ENOSPC, "No space left on device")
    assert main(argv) == 6
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m train: error: cannot write {out / 'checkpoint.pth'}.tmp (No space left on "
        "device); no checkpoint was written: free space there, and run again"
    )
    # the folder this command made goes with its run (config.json and .lock were left)
    assert not out.exists()
    assert main(argv) == 0  # the advice holds
    assert [r["epoch"] for r in _records(out)] == [1]


def test_a_full_disk_at_the_first_checkpoint_leaves_no_run_folder(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # runs/<date-time> was left holding config.json and metrics.jsonl
    import errno

    monkeypatch.chdir(tmp_path)
    argv = _argv(tiny, tmp_path, "--epochs", "1")
    at = argv.index("--output-dir")
    del argv[at : at + 2]
    _first_save_fails(monkeypatch, errno.ENOSPC, "No space left on device")
    assert main(argv) == 6
    assert "no checkpoint was written: free space there, and run again" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # made for the run's folder, and gone with it


def test_records_that_cannot_be_removed_after_a_failed_first_checkpoint_are_named(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # a folder made read-only: the line names the file that blocks running again
    import errno

    out = tmp_path / "run"
    _first_save_fails(monkeypatch, errno.EROFS, "Read-only file system")
    monkeypatch.setattr(train.utils.MetricsFile, "discard", lambda self: False)
    assert main(_argv(tiny, out, "--epochs", "1")) == 6
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m train: error: cannot write {out / 'checkpoint.pth'}.tmp (Read-only file "
        f"system); no checkpoint was written: make {out} writable, remove "
        f"{out / 'metrics.jsonl'}, and run again"
    )


def test_a_file_size_limit_at_the_first_checkpoint_is_one_line(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # `ulimit -f` (or a scheduler's limit): EFBIG was a 40-line traceback, status 1
    import errno

    out = tmp_path / "run"
    _first_save_fails(monkeypatch, errno.EFBIG, "File too large")
    assert main(_argv(tiny, out, "--epochs", "1")) == 6
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m train: error: cannot write {out / 'checkpoint.pth'}.tmp (File too large); "
        "no checkpoint was written: raise the limit on a file's size (ulimit -f) or write to "
        "another file system, and run again"
    )
    assert not out.exists()


def test_an_embedded_set_its_cache_disk_cannot_hold_advises_trains_own_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # It advised the generator's flags (--classes, --size-scale, ...), which train lacks.
    monkeypatch.setattr(synthetic, "_free_bytes", lambda path: 10**6)
    monkeypatch.setattr(synthetic, "estimated_bytes", lambda spec: 900_000)
    argv = ["--device", "cpu", "--cache-dir", str(tmp_path / "c"), "--output-dir", str(tmp_path)]
    root = parse_config(argv).data.dataset_dir
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m train: error: {root}: 2000 images need about 0.9 MB, and its disk has "
        "1.0 MB free (the check asks for 1.2 x the estimate); free space there, or give "
        "--cache-dir a folder on a disk with more room"
    )


def test_a_damaged_metrics_line_on_resume_is_one_line_naming_it(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # It was a traceback (json.JSONDecodeError in MetricsFile.read), status 1.
    checkpoint, metrics = tmp_path / "checkpoint.pth", tmp_path / "metrics.jsonl"
    assert main(_argv(tiny, tmp_path, "--stop-after-steps", "4")) == 3  # epoch 2, step 1
    good = metrics.read_bytes()
    metrics.write_bytes(b"\x00\x00garbage\n" + good)
    capsys.readouterr()
    assert main(["--resume", str(checkpoint)]) == 2
    assert capsys.readouterr().err == (
        f"python -m train: error: {metrics} line 1 is not a JSON record (Expecting value at "
        "column 1); the file is only the run's history of epochs (the checkpoint holds the "
        "run): repair or delete that line, then run the command again\n"
    )
    metrics.write_bytes(good)  # the line deleted
    assert main(["--resume", str(checkpoint)]) == 0
    assert [r["epoch"] for r in _records(tmp_path)] == [1, 2]


@pytest.mark.parametrize("loader", ["dali", "torchvision"])
def test_a_bad_file_keeps_the_steps_done_and_the_printed_commands_continue(
    bad_tiny: Path, tmp_path: Path, loader: str, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert main(_argv(bad_tiny, out, "--loader", loader)) == 4
    line = capsys.readouterr().err.splitlines()[-1]
    bad, scan_dir = bad_tiny / "train" / "s0000" / "s0000_00004.JPEG", out / "scan-train"
    scan = f"python -m dali_cutmix.scan {bad_tiny / 'train'} --out {scan_dir}"
    resume = (
        f"python -m train --resume {out / 'checkpoint.pth'} --train-list {scan_dir / 'files.txt'}"
    )
    assert line.startswith(f"python -m train: error: '{bad}' is not a decodable image (")
    assert line.endswith(f". Find every bad file with: {scan}; then continue with: {resume}")
    if loader == "dali":  # DALI's own words ("nvImageCodec failure: '#4'") say little
        assert "; its header: not an image format PIL knows). Find every" in line, line
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["step"], state["scheduler"]["last_epoch"]) == (0, 1, 1)
    assert state["meter"][0][1] == 8.0 and state["optimizer"]["state"]  # the step done is kept
    if loader == "dali":  # a failed DALI pipeline gives no state: the position is saved
        assert state["loader"] == [None]
    assert scan_main(shlex.split(scan)[3:]) == 1  # it found the bad file
    assert main(shlex.split(resume)[3:]) == 0
    # The 23 good files make 2 batches: epoch 1 continues with its 2nd, epoch 2 has both.
    assert [r["train_images"] for r in _records(out)] == [16, 16]
    final = torch.load(out / "checkpoint.pth", weights_only=True)
    assert (final["epoch"], final["step"], final["scheduler"]["last_epoch"]) == (2, 0, 4)
    saved = json.loads((out / "config.json").read_text())["data"]
    assert saved["train_list"] == str(scan_dir / "files.txt") and saved["val_list"] is None


def test_a_bad_file_met_while_resuming_is_reported_with_the_resumed_checkpoint(
    tiny: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The DALI loader reads its next batches while it restores its state: a bad file there
    # was taken for a state of "another pipeline", and the run went on in a new stream.
    # (tests/test_loader.py makes the loader raise it; here the trainer's answer.)
    out = tmp_path / "run"
    assert main(_argv(tiny, out, "--stop-after-steps", "1")) == 3
    bad = tiny / "train" / "s0001" / "s0001_00002.JPEG"

    def restore(loader, state):
        raise BadImageError(f"{str(bad)!r} is not a decodable image (DALI: ...).", path=bad)

    monkeypatch.setattr(train.trainer, "restore_loader", restore)
    checkpoint, scan_dir = out / "checkpoint.pth", out / "scan-train"
    saved = checkpoint.read_bytes()
    capsys.readouterr()
    caplog.set_level(logging.WARNING, logger="train")
    assert main(["--resume", str(checkpoint)]) == 4
    line = capsys.readouterr().err.splitlines()[-1]
    scan = f"python -m dali_cutmix.scan {tiny / 'train'} --out {scan_dir}"
    resume = f"python -m train --resume {checkpoint} --train-list {scan_dir / 'files.txt'}"
    assert line == (
        f"python -m train: error: '{bad}' is not a decodable image (DALI: ...). "
        f"Find every bad file with: {scan}; then continue with: {resume}"
    )
    assert not [r for r in caplog.records if "does not fit" in r.getMessage()]
    assert checkpoint.read_bytes() == saved


def test_a_resume_at_an_epoch_start_without_loader_state_skips_nothing(
    tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # As from a checkpoint of another rank count at an epoch's end: the warning said "its
    # first 0 batches skipped".
    out = tmp_path / "run"
    assert main(_argv(tiny, out, "--epochs", "2", "--stop-after-steps", "3")) == 3
    checkpoint = out / "checkpoint.pth"
    state = torch.load(checkpoint, weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 0)
    torch.save(state | {"loader": [None]}, checkpoint)
    caplog.set_level(logging.WARNING, logger="train")
    assert main(["--resume", str(checkpoint)]) == 0
    assert (
        "the checkpoint holds no data-stream state for this rank: epoch 2, step 0 of 3 goes on "
        "in a new data stream of the current files; the model, optimizer and steps done are kept"
    ) in caplog.text


@pytest.mark.parametrize(
    ("loader", "streams", "line"),
    [
        ("dali", [], "the next epoch starts a new data stream of the current files"),
        # seeks to the epoch's end, so that its next iter() is epoch 2 of the seeded order
        ("torchvision", [(0, 3)], "the next epoch starts at its place in the seeded order"),
    ],
)
def test_a_resume_after_a_trained_epoch_without_loader_state_reads_no_epoch_for_nothing(
    tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, loader, streams, line
) -> None:
    # A checkpoint after an epoch's training, whose validation failed on another rank (no
    # loader state): the resume built a DALI stream that read and dropped a whole epoch, and
    # used it as the next one (0 steps, an extra checkpoint) before reading it again.
    out = tmp_path / "run"
    argv = _argv(tiny, out, "--epochs", "1", "--stop-after-steps", "2", "--loader", loader)
    assert main(argv) == 3
    checkpoint = out / "checkpoint.pth"
    state = torch.load(checkpoint, weights_only=True)
    # as saved after the epoch's 3 steps, its validation failed: trained, not validated
    torch.save(state | {"step": 3, "loader": [None]}, checkpoint)
    made = []
    original = train.trainer.continue_at

    def recorded(loader, *, epoch, step):
        made.append((epoch, step))
        return original(loader, epoch=epoch, step=step)

    caplog.set_level(logging.WARNING, logger="train")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train.trainer, "continue_at", recorded)
        assert main(["--resume", str(checkpoint), "--epochs", "2"]) == 0
    assert made == streams  # DALI's was (0, 3): read and drop epoch 1's 3 batches
    assert [r["train_images"] for r in _records(out)][1] == 24  # epoch 2, whole
    assert line in caplog.text


@pytest.mark.parametrize("loader", ["dali", "torchvision"])
def test_a_batch_larger_than_the_dataset_names_the_flag(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture, loader: str
) -> None:
    # It said "lower the batch size", the library's words, not the flag.
    assert main(_argv(tiny, tmp_path / "run", "-b", "100", "--loader", loader)) == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith("python -m train: error: ") and "give no batch of 100 per" in line
    assert line.endswith(": lower -b/--batch-size")
    # the refused run's new folder (.lock and config.json were left) goes with it
    assert list(tmp_path.iterdir()) == []


def test_a_refused_resume_leaves_the_run_s_config_json_as_it_was(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # config.json was written before the loaders refused the empty list: it then held the
    # refused --train-list, which a later --config replayed
    out = tmp_path / "run"
    assert main(_argv(tiny, out, "--epochs", "1")) == 0
    saved = (out / "config.json").read_bytes()
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["--resume", str(out), "--epochs", "2", "--train-list", str(empty)]) == 2
    assert "lists no files" in capsys.readouterr().err.splitlines()[-1]
    assert (out / "config.json").read_bytes() == saved


def test_a_loader_out_of_memory_names_the_flags_to_lower(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was a traceback ending in DALI's "std::bad_alloc" (status 1). Sides over
    # MAX_SIDE are refused as the flags are parsed now; the bound is lifted here for DALI's
    # own allocation failure, which a batch too large for the memory still meets.
    import dali_cutmix.mixing
    import pipelines.imagenet

    for module in (train.config, pipelines.imagenet, dali_cutmix.mixing):
        monkeypatch.setattr(module, "MAX_SIDE", 10**7)
    assert main(_argv(tiny, tmp_path / "run", "--crop-size", "1000000")) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m train: error: the train loader ran out of memory as it read its first "
        "batches (batches of 8 images of 1000000 x 1000000 pixels and more, a rank): lower "
        "-b/--batch-size or --crop-size/--train-crop-size"
    )
    # the validation loader's: it named --crop-size for --val-resize-size 1000000
    assert main(_argv(tiny, tmp_path / "run2", "--val-resize-size", "1000000")) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m train: error: the val loader ran out of memory as it read its first "
        "batches (batches of 8 images of 1000000 x 1000000 pixels and more, a rank): lower "
        "-b/--batch-size or the validation sizes (--val-resize-size, --val-crop-size, "
        "--crop-size)"
    )


@pytest.mark.parametrize("loader", ["dali", "torchvision"])
def test_a_validation_file_that_is_no_image_stops_the_run_before_training(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture, loader: str
) -> None:
    # It stopped the run at the first validation, an epoch of training later.
    root, out = tmp_path / "data", tmp_path / "run"
    shutil.copytree(tiny, root)
    bad = root / "val" / "s0002" / "s0002_00002.JPEG"  # the last batch's: not read at build
    bad.write_text("<html>404 Not Found</html>\n")
    argv = _argv(root, out, "--loader", loader, "--epochs", "1", "-b", "2")
    assert main(argv) == 4
    scan = out / "scan-val"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m train: error: {str(bad)!r} is not a decodable image (its header, read "
        "before training: not an image format PIL knows). Find every bad file with: python -m "
        f"dali_cutmix.scan {root / 'val'} --out {scan}; then run again with: python -m train "
        f"{shlex.join(argv)} --val-list {scan / 'files.txt'}"
    )
    assert not (out / "checkpoint.pth").exists() and not (out / "metrics.jsonl").exists()
    bad.write_bytes(b"")  # a copy cut off at 0 bytes: the scan's words for it
    assert main(_argv(root, tmp_path / "run-2", "--loader", loader, "--epochs", "1")) == 4
    assert f"{str(bad)!r} is an empty file (0 bytes) (its header, read before training)." in (
        capsys.readouterr().err
    )


def test_a_validation_file_only_dali_cannot_read_stops_the_dali_run_alone(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # A GIF named .JPEG: PIL, the torchvision loader's reader, reads it; DALI does not.
    root = tmp_path / "data"
    shutil.copytree(tiny, root)
    bad = root / "val" / "s0002" / "s0002_00002.JPEG"
    with Image.open(bad) as image:
        image.save(bad, format="GIF")
    argv = _argv(root, tmp_path / "dali", "--epochs", "1", "-b", "2")
    assert main(argv) == 4
    assert (
        f"{str(bad)!r} is not a decodable image (its header, read before training: format GIF "
        "is not one DALI decodes). "
    ) in capsys.readouterr().err.splitlines()[-1]
    assert main(_argv(root, tmp_path / "tv", "--epochs", "1", "--loader", "torchvision")) == 0
    assert _records(tmp_path / "tv")[0]["val_images"] == 9


def test_a_bad_validation_file_keeps_the_trained_epoch_for_a_resume_with_a_val_list(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, out = tmp_path / "data", tmp_path / "run"
    shutil.copytree(tiny, root)
    bad = root / "val" / "s0001" / "s0001_00000.JPEG"
    bad.write_bytes(bad.read_bytes()[:-200])  # truncated: its header reads, its pixels do not
    argv = _argv(root, out, "--loader", "torchvision", "--epochs", "1")
    assert main(argv) == 4  # found by the evaluation, after the epoch's 3 steps
    checkpoint, files = out / "checkpoint.pth", out / "scan-val" / "files.txt"
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith(f"then continue with: python -m train --resume {checkpoint} --val-list {files}")
    )
    state = torch.load(checkpoint, weights_only=True)
    assert (state["epoch"], state["step"], state["scheduler"]["last_epoch"]) == (0, 3, 3)
    good = sorted(p.relative_to(root / "val") for p in (root / "val").rglob("*.JPEG"))
    listed = [
        f"{path} {int(path.parts[0][1:])}" for path in good if path.name != "s0001_00000.JPEG"
    ]
    files.parent.mkdir()
    files.write_text("\n".join(listed) + "\n")  # paths relative to DATA/val
    assert main(["--resume", str(checkpoint), "--val-list", str(files)]) == 0
    (record,) = _records(out)  # the epoch is evaluated, not trained again
    assert (record["train_images"], record["val_images"]) == (24, 8)
    # this command trained none of it: no time or pace to report (they read 0.0)
    assert record["epoch_seconds"] is record["train_images_per_s"] is None
    assert record["resumed_at_step"] == 3  # all three of its steps were trained before
    # the rate of the epoch's last step, which this command did not take (cosine: it read 0.0)
    config = parse_config([*argv, "--output-dir", str(tmp_path / "same-settings")])
    assert record["lr"] == config.optim.lr * train.trainer.lr_factor(
        2, config=config, steps_per_epoch=3
    )
    assert record["lr"] > 0


class _FailingLoader:
    """A loader whose ``at``-th batch of its first epoch raises instead (a disk going away)."""

    def __init__(self, loader, at: int) -> None:
        self.loader, self.at = loader, at
        self.num_classes, self.dataset_size = loader.num_classes, loader.dataset_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for index, batch in enumerate(self.loader):
            if index == self.at:
                raise RuntimeError("the disk went away")
            yield batch

    def state_dict(self):
        return self.loader.state_dict()


class _BadFileInEpoch2:
    """A loader whose 2nd batch of its 2nd epoch meets a bad file."""

    def __init__(self, loader, path: Path) -> None:
        self.loader, self.path, self.epochs = loader, path, 0
        self.num_classes, self.dataset_size = loader.num_classes, loader.dataset_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.epochs += 1
        for index, batch in enumerate(self.loader):
            if (self.epochs, index) == (2, 1):
                raise BadImageError(f"{str(self.path)!r} is not a decodable image", path=None)
            yield batch

    def state_dict(self):
        return self.loader.state_dict()


@pytest.mark.parametrize("before", [False, True], ids=["first epoch", "after a checkpoint"])
def test_weights_broken_before_a_bad_file_are_not_saved_over_the_last_checkpoint(
    tiny: Path,
    bad_tiny: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
    before: bool,
) -> None:
    # A step broke the weights and the next batch had a bad file, before any loss showed it:
    # the NaN weights were written over the last good checkpoint, which --resume then refused.
    caplog.set_level(logging.INFO, logger="train")
    out, checkpoint = tmp_path / "run", tmp_path / "run" / "checkpoint.pth"
    bad = tiny / "train" / "s0002" / "s0002_00003.JPEG"
    if before:  # epoch 1 completes and is saved; epoch 2's 2nd batch meets the bad file
        build = train.trainer.build_loaders

        def failing(*args):
            train_loader, val_loader = build(*args)
            return _BadFileInEpoch2(train_loader, bad), val_loader

        monkeypatch.setattr(train.trainer, "build_loaders", failing)

    def poisoned(call, step, model, *args):  # the step before the bad file's batch
        loss, output = step(model, *args)
        if call == (4 if before else 1):
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return loss, output

    _replace_step(monkeypatch, poisoned)
    assert main(_argv(tiny if before else bad_tiny, out, "--print-freq", "10")) == 4
    kept = (
        f"the last checkpoint, {checkpoint}, holds 1 epoch"
        if before
        else "no checkpoint was written"
    )
    assert _logged(caplog)[-1] == (
        "the weights are no longer finite (a step since the last progress update broke them): "
        f"they were not saved, and {kept}; a --resume continues from there with the same "
        "learning rates, so start a new run with a lower --lr or a longer --warmup-epochs if it "
        "diverges again"
    )
    line = capsys.readouterr().err.splitlines()[-1]
    if before:  # the epoch's checkpoint is left whole, and the line continues from it
        state = torch.load(checkpoint, weights_only=True)
        assert (state["epoch"], state["step"]) == (1, 0)
        assert all(
            torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
        )
        assert f"; then continue with: python -m train --resume {checkpoint} --train-list " in line
    else:  # nothing to continue: the line repeats the command
        assert not checkpoint.exists()
        assert "; then run again with: python -m train --data " in line


def test_a_run_that_fails_before_its_first_step_leaves_no_run_folder(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # its runs/<date-time> held only config.json; the scan the line names writes beside it
    # (into it, it left a run-named folder that held no run)
    root = tmp_path / "all-bad"
    shutil.copytree(tiny, root)
    for path in (root / "train").rglob("*.JPEG"):
        path.write_bytes(b"not a JPEG")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train.config.time, "strftime", lambda form: "20261123-120000")
    argv = _argv(root, tmp_path)[:-4]  # without --output-dir and --print-freq
    assert argv[-2:] == ["-j", "1"]
    assert main(argv) == 4
    line = capsys.readouterr().err.splitlines()[-1]
    scan = "--out runs/20261123-120000-scan-train; then run again with: python -m train "
    assert scan in line
    assert line.endswith(" --train-list runs/20261123-120000-scan-train/files.txt"), line
    assert not (tmp_path / "runs").exists()  # made for the run's folder, and gone with it
    scan_dir = tmp_path / "runs" / "20261123-120000-scan-train"
    assert scan_main([str(root / "train"), "--out", str(scan_dir)]) == 1
    assert not (scan_dir / "files.txt").exists()  # no file decodes: no list, the scan says so
    assert (scan_dir / "bad_files.json").is_file()


def test_any_loader_error_checkpoints_first_and_the_resume_by_position_is_exact(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    flags = ["--loader", "torchvision", "--epochs", "1"]
    run(_config(tiny, tmp_path / "whole", *flags))
    build = train.trainer.build_loaders

    def failing_train_loader(*args):
        train_loader, val_loader = build(*args)
        return _FailingLoader(train_loader, at=2), val_loader

    monkeypatch.setattr(train.trainer, "build_loaders", failing_train_loader)
    out = tmp_path / "failed"
    with pytest.raises(RuntimeError, match="the disk went away"):  # not the user's: traceback
        run(_config(tiny, out, *flags))
    checkpoint = out / "checkpoint.pth"
    assert _logged(caplog)[-1] == (
        "the train loader failed at epoch 1, step 2 of 3; the checkpoint holds every step done; "
        f"once the cause is fixed, continue with: python -m train --resume {checkpoint}"
    )
    state = torch.load(checkpoint, weights_only=True)
    assert (state["epoch"], state["step"], state["scheduler"]["last_epoch"]) == (0, 2, 2)
    monkeypatch.undo()
    save_checkpoint({**state, "loader": [None]}, checkpoint)  # the position alone
    assert run(parse_config(["--resume", str(checkpoint)])).outcome is Outcome.FINISHED
    a, b = _weights(tmp_path / "whole"), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run differs"


def _cli_case(case: str, tiny: Path, bad_tiny: Path, tmp_path: Path) -> tuple[list[str], int, str]:
    """(argv, exit status, the last line of stderr or, for a library's message, its start)."""
    out = tmp_path / "run"
    if case == "bad value":
        message = "--mix-prob must be in [0.0, 1.0], got 2.0"
        return _argv(tiny, out, "--mix-prob", "2"), 2, message
    if case == "missing folder":
        missing = tmp_path / "nowhere"
        message = f"--data {missing}: no such folder"
        return _argv(missing, out), 2, message
    if case == "empty class folder":
        root = tmp_path / "data"
        shutil.copytree(tiny, root)
        for image in (root / "train" / "s0001").iterdir():
            image.unlink()
        message = f"class folder '{root / 'train' / 's0001'}' holds no image"
        return _argv(root, out), 2, message
    if case == "undecodable image":
        bad = bad_tiny / "train" / "s0000" / "s0000_00004.JPEG"
        return _argv(bad_tiny, out), 4, f"'{bad}' is not a decodable image ("
    if case == "unsupported policy":
        message = "--auto-augment augmix is not supported; supported: ta_wide, ra, imagenet"
        return _argv(tiny, out, "--auto-augment", "augmix"), 2, message
    if case == "both spellings":
        message = "--random-erase and --reprob both set RandomErasing's probability; give one"
        return _argv(tiny, out, "--random-erase", "0.1", "--reprob", "0.1"), 2, message
    if case == "test-only without resume":
        message = "--test-only evaluates a checkpoint: give --resume CHECKPOINT"
        return _argv(tiny, out, "--test-only"), 2, message
    two_ranks = _config(tiny, out)  # "rank mismatch": a checkpoint of 2 ranks, mid-epoch
    path = save_checkpoint(
        {
            **dict.fromkeys(("model", "optimizer", "scheduler"), {}),
            **{"epoch": 0, "step": 1, "loader": [None, None], "world_size": 2},
            "config": two_ranks.to_dict(),
        },
        out / "checkpoint.pth",
    )
    message = (
        f"--resume {path} stopped mid-epoch (epoch 1, step 1) on 2 ranks and this run has 1; "
        f"resume it with the same number: torchrun --nproc_per_node 2 -m train --resume {path}"
    )
    return ["--resume", str(path)], 2, message


@pytest.mark.parametrize(
    "case",
    [
        "bad value",
        "missing folder",
        "empty class folder",
        "undecodable image",
        "rank mismatch",
        "unsupported policy",
        "both spellings",
        "test-only without resume",
    ],
)
def test_user_errors_end_python_m_train_with_one_line_and_no_traceback(
    tiny: Path, bad_tiny: Path, tmp_path: Path, case: str
) -> None:
    argv, status, message = _cli_case(case, tiny, bad_tiny, tmp_path)
    command = [sys.executable, "-m", "train", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == status, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.splitlines()[-1]
    if case not in ("empty class folder", "undecodable image"):
        assert last == f"python -m train: error: {message}"
    else:  # the library's message, which goes on with its advice
        assert last.startswith(f"python -m train: error: {message}")


def _torchrun_2(argv: list[str]) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 -m train argv`` from the repository, one thread a rank."""
    command = [sys.executable, *TORCHRUN_2, "-m", "train", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_a_ctrl_c_under_torchrun_stops_every_rank_at_the_next_step(tmp_path: Path) -> None:
    # The ranks agreed on a stop only at --print-freq steps: torchrun, which forwards the
    # Ctrl-C to each rank, killed them 30 s later, often before that step.
    spec = dataclasses.replace(TINY, train_per_class=100)
    root = generate(tmp_path / "data", spec, workers=1, progress=False)
    out = tmp_path / "run"
    argv = [*_argv(root, out, "--epochs", "1", "--print-freq", "1000"), "-b", "2"]
    log = tmp_path / "log.txt"
    with started_command([*TORCHRUN_2, "-m", "train", *argv], log) as process:
        wait_for_text(log, "epoch 1:")
        time.sleep(0.5)
        os.killpg(process.pid, signal.SIGINT)  # torchrun's group: torchrun forwards it
        process.wait(timeout=120)  # torchrun ends in its own SignalException traceback
    text = log.read_text()
    assert "forcefully exiting via 9" not in text and "Connection closed" not in text, text
    assert not re.search(r"\[rank\d\]:.*Traceback", text), text[-3000:]
    stopped = re.search(r"stopped at epoch 1, step (\d+) of 75; continue with", text)
    assert stopped is not None and int(stopped.group(1)) < 75, text[-3000:]
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, int(stopped.group(1)))


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's child ``parent`` that runs ``rank`` (from its environment)."""
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or int((proc / "stat").read_text().split()[3]) != parent:
                continue
            if f"RANK={rank}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except OSError:
            continue
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
def test_a_stop_one_rank_got_during_validation_stops_every_rank(tmp_path: Path) -> None:
    # Each rank decided alone at the epoch's end: rank 1 saved and left, rank 0 went on into
    # the next epoch and died in its first collective ("Connection closed by peer").
    spec = dataclasses.replace(TINY, val_per_class=200)
    root = generate(tmp_path / "data", spec, workers=1, progress=False)
    out = tmp_path / "run"
    argv = [*_argv(root, out, "--epochs", "3"), "-b", "4"]
    log = tmp_path / "log.txt"
    with started_command([*TORCHRUN_2, "-m", "train", *argv], log, ctrl_c=False) as process:
        wait_for_text(log, "val 1:")
        os.kill(_rank_pid(process.pid, 1), signal.SIGTERM)  # rank 1 alone
        assert process.wait(timeout=120) == 1, log.read_text()[-3000:]
    text = log.read_text()
    assert "exitcode  : 3 (pid" in text and "Connection closed" not in text, text[-3000:]
    assert not re.search(r"\[rank\d\]:.*Traceback", text), text[-3000:]  # torchrun's own only
    assert "stopped at epoch 2, step 0 of 3; continue with" in text


@pytest.mark.slow
@pytest.mark.parametrize("split", ["train", "val"])
def test_a_bad_file_one_rank_meets_ends_every_rank_without_a_traceback(
    tiny: Path, tmp_path: Path, split: str
) -> None:
    # The rank that met it left the collectives; the other died in its next one ("Connection
    # closed by peer", a traceback that torchrun named as the root cause; on NCCL, a hang).
    root, out = tmp_path / "data", tmp_path / "run"
    shutil.copytree(tiny, root)
    bad = root / split / "s0001" / ("s0001_00004.JPEG" if split == "train" else "s0001_00001.JPEG")
    bad.write_bytes(b"not a JPEG")
    done = _torchrun_2([*_argv(root, out, "--epochs", "1"), "-b", "4"])
    assert done.returncode == 1, done.stderr[-3000:]
    assert "exitcode  : 4 (pid" in done.stderr, done.stderr[-3000:]
    assert "Connection closed" not in done.stderr
    assert not re.search(r"\[rank\d\]:.*Traceback", done.stderr), done.stderr[-3000:]
    assert f"python -m train: error: '{bad}' is not a decodable image (" in done.stderr
    assert "stops: another rank's data loader failed; " in done.stderr
    # the validation file is in the first batches, which a DALI loader reads as it is built
    assert (out / "checkpoint.pth").exists() == (split == "train")
    if split == "val":
        return
    # Every rank took part in the checkpoint: each one's sums (the failing rank's alone were
    # saved), no data-stream state (the other rank had read the batch of the step not taken).
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert state["loader"] == [None, None] and None not in state["meter"]
    assert 0 < state["step"] < 3
    shutil.copy(tiny / split / "s0001" / bad.name, bad)  # the file fixed
    done = _torchrun_2(["--resume", str(out / "checkpoint.pth")])
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = _records(out)
    assert record["train_images"] == 24  # every rank's images once


@pytest.fixture(scope="module")
def stopped_on_2(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of 2 ranks at epoch 1, step 1 of 3, with each rank's loader state."""
    out = tmp_path_factory.mktemp("stopped")
    done = _torchrun_2([*_argv(tiny, out, "--epochs", "1", "--stop-after-steps", "1"), "-b", "4"])
    assert "stopped at epoch 1, step 1 of 3" in done.stderr, done.stderr[-3000:]
    return out / "checkpoint.pth"


# (point of tests/one_rank_fails.py, rank 1's exit status, whether it leaves a checkpoint)
ONE_RANK_FAILS = [
    ("build", 2, False),  # a DALI loader reads its first batches as it is built
    ("tail", 4, True),  # read after the last batch; the other rank's loader just ends
    ("val-first", 4, True),  # a DDP forward may broadcast buffers, a collective
    ("restore", 4, True),  # a DALI loader reads its first batches as it restores
    ("test-only", 2, True),  # --test-only builds its validation loader alone
]


def _one_rank_fails(
    *args: str, slow_exit_rank: int, cwd: Path = REPO, **env: str
) -> subprocess.CompletedProcess:
    """torchrun of ``tests/one_rank_fails.py args``, whose rank ``slow_exit_rank`` takes 3 s
    to exit once ``main`` returned; ``env`` added to the environment."""
    command = [sys.executable, *TORCHRUN_2, str(REPO / "tests" / "one_rank_fails.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLOW_EXIT_RANK": str(slow_exit_rank), **env}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_ranks_whose_clocks_differ_share_rank_0s_default_output_folder(
    tiny: Path, tmp_path: Path
) -> None:
    """Each rank reads runs/<date-time> from its own clock; rank 1's reads an hour ahead.
    Rank 1's data fails after its last batch: its message names rank 0's folder, where the
    checkpoint is, and no second folder is made."""
    argv = _argv(tiny, tmp_path / "unused", "--epochs", "1", "-b", "4")
    argv = argv[: argv.index("--output-dir")] + argv[argv.index("--output-dir") + 2 :]
    bad = tiny / "train" / "s0001" / "s0001_00001.JPEG"
    done = _one_rank_fails(
        "tail", str(bad), *argv, slow_exit_rank=0, cwd=tmp_path, CLOCK_AHEAD_RANK="1"
    )
    assert done.returncode == 1, done.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()  # rank 0's
    assert (run / "checkpoint.pth").exists() and (run / "config.json").exists()
    assert f"--resume runs/{run.name}/checkpoint.pth" in done.stderr, done.stderr[-3000:]
    assert f"--out runs/{run.name}/scan-train" in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
def test_a_stop_under_torchrun_lists_rank_0_alone(tiny: Path, tmp_path: Path) -> None:
    """Rank 1 takes 3 s to tear down (DALI, CUDA, a loaded machine): rank 0, which exits 3
    after a stop, waits for it. Before, torchrun killed rank 1 and listed it (-15, SIGTERM)."""
    argv = [*_argv(tiny, tmp_path, "--epochs", "1", "--stop-after-steps", "2"), "-b", "4"]
    done = _one_rank_fails("none", "-", *argv, slow_exit_rank=1)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "exitcode  : 3 (pid" in done.stderr and done.stderr.count("exitcode  :") == 1
    assert "stopped at epoch 1, step 2 of 3; continue with: " in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("point, status, saved", ONE_RANK_FAILS, ids=[c[0] for c in ONE_RANK_FAILS])
def test_every_rank_leaves_quietly_where_one_rank_s_data_fails(
    tiny: Path, stopped_on_2: Path, tmp_path: Path, point: str, status: int, saved: bool
) -> None:
    # Each point is one where the ranks agree on a loader failure: without the agreement the
    # rank that failed left, and the other died in its next collective (a traceback that
    # torchrun named as the root cause; on NCCL, a hang).
    out = tmp_path / "run"
    if point in ("restore", "test-only"):
        out.mkdir()
        shutil.copy(stopped_on_2, out / "checkpoint.pth")
        argv = ["--resume", str(out / "checkpoint.pth")]
        argv += ["--test-only"] if point == "test-only" else []
    else:
        argv = [*_argv(tiny, out, "--epochs", "1"), "-b", "4"]
    bad = tiny / ("val" if point == "val-first" else "train") / "s0001" / "s0001_00001.JPEG"
    # rank 0 takes 3 s to exit: rank 1 waits for it, where torchrun killed it (-15) before
    done = _one_rank_fails(point, str(bad), *argv, slow_exit_rank=0)
    text = done.stderr
    assert done.returncode == 1, text[-3000:]  # torchrun's status for a rank's non-zero
    assert f"exitcode  : {status} (pid" in text and "Connection closed" not in text, text[-3000:]
    assert text.count("exitcode  :") == 1, text[-3000:]  # rank 0 exited 0, not -15
    assert not re.search(r"\[rank\d\]:.*Traceback", text), text[-3000:]  # torchrun's own only
    assert text.count("python -m train: error: ") == 1, text[-3000:]
    if status == 2:
        assert "python -m train: error: rank 1's shard cannot be read (made" in text
    else:
        assert f"python -m train: error: '{bad}' is not a decodable image (made" in text
    training = point in ("tail", "val-first")
    assert (
        "rank 0 stops: another rank's data loader failed; "
        + ("the checkpoint holds every step done, and " if training else "")
        + "that rank says how to go on"
        in text
    )
    assert (out / "checkpoint.pth").exists() == saved
    if not training:
        return
    # Both ranks took part in the checkpoint, at the epoch's end: each one's sums and
    # data-stream state (a failed DALI pipeline gives none; this failure left it whole).
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["step"], state["world_size"]) == (0, 3, 2)
    assert None not in state["meter"] and None not in state["loader"]
    done = _torchrun_2(["--resume", str(out / "checkpoint.pth")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "goes on in a new data stream" not in done.stderr
    (record,) = _records(out)
    assert record["train_images"] == 24  # every rank's images once


@pytest.mark.slow
def test_two_process_stop_is_reported_by_rank_0_and_resumes_on_two_ranks(
    tiny: Path, tmp_path: Path
) -> None:
    """torchrun stops all ranks at the first non-zero status: rank 0 alone reports the stop."""
    argv = [*_argv(tiny, tmp_path, "--epochs", "1", "--stop-after-steps", "2"), "-b", "4"]
    done = _torchrun_2(argv)
    checkpoint = tmp_path / "checkpoint.pth"
    assert done.returncode == 1, done.stderr[-3000:]  # torchrun's status for a rank's non-zero
    assert "exitcode  : 3 (pid" in done.stderr and "exitcode  : -15" not in done.stderr
    assert (
        "train.trainer: stopped at epoch 1, step 2 of 3; continue with: "
        f"torchrun --nproc_per_node 2 -m train --resume {checkpoint}\n"
    ) in done.stderr
    state = torch.load(checkpoint, weights_only=True)
    assert (state["epoch"], state["step"], state["world_size"]) == (0, 2, 2)
    assert json.loads((tmp_path / "config.json").read_text())["world_size"] == 2
    done = _torchrun_2(["--resume", str(checkpoint)])
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = _records(tmp_path)
    assert record["train_images"] == 24  # each rank's sums of the stopped part were kept


def test_a_learning_rate_that_diverges_exits_5_and_writes_no_checkpoint(
    tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="train")
    assert main(_argv(tiny, tmp_path, "--lr", "1e30")) == 5  # finite, and far too high
    assert _logged(caplog)[-1] == (
        "training diverged (found at epoch 1, step 2 of 3, learning rate 1e+30, peak --lr "
        "1e+30): the weights are no longer finite (the last loss read: nan); nothing of this "
        "epoch was saved and no checkpoint was written. Start a new run with a lower --lr or a "
        "longer --warmup-epochs (a --resume keeps its learning rates)"
    )
    assert not (tmp_path / "checkpoint.pth").exists()
    assert not (tmp_path / "metrics.jsonl").exists()  # no epoch was completed


@pytest.mark.parametrize(
    "flags, found",
    [
        # a stop right after the step that broke the weights, before any loss shows it
        (["--print-freq", "10", "--stop-after-steps", "2"], "epoch 1, step 2 of 3"),
        # an epoch's last step broke them: they are checked before validation and the save
        (["-b", "24", "--warmup-epochs", "0", "--lr", "3e38"], "epoch 1, step 1 of 1"),
    ],
    ids=["stop", "epoch end"],
)
def test_weights_broken_by_the_step_before_a_save_are_not_saved(
    tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, flags: list[str], found: str
) -> None:
    caplog.set_level(logging.INFO, logger="train")
    assert main([*_argv(tiny, tmp_path, "--lr", "1e30"), *flags]) == 5
    assert _logged(caplog)[-1].startswith(f"training diverged (found at {found}, ")
    assert ": the weights are no longer finite" in _logged(caplog)[-1]
    assert not (tmp_path / "checkpoint.pth").exists()
    assert not (tmp_path / "metrics.jsonl").exists()  # NaN weights were not validated


def _replace_step(monkeypatch: pytest.MonkeyPatch, replace: Callable[..., Any]) -> None:
    """``train.engine._step`` becomes ``replace(call, real_step, *args)``, calls counted from 1."""
    step, calls = train.engine._step, itertools.count(1)
    monkeypatch.setattr(train.engine, "_step", lambda *args: replace(next(calls), step, *args))


def test_a_divergence_keeps_the_last_checkpoint_whole(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="train")

    def poisoned_at_step_5(call, step, model, *args):  # epoch 2, step 2 (3 steps per epoch)
        loss, output = step(model, *args)
        if call == 5:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
            loss = loss * float("nan")
        return loss, output

    _replace_step(monkeypatch, poisoned_at_step_5)
    assert main(_argv(tiny, tmp_path, "--epochs", "3")) == 5
    checkpoint = tmp_path / "checkpoint.pth"
    assert (
        f"the last checkpoint, {checkpoint}, holds 1 epoch. Start a new run"
        in (_logged(caplog)[-1])
    )
    assert _logged(caplog)[-1].startswith("training diverged (found at epoch 2, step 2 of 3, ")
    state = torch.load(checkpoint, weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 0)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert [r["epoch"] for r in _records(tmp_path)] == [1]
    assert (tmp_path / "curves.png").exists()


@pytest.mark.slow
def test_two_ranks_agree_on_a_divergence_and_rank_0_reports_it(tiny: Path, tmp_path: Path) -> None:
    done = _torchrun_2([*_argv(tiny, tmp_path, "--epochs", "1", "--lr", "1e30"), "-b", "4"])
    assert done.returncode == 1, done.stderr[-3000:]  # torchrun's status for a rank's non-zero
    assert "exitcode  : 5 (pid" in done.stderr and "exitcode  : -15" not in done.stderr
    assert done.stderr.count("train.trainer: training diverged (found at epoch 1, step 2 of 3") == 1
    assert not (tmp_path / "checkpoint.pth").exists()


def _skipped_from_step_2(call, step, model, criterion, optimizer, scaler, options, *batch):
    """A ``_replace_step`` stand-in: step 1 is real; from step 2 the loss is inf and nothing
    is updated, as float16's loss scaler skips a step that overflows."""
    if call == 1:
        return step(model, criterion, optimizer, scaler, options, *batch)
    return torch.tensor(float("inf")), model(options.prepare(*batch)[0])


def test_a_loss_that_stays_non_finite_with_finite_weights_is_named_a_divergence(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # What float16's loss scaler does when every forward pass overflows: the loss is inf and
    # the step is skipped, so the weights stay finite and frozen (simulated in float32).
    caplog.set_level(logging.INFO, logger="train")
    _replace_step(monkeypatch, _skipped_from_step_2)
    assert main([*_argv(tiny, tmp_path, "--epochs", "1"), "-b", "4"]) == 5
    assert _logged(caplog)[-1].startswith("training diverged (found at epoch 1, step 4 of 6, ")
    assert (
        "): the loss was not finite at 3 progress updates in a row (last: inf) while the weights "
        "stayed finite: float16's loss scaler skips such steps, so the model had stopped "
        "learning; nothing of this epoch was saved and no checkpoint was written."
    ) in _logged(caplog)[-1]
    assert not (tmp_path / "checkpoint.pth").exists()


def test_a_non_finite_loss_is_counted_across_epochs_shorter_than_the_rule(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Two progress updates per epoch (steps 2 and 3 of 3): the count of 3 in a row was reset
    # at every epoch, so a run that had stopped learning ran to its end with exit status 0.
    caplog.set_level(logging.INFO, logger="train")
    _replace_step(monkeypatch, _skipped_from_step_2)
    assert main(_argv(tiny, tmp_path, "--epochs", "3", "--print-freq", "2")) == 5
    assert _logged(caplog)[-1].startswith("training diverged (found at epoch 2, step 2 of 3, ")
    assert "the loss was not finite at 3 progress updates in a row" in _logged(caplog)[-1]
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=False)["epoch"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("where", ["flags", "loaders"])
def test_a_usage_error_under_torchrun_is_said_once(tiny: Path, tmp_path: Path, where: str) -> None:
    """Each rank printed it (8 lines on an 8-GPU node); a rank tearing down when torchrun
    ended it was listed as killed (-15). Parsing the flags, the host's first rank says it;
    building the loaders, which the ranks agree on, the first rank that failed."""
    if where == "flags":
        argv, message = ["--epochs", "-3"], "--epochs must be an int >= 1, got -3"
    else:  # 24 training images over 2 shards, and a batch of 5000
        argv = [*_argv(tiny, tmp_path / "run", "--epochs", "1"), "-b", "5000"]
        message = "24 images over 2 shard(s) give no batch of 5000 per shard"
    done = _torchrun_2(argv)
    text = done.stderr
    assert done.returncode == 1, text[-3000:]  # torchrun's status for a rank's non-zero
    # once: the other rank was ended by torchrun's SIGTERM as it waited (after its wait's
    # timeout, it would have said its own), and exited 2 then, not -15
    assert text.count("python -m train: error: ") == 1 and message in text, text[-3000:]
    assert text.count("exitcode  : 2 (pid") == 2, text[-3000:]


def test_a_run_started_in_a_folder_another_run_writes_to_now_is_refused(
    tiny: Path, tmp_path: Path, capsys
) -> None:
    # Two runs started together with one --output-dir both passed the check for a run there
    # (neither had written yet): their epochs went into one metrics.jsonl (1, 1, 2, 2) and
    # the checkpoint was the last writer's, without a word.
    out = tmp_path / "run"
    argv = _argv(tiny, out, "--epochs", "1")
    with train.utils.folder_lock(out):  # as the first run holds it while it trains
        assert main(argv) == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"python -m train: error: --output-dir {out}: another run is writing there now "
            f"(process {os.getpid()}); give another folder, or wait until that run ends"
        )
        assert not (out / "metrics.jsonl").exists() and not (out / "checkpoint.pth").exists()
    assert main(argv) == 0  # released: the run goes on, and releases it in turn
    assert main([*argv[:-2], "--epochs", "2", "--resume", str(out)]) == 0
    assert [r["epoch"] for r in _records(out)] == [1, 2]


def test_partial_checkpoints_of_any_host_go_once_a_run_holds_the_folder(
    tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Only a partial file of this host's dead process was removed: after a restart under
    # another host name (a new pod), each kill mid-save left up to a whole checkpoint for good.
    out = tmp_path / "run"
    argv = _argv(tiny, out, "--epochs", "1")
    assert main(argv) == 0
    other_host = out / ".checkpoint.pth.tmp-oldpod-7f9c-4242"
    other_host.write_bytes(bytes(2_000_000))
    caplog.set_level(logging.INFO, logger="train.checkpoint")
    assert main([*argv[:-2], "--epochs", "2", "--resume", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".lock"]
    assert f"removed {other_host} (2.0 MB), left by a run killed while writing it" in [
        r.getMessage() for r in caplog.records
    ]


def test_a_rank_left_by_a_killed_rank_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rank killed outright (SIGKILL: the out-of-memory killer) left the other rank with
    # gloo's 40-line traceback ("... Read error [127.0.0.1]:218: Connection reset by peer.
    # ... GLHF!") and no line of the run's. Measured with torchrun on 2 CPU ranks.
    from train.__main__ import peer_gone

    config = types.SimpleNamespace(output_dir=tmp_path)
    gloo = RuntimeError(
        "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
        "[127.0.0.1]:218: Connection reset by peer. This is typically caused by a remote "
        "worker hanging or bugs in the application."
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert peer_gone(gloo, config, 1) == (
        "rank 1: another rank of the job is gone (Connection reset by peer): it was killed or "
        "it failed (its own output, or torchrun's list of the ranks' statuses, says which); "
        "no checkpoint was written"
    )
    (tmp_path / "checkpoint.pth").write_bytes(b"")
    assert peer_gone(gloo, config, 1).endswith(
        f"; the last checkpoint written, {tmp_path / 'checkpoint.pth'}, is intact: continue "
        f"with: torchrun --nproc_per_node 2 -m train --resume {tmp_path / 'checkpoint.pth'}"
    )
    assert peer_gone(RuntimeError("CUDA out of memory"), config, 1) is None  # its traceback
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process has no peer
    assert peer_gone(gloo, config, 0) is None
