"""The command line of ``python -m train``: defaults, derived values and clear errors."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest
import torch

import train.config
from dali_cutmix.config import (
    AugmentConfig,
    AutoAugment,
    EraseMode,
    Interpolation,
    MixMode,
    flatten,
)
from train.checkpoint import save_checkpoint
from train.config import (
    ALIASES,
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
    resume_config,
)
from train.data import build_criterion
from train.ema import ema_decay
from train.trainer import _saved_meter, lr_factor
from train.utils import (
    DistInfo,
    EpochSums,
    MetricsError,
    MetricsFile,
    SumMeter,
    correct_topk,
)


def _folder(root: Path, train: list[str], val: list[str]) -> Path:
    for split, classes in (("train", train), ("val", val)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
    return root


def test_embedded_defaults_are_small_and_cpu_friendly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DALI_CUTMIX_CACHE", raising=False)  # the user's cache would move it
    config = parse_config(["--device", "cpu"])
    assert config.data.root is None and config.data.embedded == EMBEDDED_SPEC
    assert (config.arch, config.epochs, config.data.train_crop_size, config.data.batch_size) == (
        "resnet18",
        6,
        64,
        64,
    )
    assert (config.data.val_crop_size, config.data.val_resize_size) == (64, 73)  # 64 * 8 / 7
    assert config.data.interpolation is Interpolation.BILINEAR
    assert config.augment == AugmentConfig() and not config.augment.enabled
    assert not config.model_ema and not config.test_only
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
    data = config.data
    assert (config.arch, config.epochs, data.train_crop_size, data.val_resize_size) == (
        "resnet50",
        90,
        224,
        256,
    )
    assert data.val_crop_size == 224
    assert config.optim.lr == pytest.approx(0.05)  # 0.1 * 128 / 256
    assert config.optim.warmup_epochs == 5.0
    assert config.mix.mode is MixMode.BATCH  # torchvision mixes per batch
    assert config.data.dataset_dir == root


def test_a_relative_data_folder_is_saved_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Saved as typed ("tiny"), a --resume or --config from another folder failed with
    # "--data tiny: no train/ folder", naming a flag the user had not typed.
    root = _folder(tmp_path, ["a", "b"], ["a", "b"])
    monkeypatch.chdir(root.parent)
    config = parse_config(["--data", root.name, "--device", "cpu"])
    assert config.data.root == root and config.data.root.is_absolute()


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


def _refused(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """What ``parse_config(argv)`` printed on stderr as it ended with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cutmix-alpha", "-1"], "--cutmix-alpha must be a finite number >= 0.0, got -1.0"),
        (["--cutmix-alpha", "inf"], "--cutmix-alpha must be a finite number >= 0.0, got inf"),
        (["--mix-prob", "1.5"], "--mix-prob must be in [0.0, 1.0], got 1.5"),
        (["--mix-prob", "2"], "--mix-prob must be in [0.0, 1.0], got 2.0"),
        (["--switch-prob", "-0.1"], "--switch-prob must be in [0.0, 1.0], got -0.1"),
        (["--label-smoothing", "1"], "--label-smoothing must be in [0.0, 1.0), got 1.0"),
        (["--smoothing", "1"], "--smoothing must be in [0.0, 1.0), got 1.0"),  # as typed
        (["--cutmix-minmax", "0.8", "0.2"], "--cutmix-minmax must have min <= max, got (0.8, 0.2)"),
        (["--epochs", "0"], "--epochs must be an int >= 1, got 0"),
        # not the default warmup derived from it (was: --warmup-epochs ... got -0.6)
        (["--epochs", "-3"], "--epochs must be an int >= 1, got -3"),
        (["--batch-size", "0"], "--batch-size must be an int >= 1, got 0"),
        (["-b", "0"], "-b must be an int >= 1, got 0"),
        # it was the library's ValueError, a traceback, once the loaders were built
        (["--crop-size", "100000"], "--crop-size must be an int from 1 to 32768, got 100000"),
        (
            ["--val-resize-size", "40000"],
            "--val-resize-size must be an int from 1 to 32768, got 40000",
        ),
        (["-j", "0"], "-j must be an int >= 1, got 0"),
        (
            ["-j", "100000"],  # DALI's thread pool aborted the process (SIGABRT)
            f"-j must be at most {max(16, 4 * (os.cpu_count() or 1))} (the larger of 16 and 4 "
            f"per CPU of this machine's {os.cpu_count() or 1}: no more threads or worker "
            "processes than that can be busy), got 100000",
        ),
        (["--val-list", "/"], "--val-list /: a folder; give a file of 'path label' lines"),
        (
            ["--crop-size", "300", "--resize-size", "256"],
            "--resize-size (256) must be >= --crop-size (300)",
        ),
        (["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
        (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
        # torch's SGD takes them as float32: a traceback ("value cannot be converted to type
        # float without overflow"), status 1, once the first step ran
        (["--lr", "1e39"], "--lr must be a positive float32, got 1e+39, which is inf in float32"),
        (["--lr", "1e-50"], "--lr must be a positive float32, got 1e-50, which is 0.0 in float32"),
        (
            ["--wd", "1e39"],
            "--wd must be 0 (off) or a positive float32, got 1e+39, which is inf in float32",
        ),
        (
            ["--weight-decay", "1e-50"],
            "--weight-decay must be 0 (off) or a positive float32, got 1e-50, which is 0.0 in "
            "float32",
        ),
        (["--wd", "-1"], "--wd must be a finite number >= 0, got -1.0"),
        (["--wd", "nan"], "--wd must be a finite number >= 0, got nan"),
        (["--seed", str(2**64)], f"--seed must be in [0, 2**32), got {2**64}"),
        (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0, got -1.0"),
        (["--lr-step-size", "0"], "--lr-step-size must be an int >= 1, got 0"),
        (["--lr-gamma", "2"], "--lr-gamma must be in (0, 1], got 2.0"),
        (["--momentum", "0"], "Nesterov needs momentum > 0; pass --no-nesterov or --momentum"),
        (["--warmup-epochs", "7"], "--warmup-epochs (7.0) must be <= --epochs (6)"),
        (["--print-freq", "0"], "--print-freq must be an int >= 1, got 0"),
        (["--stop-after-steps", "0"], "--stop-after-steps must be an int >= 1, got 0"),
        (["--seed", "-1"], "--seed must be in [0, 2**32), got -1"),
        (
            ["--loader", "torchvision", "--mix-mode", "elem"],
            "--loader torchvision mixes per batch only (torchvision.transforms.v2.CutMix); "
            "--mix-mode elem needs --loader dali",
        ),
        (
            ["--loader", "torchvision", "--mix-mode", "batch", "--cutmix-minmax", "0.2", "0.5"],
            "--cutmix-minmax needs --loader dali (torchvision's CutMix has no minmax)",
        ),
        (
            ["--cutmix-minmax", "0.2", "0.5", "--no-correct-lam"],
            "--cutmix-minmax=(0.2, 0.5) draws box sides with no lambda to keep: its label weight "
            "is always the box's area (timm's rule), so --correct-lam cannot be turned off with it",
        ),
        (
            ["-b", "1", "--crop-size", "32"],
            "-b 1 with --crop-size 32: BatchNorm needs more than one value per channel in "
            "training, and at 32 px or less ResNet's last feature map is 1 x 1; use a batch of "
            "2 or more, or a larger crop",
        ),
        (["--amp", "fp16"], "--amp fp16 needs a GPU (it uses a GradScaler); use bf16 or off"),
        (
            ["--resume", "/nonexistent/checkpoint.pth"],
            "--resume /nonexistent/checkpoint.pth: no such checkpoint file",
        ),
        (
            ["--data", "/nonexistent/imagenet"],
            "--data /nonexistent/imagenet: no such folder",
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
    assert _refused(["--device", "cpu", *argv], capsys) == f"python -m train: error: {message}\n"


def test_a_cache_folder_from_the_environment_is_named_as_such(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    # It read "--cache-dir ...", a flag the user never typed.
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    monkeypatch.setenv("DALI_CUTMIX_CACHE", str(a_file / "cache"))
    assert _refused(["--device", "cpu"], capsys) == (
        f"python -m train: error: the cache folder ($DALI_CUTMIX_CACHE) {a_file / 'cache'}: "
        f"cannot be made, {a_file} is not a folder\n"
    )
    other = tmp_path / "other.txt"
    other.write_text("")
    assert _refused(["--device", "cpu", "--cache-dir", str(other / "c")], capsys) == (
        f"python -m train: error: --cache-dir {other / 'c'}: cannot be made, {other} is not "
        "a folder\n"
    )


def test_output_and_cache_folders_are_checked_before_anything_runs(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    prefix = "python -m train: error: "
    assert _refused(["--device", "cpu", "--output-dir", str(a_file)], capsys) == (
        f"{prefix}--output-dir {a_file}: not a folder\n"
    )
    assert _refused(["--device", "cpu", "--cache-dir", str(a_file / "data")], capsys) == (
        f"{prefix}--cache-dir {a_file / 'data'}: cannot be made, {a_file} is not a folder\n"
    )
    fresh = tmp_path / "new" / "run"
    config = parse_config(["--device", "cpu", "--output-dir", str(fresh)])
    assert config.output_dir == fresh and not fresh.exists()  # made by the run, not the parse
    assert list(tmp_path.iterdir()) == [a_file]  # the probe folder is gone too


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="Linux's /proc")
def test_a_folder_where_no_folder_can_be_made_is_one_line(capsys) -> None:
    # /proc says yes to os.access as root, and the run's mkdir failed with a traceback
    prefix = "python -m train: error: "
    assert _refused(["--device", "cpu", "--output-dir", "/proc/out"], capsys) == (
        f"{prefix}--output-dir /proc/out: cannot be made, /proc takes no folder "
        "(No such file or directory)\n"
    )


def test_a_read_only_parent_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import errno
    import tempfile

    cache = tmp_path / "cache"
    cache.mkdir()
    writable = [cache]
    make_folder = tempfile.mkdtemp

    def read_only(**kwargs: object) -> str:  # as a read-only mount answers, even to root
        if kwargs["dir"] in writable:
            return make_folder(**kwargs)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    out = tmp_path / "runs" / "a"
    argv = ["--device", "cpu", "--cache-dir", str(cache), "--output-dir", str(out)]
    assert _refused(argv, capsys) == (
        f"python -m train: error: --output-dir {out}: cannot be made, {tmp_path} is not writable\n"
    )
    # An existing cache folder may be read only (the embedded set is there already; where it
    # is not, its generation names the folder): it is not probed, unlike the output folder.
    writable.clear()
    assert _refused(argv, capsys) == (
        f"python -m train: error: --output-dir {out}: cannot be made, {tmp_path} is not writable\n"
    )


def test_a_new_run_refuses_a_folder_holding_another_run(tmp_path: Path, capsys) -> None:
    # A second run there would append its epochs to the first's metrics.jsonl and
    # overwrite its checkpoint.
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    err = _refused(["--device", "cpu", "--output-dir", str(run)], capsys)
    # metrics alone: a run killed before its first checkpoint was whole (SIGKILL, OOM); the
    # line said only "already holds a run (metrics.jsonl)", and --resume found no checkpoint
    assert err == (
        f"python -m train: error: --output-dir {run} already holds a run that wrote no "
        "checkpoint.pth (metrics.jsonl only: it ended before its first checkpoint was written "
        "whole, so it cannot be continued); give another folder, or delete that one to start "
        "again there\n"
    )
    assert _refused(["--resume", str(run)], capsys) == (
        f"python -m train: error: --resume {run}: a folder without a checkpoint.pth; give the "
        "checkpoint file of a run (RUN_DIR/checkpoint.pth) or its folder (its metrics.jsonl "
        "is of a run that ended before its first checkpoint was written whole: there is "
        "nothing to continue)\n"
    )
    (run / "checkpoint.pth").write_bytes(b"")
    err = _refused(["--device", "cpu", "--output-dir", str(run), "--epochs", "2"], capsys)
    assert err == (
        f"python -m train: error: --output-dir {run} already holds a run (metrics.jsonl and "
        f"checkpoint.pth); give another folder, or continue that run with: python -m train "
        f"--resume {run / 'checkpoint.pth'}\n"
    )
    (run / "metrics.jsonl").unlink()
    (run / "checkpoint.pth").unlink()
    (run / "curves.png").write_bytes(b"")  # no run's metrics or checkpoint: a usable folder
    assert parse_config(["--device", "cpu", "--output-dir", str(run)]).output_dir == run


def test_an_output_dir_inside_a_split_folder_is_refused(tmp_path: Path, capsys) -> None:
    # Its curves.png would be read as a training image, its folder as a class.
    root = _folder(tmp_path / "data", ["a", "b"], ["a", "b"])
    for out in (root / "train" / "runs", root / "val", root / "train" / "a" / "r"):
        split = root / out.relative_to(root).parts[0]
        err = _refused(["--device", "cpu", "--data", str(root), "--output-dir", str(out)], capsys)
        assert err == (
            f"python -m train: error: --output-dir {out} is inside the split folder {split}, "
            "where what it writes would be read as part of the set (a folder as a class, an "
            "image as a sample); give a place outside it\n"
        )
    beside = root / "runs"  # beside the splits: nothing reads it
    argv = ["--device", "cpu", "--data", str(root), "--output-dir", str(beside)]
    assert parse_config(argv).output_dir == beside


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--arch", "vgg16"], "argument --arch: invalid choice: 'vgg16'"),
        (["--mix-mode", "row"], "argument --mix-mode: invalid choice: 'row'"),
    ],
)
def test_argparse_errors_keep_argparse_usage(argv: list[str], message: str, capsys) -> None:
    err = _refused(["--device", "cpu", *argv], capsys)
    assert err.startswith("usage: python -m train") and message in err.splitlines()[-1]


def test_data_given_as_a_file_is_told_so(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "imagenet.tar"
    a_file.write_bytes(b"")
    err = _refused(["--data", str(a_file), "--device", "cpu"], capsys)
    assert err == f"python -m train: error: --data {a_file}: not a folder\n"


def test_data_given_as_its_train_folder_is_told_the_folder_above(tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path, ["a"], ["a"])
    err = _refused(["--data", str(root / "train"), "--device", "cpu"], capsys)
    assert err == (
        f"python -m train: error: --data {root / 'train'}: no train/ folder (expected "
        f"{root / 'train' / 'train'}); --data takes the folder above train/ and val/: "
        f"--data {root}\n"
    )


def test_a_dataset_of_one_class_is_refused(tmp_path: Path, capsys) -> None:
    # It trained to 100 % top-1 (chance) at a loss of 0, without a word.
    root = _folder(tmp_path, ["a"], ["a"])
    err = _refused(["--data", str(root), "--device", "cpu"], capsys)
    assert err == (
        f"python -m train: error: --data {root}: one class folder ('a') in train/ and val/; a "
        "classifier needs at least 2 classes (with one, the loss is 0 from the first step)\n"
    )


def test_mismatched_class_folders_fail_at_start(tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path, ["a", "b"], ["a"])
    (root / "train" / "b" / "x.JPEG").write_bytes(b"")  # a class with images, not in val/
    with pytest.raises(SystemExit):
        parse_config(["--data", str(root), "--device", "cpu"])
    assert "train/ and val/ have different classes, e.g. ['b']" in capsys.readouterr().err


def test_an_empty_class_folder_in_one_split_is_named_as_empty(tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path, ["a", "b"], ["a"])  # train/b exists, empty; val/ has no b
    err = _refused(["--data", str(root), "--device", "cpu"], capsys)
    assert err == (
        f"python -m train: error: --data {root}: class folder {root / 'train' / 'b'} is empty "
        "(and has no match in the other split); remove it\n"
    )


def test_a_split_without_class_folders_fails_at_start_naming_it(tmp_path: Path, capsys) -> None:
    root = tmp_path / "imagenet"
    (root / "train").mkdir(parents=True)
    (root / "val" / "a").mkdir(parents=True)
    err = _refused(["--data", str(root), "--device", "cpu"], capsys)
    assert err.startswith(f"python -m train: error: --data {root}: dataset root ")
    assert f"'{root / 'train'}' has no class folders" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_gpu_without_cuda_fails_at_start(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_config(["--device", "gpu"])
    assert capsys.readouterr().err == (
        "python -m train: error: --device must be 'cpu' or 'auto': torch sees no CUDA device "
        "here (got 'gpu')\n"
    )


def test_gpu_run_defaults_resolve_without_cuda(monkeypatch) -> None:
    """What ``--device gpu`` resolves to, on a 32-core node, checked on the CPU."""
    monkeypatch.setattr(train.config, "resolve_device", lambda name: Device(name))
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
    assert default_workers(LoaderKind.TORCHVISION, Device.GPU) == 4
    monkeypatch.setenv("WORLD_SIZE", "128")  # 16 such nodes: still the node's cores shared
    assert default_workers(LoaderKind.TORCHVISION, Device.GPU) == 4
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
    sums = meter.sums()
    assert sums == EpochSums(loss_sum=10.0, count=6.0, correct1=3.0, correct5=5.0)
    assert sums.to_saved() == [10.0, 6.0, 3.0, 5.0]  # a checkpoint's plain list
    assert SumMeter(torch.device("cpu"), sums).sums() == sums  # continued after a resume


def test_epoch_sums_come_back_from_old_and_new_checkpoints() -> None:
    saved = [10.0, 6.0, 3.0, 5.0]
    ranks = DistInfo(rank=1, world_size=2)
    assert _saved_meter(saved, DistInfo()) == EpochSums(10.0, 6.0, 3.0, 5.0)  # rank 0's only
    assert _saved_meter([None, saved], ranks).count == 6.0  # one list per rank
    assert _saved_meter([saved, None], ranks) is None
    assert _saved_meter([saved], ranks) is None  # saved by another number of ranks
    assert EpochSums.from_saved(None) is None


def test_resuming_refuses_changed_settings_but_not_harmless_ones() -> None:
    saved = parse_config(["--device", "cpu"]).to_dict()
    more = {**saved, "print_freq": 50, "output_dir": "elsewhere", "epochs": 9}
    assert resume_changes(saved, more, {}) == []
    changed = {**saved, "arch": "resnet50", "mix": {**saved["mix"], "mixup_alpha": 0.2}}
    # the typed flag's change alone: the others follow from it (the arch's default from
    # --data, say), and were listed as field names the user never typed
    assert resume_changes(saved, changed, {"mixup_alpha": "--mixup-alpha"}) == [
        "--mixup-alpha 0.2 differs from the checkpoint's 0.0",
    ]
    assert resume_changes(saved, changed, {}) == [
        "arch is resnet18 in the checkpoint but resnet50 here",
        "mix.mixup_alpha is 0.0 in the checkpoint but 0.2 here",
    ]
    assert resume_changes(saved, {**saved, "epochs": 5}, {"epochs": "--epochs"}) == [
        "--epochs 5 is fewer than the checkpoint's 6"
    ]
    no_nesterov = {**saved, "optim": {**saved["optim"], "nesterov": False}}
    assert resume_changes(saved, no_nesterov, {"nesterov": "--no-nesterov"}) == [
        "--no-nesterov differs from the checkpoint's --nesterov"
    ]


def test_resuming_the_embedded_run_with_data_names_data_alone(tmp_path: Path, capsys) -> None:
    # It listed data.classes, six data.embedded.* fields and mix.num_classes beside
    # "--data X differs from the checkpoint's none".
    embedded = parse_config(["--device", "cpu", "--output-dir", str(tmp_path / "run")])
    path = _checkpoint(tmp_path / "run" / "checkpoint.pth", embedded, step=1)
    other = _folder(tmp_path / "other", ["a", "b", "c"], ["a", "b", "c"])
    assert _refused(["--resume", str(path), "--data", str(other)], capsys) == (
        f"python -m train: error: {path}: --data {other}: the checkpoint trained on the "
        f"embedded dataset; {train.config._MAY_CHANGE}\n"
    )


def test_every_flag_names_one_configuration_field() -> None:
    """FLAGS is the one map between fields and flags: errors and --resume rely on it."""
    # --config is where the values come from, not a field
    dests = {a.dest for a in get_args_parser()._actions if a.dest not in ("help", "config")}
    aliases = {dest for setters in ALIASES.values() for dest, _ in setters}
    assert {dest for dest, _ in FLAGS.values()} | aliases == dests
    assert aliases - {dest for dest, _ in FLAGS.values()} == {"crop_size", "aa", "reprob"}
    fields = set(flatten(parse_config(["--device", "cpu"]).to_dict()))
    derived = {f for f in fields if f.startswith(("data.classes", "data.embedded."))}
    assert set(FLAGS) | set(ALIASES) == fields - derived - {"mix.num_classes"}  # the dataset's
    assert RESUME_MAY_CHANGE.issubset(FLAGS)


def test_help_documents_the_exit_statuses_and_resuming() -> None:
    text = get_args_parser().format_help()
    assert "\nexit status:\n  0    trained to the last epoch" in text
    assert "\n  3    stopped by Ctrl-C, SIGTERM or --stop-after-steps;" in text
    assert "\nresuming:\n  --resume RUN/checkpoint.pth (or RUN) alone continues a run" in text


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


def test_resume_takes_a_run_folder_for_its_checkpoint(resumable, tmp_path: Path) -> None:
    _, path = resumable
    assert parse_config(["--resume", str(path.parent)]) == parse_config(["--resume", str(path)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="^--resume .*/empty: a folder without a checkpoint.pth; "):
        resume_config(get_args_parser().parse_args(["--resume", str(tmp_path / "empty")]), typed={})


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
        # fewer than the saved warmup (1.4 of --epochs 7): it blamed --warmup-epochs, not typed
        (["--epochs", "1"], "--epochs 1 is fewer than the checkpoint's 7"),
        (["--nesterov"], "--nesterov differs from the checkpoint's --no-nesterov"),
        (
            ["--arch", "resnet18", "-b", "64"],
            "--arch resnet18 differs from the checkpoint's resnet50; "
            "-b 64 differs from the checkpoint's 256",
        ),
        (["--mix-prob", "0.5"], "--mix-prob 0.5 differs from the checkpoint's 1.0"),
        # clashes with the saved resize of 256: named as typed, not as --val-resize-size
        (
            ["--crop-size", "300"],
            "--crop-size 300 differs from the checkpoint's --train-crop-size 224, "
            "--val-crop-size 224",
        ),
        # timm's spelling sets settings without a flag of their own (fill_value, the bins):
        # only the ones with a flag are named, and --ra-magnitude only beside RandAugment
        (["--aa", "rand-m9"], "--aa rand-m9 differs from the checkpoint's --auto-augment none"),
        # refused on a fresh run too (mstd): the clash is named all the same
        (
            ["--aa", "rand-m9-mstd0.5"],
            "--aa rand-m9-mstd0.5 differs from the checkpoint's --auto-augment none",
        ),
        (["--reprob", "0.25"], "--reprob 0.25 differs from the checkpoint's --random-erase 0.0"),
    ],
)
def test_resume_refuses_other_changes_in_one_line_naming_the_typed_flags(
    resumable, argv: list[str], reasons: str, capsys
) -> None:
    _, path = resumable
    err = _refused(["--resume", str(path), *argv], capsys)
    assert err == f"python -m train: error: {path}: {reasons}; {MAY_CHANGE}\n"


MAY_CHANGE = (
    "on resume only --data (a folder of the same classes elsewhere), --epochs (upward), "
    "--train-list, --val-list, -j/--workers, --print-freq, --output-dir, --stop-after-steps, "
    "--cache-dir, --deterministic and --test-only may change"
)


def test_resume_goes_on_in_a_moved_dataset_of_the_same_classes_only(
    resumable, tmp_path: Path, capsys
) -> None:
    original, path = resumable
    moved = original.data.root.rename(tmp_path / "moved")  # to a local disk, say
    resumed = parse_config(["--resume", str(path), "--data", str(moved)])
    data = dataclasses.replace(original.data, root=moved)
    assert resumed == dataclasses.replace(original, data=data, resume=path, stop_after_steps=None)
    other = _folder(tmp_path / "other", ["a", "c", "d"], ["a", "c", "d"])
    assert _refused(["--resume", str(path), "--data", str(other)], capsys) == (
        f"python -m train: error: {path}: --data {other} has other classes than the "
        f"checkpoint's {original.data.root} (3 against 2; in one only: b, c, d); a run goes on "
        f"in another folder of the same classes only; {MAY_CHANGE}\n"
    )
    # A run on the embedded set has no folder to move.
    embedded = parse_config(["--device", "cpu", "--output-dir", str(tmp_path / "e")])
    saved = _checkpoint(tmp_path / "e" / "checkpoint.pth", embedded)
    assert _refused(["--resume", str(saved), "--data", str(moved)], capsys).startswith(
        f"python -m train: error: {saved}: --data {moved}: the checkpoint trained on the "
        "embedded dataset; "
    )


def test_resume_in_a_dataset_whose_class_folders_changed_names_them(
    resumable, tmp_path: Path, capsys
) -> None:
    # "data.classes is 2 entries in the checkpoint but 2 entries here; on resume only --data
    # ... may change": it named no class, blamed flags not typed and contradicted itself
    original, path = resumable
    root = original.data.root
    for split in ("train", "val"):
        (root / split / "b").rename(root / split / "b2")
    try:
        assert _refused(["--resume", str(path)], capsys) == (
            f"python -m train: error: {path}: the class folders of {root} changed since the "
            "checkpoint was written (2 against 2; in one only: b, b2); a run goes on with the "
            f"classes it was trained on only: put them back, or start a new run; {MAY_CHANGE}\n"
        )
    finally:
        for split in ("train", "val"):
            (root / split / "b2").rename(root / split / "b")
    assert parse_config(["--resume", str(path)]).data.root == root


def test_a_checkpoint_saved_with_settings_refused_for_new_runs_since_resumes(
    resumable, tmp_path: Path, capsys
) -> None:
    # --model-ema-decay 1 and --cutmix-minmax 0 0 are refused for new runs; a run saved
    # with them by an earlier version still resumes ("its configuration cannot be read")
    original, _ = resumable
    mix = dataclasses.replace(original.mix, cutmix_minmax=(0.0, 0.0))
    old = dataclasses.replace(original, model_ema=True, model_ema_decay=1.0, mix=mix)
    path = _checkpoint(tmp_path / "old" / "checkpoint.pth", old)
    resumed = parse_config(["--resume", str(path)])
    assert resumed.model_ema_decay == 1.0 and resumed.mix.cutmix_minmax == (0.0, 0.0)


def test_a_run_whose_checkpoint_links_to_another_disk_resumes(resumable, tmp_path: Path) -> None:
    # resolve() took the link's target folder for the checkpoint's: "--output-dir RUN
    # already holds a run ...; continue that run with: python -m train --resume
    # RUN/checkpoint.pth", the command typed
    _, path = resumable
    run = tmp_path / "linked"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    (run / "checkpoint.pth").symlink_to(path)
    resumed = parse_config(["--resume", str(run / "checkpoint.pth")])
    assert resumed.output_dir == run and resumed.resume == run / "checkpoint.pth"


def test_resume_of_a_run_with_more_workers_than_this_machine_allows_asks_for_j(
    resumable, tmp_path: Path, capsys
) -> None:
    # a run from a larger machine: it said "its configuration cannot be read (...); it was
    # written by another version of python -m train"
    from dali_cutmix.cli import worker_limit, worker_limit_rule

    original, _ = resumable
    many = worker_limit() + 1
    big = dataclasses.replace(original, data=dataclasses.replace(original.data, workers=many))
    path = _checkpoint(tmp_path / "big" / "checkpoint.pth", big)
    assert _refused(["--resume", str(path)], capsys) == (
        f"python -m train: error: --resume {path}: the run's -j {many} is more than this "
        f"machine allows ({worker_limit()}, {worker_limit_rule()}); give -j/--workers, which "
        "may change on resume\n"
    )
    assert parse_config(["--resume", str(path), "-j", "2"]).data.workers == 2


def test_resume_names_a_saved_folder_or_list_that_is_gone_and_how_to_give_its_place(
    resumable, tmp_path: Path, capsys
) -> None:
    original, path = resumable
    moved = original.data.root.rename(tmp_path / "moved")
    assert _refused(["--resume", str(path)], capsys) == (
        f"python -m train: error: --resume {path}: the run's --data {original.data.root} is "
        "gone (no such folder); restore it, or give its new place of the same classes: "
        f"python -m train --resume {path} --data NEW_PLACE\n"
    )
    gone = tmp_path / "gone"  # a typed folder is named as typed, without blaming the checkpoint
    assert _refused(["--resume", str(path), "--data", str(gone)], capsys) == (
        f"python -m train: error: --data {gone}: no such folder\n"
    )
    (moved / "val").rename(tmp_path / "val")  # there, but no dataset any more
    moved.rename(original.data.root)
    assert _refused(["--resume", str(path)], capsys) == (
        f"python -m train: error: --resume {path}: the run's --data {original.data.root}: no "
        f"val/ folder (expected {original.data.root / 'val'})\n"
    )
    (tmp_path / "val").rename(original.data.root / "val")
    moved = original.data.root.rename(moved)
    files = tmp_path / "scan" / "files.txt"
    files.parent.mkdir()
    files.write_text("a/x.JPEG 0\n")
    argv = ["--resume", str(path), "--data", str(moved), "--val-list", str(files)]
    listed = parse_config(argv)
    checkpoint = _checkpoint(tmp_path / "listed" / "checkpoint.pth", listed, step=2)
    files.unlink()
    assert _refused(["--resume", str(checkpoint)], capsys) == (
        f"python -m train: error: --resume {checkpoint}: the run's --val-list {files} is gone "
        f"(no such file); restore it, or give its new place: python -m train --resume "
        f"{checkpoint} --val-list NEW_PLACE\n"
    )
    again = tmp_path / "files.txt"
    again.write_text("a/x.JPEG 0\n")
    assert parse_config(["--resume", str(checkpoint), "--val-list", str(again)]).data.val_list == (
        again
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "cpu", "--epochs", "0"], "--epochs must be an int >= 1, got 0"),
        (["--lr", "0.3", "-j", "0"], "-j must be an int >= 1, got 0"),
        (["--device", "cpu", "--stop-after-steps", "0"], "--stop-after-steps must be"),
        # the checkpoint's own (default) --remode, refused without erasing: that is said,
        # not "--remode const differs from the checkpoint's --remode const"
        (["--remode", "const"], "--remode is RandomErasing's: it needs --reprob or"),
    ],
)
def test_resume_names_the_flag_at_fault_beside_unchanged_fixed_flags(
    resumable, argv: list[str], message: str, capsys
) -> None:
    # Repeating a fixed setting (--device cpu, the saved --lr) is allowed; the error of
    # another flag must not be turned into "--device cannot change".
    _, path = resumable
    err = _refused(["--resume", str(path), *argv], capsys)
    assert err.startswith(f"python -m train: error: {message}"), err


def test_a_resume_on_another_number_of_ranks_says_the_learning_rate_stays(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    # Between epochs a 2-rank run may go on on 1 rank; its default --lr, derived from a
    # global batch of 512, stayed for one of 256 without a word.
    root = _folder(tmp_path / "data", ["a", "b"], ["a", "b"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    two_ranks = parse_config(["--data", str(root), "--device", "cpu"])
    path = _checkpoint(tmp_path / "start" / "checkpoint.pth", two_ranks, step=0, ranks=2)
    monkeypatch.delenv("WORLD_SIZE")
    with caplog.at_level("WARNING", logger="train.config"):
        assert parse_config(["--resume", str(path)]).optim.lr == 0.2
    assert caplog.messages == [
        f"--resume {path}: the run trained on 2 ranks (global batch 512) and goes on on 1 "
        "(global batch 256) with its learning rate 0.2 (the default for a global batch of "
        "512; 0.1 for 256, but --lr cannot change on resume)"
    ]
    caplog.clear()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with caplog.at_level("WARNING", logger="train.config"):
        parse_config(["--resume", str(path)])  # as many ranks: nothing to say
    assert caplog.messages == []


def test_a_mid_epoch_checkpoint_of_2_ranks_asks_for_2_ranks_at_once(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    root = _folder(tmp_path / "data", ["a", "b"], ["a", "b"])
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun --nproc_per_node 2
    two_ranks = parse_config(["--data", str(root), "--device", "cpu"])
    assert two_ranks.optim.lr == 0.2  # 0.1 x 2 ranks x 256 / 256: 1 rank's default differs
    path = _checkpoint(tmp_path / "mid" / "checkpoint.pth", two_ranks, step=3, ranks=2)
    monkeypatch.delenv("WORLD_SIZE")
    assert _refused(["--resume", str(path)], capsys) == (
        f"python -m train: error: --resume {path} stopped mid-epoch (epoch 1, step 3) on 2 "
        f"ranks and this run has 1; resume it with the same number: torchrun --nproc_per_node "
        f"2 -m train --resume {path}\n"
    )
    # Between epochs the number of ranks may change (the schedule follows the new one).
    at_start = _checkpoint(tmp_path / "start" / "checkpoint.pth", two_ranks, step=0, ranks=2)
    assert parse_config(["--resume", str(at_start)]).optim.lr == 0.2
    # Evaluating a mid-epoch checkpoint continues nothing: any number of ranks may do it.
    assert parse_config(["--resume", str(path), "--test-only"]).test_only


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_resuming_a_gpu_run_without_cuda_says_so(resumable, tmp_path: Path, capsys) -> None:
    original, _ = resumable
    gpu = dataclasses.replace(original, device=Device.GPU, precision=Precision.FP16)
    path = _checkpoint(tmp_path / "gpu" / "checkpoint.pth", gpu)
    with pytest.raises(SystemExit):
        parse_config(["--resume", str(path)])
    assert capsys.readouterr().err == (
        f"python -m train: error: --resume {path}: the run trained on the GPU and CUDA is not "
        "available here; resume it on a machine with a GPU, or evaluate its model here on the "
        f"CPU: python -m train --resume {path} --test-only --device cpu\n"
    )
    # that command: the run's configuration, on the CPU in fp32 (fp16 needs a GPU)
    here = parse_config(["--resume", str(path), "--test-only", "--device", "cpu"])
    assert here == dataclasses.replace(
        original,
        resume=path,
        stop_after_steps=None,
        test_only=True,
        precision=Precision.FP32,
        output_dir=path.parent,
    )
    # training on goes on where it trained: a GPU run on the CPU is refused as above
    assert _refused(["--resume", str(path), "--device", "cpu"], capsys).startswith(
        f"python -m train: error: --resume {path}: the run trained on the GPU and CUDA is not "
    )


# ----------------------------------------------------------------------------- augmentation


def _augment(*argv: str) -> AugmentConfig:
    return parse_config(["--device", "cpu", *argv]).augment


TV_TRANSLATE = 150 / 331  # torchvision's RandAugment / AutoAugment shift, of the side


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["--auto-augment", "ta_wide", "--random-erase", "0.1"],  # torchvision's recipe
            AugmentConfig(auto_augment=AutoAugment.TA_WIDE, random_erase=0.1),
        ),
        (
            ["--auto-augment", "ra", "--ra-magnitude", "5"],
            AugmentConfig(auto_augment=AutoAugment.RA, ra_magnitude=5, num_magnitude_bins=31),
        ),
        (["--auto-augment", "imagenet"], AugmentConfig(auto_augment=AutoAugment.IMAGENET)),
        (
            ["--random-erase", "0.25", "--remode", "pixel"],
            AugmentConfig(random_erase=0.25, erase_mode=EraseMode.PIXEL),
        ),
    ],
    ids=["ta_wide+erase", "ra magnitude 5", "imagenet", "erase pixel"],
)
def test_torchvision_augmentation_flags(argv: list[str], expected: AugmentConfig) -> None:
    augment = _augment(*argv)
    assert augment == expected
    # torchvision's meanings, spelled out: 2 ops of 31 bins, shifts of 150/331, fill 0,
    # erasing 0.02-0.33 of the area with aspect ratio 0.3-3.3.
    assert (augment.ra_num_ops, augment.num_magnitude_bins, augment.fill_value) == (2, 31, 0)
    assert augment.ra_increasing and augment.max_translate_rel == TV_TRANSLATE
    assert (augment.erase_scale, augment.erase_ratio) == ((0.02, 0.33), (0.3, 3.3))


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["--aa", "rand-m7-n3-inc1", "--reprob", "0.25"],
            dict(
                auto_augment=AutoAugment.RA,
                ra_num_ops=3,
                ra_magnitude=7,
                num_magnitude_bins=11,
                ra_increasing=True,
                max_translate_rel=0.45,
                fill_value=128,
                random_erase=0.25,
                erase_mode=EraseMode.PIXEL,
                erase_scale=(0.02, 1 / 3),
                erase_ratio=(0.3, 1 / 0.3),
            ),
        ),
        (
            ["--aa", "original", "--reprob", "0.3", "--remode", "const"],
            dict(
                auto_augment=AutoAugment.IMAGENET,
                max_translate_rel=0.45,
                fill_value=128,
                random_erase=0.3,
                erase_scale=(0.02, 1 / 3),
                erase_ratio=(0.3, 1 / 0.3),
            ),
        ),
        (
            ["--aa", "rand-m9-mstd0", "--reprob", "0.1", "--remode", "rand"],
            dict(
                auto_augment=AutoAugment.RA,
                ra_magnitude=9,
                num_magnitude_bins=11,
                ra_increasing=False,  # timm's rand without inc1
                max_translate_rel=0.45,
                fill_value=128,
                random_erase=0.1,
                erase_mode=EraseMode.RAND,
                erase_scale=(0.02, 1 / 3),
                erase_ratio=(0.3, 1 / 0.3),
            ),
        ),
    ],
    ids=["rand-m7-n3-inc1", "original", "rand-m9-mstd0 rand"],
)
def test_timm_augmentation_flags(argv: list[str], expected: dict) -> None:
    assert _augment(*argv) == AugmentConfig(**expected)


