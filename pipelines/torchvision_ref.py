"""The baseline users compare with: torchvision's ImageFolder + DataLoader.

Standard ImageNet training transforms (RandomResizedCrop, horizontal flip,
normalize; optionally TrivialAugmentWide, RandAugment or AutoAugment and
RandomErasing, as :class:`AugmentConfig` says, in torchvision's reference
order) in the worker processes, and torchvision's own ``v2.CutMix`` /
``v2.MixUp`` in the collate function, driven by the same :class:`MixConfig`
as the DALI pipeline. Used by ``python -m train --loader torchvision`` and by
the benchmark, so both compare against one baseline.

The loader is deterministic and resumable: the order comes from a seeded
``torch.Generator`` per epoch (:func:`shard_indices`, one sharding rule for
training and validation), and every sample and batch runs its random
transforms under its own seed (``torch.random.fork_rng``), so the stream does
not depend on the number of workers and restarts mid-epoch exactly.

Differences from the DALI pipeline that a comparison should keep in mind:
torchvision draws one lambda and box per batch and pairs each sample with its
neighbour (the batch rolled by one), whatever ``mode`` says; ``cutmix_minmax``
and ``correct_lam=False`` have no torchvision equivalent and are rejected, as
are the augmentation settings torchvision's transforms cannot honour (see
:func:`make_transforms`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms import v2

from dali_cutmix.config import (
    MAX_SIDE,
    TORCHVISION_TRANSLATE,
    AugmentConfig,
    AutoAugment,
    EraseMode,
    Interpolation,
    MixConfig,
    MixMode,
    _check_instance,
    _check_int,
    _enum,
    check_seed,
    check_warp_interpolation,
    resolve_shard,
)
from dali_cutmix.files import (
    LOWER_BATCH_SIZE,
    BadImageError,
    DatasetError,
    ImageList,
    counted,
    list_images,
    what_is_wrong,
)
from dali_cutmix.procs import process_context, signals_deferred
from dali_cutmix.scan import load_rgb

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MixCollate",
    "TorchvisionLoader",
    "make_torchvision_loader",
    "make_transforms",
    "shard_indices",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What a state must hold (a state's "seed" may be missing: saved before it was kept).
_STATE_KEYS = ("epoch", "batches_done", "num_batches", "batch_size")
_STATE_VERSION = 1

logger = logging.getLogger(__name__)


class MixCollate:
    """Collate function applying torchvision's CutMix / MixUp with ``config``'s meaning.

    Returns ``(images, targets)``: float32 ``[B, 3, H, W]`` and float32 soft
    targets ``[B, num_classes]`` (label smoothing as timm applies it).
    """

    def __init__(self, config: MixConfig) -> None:
        self.config = config
        self.transform = None  # a disabled configuration only smooths the one-hot targets
        if config.enabled:
            self.transform = self._methods(config)

    @staticmethod
    def _methods(config: MixConfig) -> v2.Transform:
        # what torchvision's CutMix and MixUp would silently do otherwise: they draw once per
        # batch (prob is per batch) and know neither box limits nor lambda's correction
        if config.mode is not MixMode.BATCH:
            raise ValueError(
                f"the torchvision loader mixes per batch (torchvision.transforms.v2.CutMix / "
                f"MixUp): give mix.mode 'batch', got {config.mode.value!r} (the DALI loader "
                f"mixes per sample or pair)"
            )
        if config.cutmix_minmax is not None or not config.correct_lam:
            raise ValueError(
                "the torchvision loader supports neither cutmix_minmax nor correct_lam=False"
            )
        methods, weights = [], []
        if config.cutmix_enabled:
            methods.append(v2.CutMix(alpha=config.cutmix_alpha, num_classes=config.num_classes))
            weights.append(config.cutmix_share)
        if config.mixup_enabled:
            methods.append(v2.MixUp(alpha=config.mixup_alpha, num_classes=config.num_classes))
            weights.append(1.0 - config.cutmix_share)
        return methods[0] if len(methods) == 1 else v2.RandomChoice(methods, p=weights)

    def __call__(self, batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = default_collate(batch)
        if self.transform is not None and torch.rand(()) < self.config.prob:
            images, targets = self.transform(images, labels)
        else:
            targets = torch.nn.functional.one_hot(labels, self.config.num_classes).float()
        smoothing = self.config.label_smoothing
        if smoothing > 0:
            targets = targets * (1.0 - smoothing) + smoothing / self.config.num_classes
        return images, targets


def _interpolation(value: Interpolation | str) -> v2.InterpolationMode:
    """torchvision's ``InterpolationMode`` for ``value``: the one form every torchvision takes
    (0.26 refuses the plain string that 0.29 accepts)."""
    return v2.InterpolationMode(_enum(Interpolation, "interpolation", value).value)


def _refuse_what_torchvision_cannot_honour(
    augment: AugmentConfig, interpolation: v2.InterpolationMode
) -> None:
    """Raises ValueError for settings torchvision's transforms would change or fail on."""
    if augment.auto_augment is not None:
        check_warp_interpolation(interpolation.value)
    where = "torchvision's transforms cannot honour"
    advice = "use --loader dali, which can"
    if augment.erasing and augment.erase_mode is EraseMode.RAND:
        raise ValueError(
            f"erase_mode 'rand' (one normal value per channel): {where} it; "
            f"use 'const' or 'pixel', or {advice}"
        )
    if augment.auto_augment is AutoAugment.RA and not augment.ra_increasing:
        raise ValueError(
            f"ra_increasing=False (timm's original RandAugment ops, inc0): {where} it, its "
            f"RandAugment has increasing ops only; {advice}"
        )
    fixed_translate = augment.auto_augment in (AutoAugment.RA, AutoAugment.IMAGENET)
    if fixed_translate and not math.isclose(augment.max_translate_rel, TORCHVISION_TRANSLATE):
        raise ValueError(
            f"max_translate_rel={augment.max_translate_rel:g} (timm's shifts, which --aa sets): "
            f"{where} it, its RandAugment and "
            f"AutoAugment shift by up to 150/331 of the side; {advice}"
        )


