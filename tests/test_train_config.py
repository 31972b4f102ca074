"""The command line of ``python -m train``: defaults, derived values and clear errors."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest
import torch

import train.config
from dali_cutmix.config import MixMode
from train.__main__ import lr_factor
from train.checkpoint import save_checkpoint
from train.config import (
    EMBEDDED_SPEC,
    FLAGS,
    RESUME_MAY_CHANGE,
    Device,
    LoaderKind,
    Precision,
    Schedule,
    TrainConfig,
    default_workers,
    get_args_parser,
    parse_config,
    resume_changes,
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
        (["--cutmix-alpha", "-1"], "--cutmix-alpha must be in [0.0, inf], got -1.0"),
        (["--mix-prob", "1.5"], "--mix-prob must be in [0.0, 1.0], got 1.5"),
        (["--mix-p", "2"], "--mix-prob must be in [0.0, 1.0], got 2.0"),  # argparse's prefix
        (["--switch-prob", "-0.1"], "--switch-prob must be in [0.0, 1.0], got -0.1"),
        (["--label-smoothing", "1"], "--label-smoothing must be in [0.0, 1.0), got 1.0"),
        (["--smoothing", "1"], "--smoothing must be in [0.0, 1.0), got 1.0"),  # as typed
        (["--cutmix-minmax", "0.8", "0.2"], "--cutmix-minmax must have min <= max, got (0.8, 0.2)"),
        (["--epochs", "0"], "--epochs must be > 0, got 0"),
        (["--batch-size", "0"], "--batch-size must be an int >= 1, got 0"),
        (["-b", "0"], "-b must be an int >= 1, got 0"),
        (["-j", "0"], "-j must be an int >= 1, got 0"),
        (
            ["--crop-size", "300", "--resize-size", "256"],
            "--resize-size (256) must be >= --crop-size (300)",
        ),
        (["--lr", "0"], "--lr must be > 0, got 0.0"),
        (["--wd", "-1"], "--wd must be >= 0, got -1.0"),
        (["--weight-decay", "-1"], "--weight-decay must be >= 0, got -1.0"),
        (["--lr-step-size", "0"], "--lr-step-size must be > 0, got 0"),
        (["--lr-gamma", "2"], "--lr-gamma must be in (0, 1], got 2.0"),
        (["--momentum", "0"], "Nesterov needs momentum > 0; pass --no-nesterov or --momentum"),
        (["--warmup-epochs", "7"], "--warmup-epochs (7.0) must be <= --epochs (6)"),
        (["--print-freq", "0"], "--print-freq must be > 0, got 0"),
        (["--stop-after-steps", "0"], "--stop-after-steps must be > 0, got 0"),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
        (
            ["--loader", "torchvision", "--mix-mode", "elem"],
            "--loader torchvision mixes per batch only (torchvision.transforms.v2.CutMix); "
            "--mix-mode elem needs --loader dali",
        ),
        (
            ["--loader", "torchvision", "--mix-mode", "batch", "--cutmix-minmax", "0.2", "0.5"],
            "--cutmix-minmax needs --loader dali (torchvision's CutMix has no minmax)",
        ),
        (["--amp", "fp16"], "--amp fp16 needs a GPU (it uses a GradScaler); use bf16 or off"),
        (
            ["--resume", "/nonexistent/checkpoint.pth"],
            "--resume /nonexistent/checkpoint.pth: no such checkpoint file",
        ),
        (
            ["--data", "/nonexistent/imagenet"],
            "--data /nonexistent/imagenet: no train/ folder (expected /nonexistent/imagenet/train)",
        ),
        (
            ["--train-list", "/nonexistent/files.txt"],
            "--train-list /nonexistent/files.txt: no such file",
        ),
    ],
)
def test_bad_flags_fail_at_start_with_one_line_naming_the_flag(
    argv: list[str], message: str, capsys
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--device", "cpu", *argv])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"python -m train: error: {message}\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--arch", "vgg16"], "argument --arch: invalid choice: 'vgg16'"),
        (["--mix-mode", "row"], "argument --mix-mode: invalid choice: 'row'"),
    ],
)
def test_argparse_errors_keep_argparse_usage(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--device", "cpu", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m train") and message in err.splitlines()[-1]


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


def test_resuming_refuses_changed_settings_but_not_harmless_ones() -> None:
    saved = parse_config(["--device", "cpu"]).to_dict()
    more = {**saved, "print_freq": 50, "output_dir": "elsewhere", "epochs": 9}
    assert resume_changes(saved, more, {}) == []
    changed = {**saved, "arch": "resnet50", "mix": {**saved["mix"], "mixup_alpha": 0.2}}
    assert resume_changes(saved, changed, {"mixup_alpha": "--mixup-alpha"}) == [
        "arch is resnet18 in the checkpoint but resnet50 here",
        "--mixup-alpha 0.2 differs from the checkpoint's 0.0",
    ]
    assert resume_changes(saved, {**saved, "epochs": 5}, {"epochs": "--epochs"}) == [
        "--epochs 5 is fewer than the checkpoint's 6"
    ]
    no_nesterov = {**saved, "optim": {**saved["optim"], "nesterov": False}}
    assert resume_changes(saved, no_nesterov, {"nesterov": "--no-nesterov"}) == [
        "--no-nesterov differs from the checkpoint's --nesterov"
    ]


def test_every_flag_names_one_configuration_field() -> None:
    """FLAGS is the one map between fields and flags: errors and --resume rely on it."""
    dests = {a.dest for a in get_args_parser()._actions if a.dest != "help"}
    assert {dest for dest, _ in FLAGS.values()} == dests
    fields = set(_flat(parse_config(["--device", "cpu"]).to_dict()))
    derived = {f for f in fields if f.startswith(("data.classes", "data.embedded."))}
    assert set(FLAGS) == fields - derived - {"mix.num_classes"}  # set by the dataset
    assert RESUME_MAY_CHANGE.issubset(FLAGS)


def test_help_documents_the_exit_statuses_and_resuming() -> None:
    text = get_args_parser().format_help()
    assert "\nexit status:\n  0    trained to the last epoch" in text
    assert "\n  3    stopped by Ctrl-C, SIGTERM or --stop-after-steps;" in text
    assert "\nresuming:\n  --resume RUN/checkpoint.pth alone continues a run" in text


def _flat(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _checkpoint(path: Path, config: TrainConfig, *, step: int = 0, ranks: int = 1) -> Path:
    """A checkpoint file of ``config`` stopped at ``step`` of epoch 1 (no weights needed)."""
    state = {
        "model": {},
        "optimizer": {},
        "scheduler": {},
        "epoch": 0,
        "step": step,
        "loader": [None] * ranks,
        "world_size": ranks,
        "config": config.to_dict(),
    }
    return save_checkpoint(state, path)


@pytest.fixture
def resumable(tmp_path: Path) -> tuple[TrainConfig, Path]:
    """A run's configuration with non-default flags, and its checkpoint."""
    root = _folder(tmp_path / "data", ["a", "b"], ["a", "b"])
    original = parse_config(
        [
            "--data",
            str(root),
            "--device",
            "cpu",
            "--lr",
            "0.3",
            "--epochs",
            "7",
            "--mixup-alpha",
            "0.2",
            "--no-nesterov",
            "--stop-after-steps",
            "4",
            "-j",
            "2",
            "--output-dir",
            str(tmp_path / "run"),
        ]
    )
    return original, _checkpoint(tmp_path / "run" / "checkpoint.pth", original, step=2)


