"""ImageNet pipelines through make_loader on the CPU: labels, shards, outputs, bad input."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
import pytest
import torch
from conftest import build_image_folder, requires_cuda, small_loader
from nvidia.dali import pipeline_def
from PIL import Image
from torchvision.datasets import ImageFolder

from dali_cutmix import AugmentConfig, MixConfig
from dali_cutmix.files import BadImageError, DatasetError, scan_hint
from pipelines.imagenet import (
    GpuDecoderOptions,
    ImageNetOptions,
    center_crop_position,
    decode_random_crop,
    decode_resize,
    decoder_kwargs,
    make_loader,
    read_headers,
    resolve_shard,
    torchvision_resize_size,
)

GPU = [requires_cuda, pytest.mark.gpu]
# torchvision's ImageNet statistics, written out here so that a wrong constant in the
# pipeline cannot cancel out in the test.
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def _solid_folder(root: Path, counts: tuple[int, ...]) -> dict[str, tuple[int, int, int]]:
    """One solid, distinct colour per file (non-square sizes); returns path -> colour."""
    colours = {}
    for c, count in enumerate(counts):
        for k in range(count):
            colour = (40 + 50 * c, 30 + 37 * k, 220 - 45 * c)
            path = root / f"class_{c}" / f"{k:02d}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (24 + 5 * k, 18 + 3 * c), colour).save(path, quality=95)
            colours[str(path)] = colour
    return colours


def _pixels(images: torch.Tensor) -> torch.Tensor:
    """NCHW normalized images back to 0..255, as float64 NHWC."""
    mean = torch.tensor(MEAN, dtype=torch.float64)
    std = torch.tensor(STD, dtype=torch.float64)
    return images.permute(0, 2, 3, 1).double() * std + mean


def _epoch(loader) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=GPU)])
def test_validation_reads_imagefolder_file_by_file(tmp_path: Path, device: str) -> None:
    colours = _solid_folder(tmp_path / "val", counts=(3, 5, 2))
    reference = ImageFolder(tmp_path / "val")
    loader = small_loader(tmp_path / "val", train=False, device=device)
    assert loader.classes == reference.classes and loader.num_classes == 3
    images, targets = _epoch(loader)
    assert targets.dtype == torch.int64 and targets.tolist() == reference.targets
    # Each output is its file: the colour decoded and normalized matches the file's colour.
    want = torch.tensor([colours[p] for p, _ in reference.samples], dtype=torch.float64)
    got = _pixels(images.cpu()).mean(dim=(1, 2))
    assert torch.allclose(got, want, atol=3.0), (got - want).abs().max()


def test_labels_match_imagefolder_with_odd_files(image_folder: Path) -> None:
    loader = small_loader(image_folder, train=False, batch_size=5)
    _, targets = _epoch(loader)
    assert targets.tolist() == ImageFolder(image_folder).targets  # gray, CMYK, PNG-named kept


def test_validation_shards_cover_every_image_once(tmp_path: Path) -> None:
    colours = _solid_folder(tmp_path / "val", counts=(4, 4, 3))  # 11 images
    parts = [
        _epoch(small_loader(tmp_path / "val", train=False, shard_id=s, num_shards=2))
        for s in range(2)
    ]
    assert [len(t) for _, t in parts] == [5, 6]
    got = torch.cat([_pixels(x).mean(dim=(1, 2)) for x, _ in parts])
    want = torch.tensor(list(colours.values()), dtype=torch.float64)
    distance = torch.cdist(got, want)  # each output next to exactly one file, each file once
    assert sorted(distance.argmin(dim=1).tolist()) == list(range(11))
    assert distance.min(dim=1).values.max() < 5.0


def test_shards_from_torchrun_environment(image_folder: Path, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = small_loader(image_folder, train=False)
    assert loader.dataset_size == 8  # the second half of 15 images


def test_numpy_shard_numbers_are_taken_as_ints() -> None:
    # "shard_id must be an int, got np.int64(1)" for a rank taken from an array
    shard = resolve_shard(np.int64(1), np.int32(2))
    assert shard == (1, 2) and all(type(n) is int for n in shard)


def _indexed_list(root: Path, out: Path) -> int:
    """A file list labelling every file with its own index, so targets identify files."""
    paths = [p for p, _ in ImageFolder(root).samples]
    out.write_text("".join(f"{p} {i}\n" for i, p in enumerate(paths)))
    return len(paths)


@pytest.mark.parametrize(("policy", "per_shard"), [("drop", 6), ("partial", None)])
def test_training_shards_partition_each_epoch(
    image_folder: Path, tmp_path: Path, policy: str, per_shard: int | None
) -> None:
    n = _indexed_list(image_folder, tmp_path / "list.txt")  # 15 files: shards of 7 and 8
    loaders = [
        small_loader(
            file_list=tmp_path / "list.txt",
            batch_size=3,
            shard_id=s,
            num_shards=2,
            last_batch=policy,
            seed=5,
        )
        for s in range(2)
    ]
    orders = []
    for _ in range(2):
        seen = [_epoch(loader)[1].tolist() for loader in loaders]
        everything = seen[0] + seen[1]
        assert len(set(everything)) == len(everything)  # no image twice in an epoch
        if per_shard is None:  # PARTIAL: every image exactly once
            assert sorted(everything) == list(range(n))
        else:  # DROP: whole batches only, 2 x 6 of the 15 images
            assert [len(s) for s in seen] == [per_shard, per_shard]
        orders.append(everything)
    assert orders[0] != orders[1]  # shuffled anew every epoch


LAYOUTS = [("NCHW", (3, 8, 8)), ("NHWC", (8, 8, 3))]
MIXES = {
    "off": None,
    "disabled": MixConfig(num_classes=3, cutmix_alpha=1.0, prob=0.0),
    "cutmix": MixConfig(num_classes=3, cutmix_alpha=1.0),
    "mixup": MixConfig(num_classes=3, mixup_alpha=0.4, cutmix_alpha=0.0),
    "switch": MixConfig(num_classes=3, mixup_alpha=0.4, cutmix_alpha=1.0, switch_prob=0.5),
}


@pytest.mark.parametrize(("layout", "shape"), LAYOUTS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mix", list(MIXES))
def test_training_outputs(
    image_folder: Path, layout: str, shape: tuple, dtype: str, mix: str
) -> None:
    loader = small_loader(image_folder, mix=MIXES[mix], output_layout=layout, dtype=dtype)
    images, targets = next(iter(loader))
    assert images.shape == (4, *shape) and images.dtype == getattr(torch, dtype)
    assert images.device == torch.device("cpu") == loader.device and images.is_contiguous()
    if mix in ("off", "disabled"):
        assert targets.dtype == torch.int64 and targets.shape == (4,)
    else:
        assert targets.dtype == torch.float32 and targets.shape == (4, 3)
        assert torch.allclose(targets.sum(dim=1), torch.ones(4))


def smoothed_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """timm's smoothed one-hot targets, in float32 as DALI's ``one_hot`` writes them."""
    off = np.float32(smoothing / num_classes)
    on = np.float32(1.0 - smoothing + smoothing / num_classes)
    want = torch.full((len(labels), num_classes), float(off))
    want[torch.arange(len(labels)), labels] = float(on)
    return want


@pytest.mark.parametrize("erase", [0.0, 0.5], ids=["plain", "random-erase"])
def test_disabled_mixing_still_smooths_labels(image_folder: Path, erase: float) -> None:
    # a disabled mix's label_smoothing was dropped: int64 labels, no word (mix() smooths)
    augment = AugmentConfig(random_erase=erase)
    plain = small_loader(image_folder, mix=None, augment=augment)
    off = MixConfig(num_classes=3, cutmix_alpha=1.0, prob=0.0, label_smoothing=0.1)
    smoothed = small_loader(image_folder, mix=off, augment=augment)
    for (images, labels), (same_images, targets) in zip(plain, smoothed):
        assert targets.dtype == torch.float32 and targets.shape == (4, 3)
        assert torch.equal(targets, smoothed_one_hot(labels, 3, 0.1))
        assert torch.equal(same_images, images)


@pytest.mark.parametrize(("layout", "shape"), LAYOUTS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_validation_outputs(image_folder: Path, layout: str, shape: tuple, dtype: str) -> None:
    loader = small_loader(
        image_folder, train=False, output_layout=layout, dtype=dtype, resize_size=12
    )
    images, targets = next(iter(loader))
    assert images.shape == (4, *shape) and images.dtype == getattr(torch, dtype)
    assert targets.dtype == torch.int64 and targets.shape == (4,)


def _two_colour_folder(root: Path) -> np.ndarray:
    colours = np.array([[200.0, 30.0, 40.0], [20.0, 60.0, 230.0]])
    for c, colour in enumerate(colours):
        for k in range(4):
            path = root / f"c{c}" / f"{k}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (30 + 4 * k, 22), tuple(int(v) for v in colour)).save(
                path, quality=100
            )
    return colours


def test_cutmix_pixels_match_targets_after_normalization(tmp_path: Path) -> None:
    colours = _two_colour_folder(tmp_path / "data")
    mix = MixConfig(num_classes=2, cutmix_alpha=1.0)
    loader = small_loader(tmp_path / "data", batch_size=8, crop_size=16, mix=mix)
    for images, targets in loader:
        pixels = _pixels(images)  # [8, 16, 16, 3]
        nearest = torch.cdist(pixels.reshape(8, -1, 3), torch.tensor(colours)).argmin(-1)
        assert (torch.cdist(pixels.reshape(-1, 3), torch.tensor(colours)).min(1).values < 4).all()
        fraction_of_class_1 = nearest.double().mean(dim=1)
        assert torch.allclose(fraction_of_class_1, targets[:, 1].double(), atol=1e-6)


def test_mixup_pixels_match_targets_after_normalization(tmp_path: Path) -> None:
    colours = _two_colour_folder(tmp_path / "data")
    mix = MixConfig(num_classes=2, mixup_alpha=1.0, cutmix_alpha=0.0)
    loader = small_loader(tmp_path / "data", batch_size=8, crop_size=16, mix=mix)
    images, targets = next(iter(loader))
    want = targets.double() @ torch.tensor(colours)  # [8, 3]: the blend the labels claim
    assert (targets[:, 0] * targets[:, 1] > 0.01).any()  # some samples are really blended
    assert torch.allclose(_pixels(images), want[:, None, None, :].expand(8, 16, 16, 3), atol=3.0)


# ---- bad input ---------------------------------------------------------------------------------


def test_a_batch_larger_than_a_shard(tmp_path: Path) -> None:
    # DALI's reader cannot start a shard smaller than a batch: it failed with "no data in
    # the pipeline". Training is refused by name; validation lowers its batch and still
    # yields every image once.
    root = build_image_folder(tmp_path / "train", classes=2, per_class=3, extras=False)
    with pytest.raises(DatasetError) as info:
        small_loader(root, batch_size=4, num_shards=2, shard_id=0)
    assert str(info.value) == (
        f"{root}: 6 images over 2 shard(s) give no batch of 4 per shard: lower the batch size"
    )
    seen = []
    for shard in range(2):
        val = small_loader(root, train=False, batch_size=256, num_shards=2, shard_id=shard)
        assert val.batch_size == 3 and len(val) == 1
        seen += [label for _, labels in val for label in labels.tolist()]
    assert sorted(seen) == [0, 0, 0, 1, 1, 1]
    fewer = "6 images over 7 shard.s. give no batch of 1 per shard: use fewer shards"
    with pytest.raises(DatasetError, match=fewer):
        small_loader(root, train=False, batch_size=1, num_shards=7, shard_id=0)
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*32\), got -5"):
        small_loader(root, seed=-5)


def test_missing_and_empty_roots_are_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nope'}.*does not exist"):
        small_loader(tmp_path / "nope", batch_size=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=f"{tmp_path / 'empty'}.*no class folders"):
        small_loader(tmp_path / "empty", batch_size=2)


@pytest.mark.parametrize("train", [True, False])
def test_a_dataset_root_is_refused(tmp_path: Path, train: bool) -> None:
    # Listed as ImageFolder lists it, /data/imagenet holds two classes: train and val.
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        build_image_folder(root / split, classes=2, per_class=1, extras=False)
    with pytest.raises(DatasetError) as caught:
        small_loader(root, train=train, batch_size=2)
    assert str(caught.value) == (
        f"'{root}' has only the subfolders train/ and val/: it looks like a dataset root, not a "
        f"folder of classes; give '{root}/train' (or '{root}/val'), whose subfolders are the "
        f"classes."
    )


def test_class_without_images_is_named(image_folder: Path) -> None:
    (image_folder / "n00000009").mkdir()
    with pytest.raises(DatasetError, match=f"{image_folder / 'n00000009'}.*holds no image"):
        small_loader(image_folder, train=False, batch_size=2)


def _break_file(folder: Path, content: str) -> Path:
    good = (folder / "n00000001" / "img_1_0.JPEG").read_bytes()
    data = {"text": b"not an image\n" * 20, "truncated": good[: len(good) // 3], "empty": b""}
    bad = folder / "n00000001" / "img_1_1.JPEG"  # 9th of 15 files in ImageFolder order
    bad.write_bytes(data[content])
    return bad


@pytest.mark.parametrize("content", ["text", "truncated", "empty"])
@pytest.mark.parametrize("train", [True, False])
def test_undecodable_file_is_named(image_folder: Path, content: str, train: bool) -> None:
    bad = _break_file(image_folder, content)
    with pytest.raises(BadImageError) as caught:
        list(small_loader(image_folder, train=train, batch_size=15))
    assert caught.value.path == str(bad)
    message = str(caught.value)
    what = "is an empty file (0 bytes)" if content == "empty" else "is not a decodable image"
    assert message.startswith(f"{str(bad)!r} {what} (DALI: ")
    # the advice names the exact command, this folder, and the argument to give its list to
    assert message.endswith(scan_hint(image_folder, train=train))
    assert f"python -m dali_cutmix.scan {image_folder} --out DIR" in message
    assert 'make_loader(..., file_list="DIR/files.txt")' in message
    assert f"python -m train ... --{'train' if train else 'val'}-list DIR/files.txt" in message


def test_after_a_bad_file_a_new_epoch_raises_it_again_without_a_false_warning(
    image_folder: Path, caplog
) -> None:
    # It logged "reading and discarding the 1 of 3 batches left ... (a loop broke off
    # early ...)": no loop broke off, and nothing was read.
    bad = _break_file(image_folder, "text")
    loader = small_loader(image_folder, train=False, batch_size=5)
    with pytest.raises(BadImageError):
        list(loader)
    with caplog.at_level(logging.WARNING), pytest.raises(BadImageError) as caught:
        iter(loader)
    assert caught.value.path == str(bad)
    assert caplog.records == []


def test_a_tiff_without_bits_per_sample_is_a_bad_file_the_scan_and_the_loader_name(
    image_folder: Path,
) -> None:
    # PIL reads it (the tag defaults to 1), so the scan kept it in its clean list; DALI's
    # decoder refuses it, and its error names no file: the loader said "a file of ...".
    from dali_cutmix.scan import NO_BITS_PER_SAMPLE, check_image

    pixels = np.random.default_rng(0).integers(0, 255, (20, 24), dtype=np.uint8)
    bad = image_folder / "n00000001" / "bw.tif"
    Image.fromarray(pixels).convert("1").save(bad)
    good = image_folder / "n00000002" / "bw_group4.tif"  # its BitsPerSample is written
    Image.fromarray(pixels).convert("1").save(good, compression="group4")
    assert check_image(str(bad)) == check_image(str(bad), decode=False) == NO_BITS_PER_SAMPLE
    assert check_image(str(good)) is None
    with pytest.raises(BadImageError) as caught:
        list(small_loader(image_folder, train=False, batch_size=17))
    assert caught.value.path == str(bad)  # DALI refuses it: the rule is not a guess
    assert str(caught.value).startswith(f"{str(bad)!r} is not a decodable image (DALI: ")
    bad.unlink()
    assert len(list(small_loader(image_folder, train=False, batch_size=16))) == 1


def _dali_cpu_decode(path: Path) -> np.ndarray:
    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def decode():
        data, _ = fn.readers.file(files=[str(path)])
        return fn.decoders.image(data, device="cpu", output_type=types.RGB)

    pipe = decode()
    pipe.build()
    (out,) = pipe.run()
    return np.array(out[0])


def test_tiffs_of_signed_or_float_samples_are_bad_files_and_16_bit_ones_good(
    image_folder: Path,
) -> None:
    # The scan called them good; DALI's decoder refuses int32 samples ("Invalid sample_type:
    # 8197", naming no file) and reads float32 ones as 255 everywhere.
    from dali_cutmix.scan import NOT_UNSIGNED_SAMPLES, check_image

    pixels = np.random.default_rng(0).integers(0, 255, (20, 24), dtype=np.uint8)
    folder = image_folder / "n00000001"
    int32, float32, uint16 = folder / "i32.tif", folder / "f32.tif", folder / "u16.tif"
    Image.fromarray(pixels).convert("I").save(int32)
    Image.fromarray(pixels.astype(np.float32)).save(float32)
    Image.fromarray(pixels.astype(np.uint16) * 257).save(uint16)
    for bad in (int32, float32):
        assert check_image(str(bad)) == check_image(str(bad), decode=False) == NOT_UNSIGNED_SAMPLES
        assert check_image(str(bad), dali=False) is None  # PIL, the torchvision loader, reads it
    assert check_image(str(uint16)) is None
    # the rule is DALI's, not a guess
    with pytest.raises(RuntimeError, match="Invalid sample_type"):
        _dali_cpu_decode(int32)
    assert not np.array_equal(_dali_cpu_decode(float32)[..., 0], pixels)
    np.testing.assert_array_equal(_dali_cpu_decode(uint16)[..., 0], pixels)


def test_an_image_over_pil_s_pixel_limit_is_good_for_both_loaders(
    image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scan called a valid JPEG of over 179 million pixels bad (PIL's decompression-bomb
    # limit), then good for DALI while the torchvision loader refused it and told the user
    # to run the scan, whose list kept it. The limit is lowered here in place of a 0.5 GB
    # image.
    from dali_cutmix.scan import check_image, load_rgb
    from pipelines.torchvision_ref import _unreadable

    path = image_folder / "n00000000" / "img_0_0.JPEG"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    for dali in (True, False):
        assert check_image(str(path), dali=dali) is None
        assert check_image(str(path), decode=False, dali=dali) is None
    assert _unreadable(str(path)) is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10**9)
    with Image.open(path) as img:
        expected = np.asarray(img.convert("RGB"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    np.testing.assert_array_equal(np.asarray(load_rgb(path)), expected)
    assert Image.MAX_IMAGE_PIXELS == 10  # set back


def test_an_image_over_dali_s_pixel_limit_is_bad_from_its_header(
    image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 4 KB JPEG whose header said 60000 x 60000 was decoded by the scan (14 GB, 33 s) and
    # called good; both loaders refused it. Over DALI's 2**30 pixels (measured: a 32768 x
    # 32768 JPEG decodes, one pixel more does not), the header alone decides. The limit is
    # lowered here in place of a 1 G pixel image: 48 x 40 is over 1,000.
    import dali_cutmix.scan as scan_module
    from dali_cutmix.scan import MAX_PIXELS, TooManyPixelsError, check_image, load_rgb

    assert MAX_PIXELS == 2**30
    path = image_folder / "n00000000" / "img_0_0.JPEG"
    with Image.open(path) as img:
        width, height = img.size
    monkeypatch.setattr(scan_module, "MAX_PIXELS", 1000)
    said = (
        f"{width} x {height} pixels, more than the 1,000 (2**30) both loaders take (DALI's "
        "decoder's limit)"
    )
    for dali in (True, False):
        assert check_image(str(path), dali=dali) == said
        assert check_image(str(path), decode=False, dali=dali) == said
    with pytest.raises(TooManyPixelsError, match=f"{width} x {height} pixels"):
        load_rgb(path)


def test_a_16_bit_grayscale_png_reads_as_dali_decodes_it_in_the_torchvision_loader(
    tmp_path: Path,
) -> None:
    # PIL's convert("RGB") clipped 16-bit values at 255: a spread image came out nearly
    # white (mean 254.5 against DALI's 127.5), without a word.
    from dali_cutmix.scan import check_image, load_rgb

    path = tmp_path / "g16.png"
    Image.fromarray(np.arange(65536, dtype=np.uint16).reshape(256, 256)).save(path)
    with Image.open(path) as img:
        assert img.mode == "I;16"
    assert check_image(str(path)) is None
    decoded = _dali_cpu_decode(path)
    assert decoded.mean() == 127.5
    np.testing.assert_array_equal(np.asarray(load_rgb(path)), decoded)


@pytest.mark.parametrize("train", [True, False])
def test_a_name_that_is_not_utf_8_is_named_before_the_graph_is_built(
    image_folder: Path, train: bool
) -> None:
    # DALI's reader refused it with a traceback ("Unsupported argument type with name files").
    odd = image_folder / "n00000002" / os.fsdecode(b"caf\xe9.JPEG")
    odd.write_bytes((image_folder / "n00000001" / "img_1_0.JPEG").read_bytes())
    with pytest.raises(BadImageError) as caught:
        small_loader(image_folder, train=train)
    assert caught.value.path == str(odd)
    assert str(caught.value).startswith(f"{str(odd)!r}: its name is not valid UTF-8, ")
    assert str(caught.value).endswith(scan_hint(image_folder, train=train))


@pytest.mark.parametrize("content", [b"not an image\n" * 20, b"\x00" * 300], ids=["text", "zeros"])
@pytest.mark.parametrize("train", [True, False])
def test_an_unrecognized_file_fails_in_the_header_read_not_the_decoder(
    image_folder: Path, content: bytes, train: bool
) -> None:
    """DALI 2.4's CPU decoder on several threads crashed the process (SIGSEGV, 2 runs in 8
    at batch 48 with 2 threads) on a file of no known format; the header read fails on it
    cleanly, and the decoders wait for it. (An empty file fails in the reader, earlier.)"""
    bad = image_folder / "n00000001" / "img_1_1.JPEG"
    bad.write_bytes(content)
    with pytest.raises(BadImageError) as caught:
        list(small_loader(image_folder, train=train, batch_size=15, num_threads=2))
    assert caught.value.path == str(bad)
    dali = str(caught.value.__cause__)
    assert "operator `nvidia.dali.fn.peek_image_shape`" in dali, dali[:600]


@pytest.mark.parametrize("kind", ["dali", "torchvision"])
def test_a_listed_file_that_does_not_exist_is_named_before_any_image_is_read(
    image_folder: Path, tmp_path: Path, kind: str
) -> None:
    # It was found only when DALI reached it: python -m train trained a whole epoch first.
    from pipelines.torchvision_ref import make_torchvision_loader

    listed = tmp_path / "list.txt"
    lines = [f"{p} {label}" for p, label in ImageFolder(image_folder).samples]
    listed.write_text("\n".join([*lines, "n00000001/gone.JPEG 1"]) + "\n")
    with pytest.raises(DatasetError) as caught:
        if kind == "dali":
            small_loader(image_folder, file_list=listed, train=False, batch_size=2)
        else:
            make_torchvision_loader(
                image_folder, file_list=listed, train=False, batch_size=2, workers=0
            )
    assert str(caught.value).startswith(
        f"file list {str(listed)!r} names 1 file that does not exist: "
        f"{str(image_folder / 'n00000001' / 'gone.JPEG')!r} (line {len(lines) + 1}); delete"
    )


def test_loader_stays_failed_after_a_bad_file(image_folder: Path) -> None:
    bad = _break_file(image_folder, "text")
    loader = small_loader(image_folder, train=False, batch_size=2)
    yielded = 0
    with pytest.raises(BadImageError, match=str(bad)):
        for _ in loader:
            yielded += 1
    assert yielded == 4  # the four batches before the bad file came through
    for _ in range(2):  # DALI would hand out stale batches; the loader refuses instead
        with pytest.raises(BadImageError, match=str(bad)):
            next(iter(loader))
    with pytest.raises(BadImageError):
        loader.state_dict()


def test_undecodable_file_does_not_hang_the_process(image_folder: Path) -> None:
    (image_folder / "n00000002" / "broken.JPEG").write_bytes(b"\x00" * 300)
    script = (
        "import sys; from pipelines.imagenet import make_loader\n"
        f"loader = make_loader({str(image_folder)!r}, train=True, batch_size=4, device='cpu',"
        " crop_size=8, num_threads=2)\n"
        "try:\n    [None for _ in loader]\nexcept Exception as err:\n"
        "    print(type(err).__name__, err); sys.exit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert done.stdout.startswith("BadImageError") and "broken.JPEG" in done.stdout


def test_scan_list_lets_training_skip_bad_files(image_folder: Path, tmp_path: Path) -> None:
    from dali_cutmix.scan import main as scan_main

    (image_folder / "n00000002" / "broken.JPEG").write_bytes(b"GIF89a" + b"\x00" * 100)
    assert scan_main([str(image_folder), "--out", str(tmp_path / "scan"), "--workers", "1"]) == 1
    loader = small_loader(image_folder, file_list=tmp_path / "scan" / "files.txt", train=False)
    _, targets = _epoch(loader)
    good = [t for p, t in ImageFolder(image_folder).samples if not p.endswith("broken.JPEG")]
    assert targets.tolist() == good and loader.num_classes == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(output_layout="CHW"), "output_layout must be one of 'NCHW', 'NHWC', got 'CHW'"),
        (dict(dtype="bfloat16"), "dtype must be one of 'float32', 'float16', got 'bfloat16'"),
        (dict(device="tpu"), "device must be one of 'auto', 'cpu', 'gpu', got 'tpu'"),
        (dict(batch_size=0), "batch_size must be an int >= 1, got 0"),
        (dict(crop_size=0), "crop_size must be an int >= 1, got 0"),
        (dict(shard_id=1), "give both shard_id and num_shards"),
        (dict(shard_id=2, num_shards=2), "need 0 <= shard_id < num_shards, got 2, 2"),
        (dict(shard_id=0.5, num_shards=2), "shard_id must be an int, got 0.5"),
        (dict(shard_id=True, num_shards=2), "shard_id must be an int, got True"),
        (dict(shard_id=0, num_shards=2.0), "num_shards must be an int, got 2.0"),
        (dict(mix=MixConfig(num_classes=10)), "mix.num_classes is 10 but .* has 3 classes"),
        (dict(random_area=(0.5, 0.1)), "random_area must be"),
        (dict(train=False, mix=MixConfig(num_classes=3)), "mix applies to training only"),
    ],
)
def test_bad_settings_say_what_is_wrong(image_folder: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small_loader(image_folder, **kwargs)


def test_a_rank_from_the_environment_that_is_no_int_is_named(
    image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="the environment's RANK='x' is not an int"):
        small_loader(image_folder)


def test_auto_device_logs_its_choice(image_folder: Path, caplog) -> None:
    caplog.set_level("INFO", logger="dali_cutmix.config")
    loader = small_loader(image_folder, train=False, device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert loader.device.type == expected
    cuda = "available" if torch.cuda.is_available() else "not available"
    assert f"device auto: CUDA {cuda}, using the {expected.replace('cuda', 'gpu').upper()}\n" in (
        caplog.text
    )


def test_the_gpu_without_cuda_is_refused_before_the_folder_is_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # it came after listing every file (minutes on ImageNet's 1.28M)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"torch sees no CUDA device here \(got 'cuda'\)"):
        make_loader(tmp_path / "not listed", train=True, batch_size=4, device="cuda")


def test_gpu_decoder_preallocates_for_training_only() -> None:
    decoder = GpuDecoderOptions()
    assert decoder_kwargs(decoder, train=True, gpu=True) == {
        "hw_decoder_load": 0.99,
        "device_memory_padding": 211_025_920,
        "host_memory_padding": 140_544_512,
        "preallocate_width_hint": 5_980,
        "preallocate_height_hint": 6_430,
    }
    assert decoder_kwargs(decoder, train=False, gpu=True) == {"hw_decoder_load": 0.99}
    assert decoder_kwargs(decoder, train=True, gpu=False) == {}
    assert decoder_kwargs(decoder, train=False, gpu=False) == {}


@pytest.mark.parametrize("gpu", [True, False])
def test_decoders_get_their_settings(monkeypatch, gpu: bool) -> None:
    """What each graph function hands DALI's decoder, checked without a GPU."""
    calls: dict[str, dict] = {}

    def recording(name: str):
        def op(node, **kwargs):
            calls[name] = kwargs
            return node

        return op

    monkeypatch.setattr(fn.decoders, "image_random_crop", recording("train"))
    monkeypatch.setattr(fn.decoders, "image", recording("val"))
    monkeypatch.setattr(fn, "resize", lambda node, **kwargs: node)
    monkeypatch.setattr(fn, "cast", lambda node, **kwargs: node)
    decoder = GpuDecoderOptions(hw_decoder_load=0.5, preallocate_width_hint=7)
    decode_random_crop("jpegs", options=ImageNetOptions(train=True), gpu=gpu, decoder=decoder)
    val = ImageNetOptions(train=False)
    decode_resize("jpegs", size="hw", options=val, gpu=gpu, decoder=decoder)
    device = "mixed" if gpu else "cpu"
    settings = dataclasses.asdict(decoder) if gpu else {}
    assert calls["train"]["device"] == device
    assert calls["train"]["adjust_orientation"] is False  # as PIL, so torchvision's ImageFolder
    assert {k: v for k, v in calls["train"].items() if k in dataclasses.asdict(decoder)} == settings
    extra = {"hw_decoder_load": 0.5} if gpu else {}
    assert calls["val"] == {
        "device": device,
        "output_type": types.RGB,
        "adjust_orientation": False,
        **extra,
    }


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("mix", ["off", "cutmix", "switch"])
def test_gpu_outputs(image_folder: Path, mix: str) -> None:
    loader = small_loader(
        image_folder,
        device="gpu",
        crop_size=16,
        mix=MIXES[mix],
        output_layout="NHWC",
        dtype="float16",
    )
    images, targets = next(iter(loader))
    assert images.is_cuda and targets.is_cuda and images.shape == (4, 16, 16, 3)
    assert images.dtype == torch.float16