def _auto_augment(
    augment: AugmentConfig, interpolation: v2.InterpolationMode
) -> list[v2.Transform]:
    fill, policy = augment.fill_value, augment.auto_augment
    if policy is AutoAugment.TA_WIDE:
        return [v2.TrivialAugmentWide(interpolation=interpolation, fill=fill)]
    if policy is AutoAugment.RA:
        return [
            v2.RandAugment(
                num_ops=augment.ra_num_ops,
                magnitude=augment.ra_magnitude,
                num_magnitude_bins=augment.num_magnitude_bins,
                interpolation=interpolation,
                fill=fill,
            )
        ]
    if policy is AutoAugment.IMAGENET:
        return [
            v2.AutoAugment(
                v2.AutoAugmentPolicy.IMAGENET,
                interpolation=interpolation,
                fill=fill,
            )
        ]
    return []


def _random_erasing(augment: AugmentConfig) -> list[v2.Transform]:
    if not augment.erasing:
        return []
    # timm's "pixel" mode is torchvision's value="random": a standard normal per pixel and channel.
    value = "random" if augment.erase_mode is EraseMode.PIXEL else 0
    erasing = v2.RandomErasing(
        p=augment.random_erase, scale=augment.erase_scale, ratio=augment.erase_ratio, value=value
    )
    return [erasing]


_TRANSFORM_OPTIONS = frozenset({"crop_size", "resize_size", "augment", "interpolation"})


