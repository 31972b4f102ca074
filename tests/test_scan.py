"""The scan command: bad files found, good ones (grayscale, CMYK, PNG-named-.JPEG) kept."""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
from conftest import build_image_folder, run_command, user_error_line, write_image
from torchvision.datasets import ImageFolder

from dali_cutmix.files import (
    NOT_UTF8,
    BadImageError,
    list_image_folder,
    read_file_list,
    scan_hint,
)
from dali_cutmix.scan import check_image, explain_decode_error, first_unreadable, main, scan


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


def test_scan_logs_the_workers_that_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 13 files in one task of 64 start one worker of the 2 allowed; it said "with 2 workers"
    root, _ = _dirty_folder(tmp_path / "data")
    with caplog.at_level(logging.INFO, logger="dali_cutmix.scan"):
        began = time.perf_counter()
        report = scan(root, workers=2, progress=False)
        wall = time.perf_counter() - began
        scan(root, workers=2, chunk_size=1, progress=False)  # 13 tasks: both start
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decoded")]
    pattern = (
        r"decoded 13 files in ([0-9.]+) s \((\d+) images/s\) with (.+); "
        r"starting the first took ([0-9.]+) s \(not counted\)"
    )
    found = [re.fullmatch(pattern, line) for line in done]
    assert all(found), done
    assert [m.group(3) for m in found] == ["1 worker (of 2 allowed)", "2 workers"]
    # the rate leaves out the first worker's start (the fork server's, about 3 s, counted in
    # the rate: "(4 images/s)"), which the line gives apart
    seconds, rate, starting = float(found[0].group(1)), int(found[0].group(2)), found[0].group(4)
    assert seconds == round(report.seconds, 2) and rate == round(13 / report.seconds)
    assert report.seconds + float(starting) <= wall + 0.1


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


@pytest.mark.parametrize(
    ("split", "flags"), [("train", ("train", "val")), ("val", ("val", "train"))]
)
def test_the_advice_names_the_flag_of_the_scanned_split(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, split: str, flags: tuple[str, str]
) -> None:
    root = build_image_folder(tmp_path / split, classes=2, per_class=2, extras=False)
    (root / "n00000000" / "text.JPEG").write_text("not an image\n")
    out = tmp_path / "scan"
    with caplog.at_level(logging.INFO, logger="dali_cutmix.scan"):
        assert main([str(root), "--out", str(out), "--workers", "1"]) == 1
    other = "training" if split == "val" else "validation"
    assert caplog.messages[-1] == (
        f"report of bad files: {out}/bad_files.json; read the list with "
        f"make_loader(..., file_list='{out}/files.txt') or python -m train ... "
        f"--{flags[0]}-list {out}/files.txt (--{flags[1]}-list for a {other} folder)"
    )