def test_without_the_new_flags_the_configuration_is_as_before() -> None:
    """No augmentation, bilinear, one crop for training and validation, EMA off."""
    config = parse_config(["--device", "cpu", "--crop-size", "32", "--resize-size", "40"])
    assert config.augment == AugmentConfig() and not config.augment.enabled
    data = config.data
    assert (data.train_crop_size, data.val_crop_size, data.val_resize_size) == (32, 32, 40)
    assert data.interpolation is Interpolation.BILINEAR and not config.model_ema
    spelled_out = ["--train-crop-size", "32", "--val-crop-size", "32", "--val-resize-size", "40"]
    assert parse_config(["--device", "cpu", *spelled_out]) == config


@pytest.mark.parametrize(
    "argv, sizes",
    [
        (["--train-crop-size", "176", "--val-resize-size", "232"], (176, 224, 232)),  # the recipe
        (["--crop-size", "160"], (160, 160, 182)),  # 160 * 8 / 7 = 182.9: floor, as timm
        (["--crop-size", "160", "--val-crop-size", "192"], (160, 192, 219)),  # 219.4
        (["--val-crop-size", "256", "--resize-size", "288"], (224, 256, 288)),
    ],
)
def test_crop_and_resize_flags(tmp_path: Path, argv: list[str], sizes: tuple) -> None:
    root = _folder(tmp_path, ["a", "b"], ["a", "b"])
    data = parse_config(["--data", str(root), "--device", "cpu", *argv]).data
    assert (data.train_crop_size, data.val_crop_size, data.val_resize_size) == sizes


