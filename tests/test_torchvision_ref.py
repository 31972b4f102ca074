"""The torchvision baseline loader: shapes, targets and its mixing semantics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import datasets

from dali_cutmix import MixConfig
from pipelines.torchvision_ref import MixCollate, make_torchvision_loader


def test_plain_loader_yields_imagefolder_labels_in_order(image_folder: Path) -> None:
    loader = make_torchvision_loader(
        image_folder, train=False, batch_size=4, workers=0, crop_size=32, resize_size=36
    )
    labels = torch.cat([t for _, t in loader])
    assert labels.dtype == torch.int64
    assert labels.tolist() == datasets.ImageFolder(str(image_folder)).targets
    images, _ = next(iter(loader))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert len(loader) == 4 and loader.num_classes == 3 and loader.dataset_size == 15


def test_mixing_collate_gives_soft_targets(image_folder: Path) -> None:
    config = MixConfig(num_classes=3, cutmix_alpha=1.0, mixup_alpha=1.0, label_smoothing=0.1)
    loader = make_torchvision_loader(
        image_folder, train=True, batch_size=5, workers=0, mix=config, crop_size=32
    )
    assert len(loader) == 3  # 15 images, partial batches dropped
    images, targets = next(iter(loader))
    assert images.shape == (5, 3, 32, 32)
    assert targets.shape == (5, 3) and targets.dtype == torch.float32
    torch.testing.assert_close(targets.sum(1), torch.ones(5))
    assert targets.min() >= 0.1 / 3 - 1e-6


def test_prob_zero_gives_one_hot() -> None:
    collate = MixCollate(MixConfig(num_classes=4, prob=0.0))
    batch = [(torch.full((3, 4, 4), float(i)), i) for i in range(4)]
    images, targets = collate(batch)
    torch.testing.assert_close(targets, torch.eye(4))
    torch.testing.assert_close(images[2], torch.full((3, 4, 4), 2.0))


def test_unsupported_options_and_tiny_datasets_are_errors(
    image_folder: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="cutmix_minmax"):
        MixCollate(MixConfig(num_classes=3, cutmix_minmax=(0.2, 0.4)))
    with pytest.raises(ValueError, match="lower --batch-size"):
        make_torchvision_loader(image_folder, train=True, batch_size=64, workers=0)
    with pytest.raises(FileNotFoundError, match="missing"):
        make_torchvision_loader(tmp_path / "missing", train=True, batch_size=4, workers=0)