def _full_disk(self: Path, *args, **kwargs):
    """``Path.write_text`` on a disk that is full: ENOSPC, after a partial write."""
    with open(self, "w") as out:
        out.write("half")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_ends_the_scan_in_one_line_and_its_findings_are_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    # It was a traceback after the whole scan, with nothing written but a .partial file and
    # the bad files it had found lost.
    root, bad = _dirty_folder(tmp_path / "data")
    out = tmp_path / "scan"
    out.mkdir()
    (out / "files.txt").write_text("an earlier scan's list\n")
    with (
        caplog.at_level(logging.INFO, logger="dali_cutmix.scan"),
        mock.patch.object(Path, "write_text", _full_disk),
        pytest.raises(SystemExit) as caught,
    ):
        main([str(root), "--out", str(out), "--workers", "1"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m dali_cutmix.scan: error: [Errno 28] No space left on device: "
        f"'{out / 'files.txt'}'"
    )
    said = [m.removeprefix("  bad: ").split(" (")[0] for m in caplog.messages if "bad: " in m]
    assert "13 files, 9 good, 4 bad" in caplog.text and set(said) == bad
    assert (out / "files.txt").read_text() == "an earlier scan's list\n"  # whole, not half
    assert sorted(p.name for p in out.iterdir()) == ["files.txt"]  # no partial file left


def test_the_advice_quotes_paths_and_counts_the_bad_files_not_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a path with a space broke the pasted command; the 21st bad file on were not mentioned
    monkeypatch.setattr("dali_cutmix.scan.SHOWN_BAD", 2)
    root, _ = _dirty_folder(tmp_path / "data")
    out = tmp_path / "my scan"
    with caplog.at_level(logging.INFO, logger="dali_cutmix.scan"):
        assert main([str(root), "--out", str(out), "--workers", "1"]) == 1
    assert "  and 2 more bad files (in bad_files.json)" in caplog.messages
    assert f"--train-list '{out}/files.txt' (--val-list" in caplog.messages[-1]


def test_a_name_the_clean_list_cannot_hold_is_a_bad_file(tmp_path: Path) -> None:
    # It decodes, but "path label" lines cannot hold a newline: the scan ended with an
    # error after decoding everything, leaving a half-written files.txt.
    root = build_image_folder(tmp_path / "data", classes=2, per_class=2, extras=False)
    odd = root / "n00000001" / "new\nline.JPEG"
    write_image(odd, size=(20, 20), seed=1)
    out = tmp_path / "scan"
    assert main([str(root), "--out", str(out), "--workers", "1"]) == 1
    report = json.loads((out / "bad_files.json").read_text())
    assert report["bad"] == [
        {
            "path": str(odd),
            "label": 1,
            "error": "its name has leading/trailing whitespace or a newline, which DALI's "
            "file list cannot hold; rename the file",
        }
    ]
    assert len(read_file_list(out / "files.txt").paths) == 4


def test_names_that_are_not_utf_8_are_bad_files_and_their_folder_is_a_class(
    tmp_path: Path,
) -> None:
    # They decoded, so the list kept them, and DALI's reader refused the list; a class
    # folder so named ended the scan with "'utf-8' codec can't encode character '\\udcff'"
    # after every file had been decoded, and no bad_files.json.
    root = build_image_folder(tmp_path / "data", classes=2, per_class=2, extras=False)
    odd_class = root / os.fsdecode(b"n0000000\xff")
    odd = [odd_class / "a.JPEG", root / "n00000000" / os.fsdecode(b"caf\xe9.JPEG")]
    for path in odd:
        write_image(path, size=(20, 20), seed=1)
    out = tmp_path / "scan"
    assert main([str(root), "--out", str(out), "--workers", "1"]) == 1
    report = json.loads((out / "bad_files.json").read_text())
    assert sorted((bad["path"], bad["error"]) for bad in report["bad"]) == sorted(
        (str(path), NOT_UTF8) for path in odd
    )
    assert os.fsencode(read_file_list(out / "files.txt", root=root).classes[2]) == b"n0000000\xff"
    assert len(read_file_list(out / "files.txt", root=root).paths) == 4
    assert (out / "classes.txt").read_bytes().splitlines()[2] == b"n0000000\xff"


def test_scan_of_a_clean_folder_exits_zero(tmp_path: Path) -> None:
    root = build_image_folder(tmp_path / "data", classes=2, per_class=2)
    out = tmp_path / "scan"
    assert main([str(root), "--out", str(out), "--workers", "1"]) == 0
    assert json.loads((out / "bad_files.json").read_text())["bad"] == []
    assert len((out / "files.txt").read_text().splitlines()) == 2 * 2 + 3


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["nope"],
            "dataset root '{tmp}/nope' does not exist. Give a folder laid out as "
            "ROOT/<class>/<image>.JPEG, one subfolder per class (ImageFolder's layout).",
        ),
        (["data", "--out", "{tmp}/data/n00000000/img_0_0.JPEG"], None),
    ],
)
def test_bad_input_ends_the_command_with_one_line(
    tmp_path: Path, capsys, args: list[str], line: str
) -> None:
    build_image_folder(tmp_path / "data", classes=2, per_class=1, extras=False)
    rest = [arg.format(tmp=tmp_path) for arg in args[1:]] or ["--out", str(tmp_path / "o")]
    if line is None:  # --out is a file: refused before a single image is decoded
        line = f"--out {rest[1]}: not a folder"
        scanned = mock.patch("dali_cutmix.scan.scan", side_effect=AssertionError("scanned"))
    else:
        scanned = contextlib.nullcontext()
    with pytest.raises(SystemExit) as caught, scanned:
        main([str(tmp_path / args[0]), *rest])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m dali_cutmix.scan: error: {line.format(tmp=tmp_path)}"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["files.txt", "classes.txt", "bad_files.json"])