def test_model_ema_flags_and_torchvisions_decay_adjustment() -> None:
    config = parse_config(["--device", "cpu", "--model-ema"])
    assert (config.model_ema, config.model_ema_steps, config.model_ema_decay) == (
        True,
        32,
        0.99998,
    )
    # torchvision: adjust = world * batch * steps / epochs; alpha = min(1, (1 - decay) * adjust)
    assert ema_decay(decay=0.99998, steps=32, batch_size=64, world_size=1, epochs=6) == (
        pytest.approx(1 - 2e-5 * 64 * 32 / 6, abs=1e-12)
    )
    assert ema_decay(decay=0.99998, steps=32, batch_size=128, world_size=8, epochs=600) == (
        pytest.approx(0.99890773, abs=1e-8)
    )
    assert ema_decay(decay=0.9, steps=32, batch_size=64, world_size=1, epochs=6) == 0.0  # alpha 1


@pytest.mark.parametrize(
    "argv, message",
    [
        *(
            (
                ["--auto-augment", policy],
                f"--auto-augment {policy} is not supported; supported: ta_wide, ra, imagenet",
            )
            for policy in ("augmix", "cifar10")
        ),
        (
            ["--aa", "rand-m9", "--auto-augment", "ra"],
            "--aa and --auto-augment both choose the automatic augmentation; give one",
        ),
        (
            ["--random-erase", "0.1", "--reprob", "0.1"],
            "--random-erase and --reprob both set RandomErasing's probability; give one",
        ),
        (["--random-erase", "1.5"], "--random-erase must be in [0.0, 1.0], got 1.5"),
        (["--reprob", "-0.5"], "--reprob must be in [0.0, 1.0], got -0.5"),
        (
            ["--auto-augment", "ra", "--ra-magnitude", "31"],
            "--ra-magnitude must be < num_magnitude_bins (31), got 31",
        ),
        *(
            (
                [*policy, "--ra-magnitude", "5"],
                "--ra-magnitude is RandAugment's: it needs --auto-augment ra",
            )
            for policy in ([], ["--auto-augment", "ta_wide"])
        ),
        (
            ["--aa", "rand-m9", "--ra-magnitude", "5"],
            "--ra-magnitude goes with --auto-augment ra; --aa gives the magnitude in its spec "
            "(rand-m9)",
        ),
        (
            ["--remode", "pixel"],
            "--remode is RandomErasing's: it needs --reprob or --random-erase > 0",
        ),
        (
            ["--aa", "rand-m9-mstd0.5-inc1"],
            "--aa rand-m9-mstd0.5-inc1: magnitude noise (mstd0.5) cannot be honoured, DALI's "
            "RandAugment uses one fixed magnitude; drop it or write mstd0",
        ),
        (
            ["--aa", "augmix-m5"],
            "--aa augmix-m5: AugMix is not in DALI's auto_aug; supported: "
            "rand-m<M>[-n<N>][-inc<0|1>][-mstd0] (RandAugment, M in 0..10) and "
            "original[-mstd0] (AutoAugment's ImageNet policy)",
        ),
        (
            ["--interpolation", "bicubic", "--auto-augment", "ta_wide"],
            "--interpolation (bicubic) cannot be used with --auto-augment: the automatic "
            "augmentations warp with bilinear or nearest interpolation only (DALI's and "
            "torchvision's alike); use bilinear or nearest",
        ),
        (
            ["--interpolation", "bicubic", "--aa", "original"],
            "--interpolation (bicubic) cannot be used with --aa: the automatic augmentations "
            "warp with bilinear or nearest interpolation only (DALI's and torchvision's alike); "
            "use bilinear or nearest",
        ),
        (
            [
                "--loader",
                "torchvision",
                "--mix-mode",
                "batch",
                "--reprob",
                "0.2",
                "--remode",
                "rand",
            ],
            "--loader torchvision: --remode 'rand' (one normal value per channel): "
            "torchvision's transforms cannot honour it; use 'const' or 'pixel', or use "
            "--loader dali, which can",
        ),
        (
            ["--val-crop-size", "300", "--val-resize-size", "256"],
            "--val-resize-size (256) must be >= --val-crop-size (300)",
        ),
        (["--train-crop-size", "0"], "--train-crop-size must be an int >= 1, got 0"),
        (["--crop-size", "0"], "--crop-size must be an int >= 1, got 0"),
        (["--model-ema", "--model-ema-steps", "0"], "--model-ema-steps must be an int >= 1, got 0"),
        (
            ["--model-ema", "--model-ema-decay", "1.5"],
            "--model-ema-decay must be in [0, 1), got 1.5",
        ),
        (  # both alphas 0: the mixing's settings changed nothing, without a word
            ["--cutmix-alpha", "0", "--mixup-alpha", "0", "--mix-prob", "0.5"],
            "--mix-prob needs --cutmix-alpha or --mixup-alpha > 0 (both are 0: nothing is mixed)",
        ),
        (
            ["--cutmix-alpha", "0", "--switch-prob", "0.2", "--no-correct-lam"],
            "--switch-prob and --no-correct-lam need --cutmix-alpha or --mixup-alpha > 0 (both "
            "are 0: nothing is mixed)",
        ),
        (
            ["--cutmix-minmax", "0", "0"],
            "--cutmix-minmax must have max > 0 (every box would be empty), got (0.0, 0.0)",
        ),
        (  # the average never left the first weights, and was evaluated every epoch
            ["--model-ema", "--model-ema-decay", "1"],
            "--model-ema-decay must be in [0, 1), got 1.0",
        ),
        (
            ["--model-ema-steps", "8", "--model-ema-decay", "0.999"],
            "--model-ema-steps and --model-ema-decay need --model-ema",
        ),
        (["--model-ema-decay", "0.999"], "--model-ema-decay needs --model-ema"),
        (
            ["--test-only"],
            "--test-only evaluates a checkpoint: give --resume CHECKPOINT",
        ),
    ],
)
def test_bad_augmentation_ema_and_test_flags_fail_in_one_line_naming_the_flags(
    argv: list[str], message: str, capsys
) -> None:
    assert _refused(["--device", "cpu", *argv], capsys) == f"python -m train: error: {message}\n"


