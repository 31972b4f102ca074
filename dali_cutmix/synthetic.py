"""A deterministic generator of ImageNet-like JPEG folders.

One generator serves two uses: the training application's embedded default
dataset (small images, few classes, learnable in minutes on a CPU) and the
benchmark's stand-in for ImageNet (full-size images whose decode cost is
realistic). Both write the same layout as ImageNet's::

    root/train/<class>/<class>_<index>.JPEG
    root/val/<class>/<class>_<index>.JPEG
    root/manifest.json      # written last: its presence means "complete"

What makes it ImageNet-like:

* sizes: most images have a long side of 500 pixels (ImageNet's Flickr
  resizing) in 4:3, 3:2, 1:1 or portrait shapes, a fifth are smaller, and 3 %
  form a tail of large images (long side up to about 2,500). At
  ``size_scale=1`` the mean is close to ImageNet's 400 x 350.
* content: 1/f ("pink") noise in luminance and colour, plus fine grain, so the
  spectrum and the JPEG entropy resemble photographs and decoding costs what it
  costs on real photos; at quality 94 the files average about 110 KB.
* classes: each class has its own object shape, hue, background tint and the
  orientation and frequency of a grating on the object; each image draws its
  own position, scale, rotation and noise. A ResNet learns these in minutes.

Every image comes from its own generator seeded by ``(seed, split, class,
index)``, so the bytes do not depend on the number of workers or the order of
writing. The folder is written next to ``root`` under a temporary name and
renamed into place when complete, so a crash never leaves a folder that looks
finished; a finished folder with the same specification is reused at once. A
second process asked for the same folder while one writes it waits on the lock
file ``.<name>.lock`` beside it (removed once the folder is written), then reuses
the folder.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import errno
import fcntl
import glob
import io
import itertools
import json
import logging
import math
import numbers
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from PIL import Image

from dali_cutmix.cli import (
    check_folder,
    exit_on_user_error,
    from_flags,
    interruptible,
    path_arg,
    progress_bar,
    start_command,
    worker_count,
)
from dali_cutmix.files import counted
from dali_cutmix.procs import exit_with, worker_pool

__all__ = [
    "CACHE_ENV",
    "NO_ROOM",
    "SyntheticSpec",
    "cache_dir",
    "checked_cache_dir",
    "DatasetStats",
    "generate",
    "dataset_stats",
    "render_image",
    "image_size",
    "IMAGENET_MEAN_SIZE",
    "IMAGENET_MEAN_FILE_KB",
]

logger = logging.getLogger(__name__)

# Where generated datasets are kept: the embedded training set, the benchmark's, the soak's.
CACHE_ENV = "DALI_CUTMIX_CACHE"


def cache_dir(given: str | os.PathLike[str] | None = None) -> Path:
    """``given``, else ``$DALI_CUTMIX_CACHE``, else ``./data``: where generated sets are kept.
    An empty ``$DALI_CUTMIX_CACHE`` counts as unset (it put the sets in the working folder)."""
    if given is not None:
        return Path(given)
    return Path(os.environ.get(CACHE_ENV) or "data")


def checked_cache_dir(
    given: str | os.PathLike[str] | None = None, flag: str = "--cache-dir"
) -> Path:
    """:func:`cache_dir`, once it is a folder or one can be made there (nothing is made yet);
    a ``ValueError`` names where it came from (``flag``, ``$DALI_CUTMIX_CACHE`` or the
    default) where it cannot be, before any image is written."""
    folder = cache_dir(given)
    # a read-only cache holding the sets needed is fine; generate() checks where it writes
    check_folder(
        folder, cache_source(folder if given is not None else None, flag), probe_existing=False
    )
    return folder


def cache_source(given: str | os.PathLike[str] | None, flag: str = "--cache-dir") -> str:
    """Where the cache folder ``given`` came from, for a message: ``flag``; or, where it is
    the one that :func:`cache_dir` gives without a flag (``given`` ``None`` or that folder),
    ``$DALI_CUTMIX_CACHE`` or the default."""
    if given is not None and Path(given) != cache_dir():
        return flag
    if os.environ.get(CACHE_ENV):
        return f"the cache folder (${CACHE_ENV})"
    # the way to move it, where no flag gave it: "the cache folder data" left that untold
    return f"the cache folder (the default; ${CACHE_ENV} gives another)"


GENERATOR_VERSION = 1  # bump when the bytes for a given spec change
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
IMAGENET_MEAN_SIZE = (400, 350)  # width, height; see SPEC.md
IMAGENET_MEAN_FILE_KB = 110.0

_SHAPES = ("ellipse", "rectangle", "triangle", "ring", "cross", "diamond")


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; the whole folder is a pure function of these fields.

    Attributes:
        num_classes: number of class folders (named ``s0000``, ``s0001``, ...).
        train_per_class: images per class in ``train/``.
        val_per_class: images per class in ``val/``.
        seed: base seed; the same spec gives identical bytes.
        size_scale: multiplies every image side; 1.0 resembles ImageNet, a
            smaller value makes decoding and training faster (minimum side 16).
        quality: JPEG quality (1-100); 94 gives ImageNet-like file sizes.
    """

    num_classes: int = 10
    train_per_class: int = 100
    val_per_class: int = 20
    seed: int = 0
    size_scale: float = 1.0
    quality: int = 94

    def __post_init__(self) -> None:
        for name in ("num_classes", "train_per_class", "val_per_class", "seed", "quality"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name} must be an int, got {value!r}")
            object.__setattr__(self, name, int(value))  # NumPy's: JSON's in the manifest
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.train_per_class < 1 or self.val_per_class < 1:
            raise ValueError(
                "train_per_class and val_per_class must be >= 1, got "
                f"{self.train_per_class} and {self.val_per_class}"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in [1, 100], got {self.quality}")
        scale = self.size_scale
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise ValueError(f"size_scale must be a number in (0, 4], got {scale!r}")
        if not isinstance(scale, (int, float)):  # NumPy's
            object.__setattr__(self, "size_scale", scale := float(scale))
        if not 0.0 < scale <= 4.0:
            raise ValueError(f"size_scale must be in (0, 4], got {scale!r}")

    @property
    def classes(self) -> list[str]:
        return [f"s{c:04d}" for c in range(self.num_classes)]

    def per_class(self, split: str) -> int:
        return self.train_per_class if split == "train" else self.val_per_class

    @property
    def num_images(self) -> int:
        return self.num_classes * (self.train_per_class + self.val_per_class)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DatasetStats:
    """Summary of a JPEG folder, for comparing it with ImageNet."""

    num_images: int
    num_classes: int
    mean_width: float
    mean_height: float
    mean_file_kb: float
    median_file_kb: float
    max_long_side: int
    large_fraction: float  # share of images with a long side above 600 pixels

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        ref_w, ref_h = IMAGENET_MEAN_SIZE
        return (
            f"{counted(self.num_images, 'image')} in {counted(self.num_classes, 'class')}: mean "
            f"{self.mean_width:.0f} x {self.mean_height:.0f} px (ImageNet ~{ref_w} x {ref_h}), "
            f"mean {self.mean_file_kb:.0f} KB (ImageNet ~{IMAGENET_MEAN_FILE_KB:.0f} KB), "
            f"median {self.median_file_kb:.0f} KB, {100 * self.large_fraction:.1f} % with a "
            f"long side > 600 px (max {self.max_long_side})"
        )


# ----------------------------------------------------------------------------- pure helpers


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def image_size(rng: np.random.Generator, size_scale: float = 1.0) -> tuple[int, int]:
    """Draws (width, height) with ImageNet's shape: mostly 500 on the long side."""
    kind = rng.random()
    if kind < 0.77:  # the typical Flickr-resized photo
        long_side = 500.0 if rng.random() < 0.8 else rng.uniform(300.0, 500.0)
    elif kind < 0.97:  # small images
        long_side = rng.uniform(80.0, 300.0)
    else:  # the tail of large originals
        long_side = min(2500.0, 600.0 * math.exp(abs(rng.normal(0.0, 0.6))))
    aspect = rng.choice([4 / 3, 3 / 2, 1.0, 3 / 4, 2 / 3], p=[0.5, 0.15, 0.1, 0.17, 0.08])
    width, height = (
        (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)
    )
    return max(16, round(width * size_scale)), max(16, round(height * size_scale))


def _pink_noise(
    rng: np.random.Generator, height: int, width: int, *, beta: float, channels: int
) -> np.ndarray:
    """float32 [H, W, channels] noise with a 1/f**beta power spectrum, unit std per channel."""
    fy = np.fft.fftfreq(height).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(width).astype(np.float32)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0
    gain = radius ** np.float32(-beta / 2)
    gain[0, 0] = 0.0
    shape = (channels, height, width // 2 + 1)
    spectrum = (
        rng.standard_normal(shape, dtype=np.float32)
        + 1j * rng.standard_normal(shape, dtype=np.float32)
    ) * gain
    noise = np.fft.irfft2(spectrum, s=(height, width)).astype(np.float32)
    noise /= noise.std(axis=(1, 2), keepdims=True) + 1e-8
    return np.moveaxis(noise, 0, -1)


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    """One colour as float32 RGB in [0, 255]."""
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6.0) % 6.0
    rgb = value - value * saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return (255.0 * rgb).astype(np.float32)


def _class_traits(seed: int, label: int, num_classes: int) -> dict[str, Any]:
    """The class's look: shape, hues, grating; a pure function of (seed, label)."""
    rng = _rng(seed, 1_000_003, label)
    # Evenly spaced hues keep neighbouring classes apart; shape and grating
    # separate classes that share a hue when there are many classes.
    return {
        "shape": _SHAPES[(label + seed) % len(_SHAPES)],
        "hue": (label / num_classes + rng.uniform(-0.02, 0.02)) % 1.0,
        "tint": rng.uniform(0.0, 1.0),
        "angle": rng.uniform(0.0, math.pi),
        "cycles": rng.uniform(2.0, 8.0),  # grating periods across the object
        "beta": rng.uniform(1.6, 2.4),  # spectral slope of the background
    }


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """bool mask of a unit-size shape in object coordinates (u, v in [-1, 1])."""
    au, av = np.abs(u), np.abs(v)
    if shape == "ellipse":
        return u * u + v * v <= 1.0
    if shape == "rectangle":
        return (au <= 1.0) & (av <= 0.7)
    if shape == "triangle":
        return (v <= 0.8) & (v >= 2.0 * au - 1.0)
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.36)
    if shape == "cross":
        return ((au <= 1.0) & (av <= 0.3)) | ((au <= 0.3) & (av <= 1.0))
    return au + av <= 1.0  # diamond


