"""Find the files of a dataset that are not decodable images, and write a clean file list.

DALI cannot skip a bad file: one corrupt JPEG stops the pipeline. Run this once
on a new dataset::

    python -m dali_cutmix.scan /data/imagenet/train --out /data/imagenet/scan-train

It lists the dataset exactly as ``torchvision.datasets.ImageFolder`` does,
decodes every file in a process pool (with a progress bar and throughput), and
writes into ``--out``:

* ``files.txt``: ``path label`` per good file (absolute paths, ``ImageFolder``
  labels), ready for ``make_loader(root, file_list=".../files.txt")``;
* ``bad_files.json``: ``{"root", "total", "good", "bad": [{"path", "label", "error"}]}``;
* ``classes.txt``: the class names, one per line, label order.

The exit status is 0 when every file decodes and 1 when some do not (the
clean list is written either way).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import logging
import os
import re
import shlex
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NoReturn

import numpy as np
from PIL import Image

from dali_cutmix.cli import (
    check_folder,
    check_outside,
    command_name,
    exit_on_user_error,
    interruptible,
    other_command,
    path_arg,
    progress_bar,
    worker_count,
    write_json,
)
from dali_cutmix.files import (
    BadImageError,
    ImageList,
    counted,
    empty_classes,
    header_words,
    list_image_folder,
    name_problem,
    path_in_message,
    scan_hint,
    what_is_wrong,
    write_file_list,
    write_whole,
)
from dali_cutmix.procs import exit_with, worker_pool

__all__ = [
    "MAX_PIXELS",
    "ScanReport",
    "TooManyPixelsError",
    "check_image",
    "explain_decode_error",
    "first_unreadable",
    "load_rgb",
    "open_image",
    "out_of_memory",
    "main",
    "scan",
]

logger = logging.getLogger(__name__)

# Formats DALI's decoders read (PIL's names); a GIF named .JPEG opens in PIL but not in DALI.
DALI_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP", "PPM", "JPEG2000"})


# TIFF's BitsPerSample tag: a reader may take 1 when it is missing (PIL does, and leaves it
# out of the 1-bit TIFFs it writes); DALI 2.4's decoder (nvImageCodec) refuses the file.
TIFF_BITS_PER_SAMPLE = 258
NO_BITS_PER_SAMPLE = (
    "a TIFF without a BitsPerSample tag (as PIL writes 1-bit ones), which DALI's decoder "
    "cannot read; convert it (to PNG, say)"
)

# TIFF's SampleFormat tag: 2 (signed integers) and 3 (floats) DALI 2.4's decoder refuses
# (int32: "Invalid sample_type: 8197", naming no file) or misreads (float32: every pixel
# 255), where the scan called them good; unsigned samples (1, the default) it reads.
TIFF_SAMPLE_FORMAT = 339
SIGNED_OR_FLOAT_SAMPLES = (2, 3)
NOT_UNSIGNED_SAMPLES = (
    "a TIFF of signed-integer or floating-point samples, which DALI's decoder refuses or "
    "misreads; convert it to 8-bit (to PNG, say)"
)

# The most pixels DALI 2.4's CPU decoder takes: libjpeg-turbo stops short of 2**30
# ("Image too large: 1073709056") and its OpenCV fallback takes up to CV_IO_MAX_IMAGE_PIXELS,
# 2**30 (a 32768 x 32768 JPEG decoded, with 12.7 GB resident, in 25 s on the 2-core CPU
# machine; one pixel more was refused). The scan refuses more from the header, before a
# decode whose memory it cannot afford (a 4 KB JPEG whose header said 60000 x 60000 took
# 14 GB and 33 s to be called good), and the torchvision loader reads up to it.
MAX_PIXELS = 2**30

# PIL refuses an image of over twice Image.MAX_IMAGE_PIXELS (about 179 million pixels) as
# a decompression bomb; DALI decodes it, and the scan called it bad, the torchvision loader
# refused it. Lifted while one is opened, to MAX_PIXELS.
_pixel_limit_lock = threading.Lock()


class TooManyPixelsError(ValueError):
    """An image of more than :data:`MAX_PIXELS` pixels (from its header)."""


def open_image(path: str | os.PathLike[str] | BinaryIO) -> Image.Image:
    """``PIL.Image.open(path)`` with PIL's decompression-bomb limit at DALI's (``path``
    may be a file opened for reading bytes).

    Raises:
        TooManyPixelsError: the header gives more than :data:`MAX_PIXELS` pixels.
        OSError and PIL's errors: as ``Image.open``'s.
    """
    try:
        img = Image.open(path)
    except Image.DecompressionBombError:
        if hasattr(path, "seek"):
            path.seek(0)
        with _pixel_limit_lock:
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    width, height = img.size
    if width * height > MAX_PIXELS:
        img.close()
        raise TooManyPixelsError(
            f"{width} x {height} pixels, more than the {MAX_PIXELS:,} (2**30) both loaders take "
            "(DALI's decoder's limit)"
        )
    return img


# 16-bit grayscale (PNG, TIFF): PIL's convert("RGB") clips it at 255, DALI scales it.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """An image as ``ImageFolder``'s loader reads it (RGB), and as DALI decodes it where the
    two differed: up to :data:`MAX_PIXELS` pixels (PIL's limit is about 179 million), and
    16-bit grayscale scaled to 8 bits as DALI rounds it, ``round(v / 257)`` (PIL's convert
    clipped it at 255: a spread 16-bit PNG came out nearly white).

    Raises:
        TooManyPixelsError, OSError and PIL's errors: as :func:`open_image` and ``load``.
    """
    # a file object, as ImageFolder's loader opens it: PIL's errors name it as
    # "<_io.BufferedReader name=...>", which the torchvision loader's messages leave out
    with open(path, "rb") as file, open_image(file) as img:
        if img.mode in _SIXTEEN_BIT_MODES:
            values = np.asarray(img, dtype=np.uint32)
            return Image.fromarray(((values + 128) // 257).astype(np.uint8), "L").convert("RGB")
        return img.convert("RGB")


def _samples_signed_or_float(img: Image.Image) -> bool:
    formats = img.tag_v2.get(TIFF_SAMPLE_FORMAT, 1)
    formats = formats if isinstance(formats, tuple) else (formats,)
    return any(f in SIGNED_OR_FLOAT_SAMPLES for f in formats)


def dali_refusal(img: Image.Image) -> str | None:
    """Why DALI's decoder refuses an image that PIL opened (its header read): another
    format, a TIFF without BitsPerSample or of signed or float samples; ``None`` where
    DALI takes it."""
    if img.format not in DALI_FORMATS:
        return f"format {img.format} is not one DALI decodes"
    if img.format == "TIFF" and TIFF_BITS_PER_SAMPLE not in img.tag_v2:
        return NO_BITS_PER_SAMPLE
    if img.format == "TIFF" and _samples_signed_or_float(img):
        return NOT_UNSIGNED_SAMPLES
    return None


def check_image(path: str, *, decode: bool = True, dali: bool = True) -> str | None:
    """Why ``path`` is not a decodable image, or ``None`` when it is.

    Args:
        path: the file.
        decode: decode all pixels (catches truncated files); ``False`` reads
            only the header, which is fast and catches non-images.
        dali: also refuse what PIL reads and DALI does not (another format, a TIFF
            without BitsPerSample or of signed or float samples); ``False`` for a reader
            that is PIL itself (the torchvision loader, :func:`load_rgb`). Both take
            images of up to :data:`MAX_PIXELS` pixels, over PIL's limit (179 million),
            and refuse larger ones from the header, without decoding them.

    Returns:
        ``None`` for a good image (grayscale, CMYK and PNG-named-.JPEG included),
        else a one-line reason.
    """
    try:
        if os.path.getsize(path) == 0:  # PIL: "cannot identify image file"
            return "empty file (0 bytes)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning, EXIF warnings
            with open_image(path) as img:
                refused = dali_refusal(img) if dali else None
                if refused:
                    return refused
                if decode:
                    img.load()
                else:
                    img.verify()
    except TooManyPixelsError as err:
        return str(err)
    except Exception as err:  # PIL raises many types for bad files
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None


def _check_chunk(paths: Sequence[str]) -> list[str | None]:
    return [check_image(p) for p in paths]


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclasses.dataclass(frozen=True)
class ScanReport:
    """What a scan found.

    Attributes:
        images: the dataset as listed (all files, good and bad).
        errors: one entry per file, ``None`` for good files.
        seconds: wall time of the decoding pass, from the first worker's start (not
            counted) to the last file's result.
    """

    images: ImageList
    errors: tuple[str | None, ...]

    seconds: float

    @property
    def bad(self) -> list[tuple[str, int, str]]:
        """``(path, label, reason)`` of each bad file."""
        return [
            (p, label, e)
            for p, label, e in zip(self.images.paths, self.images.labels, self.errors)
            if e is not None
        ]

    @property
    def good(self) -> list[tuple[str, int]]:
        """``(path, label)`` of each good file, in ``ImageFolder`` order."""
        return [
            (p, label)
            for p, label, e in zip(self.images.paths, self.images.labels, self.errors)
            if e is None
        ]


def scan(
    root: str | os.PathLike[str],
    *,
    workers: int | None = None,
    chunk_size: int = 64,
    progress: bool = True,
) -> ScanReport:
    """Decodes every image under ``root`` in a process pool (not forked: see ``procs``).

    Args:
        root: an ``ImageFolder`` dataset.
        workers: processes; default: all CPUs this process may use.
        chunk_size: files per task (larger amortises inter-process overhead).
        progress: show a tqdm bar with images/s.

    Raises:
        DatasetError: the folder itself is unusable (see :func:`list_image_folder`).
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    images = list_image_folder(root)
    workers = workers or len(os.sched_getaffinity(0))
    errors: list[str | None] = []
    with worker_pool(workers) as pool:
        try:
            # The first worker's start (the fork server's, which imports torch and DALI: about
            # 3 s on the 2-core machine) is timed apart: in the rate it made a scan of 13
            # files read "(4 images/s)".
            began = time.perf_counter()
            pool.submit(os.getpid).result()
            start = time.perf_counter()
            with progress_bar(
                total=len(images), unit="img", desc="scan", disable=not progress
            ) as bar:
                for result in pool.map(_check_chunk, _chunks(images.paths, chunk_size)):
                    errors.extend(result)
                    bar.update(len(result))
            seconds = time.perf_counter() - start
            started = pool.started
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM: what was found is said
            _log_found_so_far(images, errors)
            raise
    # A name the clean list cannot hold, or DALI's reader cannot take, is as unusable as a
    # file that does not decode.
    errors = [e if e is not None else name_problem(p) for p, e in zip(images.paths, errors)]
    logger.info(
        "decoded %s in %.2f s (%.0f images/s) with %s; starting the first took %.1f s "
        "(not counted)",
        counted(len(images), "file"),
        seconds,
        len(images) / max(seconds, 1e-9),
        counted(started, "worker") + (f" (of {workers} allowed)" if started < workers else ""),
        start - began,
    )
    return ScanReport(images, tuple(errors), seconds)


