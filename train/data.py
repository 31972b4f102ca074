"""The dataset folder and the two loaders the training loop can be fed by.

Both loaders have one face (``len``, iteration as ``(images, targets)``,
``state_dict`` / ``load_state_dict``, ``num_classes``, ``dataset_size``):

* ``dali``: ``pipelines.imagenet.make_loader``; decoding, cropping, the
  automatic augmentation, RandomErasing and CutMix/MixUp run inside the DALI
  graph, on the GPU or the CPU.
* ``torchvision``: ``ImageFolder`` with the standard transforms (and
  torchvision's own automatic augmentations and RandomErasing) in DataLoader
  workers and torchvision's ``v2.CutMix`` / ``v2.MixUp`` in the collate
  function (``pipelines.torchvision_ref``, the benchmark's baseline), made
  deterministic and resumable here: the order comes from a seeded
  ``torch.Generator`` per epoch, and every sample and batch runs its random
  transforms under its own seed (``torch.random.fork_rng``), so the stream does
  not depend on the number of workers and restarts mid-epoch exactly.

Both read the same files with the same labels: the split's folder listed as
``ImageFolder`` lists it, or ``--train-list`` / ``--val-list``. A file that does
not decode raises :class:`dali_cutmix.files.BadImageError` naming it, from
either loader.

Targets are soft float32 ``[B, num_classes]`` with label smoothing already
applied when mixing is on, int64 ``[B]`` otherwise; see :func:`build_criterion`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import default_loader

from dali_cutmix.config import AugmentConfig
from dali_cutmix.files import (
    SCAN_HINT,
    BadImageError,
    DatasetError,
    ImageList,
    list_image_folder,
    read_file_list,
)
from dali_cutmix.procs import process_context
from dali_cutmix.synthetic import generate

from . import pipelines_module
from .config import Device, LoaderKind, TrainConfig
from .status import DataFailure
from .utils import DistInfo, barrier

__all__ = [
    "Loader",
    "ResumableTorchvisionLoader",
    "build_criterion",
    "bad_file_problem",
    "build_loaders",
    "build_val_loader",
    "continue_at",
    "data_failure",
    "prepare_dataset",
    "restore_loader",
]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1


class Loader(Protocol):
    """What the training loop needs from a loader (DALI's or torchvision's)."""

    num_classes: int
    dataset_size: int

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def prepare_dataset(config: TrainConfig, info: DistInfo) -> Path:
    """The folder to read; generates the embedded dataset on first use (rank 0 only)."""
    root = config.data.dataset_dir
    if config.data.root is None:
        if info.is_main:
            generate(root, config.data.embedded, workers=config.data.workers)
        barrier(info)
    return root


def build_criterion(config: TrainConfig) -> nn.Module:
    """Cross-entropy; it smooths labels only where the loader has not (no mixing)."""
    smoothing = 0.0 if config.mix.enabled else config.mix.label_smoothing
    return nn.CrossEntropyLoss(label_smoothing=smoothing)


# ----------------------------------------------------------------------------- torchvision


def _mix_seed(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part) % (2**63 - 1)
    return value


class _ImageFiles(Dataset):
    """The files of an :class:`ImageList`, read and transformed as ``ImageFolder`` does."""

    def __init__(self, images: ImageList, transform: Callable[[Any], Any]) -> None:
        self.samples = list(zip(images.paths, images.labels))
        self.classes = list(images.classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        return self.transform(default_loader(path)), label


def _unreadable(path: str) -> str | None:
    """Why ``ImageFolder``'s loader cannot read ``path``, or ``None`` when it can."""
    try:
        default_loader(path)
    except Exception as error:  # PIL raises many types for bad files
        return f"{type(error).__name__}: {error}".splitlines()[0]
    return None


