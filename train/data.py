"""The dataset folder and the two loaders the training loop can be fed by.

Both loaders have one face (``len``, iteration as ``(images, targets)``,
``state_dict`` / ``load_state_dict``, ``num_classes``, ``dataset_size``):

* ``dali``: ``pipelines.imagenet.make_loader``; decoding, cropping, the
  automatic augmentation, RandomErasing and CutMix/MixUp run inside the DALI
  graph, on the GPU or the CPU.
* ``torchvision``: ``ImageFolder`` with the standard transforms (and
  torchvision's own automatic augmentations and RandomErasing) in DataLoader
  workers and torchvision's ``v2.CutMix`` / ``v2.MixUp`` in the collate
  function: ``pipelines.torchvision_ref.make_torchvision_loader``, the
  benchmark's baseline, deterministic and resumable (its stream does not depend
  on the number of workers and restarts mid-epoch exactly).

Both read the same files with the same labels: the split's folder listed as
``ImageFolder`` lists it, or ``--train-list`` / ``--val-list``. A file that does
not decode raises :class:`dali_cutmix.files.BadImageError` naming it, from
either loader.

Targets are soft float32 ``[B, num_classes]`` with label smoothing already
applied when mixing is on, int64 ``[B]`` otherwise; see :func:`build_criterion`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from dali_cutmix.files import (
    LOWER_BATCH_SIZE,
    BadImageError,
    DatasetError,
    ImageList,
    LabelBeyondClassesError,
    MissingFilesError,
    bad_file_problem,
    file_list_named,
    list_images,
    what_is_wrong,
)
from dali_cutmix.scan import first_unreadable, header_problem, out_of_memory
from dali_cutmix.synthetic import generate

from . import pipelines_module
from .config import Device, LoaderKind, TrainConfig
from .engine import settle
from .status import DataFailure
from .utils import DistInfo

__all__ = [
    "Loader",
    "build_criterion",
    "build_loaders",
    "build_val_loader",
    "check_val_headers",
    "continue_at",
    "data_failure",
    "prepare_dataset",
    "restore_loader",
    "seekable",
]

logger = logging.getLogger(__name__)


class Loader(Protocol):
    """What the training loop needs from a loader (DALI's or torchvision's)."""

    num_classes: int
    dataset_size: int

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# The embedded set's disk is too small: train's words (the generator's named its own flags,
# --classes, --size-scale, ..., which train does not have).
CACHE_NO_ROOM = "free space there, or give --cache-dir a folder on a disk with more room"


def prepare_dataset(config: TrainConfig, info: DistInfo) -> Path:
    """The folder to read; generates the embedded dataset on first use (rank 0 only)."""
    root = config.data.dataset_dir
    if config.data.root is None:
        failure = None
        if info.is_main:
            try:
                generate(
                    root, config.data.embedded, workers=config.data.workers, no_room=CACHE_NO_ROOM
                )
            except ValueError as error:  # changed since written, someone's folder, no room
                failure = DatasetError(str(error))  # it was a traceback, on every rank
        settle(failure, info)  # the others wait here, and leave where rank 0 failed
    return root


def build_criterion(config: TrainConfig) -> nn.Module:
    """Cross-entropy; it smooths labels only where the loader has not (no mixing)."""
    smoothing = 0.0 if config.mix.enabled else config.mix.label_smoothing
    return nn.CrossEntropyLoss(label_smoothing=smoothing)


# ----------------------------------------------------------------------------- the loaders


def _loader_settings(
    file_list: Path | None, *, train: bool, config: TrainConfig, info: DistInfo
) -> dict[str, Any]:
    """What both loaders take alike: this rank's run settings and the images' recipe.

    The recipe is the fields of ``pipelines.imagenet.ImageNetOptions`` that both
    loaders honour; the DALI loader adds its output layout.
    """
    data = config.data
    return {
        "file_list": file_list,
        "batch_size": data.batch_size,
        "seed": config.seed,
        "shard_id": info.rank,
        "num_shards": info.world_size,
        "train": train,
        "crop_size": data.train_crop_size if train else data.val_crop_size,
        "resize_size": data.val_resize_size,
        "mix": config.mix if (train and config.mix.enabled) else None,
        "augment": config.augment if (train and config.augment.enabled) else None,
        "interpolation": data.interpolation,
    }


def _torchvision_loader(folder: Path, config: TrainConfig, settings: dict[str, Any]) -> Loader:
    reference = pipelines_module("torchvision_ref")
    return reference.make_torchvision_loader(folder, workers=config.data.workers, **settings)


def _dali_loader(folder: Path, config: TrainConfig, settings: dict[str, Any]) -> Loader:
    return pipelines_module("imagenet").make_loader(
        folder,
        device="gpu" if config.device is Device.GPU else "cpu",
        num_threads=config.data.workers,
        output_layout="NHWC" if config.channels_last else "NCHW",
        **settings,
    )


def seekable(loader: Loader) -> bool:
    """True for the torchvision loader, whose stream is a function of (seed, epoch, position)."""
    return isinstance(loader, pipelines_module("torchvision_ref").TorchvisionLoader)


def data_failure(
    error: DatasetError,
    split: str,
    *,
    config: TrainConfig,
    root: Path,
    info: DistInfo,
    checkpoint: Path | None,
) -> DataFailure:
    """A :class:`train.status.DataFailure` for a file of ``root/split`` that did not decode.

    Args:
        checkpoint: the checkpoint this run wrote at its last step, or ``None``
            when it failed before training (the message then repeats the command).

    The scan's output goes to ``RUN/scan-<split>``.
    """
    return DataFailure(
        bad_file_problem(error),
        split=split,
        folder=root / split,
        scan_dir=config.output_dir / f"scan-{split}",
        checkpoint=checkpoint,
        world_size=info.world_size,
        file_list=config.data.train_list if split == "train" else config.data.val_list,
    )


# The flag that gives each split's file list.
_LIST_FLAGS = {"train": "--train-list", "val": "--val-list"}


def _build_loader(split: str, config: TrainConfig, root: Path, info: DistInfo) -> Loader:
    """The loader of ``root/split``; its errors in the words of ``python -m train`` (a file
    list named by its flag: "file list '/x.txt' lists no files" named none)."""
    with file_list_named(_LIST_FLAGS[split]):
        return _split_loader(split, config, root, info)


def _split_loader(split: str, config: TrainConfig, root: Path, info: DistInfo) -> Loader:
    build = _dali_loader if config.data.loader is LoaderKind.DALI else _torchvision_loader
    file_list = config.data.train_list if split == "train" else config.data.val_list
    settings = _loader_settings(file_list, train=split == "train", config=config, info=info)
    try:
        return build(root / split, config, settings)
    except MissingFilesError as error:  # the root is --data's split folder, not a flag of its own
        advice = f"give as --data the folder whose {split}/ the paths are relative to"
        raise DatasetError(error.advising(advice, f"give it as {_LIST_FLAGS[split]}")) from None
    except LabelBeyondClassesError as error:
        flag = _LIST_FLAGS[split]
        advice = f"give as --data the dataset the {flag} was written for"
        raise DatasetError(error.advising(advice)) from None
    except BadImageError as error:
        failure = data_failure(error, split, config=config, root=root, info=info, checkpoint=None)
        raise failure from error
    except DatasetError as error:  # -b 100000: "... give no batch of 100000 per shard: ..."
        message = str(error)
        if not message.endswith(LOWER_BATCH_SIZE):
            raise
        raise DatasetError(
            message.removesuffix(LOWER_BATCH_SIZE) + "lower -b/--batch-size"
        ) from None
    except RuntimeError as error:  # DALI's, as it reads its first batches
        if not out_of_memory(error):
            raise
        # --crop-size 100000 was a traceback ending in "std::bad_alloc"
        data = config.data
        side = data.train_crop_size if split == "train" else data.val_resize_size
        # the flags that set that side (--val-resize-size 100000 was told to lower --crop-size)
        sizes = (
            "--crop-size/--train-crop-size"
            if split == "train"
            else "the validation sizes (--val-resize-size, --val-crop-size, --crop-size)"
        )
        raise DatasetError(
            f"the {split} loader ran out of memory as it read its first batches (batches of "
            f"{data.batch_size} images of {side} x {side} pixels and more, a rank): lower "
            f"-b/--batch-size or {sizes}"
        ) from None


def _split_images(split: str, config: TrainConfig, root: Path) -> ImageList | None:
    """The files of ``root/split`` as both loaders list them (the folder, or the split's
    list), without the listing's log lines, which the loader's listing gives; ``None``
    where they cannot be listed: the loader says why, and what to do, as it is built."""
    file_list = config.data.train_list if split == "train" else config.data.val_list
    files_log = logging.getLogger("dali_cutmix.files")
    level = files_log.level
    files_log.setLevel(logging.ERROR)
    try:
        return list_images(root / split, file_list)
    except DatasetError:
        return None
    finally:
        files_log.setLevel(level)


def check_val_headers(config: TrainConfig, root: Path, info: DistInfo) -> None:
    """Reads the header of this rank's share of the validation files (every ``world_size``-th
    one from its rank on: the ranks together read each once) before training starts.

    A file that is no image (empty, text, HTML, a format DALI does not decode) would
    otherwise stop the run at the first validation, an epoch of training later.
    Truncated files pass (their headers read); the loader names one when it meets it.
    Threads read them (:func:`dali_cutmix.scan.first_unreadable`, which gives the rate
    measured), with a progress bar from 10,000 files on.

    Raises:
        DataFailure: a file's header does not read: the line names it, the scan and the
            command to run with its clean list.
    """
    images = _split_images("val", config, root)
    if images is None:
        return
    dali = config.data.loader is LoaderKind.DALI  # PIL reads more for the torchvision loader
    bad = first_unreadable(
        images.paths[info.rank :: info.world_size],
        desc="reading the validation files' headers",
        dali=dali,
    )
    if bad is None:
        return
    detail = header_problem(bad, dali=dali)  # "" if it reads now (copied?), or is empty
    detail = f": {detail}" if detail else ""
    error = BadImageError(
        f"{bad!r} {what_is_wrong(bad)} (its header, read before training{detail}).", path=bad
    )
    raise data_failure(error, "val", config=config, root=root, info=info, checkpoint=None)


def build_val_loader(config: TrainConfig, root: Path, info: DistInfo) -> Loader:
    """The validation loader of :func:`build_loaders` alone (``--test-only``)."""
    return _build_loader("val", config, root, info)


def build_loaders(config: TrainConfig, root: Path, info: DistInfo) -> tuple[Loader, Loader]:
    """(train, val) loaders over ``root/train`` and ``root/val`` (or the file lists) for this rank.

    Images are NHWC ``[B, H, W, 3]`` from the DALI loader when
    ``config.channels_last`` (a zero-copy channels-last NCHW view after
    ``permute(0, 3, 1, 2)``), NCHW ``[B, 3, H, W]`` otherwise; float32.

    Raises:
        DatasetError: a folder or list cannot be read, or holds no full batch.
        DataFailure: a file does not decode (DALI decodes its first batches here).
    """
    train, val = _build_loader("train", config, root, info), build_val_loader(config, root, info)
    if len(train) == 0:
        raise DatasetError(
            f"{root / 'train'}: {train.dataset_size} images give no batch of "
            f"{config.data.batch_size} per rank: lower --batch-size"
        )
    if train.num_classes != config.data.num_classes:
        raise DatasetError(
            f"the loader found {train.num_classes} classes, the config {config.data.num_classes}"
        )
    return train, val


def restore_loader(loader: Loader, state: dict[str, Any]) -> None:
    """Loads a saved loader state: the next ``iter()`` continues the saved epoch (or starts
    the next one, for a state saved at an epoch's end), with either loader.

    Raises:
        BadImageError: a file at the saved position does not decode (the DALI loader
            reads its first batches while it restores).
        ValueError: the state does not fit this loader (other files, batch size, shards).
    """
    loader.load_state_dict(state)


def continue_at(loader: Loader, *, epoch: int, step: int) -> Iterable[Any]:
    """Epoch ``epoch`` from its batch ``step`` on, for a loader whose saved state cannot be used.

    The torchvision loader's stream is a function of (seed, epoch, position): it
    seeks there, exactly. A DALI loader starts a fresh stream (its reader's
    first shuffle of the current files) and drops its first ``step`` batches,
    so that the epoch still has ``len(loader)`` steps in all.
    """
    if seekable(loader):
        loader.seek(epoch, step)
        return loader
    return _dropping(loader, step)


def _dropping(loader: Loader, count: int) -> Iterator[Any]:
    batches = iter(loader)
    for _ in range(count):
        next(batches)
    yield from batches


def images_are_nhwc(config: TrainConfig) -> bool:
    """True when the loader yields ``[B, H, W, 3]`` batches."""
    return config.data.loader is LoaderKind.DALI and config.channels_last