def _log_found_so_far(images: ImageList, errors: Sequence[str | None]) -> None:
    """The bad files among the first ``len(errors)`` of ``images``, for a scan that stops
    before its end: they were lost with the rest of its work."""
    found = [(p, e) for p, e in zip(images.paths, errors) if e is not None]
    logger.info(
        "stopped after %d of %d files, %s among them",
        len(errors),
        len(images),
        counted(len(found), "bad file"),
    )
    for path, error in found:
        logger.info("  bad: %s (%s)", path, error)


def first_unreadable(
    paths: Sequence[str],
    *,
    workers: int = 8,
    desc: str = "looking for the bad file",
    dali: bool = True,
) -> str | None:
    """The first of ``paths`` whose header does not read as an image DALI decodes.

    A fast search (headers only, threads: 7,000 to 8,000 files/s on the 2-core CPU
    machine, the embedded set's files in its page cache) used to name the file when
    DALI's error message does not, and by training to check the validation files
    before it starts;
    truncated files need :func:`scan`. A progress bar (``desc``) shows from 10,000
    files on; ``dali``: as :func:`check_image`'s.
    """
    with (
        concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool,
        progress_bar(
            total=len(paths),
            unit="img",
            desc=desc,
            leave=False,
            disable=len(paths) < 10_000,
        ) as bar,
    ):
        for chunk in _chunks(paths, 256):
            results = list(pool.map(lambda p: check_image(p, decode=False, dali=dali), chunk))
            bar.update(len(chunk))
            for path, error in zip(chunk, results):
                if error is not None:
                    return path
    return None


