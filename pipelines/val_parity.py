"""How far the DALI loader's validation images are from torchvision's, pixel by pixel.

    python -m pipelines.val_parity DIR                    # 224 of 256, as ImageNet's evaluation
    python -m pipelines.val_parity DIR --crop-size 64 --resize-size 73 --out runs/parity.json
    python -m pipelines.val_parity DIR --device gpu       # nvJPEG's decoding too

Both sides read ``DIR`` (a folder of class folders, as ``ImageFolder`` reads it)
in the same order: the DALI loader (``make_loader(train=False)``:
resize, centre crop, normalize) and torchvision's reference validation
transforms (``Resize`` + ``CenterCrop`` + ``Normalize`` of the PIL-decoded
image, as torchvision's classification reference evaluates). The
normalization is undone and the differences are reported in levels of 0..255:
the mean absolute difference, the largest per-image mean, the largest single
difference, and the share of values more than one level apart.

On the CPU both decoders are libjpeg-turbo and agree, and the loader takes
torchvision's sizes and crop offsets, so what remains is how the two
antialiased resize filters round. With ``--device gpu`` the loader decodes
with nvJPEG (and the hardware decoder), which adds differences of its own.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from dali_cutmix.cli import (
    USER_ERRORS,
    add_count,
    add_report_flag,
    add_shared_flags,
    check_outside,
    check_report_path,
    command_line,
    command_name,
    dali_memory_named,
    exit_on_user_error,
    interruptible,
    path_arg,
    progress_bar,
    start_command,
    write_json,
)
from dali_cutmix.files import (
    BadImageError,
    DatasetError,
    LabelBeyondClassesError,
    MissingFilesError,
    bad_file_problem,
    file_list_named,
    scan_commands,
)
from dali_cutmix.procs import exit_with

logger = logging.getLogger(__name__)


def compare(
    folder: Path,
    *,
    crop_size: int,
    resize_size: int,
    batch_size: int,
    threads: int,
    limit: int,
    device: str = "cpu",
    file_list: Path | None = None,
) -> dict[str, Any]:
    """The differences, in levels of 0..255, over the first ``limit`` images of ``folder``
    (of ``file_list``'s, relative paths against ``folder``, where given)."""
    import torch

    from dali_cutmix.files import list_image_folder, read_file_list
    from dali_cutmix.scan import load_rgb  # as the torchvision loader reads (16-bit, large)
    from pipelines.imagenet import IMAGENET_MEAN, IMAGENET_STD, make_loader
    from pipelines.torchvision_ref import make_transforms

    loader = make_loader(
        folder,
        file_list=file_list,
        train=False,
        device=device,
        batch_size=batch_size,
        num_threads=threads,
        crop_size=crop_size,
        resize_size=resize_size,
    )
    transform = make_transforms(train=False, crop_size=crop_size, resize_size=resize_size)
    listed = (
        list_image_folder(folder) if file_list is None else read_file_list(file_list, root=folder)
    )
    paths = listed.paths  # the loader's order, without shuffling
    count = min(limit, len(paths))
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    per_image: list[float] = []
    largest, above_one, values = 0.0, 0, 0
    with progress_bar(total=count, unit="img", desc="comparing") as bar:
        for images, _ in loader:
            start = len(per_image)
            take = min(images.shape[0], count - start)
            ours = images[:take].cpu().double() * std + mean
            theirs = torch.stack([transform(load_rgb(p)) for p in paths[start : start + take]])
            levels = (ours - (theirs.double() * std + mean)).abs()
            per_image += levels.mean(dim=(1, 2, 3)).tolist()
            largest = max(largest, levels.max().item())
            above_one += int((levels > 1.001).sum())  # 1.001: float rounding of a level
            values += levels.numel()
            bar.update(take)
            if len(per_image) == count:
                break
    return {
        "images": count,
        "mean_levels": sum(per_image) / count,
        "max_image_mean_levels": max(per_image),
        "max_image_mean_path": paths[per_image.index(max(per_image))],
        "max_levels": largest,
        "share_more_than_one_level": above_one / values,
    }


def _with_list_hint(
    error: BadImageError, args: argparse.Namespace, argv: Sequence[str] | None
) -> str:
    """``error``'s problem, then what this command can do about it: the scan to run and this
    command again with its list, or (a list given) the line to delete."""
    problem = bad_file_problem(error)
    if args.list is not None:
        listed = shlex.quote(str(args.list))
        return f"{problem} It is listed in --list {listed}: delete its line there."
    scan = f"{scan_commands()['scan']} {shlex.quote(str(args.folder))} --out DIR"
    words = list(sys.argv[1:] if argv is None else argv)
    again = f"{command_name(__spec__.name)} {shlex.join(words)} --list DIR/files.txt"
    return (  # the words of bad_file_advice, the other commands'
        f"{problem} Find every bad file with: {scan} (DIR: any writable folder); then run "
        f"again with: {again}"
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog=command_name(__spec__.name),
        description="Per-pixel difference between the DALI loader's validation images and "
        "torchvision's (Resize + CenterCrop), in levels of 0..255.",
    )
    parser.add_argument("folder", type=path_arg, help="a folder of class folders (ImageFolder)")
    add_shared_flags(parser, crop_size=224, batch_size=64, threads=2)
    add_count(parser, "--resize-size", 256, "shorter side before the centre crop, pixels")
    add_count(parser, "--limit", 1000, "compare at most this many images, in ImageFolder order")
    parser.add_argument(
        "--list",
        type=path_arg,
        default=None,
        metavar="FILE",
        help="read these 'path label' lines (a scan's files.txt; relative paths against "
        "FOLDER) instead of listing FOLDER",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "gpu", "auto"),
        default="cpu",
        help="where the DALI loader decodes and resizes; auto: the GPU where torch sees CUDA "
        "(default: %(default)s)",
    )
    add_report_flag(parser, "report")
    parser.epilog = (
        "exit status: 0 measured (the report is printed, and written with --out), 2 bad usage"
        " or a file that is no image (named), 130 Ctrl-C, 143 SIGTERM"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = start_command(parser, argv)
    with exit_on_user_error(parser):
        check_report_path(args.out)
        if args.out is not None:  # a report in a class folder was listed as a sample next time
            check_outside(args.out, "--out", args.folder, "the folder compared")
        if args.resize_size < args.crop_size:
            raise ValueError(
                f"--resize-size ({args.resize_size}) must be >= --crop-size ({args.crop_size})"
            )

    def measure() -> int:
        began = time.perf_counter()
        sizes = "--batch-size or --crop-size and --resize-size"
        with (
            exit_on_user_error(parser, catch=(*USER_ERRORS, MemoryError)),
            dali_memory_named(sizes),
            file_list_named("--list"),
        ):
            try:
                result = compare(
                    args.folder,
                    crop_size=args.crop_size,
                    resize_size=args.resize_size,
                    batch_size=args.batch_size,
                    threads=args.threads,
                    limit=args.limit,
                    device=args.device,
                    file_list=args.list,
                )
            except BadImageError as error:  # the advice this command can follow
                raise BadImageError(_with_list_hint(error, args, argv), path=error.path) from None
            except MissingFilesError as error:  # the root is this command's folder argument
                advice = "give the folder the paths are relative to as the folder argument"
                raise DatasetError(error.advising(advice)) from None
            except LabelBeyondClassesError as error:
                advice = "give the folder the list was written for as the folder argument"
                raise DatasetError(error.advising(advice)) from None
        report = {
            "command": command_line(__spec__.name, argv),
            "folder": str(args.folder),
            "list": None if args.list is None else str(args.list),
            "crop_size": args.crop_size,
            "resize_size": args.resize_size,
            "device": args.device,
            **result,
            "seconds": round(time.perf_counter() - began, 1),
        }
        print(
            f"{report['images']} images at {args.crop_size} of {args.resize_size}: "
            f"mean {report['mean_levels']:.3f} levels of 0..255, largest image mean "
            f"{report['max_image_mean_levels']:.3f} ({report['max_image_mean_path']}), largest "
            f"pixel {report['max_levels']:.2f}, "
            f"{100 * report['share_more_than_one_level']:.4f} % of values more than one level"
        )
        if args.out:
            with exit_on_user_error(parser, catch=(OSError,)):  # a full disk: the file named
                write_json(args.out, report)
        return 0

    return interruptible(parser, "no report was written", measure)


def entry() -> NoReturn:
    """The command: :func:`main`, then the process ends with its status, also on a Ctrl-C or
    SIGTERM during the interpreter's teardown (:func:`dali_cutmix.procs.exit_with`)."""
    exit_with(main())


if __name__ == "__main__":
    entry()
