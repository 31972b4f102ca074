"""Dataset listing (ImageFolder parity), file lists and DALI error parsing."""

from __future__ import annotations

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
    write_file_list,
)


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


@pytest.mark.parametrize("make", ["missing", "file", "empty"])
def test_unusable_root_names_it(tmp_path: Path, make: str) -> None:
    root = tmp_path / "root"
    if make == "file":
        root.write_text("x")
    elif make == "empty":
        root.mkdir()
    with pytest.raises(DatasetError, match=str(root)):
        list_image_folder(root)


def test_class_folder_without_images_names_the_folder(tmp_path: Path) -> None:
    root = build_image_folder(tmp_path / "data", classes=2, per_class=1, extras=False)
    empty = root / "n00000005"
    empty.mkdir()
    (empty / "labels.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match=f"{empty}.*holds no image"):
        list_image_folder(root)


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


def test_file_list_errors_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        read_file_list(tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg 0\nb.jpg cat\n")
    with pytest.raises(DatasetError, match=r"bad.txt' line 2: .*'b.jpg cat'"):
        read_file_list(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match="lists no files"):
        read_file_list(empty)
    with pytest.raises(DatasetError, match="whitespace"):
        write_file_list(tmp_path / "out.txt", [("trailing.jpg ", 0)])


def test_label_beyond_class_folders_is_an_error(tmp_path: Path) -> None:
    root = build_image_folder(tmp_path / "data", classes=2, per_class=1, extras=False)
    listed = tmp_path / "files.txt"
    listed.write_text("n00000000/img_0_0.JPEG 5\n")
    with pytest.raises(DatasetError, match="label 5 but .* only 2 class folders"):
        read_file_list(listed, root=root)


def test_path_in_dali_messages() -> None:
    decode = "encountered:\n\nFailed to decode sample #3 : /data/a b/x.JPEG\nCurrent pipeline"
    assert path_in_message(decode) == "/data/a b/x.JPEG"
    mapping = "encountered:\n\nFile mapping failed: /data/empty.JPEG\nC++ context: [x]"
    assert path_in_message(mapping) == "/data/empty.JPEG"
    assert path_in_message("nvImageCodec failure: '#4'") is None
    assert path_in_message("oops /d/k.jpg broke", known=["/d/j.jpg", "/d/k.jpg"]) == "/d/k.jpg"