def _halves_folder(root: Path, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class k: one 48 x 48 PNG, left half colour left[k], right half right[k]."""
    k = np.arange(classes)[:, None]
    left = np.concatenate([10 + 6 * k, 250 - 5 * k, (40 + 53 * k) % 200 + 20], 1)
    right = np.concatenate([250 - 6 * k, 3 + 5 * k, 230 - (29 * k) % 200], 1)
    for c in range(classes):
        image = np.zeros((48, 48, 3), np.uint8)
        image[:, :24], image[:, 24:] = left[c], right[c]
        (root / f"c{c:02d}").mkdir(parents=True)
        Image.fromarray(image).save(root / f"c{c:02d}" / "img.png")
    return left, right


@pytest.mark.parametrize("erase", [0.0, 0.01], ids=["mix-then-flip", "flip-then-mix"])
def test_a_mixed_images_parts_share_the_flip_unless_erasing_flips_first(
    tmp_path: Path, erase: float
) -> None:
    # What the README says of the flip: fused into the normalization after the mix, one coin
    # for both parts; with RandomErasing before the mix, per image, as in torchvision.
    classes = 40
    left, right = _halves_folder(tmp_path / "halves", classes)
    normal = [(c - np.array(MEAN)) / np.array(STD) for c in (left, right)]
    loader = small_loader(
        tmp_path / "halves",
        batch_size=8,
        crop_size=24,
        random_area=(1.0, 1.0),
        random_aspect_ratio=(1.0, 1.0),
        interpolation="nearest",
        output_layout="NHWC",
        mix=MixConfig(num_classes=classes),
        augment=AugmentConfig(random_erase=erase) if erase else None,
    )

    def mirrored(image: np.ndarray, c: int) -> bool:  # its left colour on the right, or back
        on_left = np.arange(image.shape[1])[None, :] < image.shape[1] // 2
        is_left, is_right = (np.all(np.abs(image - n[c]) < 1e-3, -1) for n in normal)
        return bool((is_left & ~on_left).any() or (is_right & on_left).any())

    same = different = 0
    for _ in range(3):
        for images, targets in loader:
            for image, target in zip(images.numpy(), targets.numpy()):
                parts = np.nonzero(target > 1e-6)[0]
                if len(parts) == 2:
                    agree = mirrored(image, parts[0]) == mirrored(image, parts[1])
                    same, different = same + agree, different + (not agree)
    assert same + different >= 80
    if erase:
        assert min(same, different) >= 20  # independent coins: about half each
    else:
        assert different == 0


# ---- validation: torchvision's Resize + CenterCrop to the pixel ------------------------------


def _jpeg(size: tuple[int, int], seed: int, orientation: int | None = None) -> bytes:
    """A smooth random RGB JPEG of ``size`` (width, height), optionally EXIF-oriented."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, size=(h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((w, h), Image.BILINEAR)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation  # "rotate 90 degrees to view": PIL and torchvision ignore it
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90, exif=exif)
    return out.getvalue()