def _dali_reason(message: str) -> str:
    """DALI's reason, without its traceback of C++ source lines."""
    match = re.search(
        r"encountered:\s*(.+?)(?:\n\s*C\+\+ context|\nCurrent pipeline object|$)", message, re.S
    )
    text = match.group(1) if match else message
    return " ".join(text.split())[:300]


def _dataset_root(images: ImageList) -> str:
    """The folder to scan: the listed folder, or for a file list the folder its classes share.

    That is the folder holding the class folders of most listed files: a few entries
    elsewhere (an absolute path into another folder) once made it their common ancestor,
    ``/tmp`` or ``/``. Where no folder holds most files, their common ancestor.
    """
    if os.path.isdir(images.source):
        return images.source
    dirs = [os.path.dirname(p) for p in images.paths]
    common = os.path.commonpath(dirs)
    if len(set(images.labels)) == 1:
        return os.path.dirname(common)
    folder, count = collections.Counter(os.path.dirname(d) for d in dirs).most_common(1)[0]
    return folder if 2 * count > len(dirs) else common


# What DALI says of memory it could not get: never a file's fault.
_OUT_OF_MEMORY = ("bad_alloc", "out of memory", "cudaerrormemoryallocation")


def _reason(message: str) -> str:
    """DALI's reason (after ``encountered:``), lower case, for matching words in it."""
    return message.split("encountered:", 1)[-1].lower()


