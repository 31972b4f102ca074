"""The training application's resumable, deterministic torchvision loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import datasets
from torchvision.transforms import v2

from tests.conftest import build_image_folder
from train.data import ResumableTorchvisionLoader


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image_folder(
        tmp_path_factory.mktemp("tv") / "train", classes=3, per_class=5, extras=False
    )


def _loader(
    folder: Path,
    *,
    workers: int = 0,
    train: bool = True,
    shard: int = 0,
    shards: int = 1,
    batch_size: int = 4,
) -> ResumableTorchvisionLoader:
    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(16, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    cutmix = v2.CutMix(alpha=1.0, num_classes=3)
    return ResumableTorchvisionLoader(
        dataset,
        # Picklable, unlike a lambda: worker processes are not forked (dali_cutmix.procs).
        collate=v2.Compose([torch.utils.data.default_collate, cutmix]),
        classes=dataset.classes,
        batch_size=batch_size,
        train=train,
        workers=workers,
        seed=3,
        shard_id=shard,
        num_shards=shards,
    )


def _epoch(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(iter(loader))


def test_stream_is_seeded_and_independent_of_workers(folder: Path) -> None:
    inline, pooled = _loader(folder), _loader(folder, workers=2)
    assert len(inline) == 3  # 15 images, drop the last partial batch of 4
    for (a_img, a_tgt), (b_img, b_tgt) in zip(_epoch(inline), _epoch(pooled), strict=True):
        assert torch.equal(a_img, b_img) and torch.equal(a_tgt, b_tgt)
    second = _epoch(inline)  # the next epoch: another order and other draws
    assert not torch.equal(second[0][0], _epoch(_loader(folder))[0][0])
    assert second[0][1].shape == (4, 3)  # CutMix's soft targets


def test_state_restarts_mid_epoch_exactly(folder: Path) -> None:
    reference = _loader(folder)
    expected = _epoch(reference) + _epoch(reference)
    interrupted = _loader(folder)
    stream = iter(interrupted)
    got = [next(stream) for _ in range(2)]
    state = interrupted.state_dict()
    assert (state["epoch"], state["batches_done"]) == (0, 2)
    resumed = _loader(folder)
    resumed.load_state_dict(state)
    got += _epoch(resumed) + _epoch(resumed)
    assert len(got) == len(expected) == 6
    for (a_img, a_tgt), (b_img, b_tgt) in zip(got, expected, strict=True):
        assert torch.equal(a_img, b_img) and torch.equal(a_tgt, b_tgt)
    with pytest.raises(ValueError, match="another batch size"):
        _loader(folder, batch_size=2).load_state_dict(state)


def test_shards_partition_each_epoch(folder: Path) -> None:
    train = [_loader(folder, shard=r, shards=2, batch_size=2) for r in range(2)]
    keys = [[i for batch in loader._batches(0) for i, _ in batch] for loader in train]
    assert len(keys[0]) == len(keys[1]) == 6  # 7 each, cut to whole batches of 2
    assert not set(keys[0]) & set(keys[1])
    val = [_loader(folder, train=False, shard=r, shards=2) for r in range(2)]
    seen = sorted(i for loader in val for batch in loader._batches(0) for i, _ in batch)
    assert seen == list(range(15))  # every validation image exactly once
    assert [len(v) for v in val] == [2, 2] and val[0].dataset_size == 8