class _SeededSamples(Dataset):
    """``dataset[index]`` run under its own seed; items are ``(index, seed)`` keys."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, Any, int]:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image, label = self.dataset[index]
        return image, label, seed


@dataclasses.dataclass(frozen=True)
class _SeededCollate:
    """Runs ``collate`` (e.g. torchvision's CutMix) under a seed from the batch's first key."""

    collate: Callable[[list[tuple[Any, Any]]], Any] | None

    def __call__(self, batch: list[tuple[Any, Any, int]]) -> Any:
        pairs = [(image, label) for image, label, _ in batch]
        if self.collate is None:
            return torch.utils.data.default_collate(pairs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix_seed(batch[0][2], 1))
            return self.collate(pairs)


class ResumableTorchvisionLoader:
    """ImageFolder + DataLoader whose stream is a pure function of (seed, epoch, position).

    Training shuffles with ``torch.Generator`` seeded by ``(seed, epoch)``,
    gives rank ``r`` every ``world``-th index of an equal share and drops the
    last partial batch; validation reads its shard in order, every image once
    over all ranks. Each ``iter()`` is one epoch, continuing where
    :meth:`load_state_dict` left it.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        collate: Callable | None,
        classes: list[str],
        batch_size: int,
        train: bool,
        workers: int,
        seed: int,
        shard_id: int,
        num_shards: int,
    ) -> None:
        self.samples = _SeededSamples(dataset)
        self.collate = _SeededCollate(collate)
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.batch_size = batch_size
        self.train, self.workers, self.seed = train, workers, seed
        self.shard_id, self.num_shards = shard_id, num_shards
        total = len(dataset)
        self.dataset_size = (
            total // num_shards if train else len(range(shard_id, total, num_shards))
        )
        self._length = (
            self.dataset_size // batch_size if train else -(-self.dataset_size // batch_size)
        )
        if self._length == 0:
            raise DatasetError(
                f"{total} images give no batch of {batch_size} per rank: lower --batch-size"
            )
        self.device = torch.device("cpu")
        self._epoch = 0  # the epoch being (or about to be) read
        self._done = 0  # batches yielded in it

    def __len__(self) -> int:
        return self._length

    def _batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        total = len(self.samples)
        if self.train:
            generator = torch.Generator().manual_seed(_mix_seed(self.seed, epoch))
            order = torch.randperm(total, generator=generator).tolist()
            mine = order[: self.dataset_size * self.num_shards][self.shard_id :: self.num_shards]
        else:
            mine = list(range(self.shard_id, total, self.num_shards))
        keys = [
            (index, _mix_seed(self.seed, epoch, self.shard_id, pos))
            for pos, index in enumerate(mine)
        ]
        return [keys[i : i + self.batch_size] for i in range(0, len(keys), self.batch_size)][
            : self._length
        ]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._done >= self._length:
            self._epoch, self._done = self._epoch + 1, 0
        batches = self._batches(self._epoch)[self._done :]
        loader = DataLoader(
            self.samples,
            batch_sampler=batches,
            num_workers=self.workers,
            multiprocessing_context=process_context() if self.workers > 0 else None,
            collate_fn=self.collate,
            pin_memory=torch.cuda.is_available(),
        )
        first = self._done
        try:
            for images, targets in loader:
                self._done += 1
                yield images, targets
        except Exception as error:
            bad = self._bad_file(batches[self._done - first])
            if bad is None:
                raise
            raise bad from error
        self._epoch, self._done = self._epoch + 1, 0

    def _bad_file(self, keys: list[tuple[int, int]]) -> BadImageError | None:
        """The error naming the first file of a failed batch that does not read, if one does not.

        A worker process's exception reaches this process as another type, so the
        batch's files are checked here rather than the error's type.
        """
        samples = getattr(self.samples.dataset, "samples", None)  # (path, label) pairs
        if samples is None:
            return None
        for index, _ in keys:
            path = samples[index][0]
            reason = _unreadable(path)
            if reason is not None:
                return BadImageError(f"{path!r} is not a decodable image ({reason}).", path=path)
        return None

    def seek(self, epoch: int, step: int) -> None:
        """The next ``iter()`` yields epoch ``epoch`` from its batch ``step`` (0-based)."""
        self._epoch, self._done = epoch, step

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "epoch": self._epoch,
            "batches_done": self._done,
            "num_batches": self._length,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported loader state version {state.get('version')!r}")
        if (state["num_batches"], state["batch_size"]) != (self._length, self.batch_size):
            raise ValueError("the loader state comes from a run with another batch size or data")
        self._epoch, self._done = int(state["epoch"]), int(state["batches_done"])