@pytest.fixture
def augmented(tmp_path: Path) -> tuple[TrainConfig, Path]:
    """A run with timm's augmentation flags, EMA and its own crops, and its checkpoint."""
    root = _folder(tmp_path / "data", ["a", "b"], ["a", "b"])
    flags = ["--aa", "rand-m7-n3-inc1", "--reprob", "0.25", "--interpolation", "nearest"]
    flags += ["--model-ema", "--model-ema-steps", "4", "--train-crop-size", "176"]
    flags += ["--output-dir", str(tmp_path / "run")]
    original = parse_config(["--data", str(root), "--device", "cpu", *flags])
    return original, _checkpoint(tmp_path / "run" / "checkpoint.pth", original, step=2)


def test_resume_alone_restores_the_augmentation_exactly(augmented) -> None:
    original, path = augmented
    resumed = parse_config(["--resume", str(path)])
    assert resumed == dataclasses.replace(original, resume=path)
    assert resumed.augment.num_magnitude_bins == 11  # set by --aa, no flag of its own
    again = ["--aa", "rand-m7-n3-inc1", "--reprob", "0.25", "--remode", "pixel", "--model-ema"]
    again += ["--crop-size", "224", "--train-crop-size", "176", "--interpolation", "nearest"]
    assert parse_config(["--resume", str(path), *again]) == resumed  # repeated: the same
    tested = parse_config(["--resume", str(path), "--test-only"])
    assert tested == dataclasses.replace(resumed, test_only=True)


