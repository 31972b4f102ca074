"""Dataset listing (ImageFolder parity), file lists and DALI error parsing."""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import build_image_folder, write_image
from torchvision.datasets import ImageFolder

from dali_cutmix.files import (
    NOT_UTF8,
    BadImageError,
    DatasetError,
    ImageList,
    list_image_folder,
    name_problem,
    path_in_message,
    read_file_list,
    scan_hint,
    write_file_list,
    write_whole,
)

LAYOUT = "ROOT/<class>/<image>.JPEG, one subfolder per class (ImageFolder's layout)"
EXTENSIONS = ".jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp"
WRITE_LIST = (
    "`python -m dali_cutmix.scan ROOT --out DIR` writes one for the dataset ROOT: DIR/files.txt"
)


def _refusal(read: Callable[..., object], *args: object, **kwargs: object) -> str:
    """The message of the DatasetError that ``read(*args, **kwargs)`` must raise."""
    with pytest.raises(DatasetError) as caught:
        read(*args, **kwargs)
    return str(caught.value)


def _awkward_folder(root: Path) -> Path:
    """Uneven classes, a nested subfolder, upper/lower-case extensions, non-image files."""
    build_image_folder(root, classes=3, per_class=2)
    write_image(root / "n00000001" / "sub" / "deep.jpg", size=(20, 24), seed=7)
    write_image(root / "n00000002" / "UPPER.PNG", size=(20, 24), seed=8, fmt="PNG")
    (root / "n00000002" / "notes.txt").write_text("not an image")
    (root / "n00000001" / "a_first.jpeg").write_bytes(
        (root / "n00000000" / "gray.JPEG").read_bytes()
    )
    (root / "README").write_text("a file at the top level is not a class")
    # links: to another class's folder (listed again under this class, as ImageFolder
    # does), to a file, and to nothing (listed; the readers name it)
    (root / "n00000002" / "linked").symlink_to(root / "n00000000")
    (root / "n00000000" / "link.jpg").symlink_to(root / "n00000000" / "gray.JPEG")
    (root / "n00000001" / "gone.jpg").symlink_to(root / "nowhere.jpg")
    return root


def test_listing_matches_imagefolder_file_by_file(tmp_path: Path) -> None:
    root = _awkward_folder(tmp_path / "data")
    images = list_image_folder(root)
    reference = ImageFolder(root)
    assert list(images.classes) == reference.classes
    assert list(zip(images.paths, images.labels)) == [
        (str(Path(p)), t) for p, t in reference.samples
    ]
    # 12 files, the two links to files, and n00000000's 6 again under n00000002/linked
    assert len(images) == 12 + 2 + 6 and images.num_classes == 3
    assert images.labels.count(0) == 6


def test_a_link_to_a_folder_above_is_refused_not_listed_forty_times(tmp_path: Path) -> None:
    # ImageFolder (and this listing) took n00000001/loop/loop/.../img: 41 copies of each.
    root = build_image_folder(tmp_path / "data", classes=2, per_class=1, extras=False)
    (root / "n00000001" / "sub").mkdir()
    (root / "n00000001" / "sub" / "loop").symlink_to(root / "n00000001")
    assert _refusal(list_image_folder, root) == (
        f"{str(root / 'n00000001' / 'sub' / 'loop')!r} links to a folder it is in "
        f"({str(root / 'n00000001')!r}), a loop: its images would be listed over and over; "
        "remove the link."
    )


def test_a_fifo_named_as_an_image_is_refused_not_read_for_ever(tmp_path: Path) -> None:
    # The DALI reader opened it and waited for a writer, deaf to Ctrl-C and SIGTERM.
    root = build_image_folder(tmp_path / "data", classes=2, per_class=1, extras=False)
    fifo = root / "n00000001" / "pipe.JPEG"
    os.mkfifo(fifo)
    (root / "n00000001" / "to-pipe.jpg").symlink_to(fifo)  # through a link too
    assert _refusal(list_image_folder, root) == (
        f"{str(fifo)!r} is a FIFO (named pipe), not a file: a reader would wait on it for "
        "ever; remove it, or move it out of the dataset."
    )
    fifo.rename(root / "pipe.txt")  # the link now points at nothing: listed, as ImageFolder
    assert len(list_image_folder(root)) == 3


