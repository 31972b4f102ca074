"""make_loader's recipe: ImageNetOptions given whole, as its fields, or both."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipelines.imagenet import ImageNetOptions, imagenet_options, make_loader
from tests.conftest import same_batches, small_loader

FIELDS = (
    "train, crop_size, resize_size, mix, output_layout, dtype, random_area, "
    "random_aspect_ratio, augment, interpolation"
)


def test_fields_replace_the_options_fields() -> None:
    options = ImageNetOptions(train=False, crop_size=64, resize_size=72)
    assert imagenet_options(options, resize_size=80) == ImageNetOptions(
        train=False, crop_size=64, resize_size=80
    )
    assert imagenet_options(train=True, crop_size=8) == ImageNetOptions(train=True, crop_size=8)
    assert imagenet_options(options) == options
    with pytest.raises(ValueError, match=re.escape("resize_size (32) must be >= crop_size (64)")):
        imagenet_options(options, resize_size=32)


@pytest.mark.parametrize(
    ("options", "fields", "message"),
    [
        (
            None,
            {"train": True, "workers": 2},
            f"unknown keyword 'workers': neither a loader setting nor a field of "
            f"ImageNetOptions ({FIELDS})",
        ),
        (
            ImageNetOptions(train=True),
            {"crop": 8, "resize": 8},
            "unknown keyword 'crop', 'resize': ",
        ),
        (None, {"crop_size": 8}, "give train=True or train=False, or options"),
    ],
    ids=["unknown", "two-unknown", "no-train"],
)
def test_a_keyword_that_is_no_field_is_named(
    options: ImageNetOptions | None, fields: dict, message: str
) -> None:
    with pytest.raises(TypeError, match=re.escape(message)):
        imagenet_options(options, **fields)
    with pytest.raises(TypeError, match=re.escape(message)):  # before any file is listed
        make_loader(None, options, batch_size=4, device="cpu", **fields)


def test_options_given_whole_or_as_fields_make_the_same_loader(image_folder: Path) -> None:
    fields = small_loader(image_folder)
    options = ImageNetOptions(train=True, crop_size=32, resize_size=40)
    whole = make_loader(
        image_folder, options, batch_size=4, device="cpu", num_threads=1, crop_size=8, resize_size=8
    )
    assert same_batches(list(whole), list(fields))