@pytest.mark.parametrize(
    "argv, reasons",
    [
        # a flag that sets several settings names the checkpoint's by their flags; those
        # without a flag of their own (timm's erasing box, --aa's bins) are not named
        (["--reprob", "0.5"], "--reprob 0.5 differs from the checkpoint's --random-erase 0.25"),
        (["--remode", "const"], "--remode const differs from the checkpoint's pixel"),
        (
            ["--random-erase", "0.25"],
            "--random-erase 0.25 differs from the checkpoint's --remode pixel",
        ),
        (
            ["--aa", "rand-m5-n3-inc1"],
            "--aa rand-m5-n3-inc1 differs from the checkpoint's --ra-magnitude 7",
        ),
        # its own setting changed: said once, not again for the settings it sets beside it
        (["--auto-augment", "ta_wide"], "--auto-augment ta_wide differs from the checkpoint's ra"),
        (["--ra-magnitude", "9"], "--ra-magnitude 9 differs from the checkpoint's 7"),
        (
            ["--interpolation", "bilinear"],
            "--interpolation bilinear differs from the checkpoint's nearest",
        ),
        (
            ["--crop-size", "176"],
            "--crop-size 176 differs from the checkpoint's --val-crop-size 224",
        ),
        (["--no-model-ema"], "--no-model-ema differs from the checkpoint's --model-ema"),
        (["--model-ema-steps", "32"], "--model-ema-steps 32 differs from the checkpoint's 4"),
    ],
)
def test_resume_refuses_a_changed_augmentation_naming_the_typed_flag(
    augmented, argv: list[str], reasons: str, capsys
) -> None:
    _, path = augmented
    err = _refused(["--resume", str(path), *argv], capsys)
    assert err.startswith(f"python -m train: error: {path}: {reasons}; on resume only ")
    assert err.count("\n") == 1


