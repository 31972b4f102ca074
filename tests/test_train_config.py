"""The command line of ``python -m train``: defaults, derived values and clear errors."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

import train.config
from dali_cutmix.config import MixMode
from train.__main__ import lr_factor
from train.checkpoint import check_resumable, load_checkpoint, save_checkpoint
from train.config import (
    EMBEDDED_SPEC,
    Device,
    LoaderKind,
    Precision,
    Schedule,
    default_workers,
    parse_config,
)
from train.data import build_criterion
from train.utils import DistInfo, SumMeter, correct_topk


def _folder(root: Path, train: list[str], val: list[str]) -> Path:
    for split, classes in (("train", train), ("val", val)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
    return root


def test_embedded_defaults_are_small_and_cpu_friendly() -> None:
    config = parse_config(["--device", "cpu"])
    assert config.data.root is None and config.data.embedded == EMBEDDED_SPEC
    assert (config.arch, config.epochs, config.data.crop_size, config.data.batch_size) == (
        "resnet18",
        6,
        64,
        64,
    )
    assert config.data.loader is LoaderKind.DALI and config.precision is Precision.FP32
    assert config.mix.cutmix_alpha == 1.0 and config.mix.prob == 1.0
    assert config.mix.mode is MixMode.ELEM and config.mix.num_classes == EMBEDDED_SPEC.num_classes
    assert config.data.dataset_dir.parent == Path("data")
    assert config.optim.nesterov and config.optim.schedule is Schedule.COSINE


def test_data_defaults_follow_imagenet_recipes(tmp_path: Path) -> None:
    root = _folder(tmp_path, ["b", "a", "c"], ["a", "b", "c"])
    config = parse_config(
        [
            "--data",
            str(root),
            "--device",
            "cpu",
            "-b",
            "128",
            "--loader",
            "torchvision",
            "--mixup-alpha",
            "0.2",
            "--label-smoothing",
            "0.1",
        ]
    )
    assert config.data.classes == ("a", "b", "c") and config.mix.num_classes == 3
    assert (config.arch, config.epochs, config.data.crop_size, config.data.resize_size) == (
        "resnet50",
        90,
        224,
        256,
    )
    assert config.optim.lr == pytest.approx(0.05)  # 0.1 * 128 / 256
    assert config.optim.warmup_epochs == 5.0
    assert config.mix.mode is MixMode.BATCH  # torchvision mixes per batch
    assert config.data.dataset_dir == root


def test_paper_recipe_parses(tmp_path: Path) -> None:
    root = _folder(tmp_path, ["a", "b"], ["a", "b"])
    config = parse_config(
        [
            "--data",
            str(root),
            "--device",
            "cpu",
            "--arch",
            "resnet50",
            "-b",
            "256",
            "--lr",
            "0.1",
            "--epochs",
            "300",
            "--lr-schedule",
            "step",
            "--lr-step-size",
            "75",
            "--warmup-epochs",
            "0",
            "--cutmix-alpha",
            "1",
            "--mix-prob",
            "1",
            "--mix-mode",
            "batch",
        ]
    )
    steps = 10
    assert lr_factor(0, config=config, steps_per_epoch=steps) == 1.0
    assert lr_factor(75 * steps - 1, config=config, steps_per_epoch=steps) == 1.0
    assert lr_factor(75 * steps, config=config, steps_per_epoch=steps) == pytest.approx(0.1)
    assert lr_factor(225 * steps, config=config, steps_per_epoch=steps) == pytest.approx(1e-3)


def test_warmup_then_cosine() -> None:
    config = parse_config(["--device", "cpu", "--epochs", "5", "--warmup-epochs", "1"])
    steps = 4
    factors = [lr_factor(s, config=config, steps_per_epoch=steps) for s in range(21)]
    assert factors[0] == pytest.approx(0.01)
    assert factors[2] == pytest.approx(0.01 + 0.99 * 2 / 4)
    assert factors[4] == 1.0  # warmup over: the peak
    assert factors[12] == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert factors[20] == pytest.approx(0.0)


def test_default_warmup_shrinks_with_short_runs() -> None:
    assert parse_config(["--device", "cpu", "--epochs", "1"]).optim.warmup_epochs == 0.2


def test_resolved_config_is_plain_json(tmp_path: Path) -> None:
    config = parse_config(["--device", "cpu", "--cutmix-minmax", "0.2", "0.8"])
    data = config.to_dict()
    assert data["mix"]["cutmix_minmax"] == [0.2, 0.8] and data["data"]["loader"] == "dali"
    assert data["data"]["embedded"]["num_classes"] == EMBEDDED_SPEC.num_classes
    assert '"device": "cpu"' in config.to_json()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cutmix-alpha", "-1"], "cutmix_alpha must be in"),
        (["--mix-prob", "1.5"], "prob must be in"),
        (["--switch-prob", "-0.1"], "switch_prob must be in"),
        (["--label-smoothing", "1"], "label_smoothing must be in"),
        (["--cutmix-minmax", "0.8", "0.2"], "min <= max"),
        (["--epochs", "0"], "epochs must be > 0"),
        (["--batch-size", "0"], "batch_size must be an int >= 1"),
        (["--crop-size", "300", "--resize-size", "256"], "resize_size (256) must be >= crop_size"),
        (["--lr", "0"], "lr must be > 0"),
        (["--momentum", "0"], "Nesterov needs momentum > 0"),
        (["--warmup-epochs", "7"], "warmup_epochs (7.0) must be <= epochs (6)"),
        (["--loader", "torchvision", "--mix-mode", "elem"], "mixes per batch only"),
        (
            ["--loader", "torchvision", "--mix-mode", "batch", "--cutmix-minmax", "0.2", "0.5"],
            "--cutmix-minmax needs --loader dali",
        ),
        (["--amp", "fp16"], "--amp fp16 needs a GPU"),
        (["--arch", "vgg16"], "invalid choice: 'vgg16'"),
        (["--mix-mode", "row"], "invalid choice: 'row'"),
        (["--resume", "/nonexistent/checkpoint.pth"], "no such checkpoint file"),
        (["--data", "/nonexistent/imagenet"], "no train/ folder"),
    ],
)
def test_bad_flags_fail_at_start(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--device", "cpu", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_mismatched_class_folders_fail_at_start(tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path, ["a", "b"], ["a"])
    with pytest.raises(SystemExit):
        parse_config(["--data", str(root), "--device", "cpu"])
    assert "train/ and val/ have different classes" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_gpu_without_cuda_fails_at_start(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_config(["--device", "gpu"])
    assert "CUDA is not available" in capsys.readouterr().err


def test_gpu_run_defaults_resolve_without_cuda(monkeypatch) -> None:
    """What ``--device gpu`` resolves to, on a 32-core node, checked on the CPU."""
    monkeypatch.setattr(train.config, "_resolve_device", lambda name: Device(name))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    monkeypatch.setattr(os, "cpu_count", lambda: 32)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    gpu = parse_config(["--device", "gpu"])
    assert (gpu.device, gpu.precision, gpu.channels_last) == (Device.GPU, Precision.BF16, True)
    # DALI's threads on the GPU only feed the decoder: capped at 8 unless -j says otherwise.
    assert gpu.data.workers == 8 == default_workers(LoaderKind.DALI, Device.GPU)
    assert parse_config(["--device", "gpu", "-j", "12"]).data.workers == 12
    assert parse_config(["--device", "gpu", "--loader", "torchvision"]).data.workers == 32
    assert parse_config(["--device", "cpu"]).data.workers == 32
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # torchrun --nproc_per_node 8
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert default_workers(LoaderKind.DALI, Device.GPU) == 4
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert parse_config(["--device", "gpu"]).precision is Precision.FP16


def test_criterion_smooths_only_unmixed_integer_targets() -> None:
    mixed = parse_config(["--device", "cpu", "--label-smoothing", "0.1"])
    plain = parse_config(["--device", "cpu", "--label-smoothing", "0.1", "--cutmix-alpha", "0"])
    assert build_criterion(mixed).label_smoothing == 0.0  # the loader's soft targets have it
    assert build_criterion(plain).label_smoothing == 0.1


def test_correct_topk_takes_the_argmax_of_soft_targets() -> None:
    output = torch.tensor(
        [
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            [0.0, 9.0, 1.0, 2.0, 3.0, 4.0],
        ]
    )
    labels = torch.tensor([0, 0, 2])
    assert correct_topk(output, labels, (1, 5)).tolist() == [1.0, 2.0]
    soft = torch.nn.functional.one_hot(labels, 6).float() * 0.7 + 0.05
    soft[1] = torch.tensor([0.4, 0.0, 0.0, 0.0, 0.0, 0.6])  # mostly class 5: a top-1 hit
    assert correct_topk(output, soft, (1, 5)).tolist() == [2.0, 3.0]


def test_sum_meter_weights_by_batch_size() -> None:
    meter = SumMeter(torch.device("cpu"))
    meter.update(torch.tensor(2.0), 4, torch.tensor([3.0, 4.0]))
    meter.update(torch.tensor(1.0), 2, torch.tensor([0.0, 1.0]))
    summary = meter.summary(DistInfo())
    assert summary["loss"] == pytest.approx(10 / 6)
    assert summary["acc1"] == pytest.approx(50.0) and summary["acc5"] == pytest.approx(500 / 6)


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
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_checkpoint(tmp_path / "evil.pth")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a training checkpoint"):
        load_checkpoint(tmp_path / "other.pth")


def test_resuming_refuses_changed_settings_but_not_harmless_ones() -> None:
    saved = parse_config(["--device", "cpu"]).to_dict()
    check_resumable(saved, {**saved, "print_freq": 50, "output_dir": "elsewhere"})
    changed = {**saved, "arch": "resnet50", "mix": {**saved["mix"], "mixup_alpha": 0.2}}
    with pytest.raises(ValueError, match="arch: 'resnet18' in the checkpoint, 'resnet50' now"):
        check_resumable(saved, changed)
    with pytest.raises(ValueError, match="mix.mixup_alpha: 0.0 in the checkpoint, 0.2 now"):
        check_resumable(saved, changed)