def make_transforms(
    *,
    train: bool,
    crop_size: int = 224,
    resize_size: int = 256,
    augment: AugmentConfig | None = None,
    interpolation: Interpolation | str = Interpolation.BILINEAR,
) -> v2.Compose:
    """Per-image transforms in the order of torchvision's classification reference (presets.py).

    Training: RandomResizedCrop(``crop_size``), horizontal flip, ``augment``'s
    automatic augmentation (on uint8 pixels), to float, normalize with the
    ImageNet mean and std, then ``augment``'s RandomErasing (on normalized
    pixels, fill 0 or timm's per-pixel normal noise). Validation: Resize the
    shorter side to ``resize_size``, CenterCrop(``crop_size``). ``interpolation``
    applies to the resizes and to the automatic augmentations' warps. With
    ``augment`` ``None`` or disabled, the training transforms are the plain
    crop, flip and normalize. In: a PIL image (or uint8 ``[3, H, W]``
    tensor); out: float32 ``[3, crop_size, crop_size]``.

    Raises:
        ValueError: ``crop_size`` or ``resize_size`` not an int from 1 to
            :data:`dali_cutmix.config.MAX_SIDE`, or for validation a ``resize_size``
            below ``crop_size``; an unknown ``interpolation``; an
            enabled ``augment`` for validation; bicubic with an automatic
            augmentation (torchvision warps tensors with nearest or bilinear only);
            an ``augment`` setting that torchvision's transforms cannot honour and
            the DALI loader can (``erase_mode="rand"``, ``ra_increasing=False``, a
            ``max_translate_rel`` other than 150/331 for RandAugment and AutoAugment).
    """
    crop_size = _check_int("crop_size", crop_size, 1, MAX_SIDE)  # 0, -1 and 2.5 were taken
    resize_size = _check_int("resize_size", resize_size, 1, MAX_SIDE)
    mode = _interpolation(interpolation)
    if not train and resize_size < crop_size:  # CenterCrop padded the image: make_loader's
        raise ValueError(f"resize_size ({resize_size}) must be >= crop_size ({crop_size})")
    if not train:
        head = [
            v2.Resize(resize_size, interpolation=mode, antialias=True),
            v2.CenterCrop(crop_size),
        ]
        if augment is not None and augment.enabled:
            raise ValueError("augment applies to training only; pass augment=None for validation")
        augment = AugmentConfig()
    else:
        head = [
            v2.RandomResizedCrop(crop_size, interpolation=mode, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
        augment = augment if augment is not None else AugmentConfig()
        _refuse_what_torchvision_cannot_honour(augment, mode)
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(
        [v2.ToImage(), *head, *_auto_augment(augment, mode), *tail, *_random_erasing(augment)]
    )


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
        return self.transform(load_rgb(path)), label


def _unreadable(path: str) -> str | None:
    """Why ``ImageFolder``'s loader cannot read ``path`` (``"PIL: cannot identify image
    file"``), or ``None`` when it can."""
    try:
        load_rgb(path)
    except Exception as error:  # PIL raises many types for bad files
        # PIL names the file as "<_io.BufferedReader name='...'>": the message names it
        said = _OPEN_FILE.sub("", str(error)).strip().split("\n")[0].rstrip(":")
        return f"PIL: {said or type(error).__name__}"
    return None


_OPEN_FILE = re.compile(r"\s*<_io\.\w+ name=(?:'[^']*'|\"[^\"]*\"|\S*)>")


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
            return default_collate(pairs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix_seed(batch[0][2], 1))
            return self.collate(pairs)


class _PendingBatches:
    """The DataLoader's batch sampler: the batches of keys still to read, set before each epoch.

    One DataLoader, and with it one set of worker processes, serves every epoch;
    the batches are read from here in this process when each epoch starts.
    """

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def shard_indices(
    total: int, *, train: bool, seed: int, epoch: int, shard_id: int, num_shards: int
) -> list[int]:
    """The dataset indices shard ``shard_id`` of ``num_shards`` reads in epoch ``epoch``, in order.

    Training: the epoch's order is ``torch.randperm(total)`` from a generator
    seeded by ``(seed, epoch)``, the same on every shard; it is cut to a
    multiple of ``num_shards`` and shard ``r`` takes every ``num_shards``-th
    index from ``r``, so the shards partition it, equally. Validation: shard
    ``r`` takes ``range(r, total, num_shards)``, every image exactly once over
    all shards.

    Example:
        >>> shard_indices(5, train=False, seed=0, epoch=0, shard_id=1, num_shards=2)
        [1, 3]
    """
    if not train:
        return list(range(shard_id, total, num_shards))
    generator = torch.Generator().manual_seed(_mix_seed(seed, epoch))
    order = torch.randperm(total, generator=generator).tolist()
    return order[: total - total % num_shards][shard_id::num_shards]


class TorchvisionLoader:
    """A DataLoader whose stream is a pure function of (seed, epoch, position).

    The face of :class:`dali_cutmix.loader.DaliLoader`: iterating yields
    ``(images, targets)`` CPU tensors (pinned when CUDA is there), each
    ``iter()`` one epoch, continuing where :meth:`load_state_dict` or
    :meth:`seek` left it. The order is :func:`shard_indices`'; training drops
    the last partial batch. Every sample runs ``dataset``'s random transforms
    under its own seed and every batch runs ``collate`` under its own
    (``torch.random.fork_rng``), so the stream depends neither on the number of
    workers nor on where it was stopped and restarted. The worker processes live
    across epochs.
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
        self.dataset = dataset
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.batch_size = batch_size
        self.train, self.seed = train, seed
        self.shard_id, self.num_shards = shard_id, num_shards
        self.dataset_size = len(self._indices(0))  # images this rank reads per epoch
        whole, partial = divmod(self.dataset_size, batch_size)
        self._length = whole if train else whole + (partial > 0)
        if self._length == 0:  # a rank of no image: no batch size helps
            fix = LOWER_BATCH_SIZE if self.dataset_size else "use fewer ranks than images"
            raise DatasetError(
                f"{len(dataset)} images over {num_shards} rank(s) give no batch of {batch_size} "
                f"per rank: {fix}"
            )
        self.device = torch.device("cpu")
        self._pending = _PendingBatches()
        self.loader = DataLoader(
            _SeededSamples(dataset),
            batch_sampler=self._pending,
            num_workers=workers,
            multiprocessing_context=process_context() if workers > 0 else None,
            collate_fn=_SeededCollate(collate),
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )
        self._epoch = 0  # the epoch being (or about to be) read
        self._done = 0  # batches yielded in it
        self._resuming = False  # seek or load_state_dict: the next iter() continues there

    def __len__(self) -> int:
        return self._length

    def _indices(self, epoch: int) -> list[int]:
        return shard_indices(
            len(self.dataset),
            train=self.train,
            seed=self.seed,
            epoch=epoch,
            shard_id=self.shard_id,
            num_shards=self.num_shards,
        )

    def _batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """The epoch's batches of ``(index, seed)`` keys."""
        keys = [
            (index, _mix_seed(self.seed, epoch, self.shard_id, pos))
            for pos, index in enumerate(self._indices(epoch))
        ]
        size = self.batch_size
        return [keys[i : i + size] for i in range(0, len(keys), size)][: self._length]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # An epoch that a loop broke off is over, as for a DataLoader and a DaliLoader, unless
        # seek or load_state_dict put the loader in it (the same iter() went on with it).
        if self._done >= self._length or (self._done and not self._resuming):
            self._epoch, self._done = self._epoch + 1, 0
        self._resuming = False
        self._pending.batches = batches = self._batches(self._epoch)[self._done :]
        first = self._done
        # The first iter() starts the workers: a Ctrl-C while one waited for the fork
        # server's reply left a process the loader never registered, which failed with a
        # traceback (FileNotFoundError rebuilding a semaphore) once this process was gone.
        with signals_deferred("the DataLoader's worker processes have started"):
            stream = iter(self.loader)
        try:
            for images, targets in stream:
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
        samples = getattr(self.dataset, "samples", None)  # (path, label) pairs
        if samples is None:
            return None
        for index, _ in keys:
            path = samples[index][0]
            reason = _unreadable(path)
            if reason is not None:
                return BadImageError(f"{path!r} {what_is_wrong(path)} ({reason}).", path=path)
        return None

    def __repr__(self) -> str:
        info = {
            "batches": self._length,
            "batch_size": self.batch_size,
            "images": self.dataset_size,
            "classes": self.num_classes,
            "train": self.train,
            "shard": f"{self.shard_id}/{self.num_shards}",
            "workers": self.loader.num_workers,
        }
        return f"TorchvisionLoader({json.dumps(info)[1:-1]})"

    def seek(self, epoch: int, step: int) -> None:
        """The next ``iter()`` yields epoch ``epoch`` from its batch ``step`` (0-based)."""
        self._epoch, self._done, self._resuming = epoch, step, True

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "epoch": self._epoch,
            "batches_done": self._done,
            "num_batches": self._length,
            "batch_size": self.batch_size,
            "seed": self.seed,  # the order follows it: another seed is another stream
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues at ``state``'s position (:meth:`state_dict`'s).

        Raises:
            ValueError: the state is no dict, lacks keys, is from another version, or from
                a loader with another batch size, number of batches or seed (a state saved
                before the seed was kept is taken without that check), as ``DaliLoader``'s.
        """
        if not isinstance(state, dict):  # an AttributeError or KeyError before, as DaliLoader
            raise ValueError(
                f"a loader state is the dict state_dict() returns, got {type(state).__name__}"
            )
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported loader state version {state.get('version')!r}")
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"the loader state lacks {', '.join(missing)}: it is damaged")
        if (state["num_batches"], state["batch_size"]) != (self._length, self.batch_size):
            raise ValueError("the loader state comes from a run with another batch size or data")
        if state.get("seed", self.seed) != self.seed:  # it went on in another order silently
            raise ValueError(
                f"loader state has seed={state['seed']!r} but this loader has {self.seed!r}; "
                "build the loader with the settings of the saved run"
            )
        self._epoch, self._done = int(state["epoch"]), int(state["batches_done"])
        self._resuming = True


def make_torchvision_loader(
    root: str | os.PathLike[str],
    *,
    train: bool,
    batch_size: int,
    workers: int = 4,
    mix: MixConfig | None = None,
    seed: int = 0,
    shard_id: int | None = None,
    num_shards: int | None = None,
    file_list: str | os.PathLike[str] | None = None,
    **transform_options: Any,
) -> TorchvisionLoader:
    """A :class:`TorchvisionLoader` over an ImageNet-style folder (``root/<class>/<image>``).

    The same files and labels as the DALI loader's: ``root`` listed as
    ``ImageFolder`` lists it, or ``file_list``'s ``path label`` lines (relative
    paths against ``root``). Images go
    through :func:`make_transforms` in ``workers`` worker processes (0: in
    this one); ``mix`` (training only; ``None``, or disabled without
    ``label_smoothing``: int64 targets) through :class:`MixCollate`.

    Args:
        train, batch_size, seed: see :class:`TorchvisionLoader`.
        shard_id, num_shards: see :func:`shard_indices`; default from torchrun's
            ``RANK`` / ``WORLD_SIZE``, else 0 of 1 (as ``make_loader``).
        mix: torchvision's CutMix and MixUp draw once per batch: ``mix.mode`` must
            be ``"batch"`` (:class:`MixCollate`) where it mixes; ``mix.num_classes``
            the dataset's. Disabled with ``label_smoothing``: smoothed one-hot targets.
        **transform_options: :func:`make_transforms`' other arguments
            (``crop_size``, ``resize_size``, ``augment``, ``interpolation``),
            documented there.

    Raises:
        TypeError: an unknown keyword (named).
        ValueError: a bad value (named, as ``make_loader`` names it), or a setting
            torchvision cannot honour (see :func:`make_transforms` and :class:`MixCollate`).
        dali_cutmix.files.DatasetError: a missing or mislaid root or list, or
            fewer images than one batch per rank.
    """
    unknown = sorted(set(transform_options) - _TRANSFORM_OPTIONS)
    if unknown:
        raise TypeError(
            f"unknown keyword {', '.join(map(repr, unknown))}: neither a loader setting nor "
            f"a transform option ({', '.join(sorted(_TRANSFORM_OPTIONS))})"
        )
    batch_size = _check_int("batch_size", batch_size, 1)
    workers = _check_int("workers", workers, 0)
    seed = check_seed(seed)
    shard_id, num_shards = resolve_shard(shard_id, num_shards)
    _check_instance("mix", mix, MixConfig)
    if not isinstance(train, bool):  # "yes" was taken as training, as make_loader refuses
        raise ValueError(f"train must be True or False, got {train!r}")
    if mix is not None and not train:
        raise ValueError("mix applies to training only; pass mix=None for validation")
    collate = MixCollate(mix) if mix is not None and mix.soft else None
    transform = make_transforms(train=train, **transform_options)
    images = list_images(root, file_list)
    images.check_mix(mix)
    loader = TorchvisionLoader(
        _ImageFiles(images, transform),
        collate=collate,
        classes=list(images.classes),
        batch_size=batch_size,
        train=train,
        workers=workers,
        seed=seed,
        shard_id=shard_id,
        num_shards=num_shards,
    )
    logger.info(
        "torchvision loader: %s, %s of %d, %s",
        counted(loader.dataset_size, "image"),
        counted(len(loader), "batch"),
        batch_size,
        counted(workers, "worker"),
    )
    return loader
