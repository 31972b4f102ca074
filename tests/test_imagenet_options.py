"""make_loader's recipe: ImageNetOptions given whole, as its fields, or both."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipelines.imagenet import GpuDecoderOptions, ImageNetOptions, imagenet_options, make_loader
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
        (  # make_loader(root, True, ...): "replace() should be called on dataclass instances"
            True,
            {},
            "options (make_loader's second argument) must be an ImageNetOptions or None, got "
            "True; give the recipe's fields as keywords (train=True, crop_size=...) and a file "
            "list as file_list=...",
        ),
    ],
    ids=["unknown", "two-unknown", "no-train", "not-options"],
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


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"train": "no"}, "train must be True or False, got 'no'"),
        ({"train": 1}, "train must be True or False, got 1"),
        ({"crop_size": 8.0}, "crop_size must be an int >= 1, got 8.0"),
        # DALI's resize wrapped 2**31 round: images of 1 x 1, without a word
        ({"crop_size": 2**31}, "crop_size must be an int from 1 to 32768, got 2147483648"),
        ({"resize_size": 2**15 + 1}, "resize_size must be an int from 1 to 32768, got 32769"),
        (
            {"random_area": 5},
            "random_area must be (min, max) with 0 < min <= max <= 1, got 5",
        ),
        (
            {"random_area": (0.1, "x")},
            "random_area must be (min, max) with 0 < min <= max <= 1, got (0.1, 'x')",
        ),
        (
            {"random_area": (0.1, 1.5)},
            "random_area must be (min, max) with 0 < min <= max <= 1, got (0.1, 1.5)",
        ),
        (
            {"random_aspect_ratio": (0.5, float("inf"))},
            "random_aspect_ratio must be (min, max) with 0 < min <= max < inf, got (0.5, inf)",
        ),
        (
            {"mix": {"num_classes": 3}},
            "mix must be a MixConfig or None, got {'num_classes': 3} "
            "(MixConfig.from_dict makes one)",
        ),
        ({"augment": "ta_wide"}, "augment must be an AugmentConfig or None, got 'ta_wide'"),
    ],
)
def test_bad_option_types_are_named(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ImageNetOptions(**{"train": True} | fields)
    with pytest.raises(ValueError, match=re.escape(message)):  # before any file is listed
        make_loader(None, batch_size=4, device="cpu", **{"train": True} | fields)


def test_numpy_option_values_are_stored_as_python_numbers() -> None:
    options = ImageNetOptions(
        train=True,
        crop_size=np.int64(8),
        resize_size=np.int32(9),
        random_area=np.array([0.25, 0.5]),
    )
    assert options == ImageNetOptions(
        train=True, crop_size=8, resize_size=9, random_area=(0.25, 0.5)
    )
    assert type(options.crop_size) is int and type(options.random_area[0]) is float
    decoder = GpuDecoderOptions(hw_decoder_load=np.float32(0.5), preallocate_width_hint=np.int64(7))
    assert decoder == GpuDecoderOptions(hw_decoder_load=0.5, preallocate_width_hint=7)
    assert type(decoder.hw_decoder_load) is float and type(decoder.preallocate_width_hint) is int


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hw_decoder_load": "x"}, "hw_decoder_load must be a finite number, got 'x'"),
        ({"hw_decoder_load": 1.5}, "hw_decoder_load must be in [0, 1], got 1.5"),
        ({"host_memory_padding": 1.5}, "host_memory_padding must be an int >= 0, got 1.5"),
    ],
)
def test_bad_decoder_options_are_named(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        GpuDecoderOptions(**fields)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_threads": 0}, "num_threads must be an int >= 1, got 0"),
        ({"num_threads": -2}, "num_threads must be an int >= 1, got -2"),
        ({"num_threads": 1.5}, "num_threads must be an int >= 1, got 1.5"),
        ({"num_threads": "2"}, "num_threads must be an int >= 1, got '2'"),
        ({"prefetch_queue_depth": 1.5}, "prefetch_queue_depth must be an int >= 1, got 1.5"),
        ({"prefetch_queue_depth": 0}, "prefetch_queue_depth must be an int >= 1, got 0"),
        ({"batch_size": np.float64(4)}, "batch_size must be an int >= 1, got np.float64(4.0)"),
        ({"seed": np.int64(-1)}, "seed must be an int in [0, 2**32), got np.int64(-1)"),
        ({"seed": 1.0}, "seed must be an int in [0, 2**32), got 1.0"),
        ({"decoder": {"hw_decoder_load": 0.5}}, "decoder must be a GpuDecoderOptions or None, got"),
    ],
)
def test_bad_loader_settings_are_named_before_any_file_is_listed(
    settings: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make_loader(None, **{"train": True, "batch_size": 4, "device": "cpu"} | settings)


def test_numpy_loader_settings_make_the_loader_of_python_ints(image_folder: Path) -> None:
    numpy = small_loader(
        image_folder, batch_size=np.int64(4), seed=np.int64(3), crop_size=np.int64(8)
    )
    python = small_loader(image_folder, batch_size=4, seed=3, crop_size=8)
    assert type(numpy.batch_size) is int
    assert json.dumps(numpy.state_dict()["settings"]) == json.dumps(python.state_dict()["settings"])
    assert same_batches(list(numpy), list(python))


def test_dtype_takes_torch_s_spelling_too() -> None:
    import torch

    from pipelines.imagenet import DType

    assert imagenet_options(train=True, dtype=torch.float16).dtype is DType.FLOAT16
    assert imagenet_options(train=True, dtype=torch.float32).dtype is DType.FLOAT32
    assert imagenet_options(train=True, dtype="float16").dtype is DType.FLOAT16
    with pytest.raises(ValueError) as caught:
        imagenet_options(train=True, dtype=torch.bfloat16)
    assert str(caught.value) == "dtype must be one of 'float32', 'float16', got torch.bfloat16"