def test_a_checkpoint_from_before_the_augmentations_resumes_as_it_was(resumable) -> None:
    original, path = resumable
    state = torch.load(path, weights_only=True)
    old = dict(state["config"])
    for name in ("augment", "model_ema", "model_ema_steps", "model_ema_decay", "test_only"):
        del old[name]
    data = dict(old["data"])
    for name in ("train_crop_size", "val_crop_size", "val_resize_size", "interpolation"):
        del data[name]
    old["data"] = data | {"crop_size": 224, "resize_size": 256}  # the fields of then
    save_checkpoint({**state, "config": old}, path)
    resumed = parse_config(["--resume", str(path)])
    assert resumed == dataclasses.replace(original, resume=path, stop_after_steps=None)


OTHER_VERSION = (
    "it was written by another version of python -m train, or edited: resume it with the "
    "version that wrote it"
)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda c: c.pop("data"), "its configuration has no data, optim and mix settings"),
        (
            lambda c: c["augment"].update(new_aug=1),
            "its augment settings cannot be read (unknown AugmentConfig field(s): new_aug)",
        ),
        (
            lambda c: c.update(new_top=True),
            "its configuration has settings this version does not know (new_top)",
        ),
        (
            lambda c: c["mix"].update(new_mix=0.5, other=None),
            "its configuration has settings this version does not know (mix.new_mix, mix.other)",
        ),
        (
            lambda c: c["data"].update(batch_size="64"),
            "its configuration cannot be read (",
        ),
    ],
    ids=["no-data", "augment-key", "top-key", "mix-keys", "wrong-kind"],
)
def test_a_checkpoint_configuration_of_another_version_is_named_as_such(
    resumable, edit, problem: str
) -> None:
    # A missing section was a KeyError traceback; an unknown key read as a setting changed
    # on resume ("new_top is on in the checkpoint but none here; on resume only --epochs...").
    _, path = resumable
    state = torch.load(path, weights_only=True)
    edit(state["config"])
    save_checkpoint(state, path)
    with pytest.raises(ValueError) as caught:
        resume_config(get_args_parser().parse_args(["--resume", str(path)]), typed={})
    message = str(caught.value)
    assert message.startswith(f"--resume {path}: {problem}")
    assert message.endswith(f"; {OTHER_VERSION}")


