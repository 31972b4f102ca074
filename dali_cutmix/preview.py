"""A PNG grid of mixed samples, so a person can see what the pipeline does.

Each tile is one output sample of a small DALI CPU pipeline (read, decode,
resize, mix); its caption names the two classes and their label weights, as
the targets carry them::

    python -m dali_cutmix.preview --data path/to/train --out preview.png --cutmix-alpha 1

Without ``--data`` it previews a small generated ImageNet-like set (cached
under ``$DALI_CUTMIX_CACHE``, default ``./data``).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from PIL import Image, ImageDraw

from dali_cutmix.cli import exit_on_user_error, positive_int
from dali_cutmix.config import MixConfig
from dali_cutmix.files import ImageList, list_image_folder
from dali_cutmix.mixing import mix
from dali_cutmix.scan import explain_decode_error
from dali_cutmix.synthetic import SyntheticSpec, generate

__all__ = ["mixed_batch", "caption", "render_grid", "write_preview", "main"]

log = logging.getLogger(__name__)


def mixed_batch(
    root: str | Path | ImageList,
    config: MixConfig,
    *,
    batch_size: int = 16,
    size: int = 160,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One mixed batch from an ImageFolder tree, on the CPU.

    Args:
        root: the dataset folder (listed by :func:`dali_cutmix.files.list_image_folder`,
            so labels follow ``ImageFolder``), or its listing.
        config: the mixing; ``config.num_classes`` is the width of the targets.
        batch_size, size, seed: samples, their side in pixels, DALI's seed (>= 0).

    Returns:
        ``(images, labels, targets)``: uint8 ``[N, size, size, 3]`` (MixUp
        output rounded), int ``[N]`` class indices, float32 ``[N, num_classes]``.

    Raises:
        ValueError: a bad ``batch_size``, ``size`` or ``seed``.
        dali_cutmix.files.DatasetError: an unusable folder, or (as
            ``BadImageError``) a file that does not decode; the message names it.
    """
    for name, value, low in (("batch_size", batch_size, 1), ("size", size, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    images = root if isinstance(root, ImageList) else list_image_folder(root)

    @pipeline_def(batch_size=batch_size, num_threads=2, device_id=None, seed=seed)
    def pipe():
        jpegs, labels = fn.readers.file(
            files=list(images.paths), labels=list(images.labels), random_shuffle=True
        )
        decoded = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
        decoded = fn.resize(decoded, size=[size, size])
        mixed, targets = mix(decoded, labels, config)
        return mixed, labels, targets

    p = pipe()
    p.build()
    try:
        pixels, labels, targets = p.run()
    except RuntimeError as err:  # DALI's error for a file it cannot decode
        explained = explain_decode_error(err, images)
        if explained is err:
            raise
        raise explained from err
    as_np = [np.array(pixels[i]) for i in range(batch_size)]
    rounded = np.stack([np.clip(np.rint(a), 0, 255).astype(np.uint8) for a in as_np])
    return rounded, np.array(labels.as_array()).reshape(-1), np.array(targets.as_array())


def caption(target: np.ndarray, label: int, names: Sequence[str]) -> str:
    """``"own 0.62\\n+ partner 0.38"``; only the own class when nothing was mixed in."""
    text = f"{names[label]} {target[label]:.2f}"
    others = [int(k) for k in np.argsort(-target, kind="stable") if int(k) != label]
    if others and target[others[0]] > target.min():
        text += f"\n+ {names[others[0]]} {target[others[0]]:.2f}"
    return text


def render_grid(
    images: np.ndarray, captions: Sequence[str], *, columns: int = 4, caption_height: int = 28
) -> Image.Image:
    """Tiles uint8 ``[N, H, W, 3]`` images with a caption line under each."""
    n, h, w, _ = images.shape
    rows = (n + columns - 1) // columns
    grid = Image.new("RGB", (columns * w, rows * (h + caption_height)), "white")
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        x, y = (i % columns) * w, (i // columns) * (h + caption_height)
        grid.paste(Image.fromarray(images[i]), (x, y))
        draw.multiline_text((x + 2, y + h + 1), captions[i], fill="black", spacing=1)
    return grid


def write_preview(
    root: str | Path | ImageList,
    out: str | Path,
    config: MixConfig,
    *,
    batch_size: int = 16,
    seed: int = 0,
) -> Path:
    """Writes the grid PNG for one mixed batch of ``root`` (a folder or its listing); returns it.

    Raises:
        ValueError: ``config.num_classes`` is not the folder's number of classes.
        dali_cutmix.files.DatasetError: see :func:`mixed_batch`.
    """
    listed = root if isinstance(root, ImageList) else list_image_folder(root)
    if config.num_classes != listed.num_classes:
        raise ValueError(
            f"num_classes={config.num_classes} but {listed.source} has {listed.num_classes} classes"
        )
    images, labels, targets = mixed_batch(listed, config, batch_size=batch_size, seed=seed)
    captions = [caption(t, int(lbl), listed.classes) for t, lbl in zip(targets, labels)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    render_grid(images, captions).save(out)
    log.info("wrote %s (%d samples)", out, len(images))
    return out


# What the preview shows without --data: 6 classes of half-scale ImageNet-like JPEGs.
PREVIEW_SPEC = SyntheticSpec(num_classes=6, train_per_class=8, val_per_class=1, size_scale=0.5)


def default_data() -> Path:
    """The generated preview set's ``train`` folder (written once, then reused)."""
    cache = Path(os.environ.get("DALI_CUTMIX_CACHE", "data"))
    return generate(cache / "preview", PREVIEW_SPEC, progress=False) / "train"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dali_cutmix.preview", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--data", type=Path, help="ImageFolder root DATA/<class>/<image> (default: a generated set)"
    )
    parser.add_argument("--out", default="preview.png", help="PNG to write")
    parser.add_argument("--cutmix-alpha", type=float, default=1.0)
    parser.add_argument("--mixup-alpha", type=float, default=0.0)
    parser.add_argument("--mix-prob", type=float, default=1.0)
    parser.add_argument("--switch-prob", type=float, default=0.5)
    parser.add_argument("--mix-mode", default="elem", choices=["elem", "pair", "batch"])
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: 0 when the PNG is written.

    A bad value, an unusable folder or an undecodable image ends it with one
    line on stderr and status 2 (:func:`dali_cutmix.cli.exit_on_user_error`).
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = get_args_parser()
    args = parser.parse_args(argv)
    with exit_on_user_error(parser, fields={"prob": "--mix-prob"}):
        images = list_image_folder(args.data or default_data())
        config = MixConfig(
            num_classes=images.num_classes,
            cutmix_alpha=args.cutmix_alpha,
            mixup_alpha=args.mixup_alpha,
            prob=args.mix_prob,
            switch_prob=args.switch_prob,
            mode=args.mix_mode,
        )
        write_preview(images, args.out, config, batch_size=args.batch_size, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