def out_of_memory(error: BaseException | str) -> bool:
    """Whether a DALI error (or its message) is a failure to get memory (host or device),
    nobody's file."""
    reason = _reason(str(error))
    return any(words in reason for words in _OUT_OF_MEMORY)


def _about_a_file(message: str) -> bool:
    """Whether a DALI error that names no file is a reader's, header reader's or decoder's
    failure on one.

    DALI's message quotes the graph's source lines (``decode_random_crop(`` among them,
    whatever failed), so only the failing operator and the reason after ``encountered:``
    are read; a memory error (``std::bad_alloc`` from a resize) is nobody's file.
    """
    if out_of_memory(message):
        return False
    reason = _reason(message)
    operator = re.search(r"Error in \w+ operator `([^`]+)`", message)
    if operator is not None:
        kinds = ("decoders", "readers", "image_decoder", "peek_image_shape")
        return any(kind in operator.group(1) for kind in kinds)
    return "decod" in reason or "nvimagecodec" in reason


def explain_decode_error(err: Exception, images: ImageList, *, train: bool = True) -> Exception:
    """A :class:`BadImageError` naming the file, for a DALI error about an undecodable file.

    Args:
        err: what DALI raised while running a pipeline that reads ``images``.
        images: the files the pipeline reads.
        train: the split, for the advice (``--train-list`` or ``--val-list``).

    Returns:
        A ``BadImageError`` with the file (from DALI's message, else the first
        file whose header does not read) and the command that skips bad files;
        ``err`` itself when it is not about a file (say, out of memory).
    """
    message = str(err)
    path = path_in_message(message)
    if path is None and not _about_a_file(message):
        return err  # not about a file: DALI's own message is best
    if path is None:
        path = first_unreadable(images.paths)
    what = (
        f"{path!r} {what_is_wrong(path)}"
        if path
        else f"a file of {images.source!r} is not a decodable image"
    )
    hint = scan_hint(_dataset_root(images), train=train)
    cause = _dali_reason(message)
    header = header_problem(path) if path else ""
    if header:  # DALI's own words can be opaque: "nvImageCodec failure: '#4'" for a text file
        cause += f"; its header: {header}"
    return BadImageError(f"{what} (DALI: {cause}). {hint}", path=path)


def header_problem(path: str, *, dali: bool = True) -> str:
    """What reading ``path``'s header found wrong, in a few words (PIL's error class, or
    ``"format GIF is not one DALI decodes"``); ``""`` where it reads (a truncated file) or
    :func:`dali_cutmix.files.what_is_wrong` says it all (gone, unreadable, empty)."""
    if not os.path.isfile(path) or not os.access(path, os.R_OK) or os.path.getsize(path) == 0:
        return ""
    reason = check_image(path, decode=False, dali=dali) or ""
    return header_words(reason) if reason[:1].isupper() else reason


# What a scan writes into its --out folder.
REPORT_FILES = ("files.txt", "classes.txt", "bad_files.json")


def write_report(report: ScanReport, out: str | os.PathLike[str]) -> dict[str, Path]:
    """Writes ``files.txt``, ``classes.txt`` and ``bad_files.json`` into ``out``; returns
    their paths. Where no file is good there is no ``files.txt`` (one of an earlier scan is
    removed): an empty list is no dataset any loader reads."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in REPORT_FILES}
    if report.good:
        write_file_list(paths["files.txt"], report.good)
    else:
        paths.pop("files.txt").unlink(missing_ok=True)
    # a folder name's bytes that are not UTF-8 kept (its files are listed as bad)
    names = "".join(f"{c}\n" for c in report.images.classes)
    write_whole(
        paths["classes.txt"],
        lambda part: part.write_text(names, encoding="utf-8", errors="surrogateescape"),
    )
    summary = {
        "root": report.images.source,
        "total": len(report.images),
        "good": len(report.images) - len(report.bad),
        "bad": [{"path": p, "label": label, "error": e} for p, label, e in report.bad],
        # files ImageFolder leaves out too (no image extension, beside the class folders)
        "left_out": list(report.images.left_out),
    }
    write_json(paths["bad_files.json"], summary)
    return paths


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # a prefix (--epoch) is refused, not taken for a flag
        prog=command_name("dali_cutmix.scan"),
        description="Decode every image of an ImageFolder dataset; write a clean DALI file "
        "list and a report of the bad files.",
    )
    parser.add_argument("root", type=path_arg, help="dataset folder: ROOT/<class>/<image>")
    parser.add_argument(
        "--out",
        type=path_arg,
        required=True,
        help="folder for files.txt (the decodable files), classes.txt and bad_files.json; "
        "made if missing",
    )
    parser.add_argument(
        "--workers",
        type=worker_count,
        default=None,
        help="decoding processes (default: the number of CPUs)",
    )
    parser.epilog = (
        "exit status: 0 every file decodes, 1 some do not (listed), 2 bad usage or a "
        "report that cannot be written (a full disk; the bad files are listed first), 130 Ctrl-C, "
        "143 SIGTERM"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 clean, 1 bad files).

    An unusable folder or setting ends it with one line on stderr and status 2
    (:func:`dali_cutmix.cli.exit_on_user_error`).
    """
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return interruptible(parser, "no report was written", lambda: _scan_and_report(parser, args))