def test_a_report_file_that_is_a_folder_is_refused_before_the_scan(
    tmp_path: Path, capsys, name: str
) -> None:
    # It ended the scan after its work: "[Errno 21] Is a directory: '.../.files.txt.partial'".
    root = build_image_folder(tmp_path / "data", classes=2, per_class=1, extras=False)
    (tmp_path / "o" / name).mkdir(parents=True)
    with (
        pytest.raises(SystemExit) as caught,
        mock.patch("dali_cutmix.scan.scan", side_effect=AssertionError("scanned")),
    ):
        main([str(root), "--out", str(tmp_path / "o")])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m dali_cutmix.scan: error: --out {tmp_path / 'o'}: its {name} is a folder; "
        "remove it or give another --out"
    )


def test_a_dataset_root_is_refused_on_the_command_line(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        build_image_folder(root / split, classes=2, per_class=1, extras=False)
    done = run_command("dali_cutmix.scan", root, "--out", tmp_path / "o")
    assert user_error_line(done) == (
        f"python -m dali_cutmix.scan: error: '{root}' has only the subfolders train/ and val/: "
        f"it looks like a dataset root, not a folder of classes; give '{root}/train' "
        f"(or '{root}/val'), whose subfolders are the classes."
    )
    assert not (tmp_path / "o").exists()  # no files.txt of two classes named train and val


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


DALI_DECODE_ERROR = (
    "Critical error in pipeline:\nError in thread 0: [/opt/dali/image_decoder.cc:42] "
    "Assert failed.\nencountered:\n\nFailed to decode sample #1 : {path}\n"
    "C++ context: [/opt/dali/image_decoder.cc:42]\nCurrent pipeline object is no longer valid."
)


@pytest.mark.parametrize("train", [True, False])
def test_decode_error_names_the_file_and_the_scan_of_the_folder(
    image_folder: Path, train: bool
) -> None:
    images = list_image_folder(image_folder)
    bad = images.paths[3]
    explained = explain_decode_error(
        RuntimeError(DALI_DECODE_ERROR.format(path=bad)), images, train=train
    )
    assert isinstance(explained, BadImageError) and explained.path == bad
    assert str(explained) == (
        f"{bad!r} is not a decodable image (DALI: Failed to decode sample #1 : {bad}). "
        + scan_hint(str(image_folder), train=train)
    )
    assert f"python -m dali_cutmix.scan {image_folder} --out DIR" in str(explained)
    assert f"--{'train' if train else 'val'}-list DIR/files.txt" in str(explained)


def test_a_listed_file_that_is_gone_or_a_broken_link_is_not_called_undecodable(
    tmp_path: Path,
) -> None:
    root = build_image_folder(tmp_path / "data", classes=2, per_class=2, extras=False)
    images = list_image_folder(root)
    gone, link = images.paths[1], images.paths[2]
    Path(gone).unlink()
    Path(link).unlink()
    Path(link).symlink_to(tmp_path / "nowhere.JPEG")
    for path, what in ((gone, "does not exist (it is listed, but gone)"), (link, "is a broken")):
        explained = explain_decode_error(RuntimeError(f"Failed to open file: {path}"), images)
        assert isinstance(explained, BadImageError) and explained.path == path
        assert str(explained).startswith(f"{path!r} {what}")


def test_decode_error_of_a_file_list_names_the_dataset_folder(
    image_folder: Path, tmp_path: Path
) -> None:
    # The list is not a folder to scan: the hint names the folder its classes share.
    images = list_image_folder(image_folder)
    listed = tmp_path / "lists" / "files.txt"
    listed.parent.mkdir()
    listed.write_text("".join(f"{p} {label}\n" for p, label in zip(images.paths, images.labels)))
    from_list = read_file_list(listed)
    explained = explain_decode_error(
        RuntimeError(DALI_DECODE_ERROR.format(path=images.paths[0])), from_list
    )
    assert str(explained).endswith(scan_hint(str(image_folder), train=True))
    # an entry elsewhere (here, gone) made the hint name the common ancestor: /tmp, or /
    elsewhere = tmp_path / "nope" / "x.JPEG"
    listed.write_text(listed.read_text() + f"{elsewhere} 0\n")
    explained = explain_decode_error(
        RuntimeError(f"Failed to open file: {elsewhere}"), read_file_list(listed)
    )
    assert str(explained).startswith(f"{str(elsewhere)!r} does not exist (it is listed, but gone)")
    assert str(explained).endswith(scan_hint(str(image_folder), train=True))


def test_errors_not_about_a_file_are_left_alone(image_folder: Path) -> None:
    err = RuntimeError("CUDA error: out of memory")
    assert explain_decode_error(err, list_image_folder(image_folder)) is err


# DALI's message for an operator's failure, as it quotes the graph's source lines.
DALI_OPERATOR_ERROR = """Critical error in pipeline:
Error in {backend} operator `nvidia.dali.fn.{operator}`,
which was used in the pipeline definition with the following traceback:

  File "/work/main/pipelines/imagenet.py", line 418, in imagenet_pipeline
    crops = decode_random_crop(jpegs, options=options, gpu=gpu, decoder=decoder)
  File "/work/main/pipelines/imagenet.py", line 279, in decode_random_crop
    return fn.resize(

encountered:

{reason}
Current pipeline object is no longer valid."""


@pytest.mark.parametrize(
    ("backend", "operator", "reason", "about_a_file"),
    [
        # the resize of a huge --crop-size: "decode_random_crop(" in the quoted source once
        # made it a bad image, after reading the header of every listed file
        ("CPU", "resize", "std::bad_alloc", False),
        ("CPU", "crop_mirror_normalize", "Invalid crop window", False),
        ("MIXED", "decoders.image_random_crop", "std::bad_alloc", False),
        ("MIXED", "decoders.image_random_crop", "CUDA error: out of memory", False),
        ("CPU", "decoders.image_random_crop", "Unrecognized image format", True),
        ("MIXED", "decoders.image", "nvImageCodec failure: 7", True),
        # validation reads each header for torchvision's sizes before the (GPU) decoder runs
        ("CPU", "peek_image_shape", "nvImageCodec failure: '#4'", True),
        ("CPU", "peek_image_shape", "std::bad_alloc", False),
    ],
)
def test_only_a_reader_or_decoder_failure_is_a_bad_file(
    image_folder: Path, backend: str, operator: str, reason: str, about_a_file: bool
) -> None:
    message = DALI_OPERATOR_ERROR.format(backend=backend, operator=operator, reason=reason)
    err = RuntimeError(message)
    explained = explain_decode_error(err, list_image_folder(image_folder))
    assert (explained is not err) == about_a_file
    if about_a_file:
        assert isinstance(explained, BadImageError)
        assert f"(DALI: {reason})" in str(explained)


def test_a_bad_files_dali_error_gets_what_its_header_says(tmp_path: Path) -> None:
    # DALI's reason alone ("nvImageCodec failure: '#4'") did not say what the file is
    root, _ = _dirty_folder(tmp_path / "data")
    good = (root / "n00000000" / "img_0_0.JPEG").read_bytes()
    (root / "n00000001" / "headless.JPEG").write_bytes(good[:100])
    images = list_image_folder(root)
    for name, what, header in [
        ("n00000000/text.JPEG", "is not", "; its header: not an image format PIL knows"),
        ("n00000001/gif_named.JPEG", "is not", "; its header: format GIF is not one DALI decodes"),
        ("n00000001/truncated.JPEG", "is not", ""),  # its header reads
        # cut inside its header: PIL's words (it said "its header: OSError")
        ("n00000001/headless.JPEG", "is not", "; its header: Truncated File Read"),
        ("n00000001/empty.jpg", "is an empty file (0 bytes)", ""),  # that says it
    ]:
        bad = str(root / name)
        explained = explain_decode_error(RuntimeError(DALI_DECODE_ERROR.format(path=bad)), images)
        assert isinstance(explained, BadImageError) and explained.path == bad
        assert str(explained).startswith(
            f"{bad!r} {what}{' a decodable image' * (what == 'is not')} (DALI: Failed to decode "
            f"sample #1 : {bad}{header}). "
        ), str(explained)


def test_a_folder_where_no_file_decodes_gets_no_empty_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It wrote an empty files.txt and advised reading it, which every loader refuses.
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.JPEG").write_text("not an image\n")
    (root / "a" / "y.JPEG").write_bytes(b"")  # PIL: "cannot identify image file"
    out = tmp_path / "scan"
    out.mkdir()
    (out / "files.txt").write_text(f"{root}/a/old.JPEG 0\n")  # an earlier scan's
    with caplog.at_level(logging.INFO, logger="dali_cutmix.scan"):
        assert main([str(root), "--out", str(out), "--workers", "1"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["bad_files.json", "classes.txt"]
    assert caplog.messages[-1] == (
        f"no file of {root} decodes, so there is no list of good ones; the reasons are in "
        f"{out}/bad_files.json (a folder of some other files, or a copy that failed?)"
    )
    report = json.loads((out / "bad_files.json").read_text())
    assert [(Path(e["path"]).name, e["error"]) for e in report["bad"]] == [
        ("x.JPEG", f"UnidentifiedImageError: cannot identify image file '{root}/a/x.JPEG'"),
        ("y.JPEG", "empty file (0 bytes)"),
    ]


def test_a_scan_stopped_by_ctrl_c_says_the_bad_files_it_had_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # They were lost with the rest of its work ("no report was written").
    root, bad = _dirty_folder(tmp_path / "data")

    class _Stopped:
        """A pool whose third task is met by Ctrl-C."""

        def submit(self, task):  # the first worker's start
            done = concurrent.futures.Future()
            done.set_result(task())
            return done

        def map(self, check, chunks):
            for number, chunk in enumerate(chunks):
                if number == 2:
                    raise KeyboardInterrupt
                yield check(chunk)

    @contextlib.contextmanager
    def pool(workers):
        yield _Stopped()

    with (
        mock.patch("dali_cutmix.scan.worker_pool", pool),
        caplog.at_level(logging.INFO, logger="dali_cutmix.scan"),
        pytest.raises(KeyboardInterrupt),
    ):
        scan(root, workers=1, chunk_size=4, progress=False)
    images = list_image_folder(root)
    first = [p for p in images.paths[:8] if p in bad]
    assert first and len(first) < len(bad)  # some found, some not yet
    assert f"stopped after 8 of {len(images)} files, {len(first)} bad file" in caplog.text
    assert [m.split(" (")[0] for m in caplog.messages if "  bad: " in m] == [
        f"  bad: {p}" for p in first
    ]


def test_a_class_whose_every_image_is_bad_is_named_as_missing_from_the_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its files.txt had no line of the class, and neither the scan nor training said so.
    root = build_image_folder(tmp_path / "data", classes=3, per_class=2, extras=False)
    for path in (root / "n00000001").iterdir():
        path.write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="dali_cutmix.scan"):
        assert main([str(root), "--out", str(tmp_path / "scan"), "--workers", "1"]) == 1
    assert (
        "1 class folder kept no good image (1 'n00000001'): files.txt lists none of its "
        "images, so a run on that list never trains it (replace its bad files, or remove the "
        "class folder from every split)"
    ) in caplog.messages
    listed = (tmp_path / "scan" / "files.txt").read_text().splitlines()
    assert sorted({int(line.rsplit(" ", 1)[1]) for line in listed}) == [0, 2]


def test_a_name_with_a_newline_is_shown_quoted_on_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The summary's line broke in two at the name's newline.
    root = build_image_folder(tmp_path / "data", classes=2, per_class=2, extras=False)
    odd = root / "n00000000" / "new\nline.JPEG"
    odd.write_bytes((root / "n00000000" / "img_0_0.JPEG").read_bytes())
    with caplog.at_level(logging.INFO, logger="dali_cutmix.scan"):
        assert main([str(root), "--out", str(tmp_path / "scan"), "--workers", "1"]) == 1
    said = [m for m in caplog.messages if m.startswith("  bad: ")]
    assert said == [
        f"  bad: {str(odd)!r} (its name has leading/trailing whitespace or a newline, which "
        "DALI's file list cannot hold; rename the file)"
    ]
