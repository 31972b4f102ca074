"""train.data: one set of settings for either loader, and the torchvision loader's exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dali_cutmix.files import DatasetError
from dali_cutmix.synthetic import SyntheticSpec, generate
from pipelines.torchvision_ref import make_torchvision_loader
from tests.conftest import same_batches
from train.config import parse_config
from train.data import (
    _loader_settings,
    build_loaders,
    build_val_loader,
    continue_at,
    restore_loader,
)
from train.utils import DistInfo

TINY = SyntheticSpec(num_classes=3, train_per_class=4, val_per_class=3, seed=0, size_scale=0.15)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("data") / "tiny", TINY, workers=1, progress=False)


def _config(root: Path, loader: str, *flags: str):
    argv = ["--data", str(root), "--device", "cpu", "--loader", loader, "--crop-size", "16"]
    return parse_config([*argv, "-b", "4", "-j", "1", "--output-dir", str(root / "out"), *flags])


def test_both_loaders_get_the_same_settings_and_read_the_same_labels(tiny: Path) -> None:
    info = DistInfo(rank=1, world_size=2)
    flags = ("--auto-augment", "ta_wide", "--seed", "7")
    dali, tv = _config(tiny, "dali", *flags), _config(tiny, "torchvision", *flags)
    settings = _loader_settings(None, train=True, config=tv, info=info)
    same = _loader_settings(None, train=True, config=dali, info=info)
    # The loader's kind changes only the mixing mode's default (torchvision mixes per batch).
    assert {**same, "mix": tv.mix} == settings and same["mix"] == dali.mix != tv.mix
    assert settings == {
        "file_list": None,
        "batch_size": 4,
        "seed": 7,
        "shard_id": 1,
        "num_shards": 2,
        "train": True,
        "crop_size": 16,
        "resize_size": tv.data.val_resize_size,
        "mix": tv.mix,
        "augment": tv.augment,
        "interpolation": tv.data.interpolation,
    }
    val = _loader_settings(None, train=False, config=tv, info=info)
    assert (val["mix"], val["augment"], val["train"]) == (None, None, False)
    # One shard: both validation loaders read the files in order, with the same labels.
    labels = [
        torch.cat([t for _, t in build_val_loader(config, tiny, DistInfo())]).tolist()
        for config in (dali, tv)
    ]
    assert labels[0] == labels[1] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_the_torchvision_loader_resumes_and_seeks_exactly(tiny: Path) -> None:
    def loader():
        return make_torchvision_loader(
            tiny / "train", train=True, batch_size=4, workers=0, crop_size=16, seed=5
        )

    reference = loader()
    expected = list(reference) + list(reference)
    assert len(expected) == 6
    # A state saved at the end of an epoch: the next iter() is the next epoch, as for DALI.
    at_end = loader()
    list(at_end)
    restored = loader()
    restore_loader(restored, at_end.state_dict())
    assert same_batches(list(restored), expected[3:])
    # Without a usable state: epoch 1 from its batch 2, the very batches of before.
    assert same_batches(list(continue_at(loader(), epoch=1, step=2)), expected[5:])


@pytest.mark.parametrize("loader", ["dali", "torchvision"])
def test_a_listed_file_that_does_not_exist_is_named_with_the_data_flag(tiny, loader) -> None:
    """The list's relative paths resolve against --data's split folder: the advice names --data
    (make_loader's own names a root, which python -m train has no flag for)."""
    listed = tiny / "out" / "train-files.txt"
    listed.parent.mkdir(exist_ok=True)
    kept = sorted(p.relative_to(tiny / "train") for p in (tiny / "train").rglob("*.JPEG"))
    listed.write_text(f"{kept[0]} 0\nn0/gone.JPEG 0\n")
    config = _config(tiny, loader, "--train-list", str(listed))
    with pytest.raises(DatasetError) as refused:
        build_loaders(config, tiny, DistInfo())
    assert str(refused.value) == (
        f"--train-list {str(listed)!r} names 1 file that does not exist: "
        f"{str(tiny / 'train' / 'n0' / 'gone.JPEG')!r} (line 2); delete those lines, or give as "
        f"--data the folder whose train/ the paths are relative to (they resolve against "
        f"{str(tiny / 'train')!r})."
    )


def test_a_list_none_of_whose_files_exists_is_written_anew_not_emptied(tiny) -> None:
    """A scan's files.txt holds absolute paths: after the dataset moved, "--resume RUN --data
    NEW" said to delete every line of it."""
    listed = tiny / "out" / "moved-files.txt"
    listed.parent.mkdir(exist_ok=True)
    old = tiny.parent / "moved-away" / "val"
    listed.write_text(f"{old / 'n0' / 'a.JPEG'} 0\n{old / 'n1' / 'b.JPEG'} 1\n")
    config = _config(tiny, "dali", "--val-list", str(listed))
    with pytest.raises(DatasetError) as refused:
        build_loaders(config, tiny, DistInfo())
    assert str(refused.value) == (
        f"--val-list {str(listed)!r} names 2 files that do not exist: "
        f"{str(old / 'n0' / 'a.JPEG')!r} (line 1), {str(old / 'n1' / 'b.JPEG')!r} (line 2); "
        "not one of them exists: if the dataset moved, write the list anew where it is now "
        "(`python -m dali_cutmix.scan ROOT --out DIR` writes one for the dataset ROOT: "
        "DIR/files.txt) and give it as --val-list."
    )


@pytest.mark.parametrize("loader", ["dali", "torchvision"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_a_label_beyond_the_classes_is_named_with_the_list_and_data_flags(
    tiny, loader, split
) -> None:
    # it said "give the dataset folder the list was written for as the root, or no root"
    listed = tiny / "out" / f"{split}-labels.txt"
    listed.parent.mkdir(exist_ok=True)
    kept = sorted(p.relative_to(tiny / split) for p in (tiny / split).rglob("*.JPEG"))
    listed.write_text(f"{kept[0]} 0\n{kept[-1]} 7\n")
    config = _config(tiny, loader, f"--{split}-list", str(listed))
    with pytest.raises(DatasetError) as refused:
        build_loaders(config, tiny, DistInfo())
    classes = len(config.data.classes)
    assert str(refused.value) == (
        f"--{split}-list {str(listed)!r} line 2 has label 7 but {str(tiny / split)!r} has only "
        f"{classes} class folders (labels 0 to {classes - 1}); give as --data the dataset the "
        f"--{split}-list was written for."
    )
