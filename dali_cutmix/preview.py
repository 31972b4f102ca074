"""A PNG grid of mixed samples, so a person can see what the pipeline does.

Each tile is one output sample of a small DALI CPU pipeline (read, decode,
resize, mix); its caption says CutMix or MixUp and names the two classes with
their label weights (both, even when the partner has the same class), and the
pasted CutMix box is outlined::

    python -m dali_cutmix.preview --data path/to/train --cutmix-alpha 1   # -> runs/preview.png

Without ``--data`` it previews a small generated ImageNet-like set (cached
under ``$DALI_CUTMIX_CACHE``, default ``./data``). ``--file-list FILE`` reads
``path label`` lines (the scan's ``files.txt``) instead of listing ``--data``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, NoReturn

import numpy as np
from PIL import Image, ImageDraw

from dali_cutmix.cli import (
    add_shared_flags,
    bad_file_advice,
    check_outside,
    check_report_path,
    command_name,
    exit_on_user_error,
    from_flags,
    interruptible,
    path_arg,
)
from dali_cutmix.config import MixConfig, check_seed
from dali_cutmix.files import (
    BadImageError,
    DatasetError,
    ImageList,
    counted,
    file_list_named,
    list_image_folder,
    list_root_named,
    read_file_list,
    write_whole,
)
from dali_cutmix.procs import exit_with
from dali_cutmix.synthetic import SyntheticSpec, checked_cache_dir, generate

__all__ = [
    "MixedBatch",
    "mixed_batch",
    "caption",
    "render_grid",
    "write_preview",
    "image_format",
    "main",
]

logger = logging.getLogger(__name__)

MAX_TILES = 256  # the command's grid: 64 rows of 4 tiles of 160 px
BOX_COLOUR = (255, 255, 0)  # the CutMix box's outline: yellow shows on most photographs


class MixedBatch(NamedTuple):
    """One mixed batch and, per sample, what was mixed into it.

    Attributes:
        images: uint8 ``[N, size, size, 3]`` (MixUp output rounded).
        labels: int ``[N]`` class indices.
        targets: float32 ``[N, num_classes]``, the targets ``mix`` gives.
        partners: int ``[N]``, the index in the batch of each sample's partner
            (the sample itself when nothing was mixed in).
        shares: float32 ``[N]``, the partner's label weight (0 when unmixed).
        methods: ``"CutMix"``, ``"MixUp"`` or ``""`` (unmixed) per sample.
        boxes: the pasted box per sample as ``(top, left, bottom, right)``
            pixels (bottom and right exclusive), ``None`` where none was pasted.
    """

    images: np.ndarray
    labels: np.ndarray
    targets: np.ndarray
    partners: np.ndarray
    shares: np.ndarray
    methods: list[str]
    boxes: list[tuple[int, int, int, int] | None]


def _sample_index(info) -> np.ndarray:
    return np.array(info.idx_in_batch, np.int32)


def _check_ints(**values: tuple[int, int]) -> None:
    for name, (value, low) in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def mixed_batch(
    root: str | Path | ImageList,
    config: MixConfig,
    *,
    batch_size: int = 16,
    size: int = 160,
    seed: int = 0,
) -> MixedBatch:
    """One mixed batch from an ImageFolder tree, on the CPU, with what was mixed where.

    The pipeline mixes each image with a fourth channel holding its index in
    the batch (plus one), and mixes "labels" that are those indices: the
    channel then shows where a partner was pasted (CutMix) or blended in
    (MixUp), and the index targets name the partner and its share, even when
    the partner has the same class. The class targets follow from the shares.

    Args:
        root: the dataset folder (listed by :func:`dali_cutmix.files.list_image_folder`,
            so labels follow ``ImageFolder``), or its listing.
        config: the mixing; ``config.num_classes`` is the width of the targets.
        batch_size, size, seed: samples, their side in pixels, DALI's seed (in [0, 2**32)).

    Raises:
        ValueError: a bad ``batch_size``, ``size`` or ``seed``.
        dali_cutmix.files.DatasetError: an unusable folder, or (as
            ``BadImageError``) a file that does not decode; the message names it.
    """
    from nvidia.dali import fn, pipeline_def, types  # here, so that --help answers without DALI

    from dali_cutmix.mixing import mix
    from dali_cutmix.scan import explain_decode_error

    _check_ints(batch_size=(batch_size, 1), size=(size, 1))
    check_seed(seed)  # DALI's own refusal of 2**63 was a traceback
    images = root if isinstance(root, ImageList) else list_image_folder(root)
    images.check_names()
    by_index = dataclasses.replace(config, num_classes=batch_size, label_smoothing=0.0)

    @pipeline_def(batch_size=batch_size, num_threads=2, device_id=None, seed=seed)
    def pipe():
        jpegs, labels = fn.readers.file(
            files=list(images.paths), labels=list(images.labels), random_shuffle=True
        )
        # The loaders' header guard (pipelines.imagenet.read_headers): DALI 2.4's CPU decoder
        # on 2 threads crashed the process (SIGSEGV) on a text file named .JPEG, 3 of 3 runs
        # with a batch of 61 holding one; the header read fails on it with an error we name.
        shapes = fn.peek_image_shape(jpegs, dtype=types.INT64, adjust_orientation=False)
        jpegs = fn.reshape(
            jpegs, shape=jpegs.shape(dtype=types.INT64) + 0 * fn.reductions.min(shapes)
        )
        decoded = fn.decoders.image(  # EXIF orientation ignored, as the loaders do
            jpegs, device="cpu", output_type=types.RGB, adjust_orientation=False
        )
        pixels = fn.cast(fn.resize(decoded, size=[size, size]), dtype=types.FLOAT)
        index = fn.external_source(source=_sample_index, batch=False)
        tag = pixels[:, :, 0:1] * 0.0 + fn.cast(index, dtype=types.FLOAT) + 1.0
        mixed, shares = mix(fn.cat(pixels, tag, axis=2), index, by_index)
        return mixed, labels, shares

    p = pipe()
    p.build()
    try:
        mixed, labels, shares = p.run()
    except RuntimeError as err:  # DALI's error for a file it cannot decode
        explained = explain_decode_error(err, images)
        if explained is err:
            raise
        raise explained from err
    return _read_batch(
        np.stack([np.array(mixed[i]) for i in range(batch_size)]),
        np.array(labels.as_array()).reshape(-1),
        np.array(shares.as_array()),
        config,
    )


def _read_batch(
    mixed: np.ndarray, labels: np.ndarray, shares: np.ndarray, config: MixConfig
) -> MixedBatch:
    """:class:`MixedBatch` from float32 ``[N, S, S, 4]`` (pixels, index tag), ``[N, N]`` shares."""
    n = len(labels)
    off = config.label_smoothing / config.num_classes
    one_hot = np.full((n, config.num_classes), off, np.float32)
    one_hot[np.arange(n), labels] += 1.0 - config.label_smoothing
    partners, weights, methods, boxes = [], [], [], []
    for i in range(n):
        others = [j for j in np.argsort(-shares[i], kind="stable") if j != i]
        j = int(others[0]) if others and shares[i, others[0]] > 0 else i
        method, box = _what_was_mixed(mixed[i, :, :, 3], own=i, partner=j)
        partners.append(j)
        weights.append(float(shares[i, j]) if j != i else 0.0)
        methods.append(method)
        boxes.append(box)
    pixels = np.clip(np.rint(mixed[..., :3]), 0, 255).astype(np.uint8)
    return MixedBatch(
        images=pixels,
        labels=labels,
        targets=(shares @ one_hot).astype(np.float32),
        partners=np.array(partners),
        shares=np.array(weights, np.float32),
        methods=methods,
        boxes=boxes,
    )


def _what_was_mixed(
    tag: np.ndarray, *, own: int, partner: int
) -> tuple[str, tuple[int, int, int, int] | None]:
    """The method and CutMix box read from a sample's index channel ``[S, S]``.

    CutMix copies the partner's tag (``partner + 1``) into a box and leaves
    ``own + 1`` elsewhere; MixUp blends the two tags everywhere.
    """
    if partner == own:
        return "", None
    pasted = tag == partner + 1
    if not pasted.any() or not np.all(pasted | (tag == own + 1)):
        return "MixUp", None
    rows, cols = np.flatnonzero(pasted.any(1)), np.flatnonzero(pasted.any(0))
    return "CutMix", (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def caption(method: str, own: str, partner: str, share: float) -> str:
    """A tile's caption: the method, then each class with its label weight.

    ``caption("CutMix", "cat", "cat", 0.25) == "CutMix: cat 0.75\n+ cat 0.25"``; an
    unmixed sample (``method == ""``) reads ``"unmixed: cat 1.00"``. The colon keeps the
    method apart from a class name: PIL's default font advances 2 pixels for a space
    (``MixUp s0004`` read ``MixUps0004``).
    """
    if not method:
        return f"unmixed: {own} 1.00"
    return f"{method}: {own} {_weight(1.0 - share)}\n+ {partner} {_weight(share)}"


def _weight(value: float) -> str:
    """A label weight with two decimals, or as many more as it takes (up to 6) not to read
    0 or 1 where it is neither: a pasted box of 9 pixels of 224 x 224 read ``0.00``."""
    for decimals in range(2, 7):
        text = f"{value:.{decimals}f}"
        if not 0.0 < value < 1.0 or float(text) not in (0.0, 1.0):
            return text
    return text


def render_grid(
    images: np.ndarray,
    captions: Sequence[str],
    *,
    boxes: Sequence[tuple[int, int, int, int] | None] | None = None,
    columns: int = 4,
    caption_height: int = 28,
) -> Image.Image:
    """Tiles uint8 ``[N, H, W, 3]`` images with a caption under each and the boxes outlined.

    ``boxes`` holds ``(top, left, bottom, right)`` per image (exclusive ends) or
    ``None``; each box's edge pixels are drawn in :data:`BOX_COLOUR`.
    """
    n, h, w, _ = images.shape
    rows = (n + columns - 1) // columns
    grid = Image.new("RGB", (columns * w, rows * (h + caption_height)), "white")
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        x, y = (i % columns) * w, (i // columns) * (h + caption_height)
        grid.paste(Image.fromarray(images[i]), (x, y))
        box = boxes[i] if boxes is not None else None
        if box is not None:
            top, left, bottom, right = box
            draw.rectangle((x + left, y + top, x + right - 1, y + bottom - 1), outline=BOX_COLOUR)
        draw.multiline_text((x + 2, y + h + 1), captions[i], fill="black", spacing=1)
    return grid


def image_format(out: str | Path, flag: str = "") -> str:
    """PIL's format for the grid's file name, by its extension (``grid.jpg``: JPEG; it
    wrote PNG bytes under any name).

    Raises:
        ValueError: the name's extension is no image format PIL writes (``flag`` and
            the name begin the message).
    """
    suffix = Path(out).suffix.lower()
    known = Image.registered_extensions().get(suffix)
    if known is None:
        raise ValueError(f"{flag}{out}: not an image file name; give a .png")
    if known not in Image.SAVE:
        raise ValueError(f"{flag}{out}: PIL reads {known} files but cannot write one; give a .png")
    return known


def write_preview(
    root: str | Path | ImageList,
    out: str | Path,
    config: MixConfig,
    *,
    batch_size: int = 16,
    seed: int = 0,
) -> Path:
    """Writes the grid for one mixed batch of ``root`` (a folder or its listing) in the
    format of ``out``'s extension (PNG for ``.png``, JPEG for ``.jpg`` ...); returns it.

    Raises:
        ValueError: ``config.num_classes`` is not the folder's number of classes, or
            ``out``'s extension is no image format PIL writes (:func:`image_format`).
        dali_cutmix.files.DatasetError: see :func:`mixed_batch`.
    """
    kind = image_format(out)
    listed = root if isinstance(root, ImageList) else list_image_folder(root)
    if config.num_classes != listed.num_classes:
        raise ValueError(
            f"num_classes={config.num_classes} but {listed.source} has "
            f"{counted(listed.num_classes, 'class')}"
        )
    batch = mixed_batch(listed, config, batch_size=batch_size, seed=seed)
    names = [listed.classes[label] for label in batch.labels]
    captions = [
        caption(method, names[i], names[j], share)
        for i, (method, j, share) in enumerate(zip(batch.methods, batch.partners, batch.shares))
    ]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid = render_grid(batch.images, captions, boxes=batch.boxes)
    write_whole(out, lambda part: grid.save(part, format=kind))
    logger.info("wrote %s (%s)", out, counted(len(batch.images), "sample"))
    return out


# Where the PNG goes without --out: the working folder's runs/, not the source tree.
DEFAULT_OUT = Path("runs") / "preview.png"

# What the preview shows without --data: 6 classes of half-scale ImageNet-like JPEGs.
PREVIEW_SPEC = SyntheticSpec(num_classes=6, train_per_class=8, val_per_class=1, size_scale=0.5)


def default_data() -> Path:
    """The generated preview set's ``train`` folder (written once, then reused)."""
    return generate(checked_cache_dir() / "preview", PREVIEW_SPEC, progress=False) / "train"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # a prefix (--epoch) is refused, not taken for a flag
        prog=command_name("dali_cutmix.preview"),
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--data",
        type=path_arg,
        help="ImageFolder root DATA/<class>/<image> (default: a generated set)",
    )
    parser.add_argument(
        "--file-list",
        type=path_arg,
        help="read these 'path label' lines (the scan's files.txt; relative paths relative to "
        "--data) instead of listing --data",
    )
    parser.add_argument(
        "--out",
        type=path_arg,
        default=DEFAULT_OUT,
        help="image to write, in the format its extension names: .png, .jpg, ... (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--cutmix-alpha",
        type=float,
        default=1.0,
        help="CutMix's Beta(alpha, alpha); 0 turns CutMix off (default: %(default)s)",
    )
    parser.add_argument(
        "--mixup-alpha",
        type=float,
        default=0.0,
        help="MixUp's Beta(alpha, alpha); 0 turns MixUp off (default: %(default)s)",
    )
    parser.add_argument(
        "--mix-prob",
        type=float,
        default=1.0,
        help="probability that a sample is mixed at all (default: %(default)s)",
    )
    parser.add_argument(
        "--switch-prob",
        type=float,
        default=0.5,
        help="with both on, probability of CutMix instead of MixUp (default: %(default)s)",
    )
    parser.add_argument(
        "--mix-mode",
        default="elem",
        choices=["elem", "pair", "batch"],
        help="draw per sample, per pair of samples or per batch (default: %(default)s)",
    )
    add_shared_flags(
        parser, batch_size=16, seed=0, help={"batch_size": "samples in the grid, four per row"}
    )
    parser.epilog = (
        "exit status: 0 the grid is written, 2 bad usage or a file that is no image (named), "
        "130 Ctrl-C, 143 SIGTERM"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: 0 when the PNG is written.

    A bad value, an unusable folder or an undecodable image ends it with one
    line on stderr and status 2 (:func:`dali_cutmix.cli.exit_on_user_error`).
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = get_args_parser()
    args = parser.parse_args(argv)

    def preview() -> int:
        with exit_on_user_error(parser, fields={"prob": "--mix-prob"}):
            if args.batch_size > MAX_TILES:  # 100,000 ran the machine out of memory
                raise ValueError(
                    f"--batch-size {args.batch_size}: the grid takes at most {MAX_TILES} samples"
                )
            check_report_path(args.out)
            image_format(args.out, "--out ")
            # The flags are checked before the data is generated or listed (minutes on
            # ImageNet); the classes are the folder's, known once it is listed.
            config = from_flags(
                MixConfig, args, num_classes=2, prob=args.mix_prob, mode=args.mix_mode
            )
            check_seed(args.seed)
            if args.file_list is not None and args.data is None:  # it read the list against
                # the generated set's folder: its classes, not the list's (as bench refuses)
                raise ValueError(
                    "--file-list must come with --data (the folder whose classes its labels "
                    "number, and that its relative paths start from)"
                )
            root = args.data or default_data()
            if args.data is not None:  # the grid, an image, would be read as a sample
                check_outside(args.out, "--out", args.data, "--data")
            if args.file_list is None:
                images = list_image_folder(root)
            else:
                with file_list_named("--file-list"), list_root_named("--data"):
                    images = read_file_list(args.file_list, root=root, must_exist=True)
            config = dataclasses.replace(config, num_classes=images.num_classes)
            try:
                write_preview(images, args.out, config, batch_size=args.batch_size, seed=args.seed)
            except BadImageError as error:  # this command's own way on, not the loaders'
                raise DatasetError(
                    bad_file_advice(
                        error, root, args.file_list, "dali_cutmix.preview", "preview", argv
                    )
                ) from None
        return 0

    return interruptible(parser, f"{args.out} was not written", preview)


def entry() -> NoReturn:
    """The command: :func:`main`, then the process ends with its status, also on a Ctrl-C or
    SIGTERM during the interpreter's teardown (:func:`dali_cutmix.procs.exit_with`)."""
    exit_with(main())


if __name__ == "__main__":
    entry()
