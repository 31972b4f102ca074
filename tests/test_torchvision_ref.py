"""The torchvision baseline loader: shapes, targets, mixing and augmentation semantics."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms import v2

from dali_cutmix import MixConfig
from dali_cutmix.config import AugmentConfig, Interpolation
from dali_cutmix.files import DatasetError
from pipelines.torchvision_ref import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MixCollate,
    TorchvisionLoader,
    make_torchvision_loader,
    make_transforms,
    shard_indices,
)
from tests.conftest import resumed_after, same_batches


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
    config = MixConfig(
        num_classes=3, cutmix_alpha=1.0, mixup_alpha=1.0, label_smoothing=0.1, mode="batch"
    )
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
    collate = MixCollate(MixConfig(num_classes=4, prob=0.0, mode="batch"))
    batch = [(torch.full((3, 4, 4), float(i)), i) for i in range(4)]
    images, targets = collate(batch)
    torch.testing.assert_close(targets, torch.eye(4))
    torch.testing.assert_close(images[2], torch.full((3, 4, 4), 2.0))


def test_a_disabled_mix_still_smooths_labels(image_folder: Path) -> None:
    # it was left out (int64 labels), and MixCollate refused its mode, though nothing mixes
    def loader(mix: MixConfig | None):
        return make_torchvision_loader(
            image_folder, train=True, batch_size=5, workers=0, crop_size=8, seed=2, mix=mix
        )

    off = MixConfig(num_classes=3, mixup_alpha=0.2, prob=0.0, label_smoothing=0.1, mode="elem")
    for (images, labels), (same_images, targets) in zip(loader(None), loader(off)):
        want = torch.full((5, 3), 0.1 / 3)
        want[torch.arange(5), labels] = 1.0 - 0.1 + 0.1 / 3
        assert targets.dtype == torch.float32 and torch.equal(targets, want)
        assert torch.equal(same_images, images)
    _, labels = next(iter(loader(dataclasses.replace(off, label_smoothing=0.0))))
    assert labels.dtype == torch.int64


def test_unsupported_options_and_tiny_datasets_are_errors(
    image_folder: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="cutmix_minmax"):
        MixCollate(MixConfig(num_classes=3, cutmix_minmax=(0.2, 0.4), mode="batch"))
    with pytest.raises(
        ValueError, match="15 images over 1 rank.s. give no batch of 64 per rank: lower"
    ):
        make_torchvision_loader(image_folder, train=True, batch_size=64, workers=0)
    # a rank of no validation image: "lower the batch size" could not help
    with pytest.raises(ValueError, match="over 16 rank.s. give no batch of 1 per rank: use fewer"):
        make_torchvision_loader(
            image_folder, train=False, batch_size=1, workers=0, shard_id=15, num_shards=16
        )
    with pytest.raises(DatasetError, match=f"dataset root '{tmp_path / 'missing'}' does not exist"):
        make_torchvision_loader(tmp_path / "missing", train=True, batch_size=4, workers=0)


# ----------------------------------------------------------------------------- order and shards

# The training order of 15 images with seed 3: resumed runs depend on it staying so.
EPOCH_0 = [14, 10, 8, 7, 4, 2, 3, 5, 13, 6, 12, 9, 11, 1, 0]
EPOCH_1 = [6, 7, 5, 8, 3, 0, 4, 1, 2, 14, 9, 10, 12, 13, 11]


def _shards(num_shards: int, *, train: bool = True, epoch: int = 0) -> list[list[int]]:
    return [
        shard_indices(15, train=train, seed=3, epoch=epoch, shard_id=r, num_shards=num_shards)
        for r in range(num_shards)
    ]


@pytest.mark.parametrize(
    ("num_shards", "expected"),
    [
        (1, [EPOCH_0]),
        (2, [[14, 8, 4, 3, 13, 12, 11], [10, 7, 2, 5, 6, 9, 1]]),
        (3, [[14, 7, 3, 6, 11], [10, 4, 5, 12, 1], [8, 2, 13, 9, 0]]),
    ],
)
def test_training_shards_partition_the_epochs_order(
    num_shards: int, expected: list[list[int]]
) -> None:
    shards = _shards(num_shards)
    assert shards == expected
    # Dealt round-robin: the shards, interleaved, are the epoch's order (cut to equal shares).
    share = 15 // num_shards
    assert [shard[i] for i in range(share) for shard in shards] == EPOCH_0[: share * num_shards]
    assert (
        sum(len(set(shard)) for shard in shards) == len(set().union(*shards)) == share * num_shards
    )
    assert _shards(num_shards) == shards  # the same seed, the same order
    assert _shards(num_shards, epoch=1)[0] == EPOCH_1[: share * num_shards][::num_shards]


@pytest.mark.parametrize(
    ("num_shards", "expected"),
    [
        (2, [[0, 2, 4, 6, 8, 10, 12, 14], [1, 3, 5, 7, 9, 11, 13]]),
        (3, [[0, 3, 6, 9, 12], [1, 4, 7, 10, 13], [2, 5, 8, 11, 14]]),
    ],
)
def test_validation_shards_see_every_image_exactly_once(
    num_shards: int, expected: list[list[int]]
) -> None:
    assert _shards(num_shards, train=False) == expected
    assert _shards(num_shards, train=False, epoch=5) == expected


class Numbers(Dataset):
    """Item ``i`` is ``(tensor(i), i)``: a loader's stream shows the indices it read."""

    def __len__(self) -> int:
        return 15

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.tensor(index), index