def test_a_resumed_metrics_file_numbers_its_epochs_from_1(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0, "val_acc1": 10.0}\n{"epoch": 1, "val_acc1": 20.0}\n')
    MetricsFile(path, enabled=False).resume_at(2)  # not rank 0: leaves it alone
    assert [r["epoch"] for r in MetricsFile(path, enabled=True).read()] == [0, 1]
    metrics = MetricsFile(path, enabled=True)
    metrics.resume_at(2)  # written before epochs were numbered from 1
    assert metrics.read() == [{"epoch": 1, "val_acc1": 10.0}, {"epoch": 2, "val_acc1": 20.0}]
    metrics.resume_at(2)  # already from 1: unchanged
    assert [r["epoch"] for r in metrics.read()] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_a_resumed_metrics_file_drops_epochs_the_checkpoint_does_not_hold(
    tmp_path: Path, caplog
) -> None:
    # The record of epoch 2 is written just before its checkpoint: a run killed between
    # the two resumes from epoch 1's checkpoint, trains epoch 2 again and wrote it twice.
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "val_acc1": 10.0}\n{"epoch": 2, "val_acc1": 20.0}\n')
    MetricsFile(path, enabled=True).resume_at(1)
    assert MetricsFile(path, enabled=True).read() == [{"epoch": 1, "val_acc1": 10.0}]
    assert f"{path}: dropped the record of epoch(s) 2, which the checkpoint" in caplog.text