def test_resume_alone_takes_the_configuration_from_the_checkpoint(resumable) -> None:
    original, path = resumable
    resumed = parse_config(["--resume", str(path)])
    # --stop-after-steps is not inherited: the continued run goes on to the end.
    assert resumed == dataclasses.replace(original, resume=path, stop_after_steps=None)
    again = ["--lr", "0.3", "--no-nesterov", "--mixup-alpha", "0.2", "--data"]  # as before
    assert parse_config(["--resume", str(path), *again, str(original.data.root)]) == resumed


def test_resume_takes_the_flags_that_may_change(resumable, tmp_path: Path) -> None:
    original, path = resumable
    files = tmp_path / "scan" / "files.txt"
    files.parent.mkdir()
    files.write_text("a/x.JPEG 0\n")
    argv = ["--resume", str(path), "--epochs", "9", "-j", "3", "--print-freq", "5"]
    argv += ["--stop-after-steps", "2", "--train-list", str(files), "--val-list", str(files)]
    argv += ["--output-dir", str(tmp_path / "more"), "--deterministic", "--cache-dir", "c"]
    data = dataclasses.replace(
        original.data, workers=3, train_list=files, val_list=files, cache_dir=Path("c")
    )
    assert parse_config(argv) == dataclasses.replace(
        original,
        data=data,
        epochs=9,
        print_freq=5,
        stop_after_steps=2,
        deterministic=True,
        resume=path,
        output_dir=tmp_path / "more",
    )


