"""``python -m pipelines.val_parity``: the loader's validation images against torchvision's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_image_folder, run_command, user_error_line

from pipelines import val_parity


def test_report_of_a_folder(tmp_path: Path, capsys) -> None:
    """The plain images of the shared fixture (38-68 x 32-47 px) at 24 of 28: the loader
    takes torchvision's sizes and offsets, so no value is more than a level apart."""
    folder = build_image_folder(tmp_path / "val", extras=False)  # 12 images
    out = tmp_path / "parity.json"
    argv = ["--crop-size", "24", "--resize-size", "28", "--batch-size", "5", "--limit", "11"]
    argv += ["--device", "auto"]  # the CPU here, the GPU where torch sees CUDA
    assert val_parity.main([str(folder), *argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 11 and (report["crop_size"], report["resize_size"]) == (24, 28)
    assert 0 < report["mean_levels"] < 0.5 and report["max_levels"] < 1.001
    assert report["share_more_than_one_level"] == 0.0
    assert report["command"].startswith("python -m pipelines.val_parity ")
    said = capsys.readouterr().out
    assert said.startswith("11 images at 24 of 28: mean ")
    # the image of the largest mean is named (the report said which mean, not which file)
    assert report["max_image_mean_path"].startswith(str(folder))
    assert f"largest image mean {report['max_image_mean_levels']:.3f} " in said
    assert f"({report['max_image_mean_path']})" in said


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["--crop-size", "32", "--resize-size", "16"],
            "--resize-size (16) must be >= --crop-size (32)",
        ),
        (["--limit", "0"], "argument --limit: expected an int >= 1, got 0"),
    ]
    + (
        []
        if torch.cuda.is_available()
        else [  # it named 'auto', which the command refused
            (
                ["--device", "gpu"],
                "--device must be 'cpu' or 'auto': torch sees no CUDA device here (got 'gpu')",
            )
        ]
    ),
)
def test_a_bad_value_ends_the_command_with_one_line(tmp_path: Path, argv, line) -> None:
    folder = build_image_folder(tmp_path / "val", extras=False)
    done = run_command("pipelines.val_parity", folder, *argv, "--out", tmp_path / "p.json")
    assert user_error_line(done) == f"python -m pipelines.val_parity: error: {line}"
    assert not (tmp_path / "p.json").exists()


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    done = run_command("pipelines.val_parity", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in user_error_line(done)


def test_a_list_is_read_instead_of_the_folder(tmp_path: Path) -> None:
    folder = build_image_folder(tmp_path / "val", extras=False)
    files = sorted(folder.rglob("*.JPEG"))[:7]
    listed = tmp_path / "files.txt"
    listed.write_text("".join(f"{p.relative_to(folder)} {int(p.parent.name[1:])}\n" for p in files))
    out = tmp_path / "parity.json"
    argv = ["--crop-size", "24", "--resize-size", "28", "--batch-size", "3", "--list", str(listed)]
    assert val_parity.main([str(folder), *argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 7 and report["list"] == str(listed)
    assert report["max_levels"] < 1.001
    # a listed file that is not there: the advice names this command's folder, its root
    listed.write_text(f"{files[0].relative_to(folder)} 0\nn9/gone.JPEG 1\n")
    done = run_command("pipelines.val_parity", folder, *argv)
    assert user_error_line(done) == (
        f"python -m pipelines.val_parity: error: --list {str(listed)!r} names 1 file that "
        f"does not exist: {str(folder / 'n9' / 'gone.JPEG')!r} (line 2); delete those lines, or "
        f"give the folder the paths are relative to as the folder argument (they resolve against "
        f"{str(folder)!r})."
    )
    # a label beyond the folder's classes: the list was written for another folder
    listed.write_text(f"{files[0].relative_to(folder)} 99\n")
    classes = len([p for p in folder.iterdir() if p.is_dir()])
    done = run_command("pipelines.val_parity", folder, *argv)
    assert user_error_line(done) == (
        f"python -m pipelines.val_parity: error: --list {str(listed)!r} line 1 has label 99 "
        f"but {str(folder)!r} has only {classes} class folders (labels 0 to {classes - 1}); give "
        f"the folder the list was written for as the folder argument."
    )


def test_a_bad_file_names_the_scan_and_this_command_with_its_list(tmp_path: Path) -> None:
    # It advised make_loader(file_list=...) or python -m train --val-list, which this
    # command could not take.
    folder = build_image_folder(tmp_path / "val", extras=False)
    bad = sorted(folder.rglob("*.JPEG"))[4]
    bad.write_text("not an image\n")
    argv = ["--crop-size", "24", "--resize-size", "28", "--batch-size", "3"]
    done = run_command("pipelines.val_parity", folder, *argv)
    line = user_error_line(done)
    assert line.startswith(f"python -m pipelines.val_parity: error: {str(bad)!r} ")
    assert line.endswith(
        f" Find every bad file with: python -m dali_cutmix.scan {folder} --out DIR (DIR: any "
        "writable folder); then run "
        f"again with: python -m pipelines.val_parity {folder} {' '.join(argv)} --list "
        "DIR/files.txt"
    )
    listed = tmp_path / "files.txt"
    listed.write_text(f"{bad} 0\n")
    done = run_command("pipelines.val_parity", folder, *argv, "--list", listed)
    assert user_error_line(done).endswith(
        f" It is listed in --list {listed}: delete its line there."
    )