def _run_on_bytes(graph, blobs: list[bytes]) -> list[list[np.ndarray]]:
    """``graph(jpegs)``'s outputs per sample, for encoded ``blobs`` fed to a CPU pipeline."""
    from nvidia.dali import pipeline_def

    arrays = [np.frombuffer(b, dtype=np.uint8) for b in blobs]

    @pipeline_def(batch_size=len(arrays), num_threads=1, device_id=None)
    def pipe():
        jpegs = fn.external_source(source=lambda: arrays, batch=True, dtype=types.UINT8)
        return graph(jpegs)

    p = pipe()
    p.build()
    outs = p.run()
    return [[np.array(out.at(i)) for out in outs] for i in range(len(arrays))]


def test_validation_resize_size_is_torchvisions() -> None:
    """The longer side is truncated as torchvision truncates it, not rounded as
    ``resize_shorter`` rounds it: 640 x 427 at 256 is 383 wide (383.77), at 73 is 109
    (109.42), and the odd shapes cover both orientations and squares."""
    from torchvision.transforms.v2 import functional as F

    sizes = [(640, 427), (427, 640), (500, 375), (375, 500), (333, 500), (299, 299), (257, 300)]
    sizes += [(1000, 3), (3, 1000), (41, 40), (40, 41), (73, 73), (1, 1)]
    blobs = [_jpeg(size, seed) for seed, size in enumerate(sizes)]
    for resize in (1, 73, 256):
        got = _run_on_bytes(
            lambda j, r=resize: torchvision_resize_size(read_headers(j)[1], r), blobs
        )
        want = [
            tuple(F.resize(torch.zeros(1, h, w, dtype=torch.uint8), [resize], antialias=True).shape)
            for w, h in sizes
        ]
        assert [(1, *(int(side) for side in sides)) for (sides,) in got] == want
    # where DALI's resize_shorter would round up, torchvision (and so the loader) does not
    assert got[0][0].tolist() == [256, 383]