def render_image(spec: SyntheticSpec, split: str, label: int, index: int) -> np.ndarray:
    """uint8 RGB image [H, W, 3] for one file; a pure function of its arguments."""
    rng = _rng(spec.seed, SPLITS.index(split), label, index)
    traits = _class_traits(spec.seed, label, spec.num_classes)
    width, height = image_size(rng, spec.size_scale)
    # Background: tinted pink noise in luminance, weaker noise in colour.
    lum = _pink_noise(rng, height, width, beta=traits["beta"], channels=1)
    chroma = _pink_noise(rng, height, width, beta=2.2, channels=3)
    tint = _hsv_to_rgb(traits["tint"], rng.uniform(0.15, 0.35), rng.uniform(0.45, 0.7))
    image = tint + 40.0 * lum + 12.0 * chroma
    # Object: the class shape, rotated and scaled per image, filled with the
    # class hue modulated by the class grating and the noise texture.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    side = min(height, width)
    radius = side * rng.uniform(0.25, 0.45)
    cy = rng.uniform(radius, height - radius) if height > 2 * radius else height / 2
    cx = rng.uniform(radius, width - radius) if width > 2 * radius else width / 2
    theta = rng.uniform(-0.3, 0.3)
    dy, dx = (yy - cy) / radius, (xx - cx) / radius
    u = math.cos(theta) * dx + math.sin(theta) * dy
    v = -math.sin(theta) * dx + math.cos(theta) * dy
    mask = _shape_mask(traits["shape"], u, v)
    phase = math.cos(traits["angle"] + theta) * u + math.sin(traits["angle"] + theta) * v
    grating = np.sin(math.pi * traits["cycles"] * phase + rng.uniform(0, 2 * math.pi))
    colour = _hsv_to_rgb(
        (traits["hue"] + rng.normal(0, 0.015)) % 1.0, rng.uniform(0.6, 0.9), rng.uniform(0.7, 0.95)
    )
    obj = colour * (0.75 + 0.25 * grating[..., None]) + 25.0 * lum
    image = np.where(mask[..., None], obj, image)
    image += rng.normal(0.0, 4.0, size=image.shape).astype(np.float32)  # sensor grain
    return np.clip(image, 0.0, 255.0).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- writing