@pytest.mark.parametrize(
    "argv, reasons",
    [
        (["--lr", "0.2"], "--lr 0.2 differs from the checkpoint's 0.3"),
        (["--epochs", "5"], "--epochs 5 is fewer than the checkpoint's 7"),
        (["--nesterov"], "--nesterov differs from the checkpoint's --no-nesterov"),
        (
            ["--arch", "resnet18", "-b", "64"],
            "--arch resnet18 differs from the checkpoint's resnet50; "
            "-b 64 differs from the checkpoint's 256",
        ),
        (["--mix-p", "0.5"], "--mix-prob 0.5 differs from the checkpoint's 1.0"),
    ],
)
def test_resume_refuses_other_changes_in_one_line_naming_the_typed_flags(
    resumable, argv: list[str], reasons: str, capsys
) -> None:
    _, path = resumable
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--resume", str(path), *argv])
    assert exit_info.value.code == 2
    may_change = (
        "on resume only --epochs (upward), --train-list, --val-list, -j/--workers, "
        "--print-freq, --output-dir, --stop-after-steps, --cache-dir and --deterministic may "
        "change"
    )
    assert capsys.readouterr().err == f"python -m train: error: {path}: {reasons}; {may_change}\n"


def test_a_mid_epoch_checkpoint_of_2_ranks_asks_for_2_ranks_at_once(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    root = _folder(tmp_path / "data", ["a", "b"], ["a", "b"])
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun --nproc_per_node 2
    two_ranks = parse_config(["--data", str(root), "--device", "cpu"])
    assert two_ranks.optim.lr == 0.2  # 0.1 x 2 ranks x 256 / 256: 1 rank's default differs
    path = _checkpoint(tmp_path / "mid" / "checkpoint.pth", two_ranks, step=3, ranks=2)
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--resume", str(path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"python -m train: error: --resume {path} stopped mid-epoch (epoch 1, step 3) on 2 "
        f"ranks and this run has 1; resume it with the same number: torchrun --nproc_per_node "
        f"2 -m train --resume {path}\n"
    )
    # Between epochs the number of ranks may change (the schedule follows the new one).
    at_start = _checkpoint(tmp_path / "start" / "checkpoint.pth", two_ranks, step=0, ranks=2)
    assert parse_config(["--resume", str(at_start)]).optim.lr == 0.2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_resuming_a_gpu_run_without_cuda_says_so(resumable, tmp_path: Path, capsys) -> None:
    original, _ = resumable
    gpu = dataclasses.replace(original, device=Device.GPU)
    path = _checkpoint(tmp_path / "gpu" / "checkpoint.pth", gpu)
    with pytest.raises(SystemExit):
        parse_config(["--resume", str(path)])
    assert capsys.readouterr().err == (
        f"python -m train: error: --resume {path}: the run trained on the GPU and CUDA is not "
        "available here; resume it on a machine with a GPU\n"
    )
