"""Dataset listing (ImageFolder parity), file lists and DALI error parsing."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import build_image_folder, write_image
from torchvision.datasets import ImageFolder

from dali_cutmix.files import (
    DatasetError,
    ImageList,
    list_image_folder,
    path_in_message,
    read_file_list,
    scan_hint,
    write_file_list,
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
    return root


def test_listing_matches_imagefolder_file_by_file(tmp_path: Path) -> None:
    root = _awkward_folder(tmp_path / "data")
    images = list_image_folder(root)
    reference = ImageFolder(root)
    assert list(images.classes) == reference.classes
    assert list(zip(images.paths, images.labels)) == [
        (str(Path(p)), t) for p, t in reference.samples
    ]
    assert len(images) == 2 * 3 + 3 + 3 and images.num_classes == 3


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
        f"remove the folder, since class indices follow the sorted folder names."
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
    listed.write_text("n00000000/img_0_0.JPEG 5\n")
    assert _refusal(read_file_list, listed, root=root) == (
        f"file list {str(listed)!r} has label 5 but {str(root)!r} has only 2 class folders; "
        f"give the dataset folder the list was written for as the root, or no root (its class "
        f"names then come from the files' folders)."
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