def _jobs(spec: SyntheticSpec) -> Iterator[tuple[str, int, int]]:
    for split in SPLITS:
        for label in range(spec.num_classes):
            for index in range(spec.per_class(split)):
                yield split, label, index


def _relative_path(spec: SyntheticSpec, split: str, label: int, index: int) -> str:
    name = spec.classes[label]
    return f"{split}/{name}/{name}_{index:05d}.JPEG"


def _write_chunk(spec: SyntheticSpec, root: str, jobs: Sequence[tuple[str, int, int]]) -> int:
    written = 0
    for split, label, index in jobs:
        data = encode_jpeg(render_image(spec, split, label, index), spec.quality)
        Path(root, _relative_path(spec, split, label, index)).write_bytes(data)
        written += len(data)
    return written


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _manifest(spec: SyntheticSpec, total_bytes: int) -> dict[str, Any]:
    return {
        "generator": "dali_cutmix.synthetic",
        "version": GENERATOR_VERSION,
        "spec": spec.to_dict(),
        "num_images": spec.num_images,
        "total_bytes": total_bytes,
    }


def is_complete(root: str | os.PathLike[str], spec: SyntheticSpec) -> bool:
    """True when ``root`` holds a finished folder generated from ``spec``."""
    manifest = _read_manifest(Path(root))
    return (
        manifest is not None
        and manifest.get("version") == GENERATOR_VERSION
        and manifest.get("spec") == spec.to_dict()
    )