def test_a_folder_that_cannot_be_read_is_named_not_left_out(tmp_path: Path, monkeypatch) -> None:
    # Its images were left out without a word (or its class said to hold none).
    root = build_image_folder(tmp_path / "data", classes=2, per_class=1, extras=False)
    (root / "n00000001" / "sub").mkdir()
    locked = str(root / "n00000001" / "sub")
    scandir = os.scandir

    def refusing(path):  # chmod 000 does not stop root, who runs CI
        if str(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    assert _refusal(list_image_folder, root) == (
        f"{locked!r} cannot be read (Permission denied): its images would be left out; make "
        "it readable, or move it out of the dataset."
    )


@pytest.mark.parametrize(
    ("make", "problem", "advice"),
    [
        ("missing", "does not exist.", f"Give a folder laid out as {LAYOUT}."),
        ("file", "is not a folder.", f"Give a folder laid out as {LAYOUT}."),
        (
            "empty",
            "has no class folders;",
            f"give a folder laid out as {LAYOUT}, with images of extensions {EXTENSIONS}.",
        ),
    ],
)
def test_unusable_root_names_it_and_the_fix(
    tmp_path: Path, make: str, problem: str, advice: str
) -> None:
    root = tmp_path / "root"
    if make == "file":
        root.write_text("x")
    elif make == "empty":
        root.mkdir()
    assert _refusal(list_image_folder, root) == f"dataset root {str(root)!r} {problem} {advice}"


@pytest.mark.parametrize(
    ("splits", "found", "use"),
    [
        (("train", "val"), "train/ and val/", "'{root}/train' (or '{root}/val')"),
        (("test", "train", "val"), "test/, train/ and val/", "'{root}/train' (or '{root}/val')"),
        (("val",), "val/", "'{root}/val'"),
    ],
)
def test_a_dataset_root_is_refused_naming_the_split_to_give(
    tmp_path: Path, splits: tuple[str, ...], found: str, use: str
) -> None:
    # ImageFolder would take train/ and val/ for two classes named "train" and "val".
    root = tmp_path / "imagenet"
    for split in splits:
        build_image_folder(root / split, classes=2, per_class=1, extras=False)
    plural = "s" if len(splits) > 1 else ""
    message = (
        f"{str(root)!r} has only the subfolder{plural} {found}: it looks like a dataset root, "
        f"not a folder of classes; give {use.format(root=root)}, whose subfolders are the classes."
    )
    assert _refusal(list_image_folder, root) == message
    listed = tmp_path / "files.txt"
    listed.write_text(f"{splits[0]}/n00000000/img_0_0.JPEG 0\n")
    # The list's classes would be the splits too.
    assert _refusal(read_file_list, listed, root=root) == message
    assert list_image_folder(root / splits[0]).classes == ("n00000000", "n00000001")


def test_a_split_name_among_real_classes_is_a_class(tmp_path: Path) -> None:
    root = build_image_folder(tmp_path / "data", classes=1, per_class=1, extras=False)
    write_image(root / "train" / "a.JPEG", size=(20, 20), seed=3)
    assert list_image_folder(root).classes == ("n00000000", "train")


def test_class_folder_without_images_names_the_folder(tmp_path: Path) -> None:
    root = build_image_folder(tmp_path / "data", classes=2, per_class=1, extras=False)
    empty = root / "n00000005"
    empty.mkdir()
    (empty / "labels.csv").write_text("a,b\n")
    assert _refusal(list_image_folder, root) == (
        f"class folder {str(empty)!r} holds no image (extensions {EXTENSIONS}); add images or "
        "remove the folder (with the class's folder in any other split: train/ and val/ must "
        "have the same classes), since class indices follow the sorted folder names."
    )


def test_file_list_round_trip_and_relative_paths(tmp_path: Path) -> None:
    root = build_image_folder(tmp_path / "data", classes=2, per_class=2, extras=False)
    images = list_image_folder(root)
    listed = tmp_path / "lists" / "files.txt"
    listed.parent.mkdir()
    relative = [
        (str(Path(p).relative_to(root)), label) for p, label in zip(images.paths, images.labels)
    ]
    assert write_file_list(listed, relative) == 4
    assert listed.read_text().splitlines()[0] == "n00000000/img_0_0.JPEG 0"

    with_root = read_file_list(listed, root=root)
    assert with_root == ImageList(images.classes, images.paths, images.labels, str(listed))
    without_root = read_file_list(listed)  # relative to the list's folder, names from parents
    assert without_root.paths[0] == str(listed.parent / "n00000000" / "img_0_0.JPEG")
    assert without_root.classes == ("n00000000", "n00000001")


def test_file_list_is_utf_8_whatever_the_locale_and_a_bom_is_dropped(tmp_path: Path) -> None:
    # Read with the locale's encoding, a list write_file_list wrote failed under LC_ALL=C
    # (UnicodeDecodeError); a BOM (Windows editors) made "\ufeff/abs/x.JPEG" a relative path.
    listed, image = tmp_path / "files.txt", tmp_path / "clé" / "x.JPEG"
    write_file_list(listed, [(str(image), 0), (str(tmp_path / "b" / "y.JPEG"), 1)])
    assert "clé" in listed.read_bytes().decode("utf-8")
    assert read_file_list(listed).paths[0] == str(image)
    listed.write_bytes(b"\xef\xbb\xbf" + listed.read_bytes())
    assert read_file_list(listed).paths == (str(image), str(tmp_path / "b" / "y.JPEG"))
    # a name whose bytes are not UTF-8 goes through as os.fsdecode gives it
    odd = os.fsdecode(b"caf\xe9.JPEG")
    write_file_list(listed, [(str(tmp_path / odd), 0)])
    assert read_file_list(listed).paths == (str(tmp_path / odd),)


@pytest.mark.parametrize("label", [1.5, "cat", True, -1, 2**31, None])
def test_a_label_no_list_line_holds_is_refused_before_writing(tmp_path: Path, label) -> None:
    # 1.5, "cat", True and -1 were written as they came: read_file_list refused the list
    listed = tmp_path / "files.txt"
    listed.write_text("kept 0\n")
    with pytest.raises(DatasetError) as caught:
        write_file_list(listed, [("a.JPEG", 0), ("b.JPEG", label)])
    assert str(caught.value) == (
        f"'b.JPEG': label {label!r} is no int from 0 to 2147483647, which a file list's line holds."
    )
    assert listed.read_text() == "kept 0\n"
    write_file_list(listed, [("a.JPEG", np.int64(3)), ("b.JPEG", 2**31 - 1)])
    assert listed.read_text() == f"a.JPEG 3\nb.JPEG {2**31 - 1}\n"


@pytest.mark.parametrize(
    "mark", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
)
def test_a_name_holding_a_character_splitlines_breaks_at_reads_back(
    tmp_path: Path, mark: str
) -> None:
    # str.splitlines() broke the line there: the scan's own files.txt could not be read
    # ("line 2: expected 'path label'"), and its advice was the scan that wrote it.
    listed = tmp_path / "files.txt"
    paths = [str(tmp_path / f"a{mark}b.JPEG"), str(tmp_path / "c.JPEG")]
    write_file_list(listed, [(paths[0], 0), (paths[1], 1)])
    assert read_file_list(listed).paths == tuple(paths)


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_lines_end_as_any_editor_ends_them(tmp_path: Path, ending: str) -> None:
    listed = tmp_path / "files.txt"
    listed.write_bytes(ending.join(["a.JPEG 0", "", "b.JPEG 1", "c.JPEG 2"]).encode() + b"\n")
    images = read_file_list(listed)
    assert images.paths == tuple(str(tmp_path / n) for n in ("a.JPEG", "b.JPEG", "c.JPEG"))
    assert images.labels == (0, 1, 2)


def test_a_name_that_is_not_utf_8_is_named_as_a_bad_file_for_dali(tmp_path: Path) -> None:
    # DALI's reader refused it with a traceback: "Unsupported argument type with name files".
    root = build_image_folder(tmp_path / "data", classes=2, per_class=2, extras=False)
    odd = [
        str(root / "n00000001" / os.fsdecode(f"caf\xe9{i}.JPEG".encode("latin-1"))) for i in (1, 2)
    ]
    for path in odd:
        write_image(Path(path), size=(20, 20), seed=1)
    images = list_image_folder(root)  # the torchvision loader reads them
    assert set(odd) <= set(images.paths)
    with pytest.raises(BadImageError) as caught:
        images.check_names(train=False)
    assert caught.value.path == odd[0]
    assert str(caught.value) == (
        f"{odd[0]!r}: its name is not valid UTF-8, which DALI's reader cannot take; rename "
        f"the file (convmv renames a tree of files) (2 files of {str(root)!r} have such "
        f"names). {scan_hint(root, train=False)}"
    )
    assert name_problem(odd[0]) == NOT_UTF8 and name_problem(str(root / "café.JPEG")) is None
    list_image_folder(build_image_folder(tmp_path / "clean", classes=1, per_class=2)).check_names()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            None,
            "file list {list} does not exist or is not a file; give a file of 'path label' lines",
        ),
        (
            "a.jpg 0\nb.jpg cat\n",
            "{list} line 2: expected 'path label' with an integer label >= 0, got 'b.jpg cat'; "
            "correct or delete that line",
        ),
        ("\n", "file list {list} lists no files; give a file of 'path label' lines"),
        # digits to str.isdigit() that int() fails on ("²"), or reads as 3 ("٣"), or a sign
        *[
            (
                f"a.jpg 0\nb.jpg {label}\n",
                "{list} line 2: expected 'path label' with an integer label >= 0, got "
                f"'b.jpg {label}'; correct or delete that line",
            )
            for label in ("²", "\u0663", "--1", "-1", "+1")
        ],
    ],
    ids=["missing", "bad-label", "empty", "superscript", "arabic-indic", "--1", "-1", "+1"],
)
def test_file_list_errors_name_the_file_line_and_fix(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    listed = tmp_path / "files.txt"
    if content is not None:
        listed.write_text(content)
    want = f"{problem.format(list=repr(str(listed)))} ({WRITE_LIST})."
    assert _refusal(read_file_list, listed) == want


def test_file_list_paths_with_outer_whitespace_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    out.write_text("an earlier list 0\n")
    with pytest.raises(DatasetError) as info:
        write_file_list(out, [("good.jpg", 0), ("trailing.jpg ", 0), ("x.jpg", 1)])
    assert str(info.value) == (
        "'trailing.jpg ': its name has leading/trailing whitespace or a newline, which DALI's "
        "file list cannot hold; rename the file."
    )
    # Nothing was written: the earlier list is as it was (it used to be cut after good.jpg).
    assert out.read_text() == "an earlier list 0\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_label_beyond_class_folders_is_an_error(tmp_path: Path) -> None:
    root = build_image_folder(tmp_path / "data", classes=2, per_class=1, extras=False)
    listed = tmp_path / "files.txt"
    listed.write_text("n00000000/img_0_0.JPEG 1\n\nn00000001/img_1_0.JPEG 5\n")
    assert _refusal(read_file_list, listed, root=root) == (
        f"file list {str(listed)!r} line 3 has label 5 but {str(root)!r} has only 2 class "
        f"folders (labels 0 to 1); give the dataset folder the list was written for as the "
        f"root, or no root (its class names then come from the files' folders)."
    )


@pytest.mark.parametrize(("train", "flag"), [(True, "--train-list"), (False, "--val-list")])
def test_scan_hint_names_the_command_and_the_arguments(train: bool, flag: str) -> None:
    assert scan_hint("/data/my imagenet/train", train=train) == (
        "Run `python -m dali_cutmix.scan '/data/my imagenet/train' --out DIR` (DIR: any writable "
        "folder) to find every bad file and write a list of the good ones, then read that list: "
        f'`make_loader(..., file_list="DIR/files.txt")`, or `python -m train ... {flag} '
        "DIR/files.txt`."
    )


def test_path_in_dali_messages() -> None:
    decode = "encountered:\n\nFailed to decode sample #3 : /data/a b/x.JPEG\nCurrent pipeline"
    assert path_in_message(decode) == "/data/a b/x.JPEG"
    mapping = "encountered:\n\nFile mapping failed: /data/empty.JPEG\nC++ context: [x]"
    assert path_in_message(mapping) == "/data/empty.JPEG"
    assert path_in_message("nvImageCodec failure: '#4'") is None
    assert path_in_message("oops /d/k.jpg broke", known=["/d/j.jpg", "/d/k.jpg"]) == "/d/k.jpg"


def _list(tmp_path: Path, lines: list[str]) -> Path:
    listed = tmp_path / "files.txt"
    listed.write_text("".join(f"{line}\n" for line in lines))
    return listed


def test_a_tab_separates_path_and_label_as_a_space_does(tmp_path: Path) -> None:
    listed = _list(tmp_path, ["a/x y.JPEG\t0", "b/z.JPEG \t 1", "c/w.JPEG  2"])
    got = read_file_list(listed)
    assert got.paths == tuple(str(tmp_path / p) for p in ("a/x y.JPEG", "b/z.JPEG", "c/w.JPEG"))
    assert got.labels == (0, 1, 2) and got.classes == ("a", "b", "c")


def test_a_file_listed_with_two_labels_is_refused_naming_both_lines(tmp_path: Path) -> None:
    listed = _list(tmp_path, ["a/x.JPEG 0", "", "b/y.JPEG 1", "a/x.JPEG 2"])
    assert _refusal(read_file_list, listed) == (
        f"{str(listed)!r} lists {str(tmp_path / 'a' / 'x.JPEG')!r} with label 0 (line 1) and "
        "label 2 (line 4); delete the wrong line."
    )


@pytest.mark.parametrize("other", ["./a/x.JPEG", "a//x.JPEG", "b/../a/x.JPEG", "{root}/a/x.JPEG"])
def test_a_file_spelled_two_ways_with_two_labels_is_refused(tmp_path: Path, other: str) -> None:
    # Compared as spelled, "./a/x.JPEG 1" read one image under two labels without a word.
    other = other.format(root=tmp_path)
    listed = _list(tmp_path, ["a/x.JPEG 0", f"{other} 1"])
    first, second = str(tmp_path / "a" / "x.JPEG"), os.path.join(tmp_path, other)
    spelled = f", as {second!r}" if second != first else ""  # an absolute path: the same
    assert _refusal(read_file_list, listed) == (
        f"{str(listed)!r} lists {first!r} with label 0 (line 1) and label 1 (line 2{spelled}); "
        "delete the wrong line."
    )


def test_a_file_listed_twice_with_its_label_is_kept_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listed = _list(tmp_path, ["a/x.JPEG 0", "b/y.JPEG 1", "a/x.JPEG 0", "a/x.JPEG 0"])
    with caplog.at_level("WARNING", logger="dali_cutmix.files"):
        got = read_file_list(listed)
    assert got.labels == (0, 1, 0, 0) and len(got) == 4  # oversampling may be meant
    assert caplog.messages == [
        f"{listed} lists 2 files more than once (first at line 3): each is read once per "
        "listing an epoch"
    ]


def test_a_folder_of_several_labels_is_logged_in_a_list_without_root(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # One line's label mistyped (7 for 2): class 2's folder names class 7 too.
    lines = [f"s{c}/{k}.JPEG {c}" for c in range(3) for k in range(2)] + ["s2/9.JPEG 7"]
    with caplog.at_level("WARNING", logger="dali_cutmix.files"):
        got = read_file_list(_list(tmp_path, lines))
    assert got.classes == ("s0", "s1", "s2", "class_3", "class_4", "class_5", "class_6", "s2")
    assert caplog.messages == [
        f"1 folder of the list holds files of several labels, e.g. {str(tmp_path / 's2')!r}: "
        "labels 2 (line 5), 7 (line 7); in an ImageFolder layout that is a wrong label (class "
        "names here come from folders)",
        f"file list {str(tmp_path / 'files.txt')!r} has no file of 4 classes: 3 'class_3', "
        "4 'class_4', 5 'class_5', 6 'class_6'; they are among the model's outputs but in none "
        "of the list's images",
    ]
    caplog.clear()
    flat = _list(tmp_path, ["images/1.JPEG 4", "images/2.JPEG 0"])  # labels by line alone
    with caplog.at_level("WARNING", logger="dali_cutmix.files"):
        assert read_file_list(flat).num_classes == 5
    assert [m for m in caplog.messages if "several labels" in m] == []


def test_labels_other_than_their_class_folders_are_logged_in_a_list_with_root(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A list written for another folder, its labels shifted by one (the class folders here
    # are in another order), trained silently to 0 % validation top-1.
    # the listing's INFO line left out (python -m train's tests, run first, set it to INFO)
    caplog.set_level(logging.WARNING, logger="dali_cutmix.files")
    root = build_image_folder(tmp_path / "data", classes=3, per_class=2, extras=False)
    images = list_image_folder(root)
    rows = [(str(Path(p).relative_to(root)), x) for p, x in zip(images.paths, images.labels)]
    (tmp_path / "other").mkdir()
    (tmp_path / "abs").mkdir()
    good = _list(tmp_path, [f"{p} {label}" for p, label in rows])
    shifted = _list(tmp_path / "other", [f"{p} {(label + 1) % 3}" for p, label in rows])
    absolute = _list(tmp_path / "abs", [f"{root / rows[0][0]} 2", f"{tmp_path}/elsewhere.JPEG 1"])
    with caplog.at_level("WARNING", logger="dali_cutmix.files"):
        read_file_list(good, root=root)
        assert caplog.messages == []  # a scan's files.txt, a list written for this folder
        assert read_file_list(shifted, root=root).labels == tuple((x + 1) % 3 for _, x in rows)
        read_file_list(absolute, root=root)  # a file outside the folder is not judged
    assert caplog.messages == [
        f"6 files of file list {str(shifted)!r} carry a label other than their class folder's "
        f"in {str(root)!r}, e.g. line 1: 'n00000000/img_0_0.JPEG' has label 1, and "
        "'n00000000' is label 0; check that the list was written for this folder",
        f"1 file of file list {str(absolute)!r} carries a label other than its class folder's "
        f"in {str(root)!r}, e.g. line 1: 'n00000000/img_0_0.JPEG' has label 2, and "
        "'n00000000' is label 0; check that the list was written for this folder",
        f"file list {str(absolute)!r} has no file of 1 class: 0 'n00000000'; it is "
        "among the model's outputs but in none of the list's images",
    ]


def test_labels_beyond_int32_or_a_million_classes_without_root_are_refused(
    tmp_path: Path,
) -> None:
    # 10,000,000 took 1.4 GB of class names; 1,234,567,890 a MemoryError with no message.
    listed = _list(tmp_path, ["a/x.JPEG 0", "b/y.JPEG 1048576"])
    assert _refusal(read_file_list, listed) == (
        f"{str(listed)!r} line 2: label 1048576 would make 1048577 classes of a list read "
        "without a root; correct that line, or give the dataset folder (its class folders "
        "name the classes) as the root."
    )
    assert read_file_list(_list(tmp_path, ["a/x.JPEG 1048575"])).num_classes == 2**20
    listed = _list(tmp_path, ["a/x.JPEG 0", "b/y.JPEG 2147483648"])
    assert _refusal(read_file_list, listed, root=tmp_path) == (
        f"{str(listed)!r} line 2: label 2147483648 is beyond DALI's int32 labels (at most "
        "2147483647); correct or delete that line."
    )


def test_listed_files_that_do_not_exist_are_named_when_they_must(tmp_path: Path) -> None:
    root = build_image_folder(tmp_path / "data", classes=2, per_class=2, extras=False)
    good = [f"n0000000{c}/img_{c}_{k}.JPEG {c}" for c in range(2) for k in range(2)]
    gone = [f"n00000001/gone_{k}.JPEG 1" for k in range(5)]
    listed = _list(tmp_path, [good[0], "", *gone, *good[1:]])
    assert len(read_file_list(listed, root=root)) == 9  # not looked for by default
    assert _refusal(read_file_list, listed, root=root, must_exist=True) == (
        f"file list {str(listed)!r} names 5 files that do not exist: "
        + ", ".join(
            f"{str(root / 'n00000001' / f'gone_{k}.JPEG')!r} (line {k + 3})" for k in (0, 1, 2)
        )
        + f" and 2 more; delete those lines, or give the folder the paths are relative to as "
        f"the root (they resolve against {str(root)!r})."
    )
    assert len(read_file_list(_list(tmp_path, good), root=root, must_exist=True)) == 4
    # absolute paths resolve against no folder: another root would not find them
    absolute = _list(tmp_path, [good[0], f"{root / 'n00000001' / 'gone.JPEG'} 1"])
    assert _refusal(read_file_list, absolute, root=root, must_exist=True) == (
        f"file list {str(absolute)!r} names 1 file that does not exist: "
        f"{str(root / 'n00000001' / 'gone.JPEG')!r} (line 2); delete those lines."
    )
    # not one listed file exists: a dataset that moved, where every line would be deleted
    moved = _list(tmp_path, [f"{tmp_path / 'old' / 'n0' / 'a.JPEG'} 0"])
    assert _refusal(read_file_list, moved, root=root, must_exist=True) == (
        f"file list {str(moved)!r} names 1 file that does not exist: "
        f"{str(tmp_path / 'old' / 'n0' / 'a.JPEG')!r} (line 1); not one of them exists: if the "
        "dataset moved, write the list anew where it is now (`python -m dali_cutmix.scan ROOT "
        "--out DIR` writes one for the dataset ROOT: DIR/files.txt) and read that one instead."
    )


def test_missing_files_are_found_on_threads_where_a_file_system_answers_slowly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dali_cutmix import files

    paths = [str(tmp_path / f"{i}.JPEG") for i in range(1000)]
    for i, path in enumerate(paths):
        if i not in (3, 700, 999):
            Path(path).touch()
    isfile, threads = os.path.isfile, set()

    def slow(path: str) -> bool:  # a network file system: each answer waits
        time.sleep(0.0002)
        threads.add(threading.get_ident())
        return isfile(path)

    assert files._missing(paths) == [3, 700, 999]
    monkeypatch.setattr(files.os.path, "isfile", slow)
    assert files._missing(paths) == [3, 700, 999]
    assert len(threads) > 1


def test_counts_in_messages_agree_with_their_number() -> None:
    from dali_cutmix.files import counted

    assert [counted(n, "class") for n in (0, 1, 2)] == ["0 classes", "1 class", "2 classes"]
    assert [counted(n, "image") for n in (1, 7)] == ["1 image", "7 images"]
    assert counted(1, "sample") == "1 sample"
    assert [counted(2, noun) for noun in ("batch", "epoch")] == ["2 batches", "2 epochs"]


@pytest.mark.parametrize("earlier", [None, "an earlier report\n"])
def test_a_failed_write_leaves_no_file_nor_a_half_one(tmp_path: Path, earlier: str | None) -> None:
    # A full disk left an empty report (a JSON file that did not parse, a PNG of 0 bytes)
    # and ended in a traceback naming no file.
    path = tmp_path / "results.json"
    if earlier is not None:
        path.write_text(earlier)

    def full(part: Path) -> None:
        assert part.name == ".results.partial.json"  # the suffix kept, for PIL and matplotlib
        part.write_text('{"half": ')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as raised:
        write_whole(path, full)
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(path))
    assert str(raised.value) == f"[Errno 28] No space left on device: '{path}'"
    assert [p.name for p in tmp_path.iterdir()] == ([] if earlier is None else ["results.json"])
    assert earlier is None or path.read_text() == earlier
    assert write_whole(path, lambda part: part.write_text("whole\n")) == path
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert path.read_text() == "whole\n"


def test_a_link_is_written_through_and_what_is_no_file_is_refused(tmp_path: Path) -> None:
    # The rename replaced a link by a file (its target kept the old report) and a FIFO or a
    # device node by a file (as root, --out /dev/stdout replaced the link /dev/stdout).
    target = tmp_path / "kept" / "results.json"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "results.json"
    link.symlink_to(target)
    assert write_whole(link, lambda part: part.write_text("new\n")) == link
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path / "kept"):
        with pytest.raises(OSError) as raised:
            write_whole(path, lambda part: part.write_text("new\n"))
        assert str(raised.value) == (
            f"[Errno 22] not a regular file (a folder, a FIFO, a device or a socket); give a "
            f"file: '{path}'"
        )
    assert fifo.exists() and not fifo.is_file() and (tmp_path / "kept").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.json", "kept", "results.json"]


def test_a_class_a_list_leaves_out_is_logged_with_or_without_root(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A scan that found every image of a class bad wrote a files.txt without it; training on
    # that list left the class untrained (and still evaluated) without a word.
    # the listing's INFO line left out (python -m train's tests, run first, set it to INFO)
    caplog.set_level(logging.WARNING, logger="dali_cutmix.files")
    root = build_image_folder(tmp_path / "data", classes=7, per_class=1, extras=False)
    images = list_image_folder(root)
    kept = [(p, x) for p, x in zip(images.paths, images.labels) if x not in (0, 2, 3, 4, 5, 6)]
    listed = _list(tmp_path, [f"{p} {x}" for p, x in kept])
    with caplog.at_level("WARNING", logger="dali_cutmix.files"):
        assert read_file_list(listed, root=root).num_classes == 7
    assert caplog.messages == [
        f"file list {str(listed)!r} has no file of 6 classes: 0 'n00000000', 2 'n00000002', "
        "3 'n00000003', 4 'n00000004', 5 'n00000005' and 1 more; they are among the model's "
        "outputs but in none of the list's images"
    ]
    caplog.clear()
    every = _list(tmp_path, [f"{p} {x}" for p, x in zip(images.paths, images.labels)])
    with caplog.at_level("WARNING", logger="dali_cutmix.files"):
        read_file_list(every, root=root)
        read_file_list(every)
    assert caplog.messages == []


def test_files_a_listing_leaves_out_are_counted_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A .gif, a .heic, a download's .part and a JPEG beside the class folders were left out
    # as ImageFolder leaves them out, but without a word: "listed 4 images" and nothing more.
    root = build_image_folder(tmp_path / "data", classes=2, per_class=2, extras=False)
    for name in ("photo.gif", "photo.heic", "x.JPEG.part", "notes.txt"):
        (root / "n00000001" / name).write_bytes(b"not listed")
    write_image(root / "stray.JPEG", size=(8, 8), seed=1)
    with caplog.at_level("INFO", logger="dali_cutmix.files"):
        images = list_image_folder(root)
    assert images.labels == tuple(ImageFolder(str(root)).targets) == (0, 0, 1, 1)
    assert caplog.messages[1:] == [
        "left out 4 files without an image extension, as ImageFolder does: "
        "'n00000001/notes.txt', 'n00000001/photo.gif', 'n00000001/photo.heic' and 1 more",
        f"left out 1 file directly in {root}, outside every class folder, as ImageFolder "
        "does: 'stray.JPEG'",
    ]
    # kept for a scan's report, whose counts then add up to the files on disk
    left = ("notes.txt", "photo.gif", "photo.heic", "x.JPEG.part")
    assert images.left_out == (
        *(str(root / "n00000001" / n) for n in left),
        str(root / "stray.JPEG"),
    )
    caplog.clear()
    with caplog.at_level("INFO", logger="dali_cutmix.files"):
        clean = list_image_folder(build_image_folder(tmp_path / "clean", classes=2, extras=False))
    assert [m for m in caplog.messages if "left out" in m] == [] and clean.left_out == ()
    # the scan's summary and bad_files.json count them: 4 good + 5 left out = 9 files there
    from dali_cutmix.scan import main as scan

    caplog.clear()
    with caplog.at_level("INFO", logger="dali_cutmix.scan"):
        assert scan([str(root), "--out", str(tmp_path / "scan"), "--workers", "1"]) == 0
    assert "9 files, 4 good, 0 bad, 5 left out as ImageFolder does (named above)" in "".join(
        caplog.messages
    )
    report = json.loads((tmp_path / "scan" / "bad_files.json").read_text())
    assert (report["total"], report["good"], report["left_out"]) == (4, 4, list(images.left_out))


def test_a_hidden_class_folder_is_warned_of_as_the_label_it_takes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # train/.cache/x.jpg became class 0 (as in ImageFolder) and moved every real label up
    # by one, without a word.
    root = build_image_folder(tmp_path / "data", classes=2, per_class=1, extras=False)
    write_image(root / ".cache" / "x.JPEG", size=(8, 8), seed=1)
    with caplog.at_level("WARNING", logger="dali_cutmix.files"):
        images = list_image_folder(root)
        listed = _list(tmp_path, ["n00000000/img_0_0.JPEG 1", "n00000001/img_1_0.JPEG 2"])
        read_file_list(listed, root=root)
    assert (
        images.classes
        == tuple(ImageFolder(str(root)).classes)
        == (
            ".cache",
            "n00000000",
            "n00000001",
        )
    )
    said = (
        f"class folder '.cache' under {root} is hidden (a name starting with a dot) and is a "
        "class here, as in ImageFolder, sorted before the others (label 0): move it out of "
        "the dataset if it is not a class"
    )
    assert caplog.messages[:2] == [said, said]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-16-le"])
def test_a_utf_16_file_list_is_refused_as_one(tmp_path: Path, encoding: str) -> None:
    # Windows Notepad's "Unicode" list was refused as "line 1: expected 'path label' ...
    # got '\udcff\udcfec\x00a\x00t...'", which named no encoding.
    listed = tmp_path / "files.txt"
    listed.write_text("cat/a.jpg 0\ndog/b.jpg 1\n", encoding=encoding)
    assert _refusal(read_file_list, listed) == (
        f"file list {str(listed)!r} is UTF-16 (or holds NUL bytes), not text of UTF-8 lines; "
        "save it as UTF-8"
    )
