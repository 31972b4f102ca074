"""The scan command: bad files found, good ones (grayscale, CMYK, PNG-named-.JPEG) kept."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import build_image_folder, write_image
from torchvision.datasets import ImageFolder

from dali_cutmix.files import read_file_list
from dali_cutmix.scan import check_image, first_unreadable, main


def _dirty_folder(root: Path) -> tuple[Path, set[str]]:
    """build_image_folder plus four bad files (text, truncated, empty, GIF); returns their paths."""
    build_image_folder(root, classes=2, per_class=3)
    good = (root / "n00000000" / "img_0_0.JPEG").read_bytes()
    bad = {
        root / "n00000000" / "text.JPEG": b"this is not an image\n" * 10,
        root / "n00000001" / "truncated.JPEG": good[: len(good) // 2],
        root / "n00000001" / "empty.jpg": b"",
    }
    for path, data in bad.items():
        path.write_bytes(data)
    gif = write_image(root / "n00000001" / "gif_named.JPEG", size=(20, 20), seed=5, fmt="GIF")
    return root, {str(p) for p in bad} | {str(gif)}


def test_check_image_keeps_odd_but_valid_files(image_folder: Path) -> None:
    first = image_folder / "n00000000"
    for name in ("gray.JPEG", "cmyk.JPEG", "png_named.JPEG", "img_0_0.JPEG"):
        assert check_image(str(first / name)) is None, name


def test_scan_writes_clean_list_and_report(tmp_path: Path) -> None:
    root, bad = _dirty_folder(tmp_path / "data")
    out = tmp_path / "scan"
    assert main([str(root), "--out", str(out), "--workers", "2"]) == 1

    report = json.loads((out / "bad_files.json").read_text())
    assert sorted(entry["path"] for entry in report["bad"]) == sorted(bad)
    assert next(e for e in report["bad"] if e["path"].endswith("gif_named.JPEG"))["error"] == (
        "format GIF is not one DALI decodes"
    )
    assert report["total"] == 2 * 3 + 3 + 4 and report["good"] == 2 * 3 + 3

    clean = read_file_list(out / "files.txt")
    expected = [(p, t) for p, t in ImageFolder(root).samples if p not in bad]
    assert list(zip(clean.paths, clean.labels)) == expected
    assert any(p.endswith("cmyk.JPEG") for p in clean.paths)
    assert any(p.endswith("png_named.JPEG") for p in clean.paths)
    assert any(p.endswith("gray.JPEG") for p in clean.paths)
    assert (out / "classes.txt").read_text().split() == ["n00000000", "n00000001"]


def test_scan_of_a_clean_folder_exits_zero(tmp_path: Path) -> None:
    root = build_image_folder(tmp_path / "data", classes=2, per_class=2)
    out = tmp_path / "scan"
    assert main([str(root), "--out", str(out), "--workers", "1"]) == 0
    assert json.loads((out / "bad_files.json").read_text())["bad"] == []
    assert len((out / "files.txt").read_text().splitlines()) == 2 * 2 + 3


def test_scan_of_a_missing_root_exits_two(tmp_path: Path, caplog) -> None:
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert str(tmp_path / "nope") in caplog.text


def test_first_unreadable_finds_a_non_image(tmp_path: Path) -> None:
    root, _ = _dirty_folder(tmp_path / "data")
    paths = [str(p) for p in sorted(root.rglob("*")) if p.is_file()]
    assert first_unreadable(paths) == str(root / "n00000000" / "text.JPEG")
    good = [p for p in paths if "img_" in p]
    assert first_unreadable(good) is None


def test_module_runs_from_the_command_line(tmp_path: Path) -> None:
    root, _ = _dirty_folder(tmp_path / "data")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dali_cutmix.scan",
            str(root),
            "--out",
            str(tmp_path / "o"),
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "9 good, 4 bad" in done.stderr
    assert "images/s" in done.stderr  # throughput, from the summary and the progress bar