def test_center_crop_position_lands_on_torchvisions_offset() -> None:
    """For every margin 0..2000, DALI's ``roundf(crop_pos * margin)`` is torchvision's
    ``int(round(margin / 2))``, halves to even (0.5 itself gives 59 for 117, not 58)."""
    from nvidia.dali import pipeline_def

    crop = 224
    extents = np.arange(crop, crop + 2001, dtype=np.int64)

    @pipeline_def(batch_size=len(extents), num_threads=1, device_id=None)
    def pipe():
        extent = fn.external_source(source=lambda: list(extents), batch=True, dtype=types.INT64)
        return center_crop_position(extent, crop)

    p = pipe()
    p.build()
    (out,) = p.run()
    pos = np.array([np.array(out.at(i)) for i in range(len(extents))], dtype=np.float32)
    margins = extents - crop
    assert pos.dtype == np.float32 and (pos >= 0).all() and (pos <= 1).all()
    start = np.floor((pos * margins.astype(np.float32)).astype(np.float64) + 0.5)  # roundf
    assert start.tolist() == [int(round(m / 2)) for m in margins.tolist()]
    assert int(np.floor(np.float32(0.5) * np.float32(117) + 0.5)) == 59 != round(117 / 2)


# (width, height) at resize 16, crop 11: margins 5 (half 2: torchvision 2, DALI's 0.5 gave 3),
# 10, 11 (half 5: both 6), 16; one stored 21 x 16 with EXIF "rotate 90" (both read it as stored)
_VAL_SIZES = [(21, 16), (16, 21), (22, 16), (16, 16), (27, 16), (16, 32)]