def _numbers(*, train: bool = True, shard: int = 0, shards: int = 1, batch_size: int = 2):
    return TorchvisionLoader(
        Numbers(),
        collate=None,
        classes=["a"],
        batch_size=batch_size,
        train=train,
        workers=0,
        seed=3,
        shard_id=shard,
        num_shards=shards,
    )


def _read(loader: TorchvisionLoader) -> list[int]:
    return [i for _, labels in loader for i in labels.tolist()]


@pytest.mark.parametrize("num_shards", [2, 3])
def test_each_rank_reads_its_shard_in_whole_batches(num_shards: int) -> None:
    train = [_numbers(shard=r, shards=num_shards) for r in range(num_shards)]
    share = 15 // num_shards
    assert [loader.dataset_size for loader in train] == [share] * num_shards
    assert [len(loader) for loader in train] == [share // 2] * num_shards
    assert [_read(loader) for loader in train] == [s[: share // 2 * 2] for s in _shards(num_shards)]
    assert [_read(loader) for loader in train] == [
        s[: share // 2 * 2] for s in _shards(num_shards, epoch=1)
    ]
    val = [
        _numbers(train=False, shard=r, shards=num_shards, batch_size=4) for r in range(num_shards)
    ]
    assert [_read(loader) for loader in val] == _shards(num_shards, train=False)
    assert sum(loader.dataset_size for loader in val) == 15


def test_resuming_mid_epoch_continues_the_same_order() -> None:
    reference = _numbers()
    expected = _read(reference) + _read(reference)
    assert expected == EPOCH_0[:14] + EPOCH_1[:14]
    interrupted = _numbers()
    stream = iter(interrupted)
    got = [i for _ in range(3) for i in next(stream)[1].tolist()]
    state = interrupted.state_dict()
    assert state == {
        "version": 1,
        "epoch": 0,
        "batches_done": 3,
        "num_batches": 7,
        "batch_size": 2,
        "seed": 3,
    }
    resumed = _numbers()
    resumed.load_state_dict(state)
    assert got + _read(resumed) + _read(resumed) == expected
    seeking = _numbers()
    seeking.seek(1, 5)
    assert _read(seeking) == EPOCH_1[10:14]
    with pytest.raises(ValueError, match="another batch size"):
        _numbers(batch_size=4).load_state_dict(state)
    with pytest.raises(ValueError, match="unsupported loader state version 2"):
        _numbers().load_state_dict({**state, "version": 2})


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        # torchvision's CutMix ran "elem" per batch: prob per batch, silently unlike DALI's
        (
            {"mix": MixConfig(num_classes=3)},
            ValueError,
            "the torchvision loader mixes per batch (torchvision.transforms.v2.CutMix / MixUp): "
            "give mix.mode 'batch', got 'elem' (the DALI loader mixes per sample or pair)",
        ),
        (  # ran, with targets of 1000 classes for a 3-class folder
            {"mix": MixConfig(num_classes=1000, mode="batch")},
            ValueError,
            "mix.num_classes is 1000 but '{root}' has 3 classes",
        ),
        (  # silently ignored
            {"mix": MixConfig(num_classes=3, mode="batch"), "train": False},
            ValueError,
            "mix applies to training only; pass mix=None for validation",
        ),
        ({"mix": {"cutmix_alpha": 1.0}}, ValueError, "mix must be a MixConfig or None, got {{"),
        # a shard that overlapped another, and the raw errors of Python
        ({"shard_id": 3, "num_shards": 2}, ValueError, "need 0 <= shard_id < num_shards, got 3, 2"),
        ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1, got 0"),
        ({"batch_size": "4"}, ValueError, "batch_size must be an int >= 1, got '4'"),
        ({"workers": -1}, ValueError, "workers must be an int >= 0, got -1"),
        ({"seed": -5}, ValueError, "seed must be an int in [0, 2**32), got -5"),
        (  # named make_transforms(), an inner function
            {"crop": 8},
            TypeError,
            "unknown keyword 'crop': neither a loader setting nor a transform option "
            "(augment, crop_size, interpolation, resize_size)",
        ),
    ],
    ids=[
        "elem",
        "classes",
        "val-mix",
        "dict",
        "shard",
        "batch-0",
        "batch-str",
        "workers",
        "seed",
        "keyword",
    ],
)
def test_bad_settings_are_named_as_make_loader_names_them(
    image_folder: Path, settings: dict, error: type, message: str
) -> None:
    call = {"train": True, "batch_size": 4, "workers": 0, **settings}
    with pytest.raises(error) as refused:
        make_torchvision_loader(image_folder, **call)
    assert str(refused.value).startswith(message.format(root=image_folder))


def test_shards_come_from_torchrun_as_make_loader_takes_them(
    image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every rank read all the images
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = make_torchvision_loader(image_folder, train=False, batch_size=4, workers=0)
    assert (loader.shard_id, loader.num_shards, loader.dataset_size) == (1, 2, 7)
    assert repr(loader) == (
        'TorchvisionLoader("batches": 2, "batch_size": 4, "images": 7, "classes": 3, '
        '"train": false, "shard": "1/2", "workers": 0)'
    )


# ----------------------------------------------------------------------------- the stream


def _seeded(folder: Path, *, workers: int = 0, batch_size: int = 4) -> TorchvisionLoader:
    mix = MixConfig(num_classes=3, cutmix_alpha=1.0, mode="batch")
    return make_torchvision_loader(
        folder, train=True, batch_size=batch_size, workers=workers, mix=mix, crop_size=16, seed=3
    )


def test_stream_is_seeded_and_independent_of_workers(image_folder: Path) -> None:
    inline, pooled = _seeded(image_folder), _seeded(image_folder, workers=2)
    assert len(inline) == 3  # 15 images, drop the last partial batch of 4
    assert same_batches(list(pooled), list(inline))
    workers = [w.pid for w in pooled.loader._iterator._workers]
    second = list(inline)  # the next epoch: another order and other draws
    assert same_batches(list(pooled), second)
    assert [w.pid for w in pooled.loader._iterator._workers] == workers  # alive across epochs
    assert not torch.equal(second[0][0], next(iter(_seeded(image_folder)))[0])
    assert second[0][1].shape == (4, 3)  # CutMix's soft targets


def test_state_restarts_mid_epoch_exactly(image_folder: Path) -> None:
    reference = _seeded(image_folder)
    expected = list(reference) + list(reference)
    resumed = resumed_after(lambda: _seeded(image_folder), 2)
    assert same_batches(expected[:2] + list(resumed) + list(resumed), expected)


def test_a_state_of_another_seed_or_damaged_is_refused_as_by_the_dali_loader(
    image_folder: Path,
) -> None:
    # Another seed went on silently in another order; a state without keys was a bare
    # KeyError, and no dict an AttributeError
    state = _seeded(image_folder).state_dict()
    assert state["seed"] == 3
    other = make_torchvision_loader(image_folder, train=True, batch_size=4, workers=0, seed=4)
    with pytest.raises(ValueError) as refused:
        other.load_state_dict(state)
    assert str(refused.value) == (
        "loader state has seed=3 but this loader has 4; build the loader with the settings "
        "of the saved run"
    )
    damaged = {k: v for k, v in state.items() if k not in ("epoch", "num_batches")}
    with pytest.raises(ValueError, match="^the loader state lacks epoch, num_batches: it is"):
        _seeded(image_folder).load_state_dict(damaged)
    with pytest.raises(ValueError, match="^a loader state is the dict state_dict\\(\\) returns"):
        _seeded(image_folder).load_state_dict(None)
    older = {k: v for k, v in state.items() if k != "seed"}  # saved before the seed was kept
    _seeded(image_folder).load_state_dict(older)


def test_train_and_the_validation_sizes_are_checked_as_make_loader_checks_them(
    image_folder: Path,
) -> None:
    # "yes" was taken as training, and a resize below the crop padded the centre crop
    with pytest.raises(ValueError, match="^train must be True or False, got 'yes'$"):
        make_torchvision_loader(image_folder, train="yes", batch_size=4, workers=0)
    with pytest.raises(ValueError, match="^resize_size \\(32\\) must be >= crop_size \\(64\\)$"):
        make_torchvision_loader(
            image_folder, train=False, batch_size=4, workers=0, crop_size=64, resize_size=32
        )


def test_an_epoch_broken_off_is_over_as_for_a_dataloader(image_folder: Path) -> None:
    # The next iter() went on with the broken epoch, where DaliLoader and DataLoader start
    # the next one; after seek or load_state_dict it goes on where they put it.
    reference = _seeded(image_folder)
    epochs = [list(reference) for _ in range(3)]
    loader = _seeded(image_folder)
    next(iter(loader))
    assert same_batches(list(loader), epochs[1])
    loader.seek(2, 1)
    assert same_batches(list(loader), epochs[2][1:])


# ----------------------------------------------------------------------------- augmentation

NORMALIZE = (
    "Normalize",
    {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "inplace": False},
)
TO_FLOAT = ("ToDtype", {"dtype": torch.float32, "scale": True})


def describe(compose: v2.Compose) -> list[tuple[str, dict[str, Any]]]:
    """Each transform's class name and public parameters, in order; an interpolation by its
    name (torchvision's own defaults store a string in 0.29, the enum in 0.26)."""

    def plain(value: Any) -> Any:
        return value.value if isinstance(value, v2.InterpolationMode) else value

    return [
        (
            type(t).__name__,
            {k: plain(v) for k, v in vars(t).items() if k[0] != "_" and k != "training"},
        )
        for t in compose.transforms
    ]


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("policy", [None, "ta_wide", "ra", "imagenet"])
def test_every_interpolation_is_an_interpolation_mode(train: bool, policy: str | None) -> None:
    # torchvision 0.26 (the GPU machine's) refuses interpolation="bilinear" with a ValueError
    # in every worker; 0.29 takes both. Found on the H100 run: only the enum works with both.
    augment = AugmentConfig(auto_augment=policy) if train and policy else None
    compose = make_transforms(
        train=train, crop_size=32, resize_size=36, augment=augment, interpolation="nearest"
    )
    modes = [t.interpolation for t in compose.transforms if hasattr(t, "interpolation")]
    assert modes == [v2.InterpolationMode.NEAREST] * (2 if train and policy else 1)


def crop_flip(interpolation: str = "bilinear") -> list[tuple[str, dict[str, Any]]]:
    crop = {
        "size": (32, 32),
        "scale": (0.08, 1.0),
        "ratio": (0.75, 4 / 3),
        "interpolation": interpolation,
        "antialias": True,
    }
    return [("ToImage", {}), ("RandomResizedCrop", crop), ("RandomHorizontalFlip", {"p": 0.5})]


def test_without_augmentation_the_transforms_are_the_plain_recipe() -> None:
    """What the loader used before augmentations existed, written out as it was."""
    plain_train = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(32, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    plain_val = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(36, antialias=True),
            v2.CenterCrop(32),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    # Disabled configurations, even with settings torchvision refuses when they are in effect.
    for augment in (None, AugmentConfig(), AugmentConfig(erase_mode="rand", ra_increasing=False)):
        train = make_transforms(train=True, crop_size=32, resize_size=36, augment=augment)
        assert describe(train) == describe(plain_train)
        assert describe(train) == [*crop_flip(), TO_FLOAT, NORMALIZE]
        val = make_transforms(train=False, crop_size=32, resize_size=36, augment=augment)
        assert describe(val) == describe(plain_val)


@pytest.mark.parametrize(
    ("augment", "interpolation", "middle", "last"),
    [
        (
            AugmentConfig(auto_augment="ta_wide", fill_value=5),
            "nearest",
            [
                (
                    "TrivialAugmentWide",
                    {"interpolation": "nearest", "fill": 5, "num_magnitude_bins": 31},
                )
            ],
            [],
        ),
        (
            AugmentConfig(auto_augment="ra", ra_num_ops=3, ra_magnitude=4, num_magnitude_bins=11),
            "bilinear",
            [
                (
                    "RandAugment",
                    {
                        "interpolation": "bilinear",
                        "fill": 0,
                        "num_ops": 3,
                        "magnitude": 4,
                        "num_magnitude_bins": 11,
                    },
                )
            ],
            [],
        ),
        (
            AugmentConfig(auto_augment="imagenet", random_erase=0.1),
            Interpolation.BILINEAR,
            [
                (
                    "AutoAugment",
                    {
                        "interpolation": "bilinear",
                        "fill": 0,
                        "policy": v2.AutoAugmentPolicy.IMAGENET,
                    },
                )
            ],
            [
                (
                    "RandomErasing",
                    {
                        "p": 0.1,
                        "scale": (0.02, 0.33),
                        "ratio": (0.3, 3.3),
                        "value": [0.0],
                        "inplace": False,
                    },
                )
            ],
        ),
        (
            AugmentConfig(
                random_erase=0.25, erase_mode="pixel", erase_scale=(0.02, 1 / 3), erase_ratio=(1, 2)
            ),
            "bicubic",
            [],
            [
                (
                    "RandomErasing",
                    {
                        "p": 0.25,
                        "scale": (0.02, 1 / 3),
                        "ratio": (1.0, 2.0),
                        "value": None,  # torchvision's value="random": normal noise per pixel
                        "inplace": False,
                    },
                )
            ],
        ),
    ],
    ids=["ta_wide-nearest", "ra", "imagenet-erase", "erase-pixel-bicubic"],
)
def test_augmentations_come_in_torchvisions_reference_order(
    augment: AugmentConfig, interpolation: str, middle: list, last: list
) -> None:
    mode = Interpolation(interpolation).value
    train = make_transforms(
        train=True, crop_size=32, resize_size=36, augment=augment, interpolation=interpolation
    )
    assert describe(train) == [*crop_flip(mode), *middle, TO_FLOAT, NORMALIZE, *last]
    val = make_transforms(train=False, crop_size=32, resize_size=36, interpolation=interpolation)
    resize = {"size": [36], "interpolation": mode, "max_size": None, "antialias": True}
    assert describe(val)[1] == ("Resize", resize)


@pytest.mark.parametrize(
    ("augment", "interpolation", "message"),
    [
        (
            AugmentConfig(random_erase=0.1, erase_mode="rand"),
            "bilinear",
            "erase_mode 'rand' (one normal value per channel): torchvision's transforms cannot "
            "honour it; use 'const' or 'pixel', or use --loader dali, which can",
        ),
        (
            AugmentConfig(auto_augment="ra", ra_increasing=False),
            "bilinear",
            "ra_increasing=False (timm's original RandAugment ops, inc0): torchvision's transforms "
            "cannot honour it, its RandAugment has increasing ops only; use --loader dali, which "
            "can",
        ),
        (
            AugmentConfig(auto_augment="ra", max_translate_rel=0.45),
            "bilinear",
            "max_translate_rel=0.45 (timm's shifts, which --aa sets): torchvision's transforms "
            "cannot honour it, its RandAugment and AutoAugment shift by up to 150/331 of the "
            "side; use --loader dali, which can",
        ),
        (
            AugmentConfig(auto_augment="imagenet", max_translate_rel=0.45),
            "bilinear",
            "max_translate_rel=0.45",
        ),
        (
            AugmentConfig(auto_augment="ta_wide"),
            "bicubic",
            "interpolation (bicubic) cannot be used with auto_augment: the automatic "
            "augmentations warp with bilinear or nearest interpolation only (DALI's and "
            "torchvision's alike); use bilinear or nearest",
        ),
        (None, "lanczos", "interpolation must be one of 'bilinear', 'nearest', 'bicubic'"),
    ],
    ids=["erase-rand", "ra-inc0", "ra-translate", "imagenet-translate", "bicubic", "unknown"],
)
def test_what_torchvision_cannot_honour_is_refused(
    augment: AugmentConfig | None, interpolation: str, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make_transforms(
            train=True, crop_size=32, resize_size=36, augment=augment, interpolation=interpolation
        )


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"crop_size": 0}, "crop_size must be an int >= 1, got 0"),
        ({"crop_size": 2.5}, "crop_size must be an int >= 1, got 2.5"),
        ({"crop_size": 2**31}, "crop_size must be an int from 1 to 32768, got 2147483648"),
        ({"resize_size": -1}, "resize_size must be an int >= 1, got -1"),
    ],
)
def test_bad_transform_sizes_are_named(sizes: dict, message: str) -> None:
    # taken before: a crop of 0 failed on the first image (a RuntimeError, in a worker), and
    # one of 2.5 gave images of 2 x 2 without a word
    for train in (True, False):
        with pytest.raises(ValueError, match=re.escape(message)):
            make_transforms(train=train, **sizes)


def test_augmenting_validation_is_refused(image_folder: Path) -> None:
    with pytest.raises(ValueError, match="augment applies to training only"):
        make_torchvision_loader(
            image_folder,
            train=False,
            batch_size=4,
            workers=0,
            augment=AugmentConfig(auto_augment="ta_wide"),
        )
    # TrivialAugmentWide ignores max_translate_rel (it shifts by up to 32 px): accepted.
    make_transforms(
        train=True,
        crop_size=32,
        resize_size=36,
        augment=AugmentConfig(auto_augment="ta_wide", max_translate_rel=0.45),
    )


def erase_once(mode: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image through the transforms with RandomErasing always on, and the same without it."""
    augment = AugmentConfig(random_erase=1.0, erase_mode=mode)
    transforms = make_transforms(train=True, crop_size=32, resize_size=36, augment=augment)
    image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=torch.Generator())
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        erased = transforms(image)
        torch.manual_seed(seed)
        before = v2.Compose(transforms.transforms[:-1])(image)  # the same crop and flip draws
    return erased, before


def box_of(mask: torch.Tensor) -> tuple[slice, slice]:
    """The bounding box of a ``[H, W]`` mask, checked to fill it (a rectangle)."""
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    assert mask[box].all() and mask.sum() == mask[box].numel()
    return box


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_const_erasing_writes_exactly_zero_in_one_box(seed: int) -> None:
    erased, before = erase_once("const", seed)
    assert not (before == 0).any()  # (v / 255 - mean) / std is never exactly 0 for uint8 v
    mask = erased == 0
    assert torch.equal(mask[0], mask[1]) and torch.equal(mask[0], mask[2])
    box = box_of(mask[0])
    area = mask[0].sum().item() / 32**2
    assert 0.01 <= area <= 0.4  # 0.02-0.33 of the image, rounded to whole pixels
    assert torch.equal(erased[:, ~mask[0]], before[:, ~mask[0]])
    assert torch.equal(erased[(slice(None), *box)], torch.zeros_like(erased[(slice(None), *box)]))
    assert torch.equal(erase_once("const", seed)[0], erased)  # seeded: the same again


def test_pixel_erasing_writes_normal_noise_in_one_box() -> None:
    erased, before = erase_once("pixel", 0)
    changed = (erased != before).any(0)
    box = box_of(changed)
    noise = erased[(slice(None), *box)]
    assert noise.numel() >= 3 * 20 and noise.unique().numel() == noise.numel()
    assert abs(noise.mean().item()) < 0.5 and 0.5 < noise.std().item() < 1.5
    assert torch.equal(erased[:, ~changed], before[:, ~changed])


def test_loader_with_the_resnet50_recipe_runs(image_folder: Path) -> None:
    """TrivialAugmentWide + RandomErasing in a worker process, then MixUp/CutMix switching."""
    augment = AugmentConfig(auto_augment="ta_wide", random_erase=0.5)
    mix = MixConfig(
        num_classes=3,
        mixup_alpha=0.2,
        cutmix_alpha=1.0,
        switch_prob=0.5,
        label_smoothing=0.1,
        mode="batch",
    )
    loader = make_torchvision_loader(
        image_folder,
        train=True,
        batch_size=5,
        workers=1,
        mix=mix,
        augment=augment,
        interpolation="nearest",
        crop_size=32,
    )
    batches = list(loader)
    assert len(batches) == 3
    for images, targets in batches:
        assert images.shape == (5, 3, 32, 32) and images.dtype == torch.float32
        assert torch.isfinite(images).all()
        torch.testing.assert_close(targets.sum(1), torch.ones(5))
    transform = loader.dataset.transform
    assert [type(t).__name__ for t in transform.transforms][3::3] == [
        "TrivialAugmentWide",
        "RandomErasing",
    ]


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "is an empty file (0 bytes) (PIL: cannot identify image file)"),
        (b"<html>not found</html>", "is not a decodable image (PIL: cannot identify image file)"),
    ],
    ids=["empty", "text"],
)
def test_a_bad_file_is_named_with_what_is_wrong_and_pils_words(
    image_folder: Path, tmp_path: Path, content: bytes, problem: str
) -> None:
    # it said "is not a decodable image (UnidentifiedImageError: cannot identify image file
    # <_io.BufferedReader name='...'>)" for an empty file too
    import shutil

    from dali_cutmix.files import BadImageError

    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    bad = sorted(root.rglob("*.JPEG"))[0]
    bad.write_bytes(content)
    loader = make_torchvision_loader(
        root, train=False, batch_size=len(list(root.rglob("*.JPEG"))), crop_size=8, workers=0
    )
    with pytest.raises(BadImageError) as caught:
        next(iter(loader))
    assert str(caught.value) == f"{str(bad)!r} {problem}."
    assert caught.value.path == str(bad)
