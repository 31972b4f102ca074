"""``python -m pipelines.gpu_check``: the parts that run without a GPU."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_command, user_error_line

from pipelines import gpu_check


def test_cpu_multi_paste_is_the_reference_of_both_probes() -> None:
    # The probes compare the GPU with this: on the CPU an empty region changes nothing
    # and a wider partner's box is copied as is.
    base = np.full((20, 30, 3), 1, np.uint8)
    partner = np.full((20, 30, 3), 2, np.uint8)
    out = gpu_check._multi_paste(
        None, base, partner, [[0, 0], [5, 7]], [[20, 30], [0, 4]], (20, 30)
    )
    np.testing.assert_array_equal(out, base)
    wide = np.arange(16 * 24 * 3, dtype=np.uint32).reshape(16, 24, 3).astype(np.uint8)
    out = gpu_check._multi_paste(
        None, np.zeros((16, 16, 3), np.uint8), wide, [[0, 0], [2, 3]], [[16, 16], [8, 8]], (16, 16)
    )
    np.testing.assert_array_equal(out[2:10, 3:11], wide[2:10, 3:11])
    assert (out[:2] == 0).all() and (out[:, :3] == 0).all()


def test_refuses_to_run_without_cuda(tmp_path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(gpu_check, "_machine", lambda: {"cuda_available": False})
    with pytest.raises(SystemExit) as caught:
        gpu_check.main(["--out", str(tmp_path / "gc")])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m pipelines.gpu_check: error: torch sees no CUDA device on this machine; the "
        "GPU check needs one (make test runs the CPU suite, where the GPU tests skip)"
    )
    assert not (tmp_path / "gc").exists()  # no empty results folder left behind


def test_a_bad_value_ends_the_command_with_one_line(tmp_path) -> None:
    done = run_command("pipelines.gpu_check", "--threads", "0", "--out", tmp_path / "gc")
    assert user_error_line(done) == (
        "python -m pipelines.gpu_check: error: argument --threads: expected an int >= 1, got 0"
    )
    assert not (tmp_path / "gc").exists()


def test_the_steps_train_on_the_gpu_and_benchmark_the_generated_set(tmp_path, monkeypatch) -> None:
    # the steps run in the clone's root: a relative folder is the working folder's, made
    # absolute (from another folder the runs went into the clone)
    monkeypatch.chdir(tmp_path)
    args = gpu_check.get_args_parser().parse_args(
        ["--out", str(tmp_path / "o"), "--data", str(tmp_path / "d"), "--train-dir", "t"]
    )
    steps = gpu_check.plan_steps(args, "py")
    # --data is read as it is: no step generates (the generator refused any folder it had
    # not made, so a real dataset failed the data step)
    assert tuple(steps) == tuple(step for step in gpu_check.STEPS if step != "data")
    assert steps["pytest"][-8:] == ["no:cacheprovider", "-m", "gpu", "--timeout", "600"] + [
        "-o",
        "faulthandler_timeout=630",  # over --timeout: pyproject's 330 s ended the whole step
        "tests",
    ]
    assert steps["train_embedded"] == ["py", "-m", "train", "--device", "gpu"] + [
        "--output-dir",
        f"{tmp_path}/t/embedded",
    ]
    resnet = " ".join(steps["train_resnet50"])
    assert resnet == (
        f"py -m train --data {tmp_path}/d --arch resnet50 --epochs 1 --warmup-epochs 0 "
        "--crop-size 224 -b 256 -j 16 --amp bf16 --channels-last --device gpu --print-freq 10 "
        f"--output-dir {tmp_path}/t/resnet50"
    )
    bench = " ".join(steps["bench"])
    assert bench == (
        f"py -m pipelines.bench --data {tmp_path}/d --device gpu --batch-size 256 --workers 16 "
        "--threads-list 4,8,16 --batch-size-list 256 --train-batch-size 256 --windows 5 "
        "--window-batches 20 --train-windows 3 --train-window-batches 10 "
        f"--sweeps loaders,training,scaling,augment --out {tmp_path}/o/bench"
    )
    assert " ".join(steps["val_parity"]) == (
        f"py -m pipelines.val_parity {tmp_path}/d/val --device gpu --threads 16 "
        f"--out {tmp_path}/o/val_parity.json"
    )


def test_without_data_a_step_generates_the_set_in_the_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DALI_CUTMIX_CACHE", str(tmp_path))
    steps = gpu_check.plan_steps(gpu_check.get_args_parser().parse_args([]), "py")
    assert tuple(steps) == gpu_check.STEPS
    assert steps["data"][3:] == [f"{tmp_path}/gpu-check-100x450", "--classes", "100"] + [
        "--train-per-class",
        "450",
        "--val-per-class",
        "10",
        "--no-progress",
    ]
    assert steps["bench"][steps["bench"].index("--data") + 1] == f"{tmp_path}/gpu-check-100x450"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (  # the flag named: it said only "dataset root '.../none/train' does not exist"
            ["--data", "{tmp}/none"],
            "--data {tmp}/none: dataset root '{tmp}/none/train' does not exist",
        ),
        (["--train-dir", "/proc/x"], "--train-dir /proc/x: cannot be made"),
    ],
)
def test_data_and_train_dir_are_checked_before_the_machine(tmp_path, flags, message) -> None:
    # They were first used by the steps, after the 20-minute pytest step on a GPU.
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    done = run_command("pipelines.gpu_check", *flags, "--out", tmp_path / "gc")
    line = user_error_line(done)
    assert line.startswith(f"python -m pipelines.gpu_check: error: {message.format(tmp=tmp_path)}")
    assert not (tmp_path / "gc").exists()


def test_without_data_the_set_is_generated_in_the_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DALI_CUTMIX_CACHE", str(tmp_path))
    args = gpu_check.get_args_parser().parse_args(["--classes", "3", "--per-class", "4"])
    assert gpu_check.data_folder(args) == tmp_path / "gpu-check-3x4"


def test_each_check_trains_into_a_new_folder() -> None:
    # python -m train refuses a folder holding another run: a fixed default failed both
    # training steps of a second check.
    args = gpu_check.get_args_parser().parse_args([])
    assert args.train_dir.parent == Path("runs")
    assert re.fullmatch(r"gpu-check-train-\d{8}-\d{6}", args.train_dir.name)


def test_an_installed_copy_is_told_to_run_it_from_a_clone(tmp_path, monkeypatch, capsys) -> None:
    # Installed, its pytest step had no tests to run and its training steps no `-m train`.
    monkeypatch.setattr(gpu_check, "REPO", tmp_path / "site-packages" / "dali_cutmix")
    with pytest.raises(SystemExit) as caught:
        gpu_check.main(["--out", str(tmp_path / "gc")])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m pipelines.gpu_check: error: the GPU check runs the project's test suite "
        f"and python -m train from a clone, and {tmp_path}/site-packages/dali_cutmix is an "
        "installed copy without them: run python -m pipelines.gpu_check in the root of a clone"
    )
