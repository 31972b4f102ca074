"""``python -m pipelines.val_parity``: the loader's validation images against torchvision's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_image_folder, run_command, user_error_line

from pipelines import val_parity


def test_report_of_a_folder(tmp_path: Path, capsys) -> None:
    """The plain images of the shared fixture (38-68 x 32-47 px) at 24 of 28: the loader
    takes torchvision's sizes and offsets, so no value is more than a level apart."""
    folder = build_image_folder(tmp_path / "val", extras=False)  # 12 images
    out = tmp_path / "parity.json"
    argv = ["--crop-size", "24", "--resize-size", "28", "--batch-size", "5", "--limit", "11"]
    assert val_parity.main([str(folder), *argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 11 and (report["crop_size"], report["resize_size"]) == (24, 28)
    assert 0 < report["mean_levels"] < 0.5 and report["max_levels"] < 1.001
    assert report["share_more_than_one_level"] == 0.0
    assert report["command"].startswith("python -m pipelines.val_parity ")
    assert capsys.readouterr().out.startswith("11 images at 24 of 28: mean ")


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["--crop-size", "32", "--resize-size", "16"],
            "--resize-size (16) must be >= --crop-size (32)",
        ),
        (["--limit", "0"], "argument --limit: expected an int >= 1, got 0"),
    ],
)
def test_a_bad_value_ends_the_command_with_one_line(tmp_path: Path, argv, line) -> None:
    folder = build_image_folder(tmp_path / "val", extras=False)
    done = run_command("pipelines.val_parity", folder, *argv, "--out", tmp_path / "p.json")
    assert user_error_line(done) == f"python -m pipelines.val_parity: error: {line}"
    assert not (tmp_path / "p.json").exists()


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    done = run_command("pipelines.val_parity", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in user_error_line(done)