@pytest.mark.parametrize(
    "line, why",
    [
        (b'{"epoch": 1, "val_a', "Unterminated string starting at column 14"),
        (
            b"\xe9t\xe9",
            "'utf-8' codec can't decode byte 0xe9 in position 0: invalid continuation byte",
        ),
        (b"[1, 2]", "a JSON list"),
    ],
)
def test_a_damaged_line_inside_the_metrics_file_is_named_with_its_number(
    tmp_path: Path, line: bytes, why: str
) -> None:
    # It was json.loads' traceback (JSONDecodeError) on --resume; skipped, the rewrite on
    # resume would lose the line without a word. Only a last line cut short is left out.
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"epoch": 1}\n' + line + b'\n{"epoch": 2}\n{"epoch": 3, "val')
    with pytest.raises(MetricsError) as caught:
        MetricsFile(path, enabled=True).resume_at(2)
    assert str(caught.value) == (
        f"{path} line 2 is not a JSON record ({why}); the file is only the run's history of "
        "epochs (the checkpoint holds the run): repair or delete that line, then run the "
        "command again"
    )


def test_the_default_output_folder_is_one_no_run_made_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two runs started in the same second shared runs/<date-time>: the second appended its
    # epochs to the first's metrics and overwrote its checkpoint.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train.config.time, "strftime", lambda form: "20261123-120000")
    made = []
    for _ in range(3):
        folder = parse_config(["--device", "cpu"]).output_dir
        folder.mkdir(parents=True)  # as the run does once it starts
        made.append(str(folder))
    assert made == ["runs/20261123-120000", "runs/20261123-120000-2", "runs/20261123-120000-3"]
    given = parse_config(["--device", "cpu", "--output-dir", "runs/20261123-120000"])
    assert given.output_dir == Path("runs/20261123-120000")  # a folder given is taken as given


def test_runs_that_parse_in_the_same_second_claim_two_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both runs named runs/<date-time> while neither had made it yet, and then shared it.
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train.config.time, "strftime", lambda form: "20261123-120000")
    named = [parse_config(["--device", "cpu"]) for _ in range(2)]  # only named: nothing made
    assert {str(c.output_dir) for c in named} == {"runs/20261123-120000"}
    assert not (tmp_path / "runs").exists()
    claimed = [str(parse_config(["--device", "cpu"], claim=True).output_dir) for _ in range(2)]
    assert claimed == ["runs/20261123-120000", "runs/20261123-120000-2"]
    assert all((tmp_path / folder).is_dir() for folder in claimed)
    # the same name claimed by 8 at once: 8 folders, each claimed once
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(train.config.claim_run_dir, [Path("runs/20261123-130000")] * 8))
    assert sorted(map(str, got)) == sorted(
        ["runs/20261123-130000"] + [f"runs/20261123-130000-{n}" for n in range(2, 9)]
    )
    # a given folder is never renamed
    given = parse_config(["--device", "cpu", "--output-dir", "runs/20261123-120000"], claim=True)
    assert given.output_dir == Path("runs/20261123-120000")
