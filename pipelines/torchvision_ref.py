"""The baseline users compare with: torchvision's ImageFolder + DataLoader.

Standard ImageNet training transforms (RandomResizedCrop, horizontal flip,
normalize) in the worker processes, and torchvision's own ``v2.CutMix`` /
``v2.MixUp`` in the collate function, driven by the same :class:`MixConfig`
as the DALI pipeline. Used by ``python -m train --loader torchvision`` and by
the benchmark, so both compare against one baseline.

Differences from the DALI pipeline that a comparison should keep in mind:
torchvision draws one lambda and box per batch and pairs each sample with its
neighbour (the batch rolled by one), whatever ``mode`` says; ``cutmix_minmax``
and ``correct_lam=False`` have no torchvision equivalent and are rejected.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, default_collate
from torchvision import datasets
from torchvision.transforms import v2

from dali_cutmix.config import MixConfig
from dali_cutmix.procs import process_context

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MixCollate",
    "TorchvisionLoader",
    "make_torchvision_loader",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

log = logging.getLogger(__name__)


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


def _transforms(*, train: bool, crop_size: int, resize_size: int) -> v2.Compose:
    head = (
        [v2.RandomResizedCrop(crop_size, antialias=True), v2.RandomHorizontalFlip()]
        if train
        else [v2.Resize(resize_size, antialias=True), v2.CenterCrop(crop_size)]
    )
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose([v2.ToImage(), *head, *tail])


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
) -> TorchvisionLoader:
    """ImageFolder + standard transforms (+ torchvision CutMix/MixUp when ``mix`` is on).

    Training drops the last partial batch (as the reference scripts do);
    validation keeps every image once (``DistributedSampler`` pads shards to
    equal length, so with several shards a few images repeat: the DALI loader
    is exact there).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist")
    dataset = datasets.ImageFolder(
        str(root), transform=_transforms(train=train, crop_size=crop_size, resize_size=resize_size)
    )
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
    log.info(
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
