"""``python -m train`` end to end on a tiny generated dataset, on the CPU.

Every run is deterministic (seeded initialisation, seeded loaders, one DALI
thread, fixed torch threads), so resumed and uninterrupted runs are compared
bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train.config
import train.engine
from dali_cutmix import synthetic
from dali_cutmix.synthetic import SyntheticSpec, generate
from train.__main__ import _set_up, main, run
from train.config import Device, TrainConfig, parse_config
from train.data import build_loaders
from train.utils import DistInfo

TINY = SyntheticSpec(num_classes=3, train_per_class=8, val_per_class=3, seed=0, size_scale=0.15)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("data") / "tiny", TINY, workers=1, progress=False)


def _config(root: Path, out: Path, *extra: str) -> TrainConfig:
    """3 classes, 24 training images in 3 batches of 8, 9 validation images."""
    return parse_config(
        [
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
    )


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


@pytest.mark.parametrize("loader", ["dali", "torchvision"])
def test_resumed_run_equals_uninterrupted_run(tiny: Path, tmp_path: Path, loader: str) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run(_config(tiny, whole, "--loader", loader))
    run(_config(tiny, parts, "--loader", loader, "--stop-after-steps", "4"))
    state = torch.load(parts / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 1)  # stopped inside the second epoch
    assert not torch.equal(state["model"]["fc.weight"], _weights(whole)["fc.weight"])
    with pytest.raises(SystemExit):  # other settings would not continue the same run
        _config(
            tiny,
            parts,
            "--loader",
            loader,
            "--resume",
            str(parts / "checkpoint.pth"),
            "--mixup-alpha",
            "0.3",
        )
    run(_config(tiny, parts, "--loader", loader, "--resume", str(parts / "checkpoint.pth")))
    a, b = _weights(whole), _weights(parts)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "weights differ after resuming"
    timing = {"time", "epoch_seconds", "train_images_per_s"}
    strip = [{k: v for k, v in r.items() if k not in timing} for r in _records(whole)]
    assert strip == [{k: v for k, v in r.items() if k not in timing} for r in _records(parts)]


def test_gpu_run_set_up_turns_on_cudnn_autotuning(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    config = dataclasses.replace(_config(tiny, tmp_path), device=Device.GPU)
    _set_up(config, DistInfo())
    assert torch.backends.cudnn.benchmark is True
    assert json.loads((tmp_path / "config.json").read_text())["device"] == "gpu"


def test_ctrl_c_stops_after_the_step_and_checkpoints(
    tiny: Path, tmp_path: Path, monkeypatch
) -> None:
    calls = []
    original = train.engine.correct_topk

    def interrupt_on_second_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(train.engine, "correct_topk", interrupt_on_second_step)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs in the background
    records = run(_config(tiny, tmp_path, "--loader", "torchvision", "--cutmix-alpha", "0"))
    assert records == []  # no epoch completed
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 2)
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


def test_full_run_writes_metrics_config_plot_and_checkpoint(tiny: Path, tmp_path: Path) -> None:
    records = run(_config(tiny, tmp_path, "--lr-schedule", "step", "--lr-step-size", "1"))
    assert [r["epoch"] for r in records] == [0, 1] and records == _records(tmp_path)
    for record in records:
        assert record["val_images"] == 9  # every validation image exactly once
        assert 0 <= record["val_acc1"] <= record["val_acc5"] <= 100
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["data"]["root"] == str(tiny) and saved["mix"]["cutmix_alpha"] == 1.0
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["step"], len(state["loader"])) == (2, 0, 1)


def test_default_main_job_on_a_tiny_embedded_dataset(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(train.config, "EMBEDDED_SPEC", TINY)
    monkeypatch.setenv("DALI_CUTMIX_CACHE", str(tmp_path / "cache"))
    argv = ["--epochs", "1", "-b", "8", "--output-dir", str(tmp_path / "run")]
    main(argv)
    (dataset,) = (tmp_path / "cache").iterdir()
    assert synthetic.is_complete(dataset, TINY)
    (record,) = _records(tmp_path / "run")
    assert record["val_images"] == 9 and record["train_loss"] > 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["arch"] == "resnet18" and saved["data"]["crop_size"] == 64
    assert saved["data"]["embedded"] == TINY.to_dict()

    def fail(*args, **kwargs):
        raise AssertionError("the cached embedded dataset was generated again")

    monkeypatch.setattr(synthetic, "_write_all", fail)
    main([*argv[:-1], str(tmp_path / "again"), "--stop-after-steps", "1"])


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
