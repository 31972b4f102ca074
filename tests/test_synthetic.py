"""The ImageNet-like generator: determinism, caching, statistics, learnable classes."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dali_cutmix import synthetic
from dali_cutmix.files import BadImageError
from dali_cutmix.synthetic import SyntheticSpec, dataset_stats, generate, image_size, render_image
from tests.conftest import build_image_folder, run_command, user_error_line

TINY = SyntheticSpec(num_classes=3, train_per_class=3, val_per_class=2, seed=7, size_scale=0.2)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.JPEG"))
    }


def test_layout_and_manifest(tmp_path: Path) -> None:
    root = generate(tmp_path / "ds", TINY, workers=1, progress=False)
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*.JPEG"))
    assert len(names) == 3 * (3 + 2)
    assert names[0] == "train/s0000/s0000_00000.JPEG"
    assert sorted(p.name for p in (root / "val").iterdir()) == ["s0000", "s0001", "s0002"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["spec"] == TINY.to_dict()
    assert manifest["total_bytes"] == sum(p.stat().st_size for p in root.rglob("*.JPEG"))
    # The temporary folder is gone, and so is the lock file (it was left beside every set).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    with Image.open(root / names[0]) as img:
        assert img.format == "JPEG" and img.mode == "RGB"


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    one = generate(tmp_path / "one", TINY, workers=1, progress=False)
    two = generate(tmp_path / "two", TINY, workers=2, progress=False)
    assert _digest(one) == _digest(two)
    other = generate(
        tmp_path / "other",
        SyntheticSpec(**{**TINY.to_dict(), "seed": 8}),
        workers=1,
        progress=False,
    )
    assert set(_digest(other).values()).isdisjoint(_digest(one).values())


def test_the_jobs_are_handed_out_in_order_without_a_list() -> None:
    spec = SyntheticSpec(num_classes=3, train_per_class=4, val_per_class=2)
    jobs = list(synthetic._jobs(spec))
    assert [synthetic._job_at(spec, i) for i in range(len(jobs))] == jobs
    assert [job for part in synthetic._chunks(spec, 5) for job in part] == jobs
    assert [len(part) for part in synthetic._chunks(spec, 5)] == [5, 5, 5, 3]


def test_the_estimate_of_the_bytes_is_close_to_what_is_written(tmp_path: Path) -> None:
    spec = SyntheticSpec(num_classes=4, train_per_class=12, val_per_class=2, size_scale=0.3)
    root = generate(tmp_path / "ds", spec, workers=1, progress=False)
    written = json.loads((root / "manifest.json").read_text())["total_bytes"]
    assert 0.85 <= synthetic.estimated_bytes(spec) / written <= 1.15


def test_a_set_its_disk_cannot_hold_is_refused_before_a_file_is_written(
    tmp_path: Path, monkeypatch
) -> None:
    # A million images per class held 10 GB of memory before the first file was written.
    monkeypatch.setattr(synthetic, "_free_bytes", lambda path: 10**6)
    monkeypatch.setattr(synthetic, "estimated_bytes", lambda spec: 900_000)
    refused = (
        f"{tmp_path / 'ds'}: 15 images need about 0.9 MB, and its disk has 1.0 MB free (the "
        "check asks for 1.2 x the estimate); "
    )
    with pytest.raises(ValueError) as caught:
        generate(tmp_path / "ds", TINY, workers=1, progress=False)
    assert str(caught.value) == refused + "free space there, or generate fewer or smaller images"
    # the caller's own advice (its flags): train's --cache-dir, bench's --classes
    with pytest.raises(ValueError) as caught:
        generate(tmp_path / "ds", TINY, workers=1, progress=False, no_room="use --elsewhere")
    assert str(caught.value) == refused + "use --elsewhere"
    assert list(tmp_path.iterdir()) == []
    assert synthetic._bytes(2.5e12) == "2,500.0 GB"  # "0.0 GB" on a small disk: MB below 1 GB
    monkeypatch.setattr(synthetic, "estimated_bytes", lambda spec: 800_000)  # 1.2 x fits
    assert generate(tmp_path / "ds", TINY, workers=1, progress=False) == tmp_path / "ds"


def test_the_command_line_advises_its_own_flags_where_the_disk_is_too_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(synthetic, "_free_bytes", lambda path: 10**6)
    monkeypatch.setattr(synthetic, "estimated_bytes", lambda spec: 900_000)
    with pytest.raises(SystemExit) as caught:
        synthetic.main([str(tmp_path / "ds"), "--classes", "2", "--no-progress"])
    assert caught.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith(
            "(the check asks for 1.2 x the estimate); generate fewer or smaller images (--classes, "
            "--train-per-class, --val-per-class, --size-scale) or free space"
        )
    )


def test_a_disk_that_fills_while_the_set_is_written_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the estimate fell short, or another writer took the room: it was an OSError traceback
    import errno

    def full(spec, folder, part):
        raise OSError(errno.ENOSPC, "No space left on device", f"{folder}/x.JPEG")

    monkeypatch.setattr(synthetic, "_write_chunk", full)
    with pytest.raises(ValueError) as caught:
        generate(tmp_path / "ds", TINY, workers=1, progress=False, no_room="free it")
    assert str(caught.value) == (
        f"{tmp_path / 'ds'}: its disk filled while 15 images were written (No space left on "
        "device); nothing of the set is left; free it"
    )
    assert list(tmp_path.iterdir()) == []


def test_an_empty_mount_point_is_refused_before_a_file_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The set was written beside it, then the rename into a mount point failed (EBUSY).
    (tmp_path / "disk").mkdir()
    monkeypatch.setattr(synthetic.os.path, "ismount", lambda path: Path(path).name == "disk")
    monkeypatch.setattr(synthetic, "_write_all", lambda *a: pytest.fail("the set was written"))
    with pytest.raises(ValueError) as caught:
        generate(tmp_path / "disk", TINY, workers=1, progress=False)
    assert str(caught.value) == (
        f"{tmp_path / 'disk'} is a mount point: a set is written beside its folder and renamed "
        f"into place, which a mount point refuses; give a folder inside it "
        f"({tmp_path / 'disk' / 'disk'})"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk"]


def test_an_empty_folder_made_for_the_set_is_filled(tmp_path: Path) -> None:
    # "exists and is no dataset this command generated": a mkdir first was refused.
    (tmp_path / "ds").mkdir()
    # filled in place: renamed over, a shared folder lost its mode, group and setgid bit
    (tmp_path / "ds").chmod(0o2775)
    before = (tmp_path / "ds").stat()
    root = generate(tmp_path / "ds", TINY, workers=1, progress=False)
    assert len(list(root.rglob("*.JPEG"))) == 15 and synthetic.is_complete(root, TINY)
    after = root.stat()
    assert (after.st_ino, after.st_mode, after.st_gid) == (
        before.st_ino,
        before.st_mode,
        before.st_gid,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no lock or partial left


def test_the_current_folder_is_filled_as_named(tmp_path: Path, monkeypatch) -> None:
    # "synthetic ." put its lock file and partial folder inside ".", then refused it as "no
    # dataset this command generated"
    (tmp_path / "ds").mkdir()
    monkeypatch.chdir(tmp_path / "ds")
    root = generate(Path("."), TINY, workers=1, progress=False)
    assert root == tmp_path / "ds" and synthetic.is_complete(root, TINY)
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "train", "val"]
    assert generate(Path("."), TINY, workers=1, progress=False) == root  # reused


def test_finished_folder_is_reused_without_writing(tmp_path: Path, monkeypatch, caplog) -> None:
    root = generate(tmp_path / "ds", TINY, workers=1, progress=False)
    before = _digest(root)

    def fail(*args, **kwargs):
        raise AssertionError("a finished dataset was written again")

    monkeypatch.setattr(synthetic, "_write_all", fail)
    with caplog.at_level(logging.INFO, logger="dali_cutmix.synthetic"):
        assert generate(root, TINY, workers=1, progress=False) == root
    # said: only the statistics followed, as if it had been written
    assert caplog.messages == [f"reusing {root}, generated earlier with the same settings"]
    assert _digest(root) == before


def test_a_read_only_cache_serves_its_finished_sets_and_names_itself_for_a_new_one(
    tmp_path: Path, monkeypatch
) -> None:
    # A shared cache may be mounted read only: the sets there are read; a new one's line
    # names the folder (it was the lock file's Errno, or a probe refused the whole cache).
    import errno
    import os
    import tempfile

    root = generate(tmp_path / "ds", TINY, workers=1, progress=False)

    def read_only(**kwargs: object) -> str:  # as a read-only mount answers, even to root
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    assert synthetic.checked_cache_dir(tmp_path) == tmp_path
    assert generate(root, TINY, workers=1, progress=False) == root
    with pytest.raises(ValueError) as caught:
        generate(tmp_path / "other", TINY, workers=1, progress=False)
    assert str(caught.value) == (
        f"{tmp_path}/other: its folder {tmp_path}: cannot be written (Read-only file system)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_a_second_writer_of_the_same_folder_waits_and_then_reuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A background job and a check, or two ranks, generating the same set: the second
    # waits for the first instead of writing it all again beside it.
    caplog.set_level(logging.INFO, logger="dali_cutmix.synthetic")
    root = tmp_path / "ds"
    writes = []
    write_all = synthetic._write_all
    monkeypatch.setattr(synthetic, "_write_all", lambda *a: writes.append(1) or write_all(*a))
    with open(tmp_path / ".ds.lock", "a") as lock:  # the first writer, in the middle of it
        fcntl.flock(lock, fcntl.LOCK_EX)
        second = threading.Thread(target=generate, args=(root, TINY), kwargs={"progress": False})
        second.start()
        second.join(timeout=1.0)
        assert second.is_alive() and not writes  # waiting, writing nothing
        assert [p.name for p in tmp_path.iterdir()] == [".ds.lock"]
        generate(tmp_path / "first", TINY, workers=1, progress=False).rename(root)
        fcntl.flock(lock, fcntl.LOCK_UN)
    second.join(timeout=30)
    assert not second.is_alive() and writes == [1]  # the first writer's one write only
    assert f"waiting for another process that is writing {root}" in caplog.messages
    assert _digest(root) == _digest(generate(tmp_path / "again", TINY, progress=False))


def test_writers_queued_on_a_removed_lock_file_take_turns_on_the_new_one(tmp_path: Path) -> None:
    # The holder removes the lock file before it lets go: whoever waited on the removed
    # file must not write beside a newcomer that locked the new one.
    path, inside, order = tmp_path / ".ds.lock", [], []

    def writer(name: str) -> None:
        with synthetic._generation_lock(tmp_path / "ds"):
            inside.append(name)
            order.append(len(inside))  # writers inside at once: 1 every time
            time.sleep(0.2)
            inside.remove(name)

    with open(path, "a") as lock:  # the first holder
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiting = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(3)]
        for thread in waiting:
            thread.start()
        time.sleep(0.3)  # all three wait on this file
        path.unlink()
        fcntl.flock(lock, fcntl.LOCK_UN)
    newcomer = threading.Thread(target=writer, args=("new",))
    newcomer.start()
    for thread in [*waiting, newcomer]:
        thread.join(timeout=30)
    assert order == [1, 1, 1, 1] and not path.exists()


def test_the_command_says_what_it_waits_for(tmp_path: Path) -> None:
    # gpu_check's data step waiting for the device script's background generation.
    args = ["--classes", "2", "--train-per-class", "1", "--val-per-class", "1"]
    args += ["--size-scale", "0.2", "--workers", "1", "--no-progress"]
    with open(tmp_path / ".ds.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        command = [sys.executable, "-m", "dali_cutmix.synthetic", str(tmp_path / "ds"), *args]
        child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        first = child.stderr.readline()  # the command's first line, while it waits
        fcntl.flock(lock, fcntl.LOCK_UN)
    rest = child.communicate(timeout=120)[1]
    assert child.returncode == 0, rest
    assert first.endswith(f"waiting for another process that is writing {tmp_path / 'ds'}\n")
    assert "wrote 4 images" in rest


def test_half_written_or_foreign_folder_is_not_reused(tmp_path: Path, monkeypatch) -> None:
    def crash(spec, tmp, workers, progress):
        (tmp / "train").mkdir()
        (tmp / "train" / "partial.JPEG").write_bytes(b"\xff\xd8")
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_all", crash)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "ds", TINY, workers=1, progress=False)
    # Nothing is left, not even the lock file (interrupted: it was left).
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    # A folder without a manifest (or with another spec) is never overwritten.
    (tmp_path / "mine" / "train").mkdir(parents=True)
    with pytest.raises(ValueError) as caught:
        generate(tmp_path / "mine", TINY, workers=1, progress=False)
    assert str(caught.value) == (  # it said "... is not a generated dataset, not {spec}"
        f"{tmp_path / 'mine'} exists and is no dataset this command generated (no readable "
        "manifest.json); remove it or choose another path"
    )
    root = generate(tmp_path / "ds", TINY, workers=1, progress=False)
    other = SyntheticSpec(**{**TINY.to_dict(), "seed": 1, "quality": 50})
    with pytest.raises(ValueError) as caught:
        generate(root, other, workers=1)
    # the settings that differ named, not the two specs' dicts to compare by eye
    assert str(caught.value) == (
        f"{root} exists and is a dataset generated with other settings (seed {TINY.seed}, not 1; "
        f"quality {TINY.quality}, not 50); remove it or choose another path"
    )
    (tmp_path / "file").write_text("mine\n")  # "is no dataset this command generated"
    with pytest.raises(ValueError, match=" is a file, not a folder; choose another path$"):
        generate(tmp_path / "file", TINY, workers=1)


@pytest.mark.parametrize("damage", ["emptied", "deleted"])
def test_a_finished_folder_that_changed_is_refused_not_reused(tmp_path: Path, damage: str) -> None:
    # Two images deleted: reused without a word (31 of 33 images, a class short); one
    # emptied: the command ended in a traceback from its statistics.
    root = generate(tmp_path / "ds", TINY, workers=1, progress=False)
    written = json.loads((root / "manifest.json").read_text())
    image = root / "train" / "s0001" / "s0001_00000.JPEG"
    size = image.stat().st_size
    image.write_bytes(b"") if damage == "emptied" else image.unlink()
    with pytest.raises(ValueError) as caught:
        generate(root, TINY, workers=1, progress=False)
    images = written["num_images"] - (damage == "deleted")
    assert str(caught.value) == (
        f"{root} is a generated dataset that changed since it was written: it holds "
        f"{images} images of {written['total_bytes'] - size:,} bytes, its manifest.json "
        f"{written['num_images']} of {written['total_bytes']:,} bytes; remove the folder, and "
        "it is generated again"
    )


def test_a_partial_folder_left_by_a_killed_writer_is_removed_by_the_next(tmp_path: Path) -> None:
    # A writer killed (or a second Ctrl-C in its clean-up) left ".ds.partial-*" for good.
    left = tmp_path / ".ds.partial-abc123"
    (left / "train" / "s0000").mkdir(parents=True)
    other = tmp_path / ".dsx.partial-abc123"  # another set's: not this writer's to remove
    other.mkdir()
    generate(tmp_path / "ds", TINY, workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dsx.partial-abc123", "ds"]


def test_stats_of_a_known_folder(tmp_path: Path) -> None:
    root = build_image_folder(tmp_path / "train", classes=2, per_class=2, extras=False)
    stats = dataset_stats(root)
    # sizes (40 + 7 * ((k + c) % 5), 32 + 5 * (k % 4)) for c, k in {0, 1}^2
    assert stats.num_images == 4 and stats.num_classes == 2
    assert stats.mean_width == pytest.approx((40 + 47 + 47 + 54) / 4)
    assert stats.mean_height == pytest.approx((32 + 37 + 32 + 37) / 4)
    sizes = [p.stat().st_size / 1000 for p in root.rglob("*.JPEG")]
    assert stats.mean_file_kb == pytest.approx(np.mean(sizes))
    assert stats.max_long_side == 54 and stats.large_fraction == 0.0


def test_stats_name_a_file_that_is_no_image(tmp_path: Path) -> None:
    root = build_image_folder(tmp_path / "train", classes=2, per_class=2, extras=False)
    bad = sorted(root.rglob("*.JPEG"))[1]
    bad.write_text("not an image\n")
    with pytest.raises(BadImageError) as caught:
        dataset_stats(root)
    assert caught.value.path == str(bad)
    assert str(caught.value).startswith(
        f"{str(bad)!r} is not a decodable image (its header: not an image format PIL knows). "
        f"Run `python -m dali_cutmix.scan {root} --out DIR`"
    )


def test_stats_name_a_file_dali_refuses_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PIL opens a GIF named .JPEG and a header over DALI's pixel limit: the statistics,
    # the benchmark's header pass, called them good, and its DALI rows met them later.
    import dali_cutmix.scan as scan_module

    root = build_image_folder(tmp_path / "train", classes=2, per_class=2, extras=False)
    files = sorted(root.rglob("*.JPEG"))
    Image.new("RGB", (8, 8)).save(files[1], format="GIF")
    with pytest.raises(BadImageError) as caught:
        dataset_stats(root)
    assert caught.value.path == str(files[1])
    assert str(caught.value).startswith(
        f"{str(files[1])!r} is not a decodable image (its header: format GIF is not one DALI "
        f"decodes). Run `python -m dali_cutmix.scan {root} --out DIR`"
    )
    files[1].unlink()
    monkeypatch.setattr(scan_module, "MAX_PIXELS", 1000)  # in place of a 1 G pixel image
    with Image.open(files[0]) as img:
        width, height = img.size
    with pytest.raises(BadImageError) as caught:
        dataset_stats(root)
    assert str(caught.value).startswith(
        f"{str(files[0])!r} is not a decodable image (its header: {width} x {height} pixels, "
        "more than the 1,000 (2**30) both loaders take (DALI's decoder's limit)). Run"
    )


@pytest.mark.parametrize(
    ("breaks", "what"),
    [
        (lambda bad: bad.write_bytes(b""), "is an empty file (0 bytes)"),
        (lambda bad: bad.unlink(), "does not exist (it is listed, but gone)"),
        (
            lambda bad: (bad.unlink(), bad.symlink_to(bad.with_name("gone.JPEG"))),
            "is a broken symbolic link",
        ),
    ],
    ids=["empty", "gone", "broken-link"],
)
def test_stats_say_what_is_wrong_with_a_file_as_the_scan_does(tmp_path: Path, breaks, what) -> None:
    root = build_image_folder(tmp_path / "train", classes=2, per_class=2, extras=False)
    files = sorted(root.rglob("*.JPEG"))
    breaks(files[2])
    with pytest.raises(BadImageError) as caught:
        dataset_stats(root, files=files)  # a list's files: one may be gone
    assert caught.value.path == str(files[2])
    assert str(caught.value).startswith(f"{str(files[2])!r} {what} (its header: ")


def test_full_scale_sizes_resemble_imagenet() -> None:
    rng = np.random.default_rng(0)
    sizes = np.array([image_size(rng) for _ in range(4000)])
    width, height = sizes.mean(axis=0)
    assert 380 < width < 430 and 330 < height < 380
    long_side = sizes.max(axis=1)
    assert 0.02 < (long_side > 600).mean() < 0.05  # the tail of large images
    assert (long_side == 500).mean() > 0.5


def test_full_scale_file_sizes_resemble_imagenet() -> None:
    spec = SyntheticSpec(num_classes=10)
    # Typical 500 x 375 images: about 110 KB at the default quality.
    kb = [
        len(synthetic.encode_jpeg(render_image(spec, "train", c, 0)[:375, :500], spec.quality))
        / 1000
        for c in range(10)
    ]
    assert 80 < np.mean(kb) < 160


def test_classes_differ_more_than_images_within_a_class() -> None:
    spec = SyntheticSpec(num_classes=5, size_scale=0.2)
    hist = {
        c: [
            np.histogramdd(
                render_image(spec, "train", c, i).reshape(-1, 3) // 64,
                bins=(4, 4, 4),
                range=[(0, 4)] * 3,
            )[0].ravel()
            for i in range(4)
        ]
        for c in range(5)
    }
    centroids = {c: np.mean(h[:3], axis=0) for c, h in hist.items()}
    # A nearest-centroid classifier on colour histograms gets held-out images right.
    hits = sum(
        min(centroids, key=lambda k: np.abs(centroids[k] - hist[c][3]).sum()) == c for c in range(5)
    )
    assert hits >= 4


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_classes", 0, "num_classes must be >= 1"),
        ("train_per_class", 0, "train_per_class and val_per_class"),
        ("size_scale", 0.0, "size_scale must be in"),
        ("quality", 101, "quality must be in"),
        ("seed", -1, "seed must be >= 0"),
        ("num_classes", 2.5, "num_classes must be an int"),
    ],
)
def test_bad_spec(field: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticSpec(**{field: value})


def test_numpy_numbers_make_the_spec_python_s(tmp_path: Path) -> None:
    # np.int64(3) was refused as "must be an int" (MixConfig and make_loader take it)
    spec = SyntheticSpec(num_classes=np.int64(3), seed=np.int32(1), size_scale=np.float32(0.5))
    assert spec == SyntheticSpec(num_classes=3, seed=1, size_scale=0.5)
    assert type(spec.num_classes) is int and type(spec.size_scale) is float
    assert json.dumps(spec.to_dict())  # JSON's numbers, for the manifest
    with pytest.raises(ValueError, match="^spec must be a SyntheticSpec, got 'spec'$"):
        generate(tmp_path / "x", "spec")  # an AttributeError on num_images
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("limit", [0, -1, 2.5, True])
def test_stats_refuse_a_limit_of_no_file(tmp_path: Path, limit) -> None:
    # 0 was numpy's "AxisError: axis 1 is out of bounds for array of dimension 1"
    root = build_image_folder(tmp_path / "train", classes=2, per_class=2, extras=False)
    with pytest.raises(ValueError, match=f"^limit must be an int >= 1 or None, got {limit!r}$"):
        dataset_stats(root, limit=limit)
    assert dataset_stats(root, limit=1).num_images == 1


def test_cli(tmp_path: Path, capsys) -> None:
    assert (
        synthetic.main(
            [
                str(tmp_path / "ds"),
                "--classes",
                "2",
                "--train-per-class",
                "1",
                "--val-per-class",
                "1",
                "--size-scale",
                "0.2",
                "--workers",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "4 images in 2 classes" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--train-per-class", "0"],
            "--train-per-class and --val-per-class must be >= 1, got 0 and 20",
        ),
        (["--size-scale", "9"], "--size-scale must be in (0, 4], got 9.0"),
        (["--workers", "0"], "argument --workers: expected an int >= 1, got 0"),
    ],
)
def test_bad_values_name_the_flag(tmp_path: Path, capsys, args: list[str], line: str) -> None:
    with pytest.raises(SystemExit) as caught:
        synthetic.main([str(tmp_path / "bad"), *args, "--no-progress"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m dali_cutmix.synthetic: error: {line}"
    )
    assert not (tmp_path / "bad").exists()


def test_command_line_ends_a_bad_value_with_one_line(tmp_path: Path) -> None:
    done = run_command("dali_cutmix.synthetic", tmp_path / "bad", "--classes", "0")
    assert user_error_line(done) == (
        "python -m dali_cutmix.synthetic: error: --classes must be >= 1, got 0"
    )


def test_the_progress_bar_into_a_log_does_not_flood_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A generation logged to a file wrote one line per chunk of 64 images (250 lines for the
    # GPU check's set); into a file or a pipe the bar now updates at most once a minute.
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    spec = SyntheticSpec(**{**TINY.to_dict(), "train_per_class": 40})
    generate(tmp_path / "ds", spec, workers=1, progress=True)
    assert sys.stderr.getvalue().count("generating JPEGs") == 2  # the first state and the last


def test_an_empty_cache_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # DALI_CUTMIX_CACHE= put the generated sets in the working folder itself
    monkeypatch.setenv("DALI_CUTMIX_CACHE", "")
    assert synthetic.cache_dir() == Path("data")
    assert synthetic.cache_source(None) == (
        "the cache folder (the default; $DALI_CUTMIX_CACHE gives another)"
    )
    monkeypatch.setenv("DALI_CUTMIX_CACHE", "/somewhere")
    assert synthetic.cache_dir() == Path("/somewhere")
    assert synthetic.cache_source(None) == "the cache folder ($DALI_CUTMIX_CACHE)"