def _val_folder(root: Path, sizes: list[tuple[int, int]], seed: int) -> Path:
    for k, size in enumerate(sizes):
        path = root / "n00000000" / f"img_{k}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_jpeg(size, seed=seed + k))
    return root


def _torchvision_validation(root: Path, **sizes: int) -> torch.Tensor:
    """torchvision's validation transforms of ``root``'s images, in ImageFolder's order."""
    from pipelines.torchvision_ref import make_transforms

    transform = make_transforms(train=False, **sizes)
    images = [transform(Image.open(path).convert("RGB")) for path, _ in ImageFolder(root).samples]
    return torch.stack(images)


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=GPU)])
def test_validation_crops_what_torchvision_crops(tmp_path: Path, device: str) -> None:
    """Where torchvision's Resize is the identity (the shorter side is already
    ``resize_size``), the loader's validation images are torchvision's to float
    rounding on the CPU, whose decoder matches PIL's; a crop one pixel off would
    differ by tens of levels. On the GPU nvJPEG decodes, so to a level or so."""
    root = _val_folder(tmp_path / "val", _VAL_SIZES, seed=0)
    (root / "n00000000" / "img_9_exif.JPEG").write_bytes(_jpeg((21, 16), seed=9, orientation=6))
    sizes = {"crop_size": 11, "resize_size": 16}
    images, _ = _epoch(small_loader(root, train=False, device=device, batch_size=7, **sizes))
    want = _torchvision_validation(root, **sizes)
    if device == "cpu":
        torch.testing.assert_close(images, want, rtol=0, atol=1e-5)
    else:
        levels = (_pixels(images.cpu()) - _pixels(want)).abs()
        assert levels.mean() < 2.0, levels.mean()


