"""The baseline users compare with: torchvision's ImageFolder + DataLoader.

Standard ImageNet training transforms (RandomResizedCrop, horizontal flip,
normalize; optionally TrivialAugmentWide, RandAugment or AutoAugment and
RandomErasing, as :class:`AugmentConfig` says, in torchvision's reference
order) in the worker processes, and torchvision's own ``v2.CutMix`` /
``v2.MixUp`` in the collate function, driven by the same :class:`MixConfig`
as the DALI pipeline. Used by ``python -m train --loader torchvision`` and by
the benchmark, so both compare against one baseline.

Differences from the DALI pipeline that a comparison should keep in mind:
torchvision draws one lambda and box per batch and pairs each sample with its
neighbour (the batch rolled by one), whatever ``mode`` says; ``cutmix_minmax``
and ``correct_lam=False`` have no torchvision equivalent and are rejected, as
are the augmentation settings torchvision's transforms cannot honour (see
:func:`make_transforms`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, default_collate
from torchvision import datasets
from torchvision.transforms import v2

from dali_cutmix.config import (
    TORCHVISION_TRANSLATE,
    AugmentConfig,
    AutoAugment,
    EraseMode,
    Interpolation,
    MixConfig,
    _enum,
)
from dali_cutmix.files import class_folders
from dali_cutmix.procs import process_context

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MixCollate",
    "TorchvisionLoader",
    "make_torchvision_loader",
    "make_transforms",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

logger = logging.getLogger(__name__)


class MixCollate:
    """Collate function applying torchvision's CutMix / MixUp with ``config``'s meaning.

    Returns ``(images, targets)``: float32 ``[B, 3, H, W]`` and float32 soft
    targets ``[B, num_classes]`` (label smoothing as timm applies it).
    """

    def __init__(self, config: MixConfig) -> None:
        if config.cutmix_minmax is not None or not config.correct_lam:
            raise ValueError(
                "the torchvision loader supports neither cutmix_minmax nor correct_lam=False"
            )
        self.config = config
        methods, weights = [], []
        if config.cutmix_enabled:
            methods.append(v2.CutMix(alpha=config.cutmix_alpha, num_classes=config.num_classes))
            weights.append(config.cutmix_share)
        if config.mixup_enabled:
            methods.append(v2.MixUp(alpha=config.mixup_alpha, num_classes=config.num_classes))
            weights.append(1.0 - config.cutmix_share)
        self.transform = methods[0] if len(methods) == 1 else v2.RandomChoice(methods, p=weights)

    def __call__(self, batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = default_collate(batch)
        if self.config.enabled and torch.rand(()) < self.config.prob:
            images, targets = self.transform(images, labels)
        else:
            targets = torch.nn.functional.one_hot(labels, self.config.num_classes).float()
        smoothing = self.config.label_smoothing
        if smoothing > 0:
            targets = targets * (1.0 - smoothing) + smoothing / self.config.num_classes
        return images, targets


def _interpolation(value: Interpolation | str) -> str:
    """torchvision's name for ``value``; the plain string, as its transforms' defaults store it."""
    return _enum(Interpolation, "interpolation", value).value


def _refuse_what_torchvision_cannot_honour(augment: AugmentConfig, interpolation: str) -> None:
    """Raises ValueError for settings torchvision's transforms would change or fail on."""
    if augment.auto_augment is not None and interpolation == Interpolation.BICUBIC.value:
        # On tensors, torchvision's warps take nearest and bilinear only (DALI's likewise).
        raise ValueError(
            "interpolation 'bicubic' cannot warp the automatic augmentation's images; "
            "use 'bilinear' or 'nearest'"
        )
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


def _auto_augment(augment: AugmentConfig, interpolation: str) -> list[v2.Transform]:
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
            v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=interpolation, fill=fill)
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


def make_transforms(
    *,
    train: bool,
    crop_size: int,
    resize_size: int,
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
        ValueError: an unknown ``interpolation``; an enabled ``augment`` for
            validation; bicubic with an automatic augmentation (torchvision warps
            tensors with nearest or bilinear only); an ``augment`` setting that
            torchvision's transforms cannot honour and the DALI loader can
            (``erase_mode="rand"``, ``ra_increasing=False``, a ``max_translate_rel``
            other than 150/331 for RandAugment and AutoAugment).
    """
    mode = _interpolation(interpolation)
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


class TorchvisionLoader:
    """A DataLoader with the same face as :class:`dali_cutmix.loader.DaliLoader`.

    Iterating yields ``(images, targets)`` CPU tensors (pinned when CUDA is
    there): float32 NCHW images; int64 ``[B]`` labels, or float32
    ``[B, num_classes]`` soft targets when mixing. Each ``iter()`` is an epoch.
    """

    def __init__(self, loader: DataLoader, dataset: datasets.ImageFolder) -> None:
        self.loader = loader
        self.classes: list[str] = list(dataset.classes)
        self.num_classes = len(self.classes)
        self.batch_size = loader.batch_size
        self.device = torch.device("cpu")
        self.dataset_size = len(loader.sampler)  # images this rank reads per epoch
        self._epoch = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(self._epoch)
        self._epoch += 1
        return iter(self.loader)


def make_torchvision_loader(
    root: str | Path,
    *,
    train: bool,
    batch_size: int,
    workers: int = 4,
    mix: MixConfig | None = None,
    crop_size: int = 224,
    resize_size: int = 256,
    seed: int = 0,
    shard_id: int = 0,
    num_shards: int = 1,
    augment: AugmentConfig | None = None,
    interpolation: Interpolation | str = Interpolation.BILINEAR,
) -> TorchvisionLoader:
    """ImageFolder + :func:`make_transforms` (+ torchvision CutMix/MixUp when ``mix`` is on).

    ``augment`` (training only) and ``interpolation`` go to :func:`make_transforms`,
    which refuses what torchvision cannot honour with a ``ValueError``.

    Training drops the last partial batch (as the reference scripts do);
    validation keeps every image once (``DistributedSampler`` pads shards to
    equal length, so with several shards a few images repeat: the DALI loader
    is exact there).
    """
    root = Path(root)
    class_folders(root)  # a missing or mislaid root is a DatasetError naming it, as for DALI
    transform = make_transforms(
        train=train,
        crop_size=crop_size,
        resize_size=resize_size,
        augment=augment,
        interpolation=interpolation,
    )
    dataset = datasets.ImageFolder(str(root), transform=transform)
    sampler = None
    if num_shards > 1:
        sampler = DistributedSampler(
            dataset, num_replicas=num_shards, rank=shard_id, shuffle=train, seed=seed
        )
    collate = MixCollate(mix) if (train and mix is not None) else None
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        drop_last=train,
        persistent_workers=workers > 0,
        multiprocessing_context=process_context() if workers > 0 else None,
        generator=generator,
    )
    logger.info(
        "torchvision loader: %d images, %d batches of %d, %d workers",
        len(sampler) if sampler else len(dataset),
        len(loader),
        batch_size,
        workers,
    )
    if train and len(loader) == 0:
        raise ValueError(
            f"{root} has {len(dataset)} images, fewer than one batch of {batch_size}: "
            "lower --batch-size"
        )
    return TorchvisionLoader(loader, dataset)