# The bad files a scan lists on stderr; bad_files.json holds every one.
SHOWN_BAD = 20


def _log_findings(report: ScanReport, *, shown: int) -> None:
    """The counts, the rate and the first ``shown`` bad files, each with its error."""
    rate = len(report.images) / max(report.seconds, 1e-9)
    left_out = len(report.images.left_out)  # so that the counts add up to the files there
    logger.info(
        "%d files, %d good, %d bad%s (%.0f images/s)",
        len(report.images) + left_out,
        len(report.good),
        len(report.bad),
        f", {left_out} left out as ImageFolder does (named above)" if left_out else "",
        rate,
    )
    for path, _, error in report.bad[:shown]:  # a newline in a name: quoted, one line each
        logger.info("  bad: %s (%s)", path if path.isprintable() else repr(path), error)
    if len(report.bad) > shown:
        logger.info("  and %d more bad files (in bad_files.json)", len(report.bad) - shown)
    count, lost = empty_classes(report.images.classes, [label for _, label in report.good])
    if count and report.good:
        one = count == 1
        logger.warning(
            "%s kept no good image (%s): files.txt lists none of %s images, so a run on "
            "that list never trains %s (replace %s bad files, or remove the class folder "
            "from every split)",
            counted(count, "class folder"),
            lost,
            "its" if one else "their",
            "it" if one else "them",
            "its" if one else "their",
        )


def _looks_like_val(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` is named as a validation split (``val``, ``validation``, ...)."""
    return Path(os.path.abspath(root)).name.lower() in {"val", "valid", "validation"}


def _scan_and_report(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    with exit_on_user_error(parser):
        # The folder first: a scan of ImageNet takes long, and its report must have a place.
        check_folder(args.out, "--out")
        check_outside(args.out, "--out", args.root, "the folder scanned")
        for name in REPORT_FILES:  # found after the whole scan, as an [Errno 21]
            if (Path(args.out) / name).is_dir():
                raise ValueError(
                    f"--out {args.out}: its {name} is a folder; remove it or give another --out"
                )
        report = scan(args.root, workers=args.workers)
        try:
            paths = write_report(report, args.out)
        except OSError:  # a full disk: the findings of a long scan said here, not lost
            _log_findings(report, shown=len(report.bad))
            raise
    _log_findings(report, shown=SHOWN_BAD)
    if not report.good:
        logger.error(
            "no file of %s decodes, so there is no list of good ones; the reasons are in %s "
            "(a folder of some other files, or a copy that failed?)",
            args.root,
            paths["bad_files.json"],
        )
        return 1
    logger.info("clean file list: %s", paths["files.txt"])
    if report.bad:
        val = _looks_like_val(args.root)
        flags = ("--val-list", "--train-list") if val else ("--train-list", "--val-list")
        logger.info(
            "report of bad files: %s; read the list with make_loader(..., file_list=%r) or "
            "%s ... %s %s (%s for a %s folder)",
            paths["bad_files.json"],
            str(paths["files.txt"]),
            other_command("train", "train"),
            flags[0],
            shlex.quote(str(paths["files.txt"])),
            flags[1],
            "training" if val else "validation",
        )
        return 1
    return 0


def entry() -> NoReturn:
    """The command: :func:`main`, then the process ends with its status, also on a Ctrl-C or
    SIGTERM during the interpreter's teardown (:func:`dali_cutmix.procs.exit_with`)."""
    exit_with(main())


if __name__ == "__main__":
    entry()
