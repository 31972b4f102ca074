"""The preview grid: captions carry the targets' classes and weights."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    LISTS_FOR_ANOTHER_FOLDER,
    build_image_folder,
    run_command,
    user_error_line,
)
from PIL import Image

from dali_cutmix import MixConfig
from dali_cutmix.preview import (
    BOX_COLOUR,
    caption,
    main,
    mixed_batch,
    render_grid,
    write_preview,
)
from dali_cutmix.synthetic import SyntheticSpec, generate


def test_caption_says_the_method_and_both_weights_even_for_one_class() -> None:
    assert caption("CutMix", "cat", "fox", 0.75) == "CutMix: cat 0.25\n+ fox 0.75"
    assert caption("CutMix", "cat", "cat", 0.3) == "CutMix: cat 0.70\n+ cat 0.30"
    assert caption("MixUp", "dog", "dog", 0.5) == "MixUp: dog 0.50\n+ dog 0.50"
    assert caption("", "dog", "dog", 0.0) == "unmixed: dog 1.00"
    # a box too small for two decimals: it read "+ fox 0.00" under a visible box
    assert caption("CutMix", "cat", "fox", 9 / 224**2) == "CutMix: cat 0.9998\n+ fox 0.0002"
    assert caption("CutMix", "cat", "fox", 0.004) == "CutMix: cat 0.996\n+ fox 0.004"
    assert caption("CutMix", "cat", "fox", 1.0) == "CutMix: cat 0.00\n+ fox 1.00"


def test_render_grid_size_and_box_outline() -> None:
    images = np.zeros((5, 10, 12, 3), np.uint8)
    grid = render_grid(images, ["a"] * 5, columns=2, caption_height=6)
    assert grid.size == (24, 3 * 16)
    boxes = [None, (2, 3, 6, 8), None, None, None]
    pixels = np.array(render_grid(images, ["a"] * 5, boxes=boxes, columns=2, caption_height=6))
    tile = pixels[0:10, 12:24]  # the second image: its box's edge is yellow, its inside black
    edge = np.zeros((10, 12), bool)
    edge[2:6, 3:8] = True
    edge[3:5, 4:7] = False
    assert (tile[edge] == BOX_COLOUR).all() and (tile[~edge] == 0).all()
    assert (pixels[0:10, 0:12] == 0).all()  # no box, no outline


@pytest.mark.parametrize(
    ("mixing", "method"),
    [({"cutmix_alpha": 1.0}, "CutMix"), ({"cutmix_alpha": 0.0, "mixup_alpha": 1.0}, "MixUp")],
)
def test_the_batch_says_which_method_partner_and_box(
    image_folder: Path, mixing: dict, method: str
) -> None:
    config = MixConfig(num_classes=3, **mixing)
    batch = mixed_batch(image_folder, config, batch_size=8, size=32)
    mixed = [i for i in range(8) if batch.methods[i]]
    assert mixed and set(batch.methods) <= {method, ""}
    for i in range(8):
        j, share = int(batch.partners[i]), float(batch.shares[i])
        if not batch.methods[i]:
            assert j == i and share == 0.0 and batch.boxes[i] is None
            continue
        assert j != i and 0.0 < share < 1.0
        own, partner = batch.labels[i], batch.labels[j]
        expected = np.zeros(3, np.float32)
        expected[own] += 1.0 - share
        expected[partner] += share
        np.testing.assert_allclose(batch.targets[i], expected, atol=1e-6)
        if method == "CutMix":  # the label weight is exactly the outlined box's area
            top, left, bottom, right = batch.boxes[i]
            assert (bottom - top) * (right - left) / 32**2 == pytest.approx(share, abs=1e-6)
        else:
            assert batch.boxes[i] is None


def test_write_preview_png_matches_the_batch(image_folder: Path, tmp_path: Path) -> None:
    config = MixConfig(num_classes=3, cutmix_alpha=1.0)
    out = write_preview(image_folder, tmp_path / "p.png", config, batch_size=8)
    with Image.open(out) as png:
        assert png.size == (4 * 160, 2 * (160 + 28))
    batch = mixed_batch(image_folder, config, batch_size=8)
    images, labels, targets = batch.images, batch.labels, batch.targets
    assert images.shape == (8, 160, 160, 3) and images.dtype == np.uint8
    assert targets.shape == (8, 3)
    np.testing.assert_allclose(targets.sum(1), 1.0, atol=1e-6)
    assert set(labels.tolist()) <= {0, 1, 2}


def test_the_grid_is_written_in_the_format_its_name_gives(
    image_folder: Path, tmp_path: Path
) -> None:
    # --out grid.jpg wrote PNG bytes under a .jpg name
    config = MixConfig(num_classes=3, cutmix_alpha=1.0)
    for name, kind in (("g.jpg", "JPEG"), ("g.JPEG", "JPEG"), ("g.png", "PNG"), ("g.webp", "WEBP")):
        out = write_preview(image_folder, tmp_path / name, config, batch_size=4)
        with Image.open(out) as grid:
            assert (grid.format, grid.size) == (kind, (4 * 160, 160 + 28))
    with pytest.raises(ValueError) as caught:
        write_preview(image_folder, tmp_path / "g.txt", config, batch_size=4)
    assert str(caught.value) == f"{tmp_path / 'g.txt'}: not an image file name; give a .png"
    assert not (tmp_path / "g.txt").exists()


def test_the_png_goes_to_runs_in_the_working_folder_by_default(
    image_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--data", str(image_folder), "--batch-size", "4"]) == 0
    with Image.open(tmp_path / "runs" / "preview.png") as png:
        assert png.size == (4 * 160, 160 + 28)


PROG = "python -m dali_cutmix.preview: error:"
LAYOUT = "ROOT/<class>/<image>.JPEG, one subfolder per class (ImageFolder's layout)"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--data", "{tmp}/missing"],
            "dataset root '{tmp}/missing' does not exist. Give a folder laid out as {layout}.",
        ),
        (["--data", "{tmp}/train", "--mix-prob", "3"], "--mix-prob must be in [0.0, 1.0], got 3.0"),
        (["--data", "{tmp}/train", "--seed", "-1"], "--seed must be an int in [0, 2**32), got -1"),
        (  # DALI's refusal was a traceback
            ["--data", "{tmp}/train", "--seed", str(2**63)],
            f"--seed must be an int in [0, 2**32), got {2**63}",
        ),
        (  # the flags before the folder (listing ImageNet takes a while)
            ["--data", "{tmp}/missing", "--cutmix-alpha", "-1"],
            "--cutmix-alpha must be a finite number >= 0.0, got -1.0",
        ),
        (["--batch-size", "0"], "argument --batch-size: expected an int >= 1, got 0"),
        (["--batch-size", "257"], "--batch-size 257: the grid takes at most 256 samples"),
        (["--out", "{tmp}"], "--out {tmp} is a folder or not writable; give a file"),
        (["--out", "{tmp}/grid"], "--out {tmp}/grid: not an image file name; give a .png"),
        (
            ["--out", "{tmp}/grid.psd"],
            "--out {tmp}/grid.psd: PIL reads PSD files but cannot write one; give a .png",
        ),
        (  # it read the list against the generated set's folder, and showed its classes
            ["--file-list", "{tmp}/files.txt"],
            "--file-list must come with --data (the folder whose classes its labels number, "
            "and that its relative paths start from)",
        ),
    ],
)
def test_bad_inputs_end_with_one_line(
    tmp_path: Path, image_folder: Path, capsys, args: list[str], line: str
) -> None:
    out = tmp_path / "x.png"
    with pytest.raises(SystemExit) as caught:
        main(["--out", str(out)] + [a.format(tmp=tmp_path) for a in args])  # a later --out wins
    assert caught.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == f"{PROG} {line.format(tmp=tmp_path, layout=LAYOUT)}"
    assert not out.exists()
    with pytest.raises(ValueError, match="num_classes=5"):
        write_preview(image_folder, tmp_path / "x.png", MixConfig(num_classes=5))


def test_a_dataset_root_is_refused_on_the_command_line(tmp_path: Path) -> None:
    # DALI's reader would take train/ and val/ for two classes, or fail in C++.
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        build_image_folder(root / split, classes=2, per_class=1, extras=False)
    done = run_command("dali_cutmix.preview", "--data", root, "--out", tmp_path / "p.png")
    assert user_error_line(done) == (
        f"{PROG} '{root}' has only the subfolders train/ and val/: it looks like a dataset "
        f"root, not a folder of classes; give '{root}/train' (or '{root}/val'), whose "
        f"subfolders are the classes."
    )
    assert not (tmp_path / "p.png").exists()


def test_an_undecodable_image_is_named_in_one_line(tmp_path: Path) -> None:
    root = build_image_folder(tmp_path / "data", classes=2, per_class=1, extras=False)
    bad = [root / "n00000000" / "img_0_0.JPEG", root / "n00000001" / "img_1_0.JPEG"]
    for path in bad:  # every file of the batch: which one DALI meets first is up to its threads
        path.write_bytes(b"not an image\n" * 20)
    done = run_command(
        "dali_cutmix.preview", "--data", root, "--out", tmp_path / "p.png", "--batch-size", "2"
    )
    line = user_error_line(done)
    named = line.removeprefix(f"{PROG} '").partition("' is not a decodable image (DALI: ")
    assert named[0] in {str(path) for path in bad} and named[1], line
    assert line.endswith(  # the preview's own way on (it suggested train's --train-list)
        f"Find every bad file with: python -m dali_cutmix.scan {root} --out DIR (DIR: any "
        f"writable folder); then preview the good ones with: python -m dali_cutmix.preview "
        f"--data {root} --out {tmp_path / 'p.png'} --batch-size 2 --file-list DIR/files.txt"
    )
    assert not (tmp_path / "p.png").exists()


def test_a_text_file_in_a_batch_of_real_images_is_named_not_a_crash(tmp_path: Path) -> None:
    # The preview had no header guard: DALI 2.4's CPU decoder on 2 threads crashed the
    # process (SIGSEGV, status 139, no message) on such a batch, 3 of 3 runs.
    spec = SyntheticSpec(num_classes=10, train_per_class=6, val_per_class=1, size_scale=0.25)
    root = generate(tmp_path / "data", spec, workers=1, progress=False) / "train"
    bad = root / "s0000" / "a.JPEG"
    bad.write_text("not an image\n")
    done = run_command(
        "dali_cutmix.preview", "--data", root, "--out", tmp_path / "p.png", "--batch-size", "61"
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert user_error_line(done).startswith(f"{PROG} '{bad}' is not a decodable image (DALI: ")


def test_the_scan_list_the_bad_file_line_names_previews_the_good_files(
    tmp_path: Path, capsys
) -> None:
    from dali_cutmix.scan import main as scan

    root = build_image_folder(tmp_path / "data", classes=2, per_class=2, extras=False)
    bad = root / "n00000001" / "img_1_1.JPEG"
    bad.write_bytes(b"not an image\n" * 20)
    assert scan([str(root), "--out", str(tmp_path / "scan")]) == 1  # 1: bad files found
    listed = tmp_path / "scan" / "files.txt"
    assert len(listed.read_text().splitlines()) == 3
    out = tmp_path / "p.png"
    argv = ["--data", str(root), "--file-list", str(listed), "--batch-size", "3"]
    assert main([*argv, "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 0
    # a list of the user's own that names the bad file: the line to delete
    own = tmp_path / "mine.txt"
    own.write_text(f"n00000000/img_0_0.JPEG 0\n{bad.relative_to(root)} 1\n")
    with pytest.raises(SystemExit) as caught:
        main(["--data", str(root), "--file-list", str(own), "--batch-size", "2", "--out", str(out)])
    assert caught.value.code == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith(f"{PROG} '{bad}' is not a decodable image (DALI: "), line
    assert line.endswith(f"It is listed in --file-list {own}: delete its line there.")


def test_a_bad_flag_ends_it_before_a_set_is_generated(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DALI_CUTMIX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as caught:
        main(["--out", str(tmp_path / "p.png"), "--mix-prob", "2"])
    assert caught.value.code == 2
    assert not (tmp_path / "cache").exists()


def test_without_data_it_previews_a_generated_set(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DALI_CUTMIX_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "p.png"
    assert main(["--out", str(out), "--batch-size", "4", "--mixup-alpha", "0.8"]) == 0
    with Image.open(out) as png:
        assert png.size == (4 * 160, 160 + 28)
    assert (tmp_path / "cache" / "preview" / "train").is_dir()


def test_a_full_disk_ends_the_preview_in_one_line_and_leaves_no_empty_png(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # It was a traceback, and a PNG of 0 bytes was left behind.
    def full(image: Image.Image, fp, *args, **kwargs) -> None:
        Path(fp).write_bytes(b"\x89PNG")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "o" / "p.png"
    with pytest.raises(SystemExit) as caught:
        main(["--data", str(image_folder), "--out", str(out), "--batch-size", "4"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m dali_cutmix.preview: error: [Errno 28] No space left on device: '{out}'"
    )
    assert list(out.parent.iterdir()) == []


def test_the_advice_for_a_bad_file_of_the_generated_set_names_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dali_cutmix.cli import bad_file_advice
    from dali_cutmix.files import BadImageError

    error = BadImageError("'x.JPEG' is not a decodable image", path="x.JPEG")
    advice = bad_file_advice(
        error, tmp_path / "a b", None, "dali_cutmix.preview", "preview", ["--batch-size", "4"]
    )
    assert advice.endswith(
        "then preview the good ones with: python -m dali_cutmix.preview --batch-size 4 "
        f"--data '{tmp_path}/a b' --file-list DIR/files.txt"
    )


@pytest.mark.parametrize(("entry", "advice"), LISTS_FOR_ANOTHER_FOLDER, ids=["beyond", "missing"])
def test_a_list_for_another_folder_is_answered_with_the_data_flag(
    tmp_path: Path, image_folder: Path, capsys, entry: str, advice: str
) -> None:
    # The library's advice said "as the root, or no root", and --file-list without --data
    # is refused: the way on names --data
    listed = tmp_path / "files.txt"
    listed.write_text(f"{entry}\n")
    out = tmp_path / "p.png"
    with pytest.raises(SystemExit) as caught:
        main(["--data", str(image_folder), "--file-list", str(listed), "--out", str(out)])
    assert caught.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"{PROG} --file-list '{listed}'")
    assert last.endswith(f"; {advice.format(root=image_folder)}.")
    assert "as the root" not in last and "no root" not in last and not out.exists()