def _images(folder: Path, file_list: Path | None) -> ImageList:
    if file_list is None:
        return list_image_folder(folder)
    return read_file_list(file_list, root=folder)


def _augment(config: TrainConfig, train: bool) -> AugmentConfig | None:
    """The training images' augmentation; ``None`` (today's graph) when there is none."""
    return config.augment if (train and config.augment.enabled) else None


def _torchvision_loader(
    folder: Path, file_list: Path | None, *, train: bool, config: TrainConfig, info: DistInfo
) -> ResumableTorchvisionLoader:
    reference = pipelines_module("torchvision_ref")

    data = config.data
    images = _images(folder, file_list)  # DatasetError naming the path, as DALI's loader
    # The reference supplies the transforms and the CutMix/MixUp collate function; the
    # files (the folder's or the list's), the order and the seeding are ours.
    transform = reference.make_transforms(
        train=train,
        crop_size=data.train_crop_size if train else data.val_crop_size,
        resize_size=data.val_resize_size,
        augment=_augment(config, train),
        interpolation=data.interpolation,
    )
    mixing = train and config.mix.enabled
    return ResumableTorchvisionLoader(
        _ImageFiles(images, transform),
        collate=reference.MixCollate(config.mix) if mixing else None,
        classes=list(images.classes),
        batch_size=data.batch_size,
        train=train,
        workers=data.workers,
        seed=config.seed,
        shard_id=info.rank,
        num_shards=info.world_size,
    )


# ----------------------------------------------------------------------------- DALI


def _dali_loader(
    folder: Path, file_list: Path | None, *, train: bool, config: TrainConfig, info: DistInfo
) -> Loader:
    data = config.data
    return pipelines_module("imagenet").make_loader(
        folder,
        file_list=file_list,
        train=train,
        batch_size=data.batch_size,
        device="gpu" if config.device is Device.GPU else "cpu",
        mix=config.mix if (train and config.mix.enabled) else None,
        crop_size=data.train_crop_size if train else data.val_crop_size,
        resize_size=data.val_resize_size,
        augment=_augment(config, train),
        interpolation=data.interpolation,
        num_threads=data.workers,
        seed=config.seed,
        shard_id=info.rank,
        num_shards=info.world_size,
        output_layout="NHWC" if config.channels_last else "NCHW",
    )


def bad_file_problem(error: DatasetError) -> str:
    """The part of a loader's error that says what is wrong (the library's advice cut off)."""
    message = " ".join(str(error).split())
    cut = message.find(SCAN_HINT.split("{root}")[0].strip())
    return message[:cut].strip() if cut > 0 else message


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
    )


def _build_loader(split: str, config: TrainConfig, root: Path, info: DistInfo) -> Loader:
    build = _dali_loader if config.data.loader is LoaderKind.DALI else _torchvision_loader
    file_list = config.data.train_list if split == "train" else config.data.val_list
    try:
        return build(root / split, file_list, train=split == "train", config=config, info=info)
    except BadImageError as error:
        failure = data_failure(error, split, config=config, root=root, info=info, checkpoint=None)
        raise failure from error


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
    """Loads a saved loader state: the next ``iter()`` continues the saved epoch.

    A DALI loader's state saved at the end of an epoch yields that epoch's
    empty remainder first; it is consumed here, so that the next ``iter()``
    is the next epoch, as with the torchvision loader.

    Raises:
        ValueError: the state does not fit this loader (other files, batch size, shards).
    """
    loader.load_state_dict(state)
    at_end = state["batches_done"] >= state["num_batches"]
    if at_end and not isinstance(loader, ResumableTorchvisionLoader):
        for _ in loader:
            pass


def continue_at(loader: Loader, *, epoch: int, step: int) -> Iterable[Any]:
    """Epoch ``epoch`` from its batch ``step`` on, for a loader whose saved state cannot be used.

    The torchvision loader's stream is a function of (seed, epoch, position): it
    seeks there, exactly. A DALI loader starts a fresh stream (its reader's
    first shuffle of the current files) and drops its first ``step`` batches,
    so that the epoch still has ``len(loader)`` steps in all.
    """
    if isinstance(loader, ResumableTorchvisionLoader):
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