def test_validation_is_torchvisions_after_a_real_resize(tmp_path: Path) -> None:
    """With a resize that is not the identity, DALI's and torchvision's antialiased
    bilinear filters round differently, by at most one level in 0..255 here (a mean
    of 0.11), where the rounded size and the shifted crop of before gave a mean of 1.5
    and 18.8 levels."""
    sizes = [(97, 73), (73, 97), (110, 73), (146, 97), (91, 80), (120, 90), (75, 100)]
    root = _val_folder(tmp_path / "val", sizes, seed=20)
    crop = {"crop_size": 64, "resize_size": 73}
    images, _ = _epoch(small_loader(root, train=False, batch_size=7, **crop))
    levels = (_pixels(images) - _pixels(_torchvision_validation(root, **crop))).abs()
    assert levels.mean() < 0.5 and levels.max() < 1.001, (levels.mean(), levels.max())


def test_a_rank_from_the_environment_without_its_world_size_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "need 0 <= shard_id < num_shards, got 1, 1": neither was given by the caller
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError) as caught:
        resolve_shard(None, None)
    assert str(caught.value) == (
        "the environment's RANK=1 and WORLD_SIZE=(unset) give no shard (need 0 <= RANK < "
        "WORLD_SIZE, as torchrun sets them); unset them, or give shard_id and num_shards"
    )
    assert resolve_shard(0, 1) == (0, 1)  # given, the environment is not read