def _job_at(spec: SyntheticSpec, i: int) -> tuple[str, int, int]:
    """The ``i``-th of :func:`_jobs`, without listing those before it."""
    for split in SPLITS:
        count = spec.num_classes * spec.per_class(split)
        if i < count:
            return split, i // spec.per_class(split), i % spec.per_class(split)
        i -= count
    raise IndexError(i)


# What :func:`generate`'s error advises where the disk cannot hold the set, unless its
# caller gives its own words (its flags: this module's command line, train's --cache-dir).
NO_ROOM = "free space there, or generate fewer or smaller images"
# This module's command line: its flags that make the set smaller.
_CLI_NO_ROOM = (
    "generate fewer or smaller images (--classes, --train-per-class, --val-per-class, "
    "--size-scale) or free space"
)

# Jobs whose sizes are drawn, and of those the ones encoded, to estimate a set's bytes;
# the free space asked for, over the estimate.
_SIZED, _ENCODED = 256, 4
_DISK_MARGIN = 1.2


def _bytes(count: float) -> str:
    """``count`` bytes in GB, or MB below 1 GB (a small disk's read "0.0 GB")."""
    return f"{count / 1e9:,.1f} GB" if count >= 1e9 else f"{count / 1e6:,.1f} MB"


def estimated_bytes(spec: SyntheticSpec) -> int:
    """About how many bytes the set's JPEGs take: images' pixels x JPEG bytes per pixel.

    The sides of up to 256 images spread over the set are drawn (as the writer draws
    them) for the mean pixel count, and 4 of them are rendered and encoded for the bytes
    per pixel: well under a second, so that a set too large for its disk is refused
    before anything is written (a million images per class held 10 GB of memory at
    once, before the first file). On seven sets of 12 to 4,200 images, scales 0.1 to 1
    and qualities 60 and 94, it was 0.94 to 1.10 times the bytes written.
    """
    n = spec.num_images
    picked = [_job_at(spec, k * n // min(n, _SIZED)) for k in range(min(n, _SIZED))]
    pixels = [
        math.prod(image_size(_rng(spec.seed, SPLITS.index(split), label, index), spec.size_scale))
        for split, label, index in picked
    ]
    encoded = range(0, len(picked), max(1, len(picked) // _ENCODED))[:_ENCODED]
    size = sum(len(encode_jpeg(render_image(spec, *picked[j]), spec.quality)) for j in encoded)
    per_pixel = size / sum(pixels[j] for j in encoded)
    return round(n * per_pixel * sum(pixels) / len(pixels))


def _free_bytes(folder: Path) -> int:
    """Free bytes on the disk of ``folder`` (:func:`generate` has made it)."""
    return shutil.disk_usage(folder).free


def _chunks(spec: SyntheticSpec, size: int) -> Iterator[list[tuple[str, int, int]]]:
    jobs = _jobs(spec)
    while part := list(itertools.islice(jobs, size)):
        yield part


def _write_all(spec: SyntheticSpec, tmp: Path, workers: int, progress: bool) -> int:
    """Writes every image under ``tmp``; returns their bytes. The jobs are made as they are
    handed out, at most ``4 x workers`` chunks ahead, so memory stays flat in the set's size."""
    for split in SPLITS:
        for name in spec.classes:
            (tmp / split / name).mkdir(parents=True)
    n = spec.num_images
    chunks = _chunks(spec, max(1, min(64, n // (4 * workers) or 1)))
    bar = progress_bar(total=n, desc="generating JPEGs", unit="img", disable=not progress)
    total = 0
    with bar:
        if workers == 1:
            for part in chunks:
                total += _write_chunk(spec, str(tmp), part)
                bar.update(len(part))
            return total
        with worker_pool(workers) as pool:
            pending: dict[concurrent.futures.Future[int], int] = {}
            for part in itertools.chain(chunks, [None]):
                while pending and (part is None or len(pending) >= 4 * workers):
                    done, _ = concurrent.futures.wait(
                        pending, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    for future in done:
                        total += future.result()
                        bar.update(pending.pop(future))
                if part is not None:
                    pending[pool.submit(_write_chunk, spec, str(tmp), part)] = len(part)
    return total


def generate(
    root: str | os.PathLike[str],
    spec: SyntheticSpec,
    *,
    workers: int | None = None,
    progress: bool = True,
    no_room: str = NO_ROOM,
) -> Path:
    """Writes the folder for ``spec`` at ``root`` unless it is already there.

    Args:
        root: the dataset folder; ``root/train`` and ``root/val`` are created.
        spec: what to generate.
        workers: processes writing in parallel (default: the CPU count).
            The bytes do not depend on it.
        progress: show a tqdm progress bar.
        no_room: what the error advises where the disk cannot hold the set, in the
            caller's words: the flags of its command that give another folder or a
            smaller set (``python -m train``: ``"free space there, or give --cache-dir
            a folder on a larger disk"``). Default :data:`NO_ROOM`.

    Returns:
        ``root`` as a ``Path``.

    Raises:
        ValueError: ``root`` exists but is not a finished folder of this spec
            (it is never deleted: it may be someone's data); or its disk cannot hold
            the set (estimated before a file is written, or filled while it was
            written), ending with ``no_room``; ``spec`` is no :class:`SyntheticSpec`.
    """
    if not isinstance(spec, SyntheticSpec):  # an AttributeError on num_images
        raise ValueError(f"spec must be a SyntheticSpec, got {spec!r}")
    root = Path(root)
    if root.name in ("", "..") or root.name != Path(os.path.normpath(root)).name:
        # ".": the lock file and the partial folder went inside it ("..lock"), so the empty
        # folder was refused as one this command had not generated
        root = Path(os.path.abspath(root))
    if is_complete(root, spec):
        _check_intact(root)
        logger.info("reusing %s, generated earlier with the same settings", root)
        return root
    _refuse_foreign(root, spec)  # before the lock: the folder beside it may be read-only
    check_folder(root.parent, f"{root}: its folder")  # one line, not the lock file's Errno
    root.parent.mkdir(parents=True, exist_ok=True)
    with _generation_lock(root):  # another process writing the same folder: wait for it
        return _generate_unlocked(root, spec, workers=workers, progress=progress, no_room=no_room)


def _check_intact(root: Path) -> None:
    """A finished folder still holds what its manifest says: as many JPEGs, as many bytes.

    A folder whose images were deleted was reused without a word (31 of 33 images, a
    class short); one with an image emptied ended the command in a traceback. Counting
    and sizing the files takes a stat each: 0.3 s for 46,000 files (the GPU check's set)
    on the 2-core machine, from the page cache.

    Raises:
        ValueError: it changed since it was written (named, with the fix: remove it).
    """
    manifest = _read_manifest(root) or {}
    sizes = [p.stat().st_size for split in SPLITS for p in (root / split).glob("*/*.JPEG")]
    found = (len(sizes), sum(sizes))
    written = (manifest.get("num_images"), manifest.get("total_bytes"))
    if found != written:
        raise ValueError(
            f"{root} is a generated dataset that changed since it was written: it holds "
            f"{counted(found[0], 'image')} of {found[1]:,} bytes, its manifest.json "
            f"{written[0]} of {written[1]:,} bytes; remove the folder, and it is generated "
            "again"
        )


def _refuse_foreign(root: Path, spec: SyntheticSpec) -> None:
    """A folder at ``root`` that is not a finished one of ``spec`` is never written over
    (a generated folder appears whole, by a rename: any other is someone's)."""
    if root.is_dir() and not any(root.iterdir()):  # made empty for it (mkdir): filled by rename
        return
    if root.exists() and not root.is_dir():  # "no dataset this command generated"
        raise ValueError(f"{root} is a file, not a folder; choose another path")
    if root.exists():
        found = _read_manifest(root)
        what = (
            f"is a dataset generated with other settings ({_settings_differ(found, spec)})"
            if found
            else "is no dataset this command generated (no readable manifest.json)"
        )
        raise ValueError(f"{root} exists and {what}; remove it or choose another path")


def _settings_differ(found: dict[str, Any], spec: SyntheticSpec) -> str:
    """The settings of a manifest ``found`` that ``spec`` does not share (``train_per_class
    200, not 100``; the two specs' dicts were printed whole, to be compared by eye)."""
    saved = found.get("spec")
    if not isinstance(saved, dict):
        return f"its manifest holds {saved!r}"
    differ = [
        f"{field} {saved.get(field)!r}, not {value!r}"
        for field, value in spec.to_dict().items()
        if saved.get(field) != value
    ]
    return "; ".join(differ) or f"its manifest holds {saved!r}"


@contextlib.contextmanager
def _generation_lock(root: Path) -> Iterator[None]:
    """Holds ``.<name>.lock`` beside ``root``; a second writer of ``root`` waits here.

    Two processes that need the same set (two ranks, a background job and a check) would
    otherwise both write it, each at the full cost; the second now finds it finished.
    The holder removes the file before it lets go (it was left beside every set, and
    beside folders a refused or interrupted command never wrote): a process that waited
    on the removed file then holds a lock no one else asks for, sees that the name is
    gone or names another file, and locks again what the name holds now.
    """
    path = root.parent / f".{root.name}.lock"
    waited = False
    while True:
        with open(path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    logger.info("waiting for another process that is writing %s", root)
                    waited = True
                fcntl.flock(lock, fcntl.LOCK_EX)
            if not _names(path, lock):
                continue  # the holder before removed it: lock the file the name holds now
            try:
                yield
            finally:
                path.unlink(missing_ok=True)  # while held: a newcomer makes a new one
                fcntl.flock(lock, fcntl.LOCK_UN)
            return


def _names(path: Path, file: Any) -> bool:
    """Whether ``path`` names the open ``file`` (not removed, nor replaced by another)."""
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(file.fileno())
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _generate_unlocked(
    root: Path, spec: SyntheticSpec, *, workers: int | None, progress: bool, no_room: str
) -> Path:
    if is_complete(root, spec):  # written by the process this one waited for
        return root
    _refuse_foreign(root, spec)
    if os.path.ismount(root):  # the rename below fails there (EBUSY), after all the work
        raise ValueError(
            f"{root} is a mount point: a set is written beside its folder and renamed into "
            f"place, which a mount point refuses; give a folder inside it ({root / root.name})"
        )
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    workers = workers or os.cpu_count() or 1
    # Under the lock no other writer of root is alive: a partial folder beside it is one an
    # interrupted or killed writer could not remove (a second Ctrl-C in its clean-up).
    for stale in root.parent.glob(f".{glob.escape(root.name)}.partial-*"):
        logger.info("removing %s, left by an interrupted run", stale)
        shutil.rmtree(stale, ignore_errors=True)
    needed, free = estimated_bytes(spec), _free_bytes(root.parent)
    if needed * _DISK_MARGIN > free:
        raise ValueError(
            f"{root}: {counted(spec.num_images, 'image')} need about {_bytes(needed)}, "
            f"and its disk has {_bytes(free)} free (the check asks for {_DISK_MARGIN} x "
            f"the estimate); {no_room}"
        )
    logger.info(
        "generating %s (about %.1f MB) in %s", counted(spec.num_images, "image"), needed / 1e6, root
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        try:
            total = _write_all(spec, tmp, min(workers, spec.num_images), progress)
            (tmp / MANIFEST).write_text(json.dumps(_manifest(spec, total), indent=2))
        except OSError as error:  # the estimate fell short, or another writer took the room
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise ValueError(
                f"{root}: its disk filled while {counted(spec.num_images, 'image')} were "
                f"written ({error.strerror}); nothing of the set is left; {no_room}"
            ) from None
        if root.is_dir():  # an empty folder made for it (_refuse_foreign let it through)
            _fill(root, tmp)
        else:
            tmp.chmod(0o755)  # mkdtemp makes it private
            try:
                os.rename(tmp, root)
            except OSError:
                if not is_complete(root, spec):  # another process finished first otherwise
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote %d images (%.1f MB) to %s", spec.num_images, total / 1e6, root)
    return root


# ----------------------------------------------------------------------------- statistics


def _fill(root: Path, tmp: Path) -> None:
    """Moves the set written in ``tmp`` into the empty folder ``root``, its manifest last
    (what makes it a finished set), so that ``root`` keeps its mode, group and setgid bit:
    renamed over, a shared folder (``chmod 2775``, a group) became a private one of root's
    group, and a shell inside it was left in a deleted folder."""
    for part in sorted(tmp.iterdir(), key=lambda p: p.name == MANIFEST):
        os.rename(part, root / part.name)
    tmp.rmdir()


def _header_size(path: Path, root: Path) -> tuple[int, int]:
    """``(width, height)`` from ``path``'s header; a ``BadImageError`` naming it (and the scan
    that finds every such file under ``root``) where it is no image, or one DALI's decoder
    refuses (a GIF named .JPEG, more than ``MAX_PIXELS`` pixels), which the loaders would
    meet only in the middle of a measurement."""
    from dali_cutmix.files import BadImageError, header_words, scan_hint, what_is_wrong
    from dali_cutmix.scan import TooManyPixelsError, dali_refusal, open_image

    try:
        with open_image(path) as image:
            header = dali_refusal(image)
            if header is None:
                return image.size
    except TooManyPixelsError as error:
        header = str(error)
    except (OSError, SyntaxError, ValueError) as error:  # UnidentifiedImageError: an OSError
        # the loaders' and the scan's words for it
        header = header_words(f"{type(error).__name__}: {error}".splitlines()[0])
    raise BadImageError(
        f"{str(path)!r} {what_is_wrong(path)} (its header: {header}). " + scan_hint(root),
        path=str(path),
    ) from None


def dataset_stats(
    root: str | os.PathLike[str],
    *,
    split: str | None = None,
    limit: int | None = None,
    files: Sequence[str | os.PathLike[str]] | None = None,
) -> DatasetStats:
    """Sizes and file sizes of the images under ``root`` (any ImageNet-style folder).

    Args:
        root: a folder with ``train/`` and ``val/``, or a single split folder.
        split: only ``root/<split>``.
        limit: look at most at this many files (evenly spaced, at least 1), for big
            folders.
        files: these files (a file list's), not every image under ``root``.

    Only image headers are read, so this is fast even for ImageNet itself.
    """
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1
    ):  # 0 was numpy's AxisError
        raise ValueError(f"limit must be an int >= 1 or None, got {limit!r}")
    base = Path(root) / split if split else Path(root)
    if files is None:
        files = sorted(p for p in base.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    files = [Path(p) for p in files]
    if not files:
        raise ValueError(f"no JPEG files under {base}")
    if limit is not None and len(files) > limit:
        files = [files[i * len(files) // limit] for i in range(limit)]
    sizes = np.array([_header_size(p, base) for p in files], dtype=np.float64)
    kb = np.array([p.stat().st_size / 1000.0 for p in files])
    long_side = sizes.max(axis=1)
    return DatasetStats(
        num_images=len(files),
        num_classes=len({p.parent.name for p in files}),
        mean_width=float(sizes[:, 0].mean()),
        mean_height=float(sizes[:, 1].mean()),
        mean_file_kb=float(kb.mean()),
        median_file_kb=float(np.median(kb)),
        max_long_side=int(long_side.max()),
        large_fraction=float((long_side > 600).mean()),
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # a prefix (--epoch) is refused, not taken for a flag
        prog="python -m dali_cutmix.synthetic",
        description="Generate (or reuse) an ImageNet-like JPEG folder with train/ and val/.",
    )
    default = SyntheticSpec()
    parser.add_argument(
        "out",
        type=path_arg,
        help="dataset folder to create: OUT/train/<class>/*.JPEG and OUT/val/<class>/*.JPEG; "
        "a folder made earlier with the same settings is reused, with others refused",
    )
    settings = (  # flag, type, the spec's field, help
        ("--classes", int, "num_classes", "classes"),
        ("--train-per-class", int, "train_per_class", "training images per class"),
        ("--val-per-class", int, "val_per_class", "validation images per class"),
        ("--seed", int, "seed", "the same seed and settings give the same files"),
        ("--size-scale", float, "size_scale", "multiply image sides; 1 gives ImageNet's sizes"),
        ("--quality", int, "quality", "JPEG quality"),
    )
    for flag, kind, field, text in settings:
        value = getattr(default, field)
        parser.add_argument(flag, type=kind, default=value, help=f"{text} (default: {value})")
    parser.add_argument(
        "--workers",
        type=worker_count,
        default=None,
        help="processes (default: the number of CPUs)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (for logs and CI)"
    )
    parser.epilog = (
        "exit status: 0 the folder is written (or reused), 2 bad usage, an unusable OUT or a "
        "set its disk cannot hold (named), 130 Ctrl-C, 143 SIGTERM (no part of the set is left)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: 0 when the folder is written (or reused).

    A bad value or an unusable ``out`` ends it with one line on stderr and
    status 2 (:func:`dali_cutmix.cli.exit_on_user_error`).
    """
    parser = get_args_parser()
    # INFO logging: "waiting for another process that is writing ...", "wrote N images ..."
    args = start_command(parser, argv)
    what = "a data set is written whole or not at all: no part of it is left"
    return interruptible(parser, what, lambda: _generate(parser, args))


def _generate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    with exit_on_user_error(parser, fields={"num_classes": "--classes"}):
        spec = from_flags(SyntheticSpec, args, num_classes=args.classes)
        progress = not args.no_progress
        root = generate(
            args.out, spec, workers=args.workers, progress=progress, no_room=_CLI_NO_ROOM
        )
        stats = dataset_stats(root)  # a file changed in the meantime: one line, not a traceback
    print(stats.summary())
    return 0


def entry() -> NoReturn:
    """The command: :func:`main`, then the process ends with its status, also on a Ctrl-C or
    SIGTERM during the interpreter's teardown (:func:`dali_cutmix.procs.exit_with`)."""
    exit_with(main())


if __name__ == "__main__":
    entry()
