"""MixConfig validation: every bad value is a ValueError that names it."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest

from dali_cutmix import MixConfig, MixMode
from dali_cutmix.config import MAX_ALPHA


def test_defaults_are_cutmix_per_sample_without_smoothing() -> None:
    config = MixConfig(num_classes=1000)
    assert config.cutmix_alpha == 1.0 and config.mixup_alpha == 0.0
    assert config.mode is MixMode.ELEM and config.prob == 1.0 and config.label_smoothing == 0.0
    assert config.enabled and config.cutmix_enabled and not config.mixup_enabled
    assert config.cutmix_share == 1.0


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("num_classes", 0, "num_classes"),
        ("num_classes", 2.5, "num_classes"),
        ("num_classes", True, "num_classes"),
        ("mixup_alpha", -0.1, "mixup_alpha"),
        ("cutmix_alpha", float("nan"), "cutmix_alpha"),
        ("prob", 1.5, "prob"),
        ("switch_prob", -1, "switch_prob"),
        ("label_smoothing", 1.0, "label_smoothing"),
        ("mode", "sample", "mode must be one of batch, pair, elem"),
        ("cutmix_minmax", (0.5, 0.2), "min <= max"),
        ("cutmix_minmax", (0.1, 1.2), "cutmix_minmax"),
        ("cutmix_minmax", (0.1,), "cutmix_minmax"),
        ("correct_lam", "yes", "correct_lam"),
    ],
)
def test_bad_values_are_named(field: str, value: object, fragment: str) -> None:
    kwargs = {"num_classes": 10, field: value}
    with pytest.raises(ValueError, match=fragment) as info:
        MixConfig(**kwargs)
    assert repr(value) in str(info.value) or field == "mode" or field == "cutmix_minmax"


def test_mode_accepts_strings_and_is_frozen() -> None:
    config = MixConfig(num_classes=3, mode="pair")
    assert config.mode is MixMode.PAIR
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.prob = 0.5  # type: ignore[misc]
    assert dataclasses.replace(config, prob=0.5).prob == 0.5


def test_switching_share_and_minmax_turn_cutmix_on() -> None:
    both = MixConfig(num_classes=3, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.25)
    assert both.cutmix_share == 0.25
    assert MixConfig(num_classes=3, mixup_alpha=0.8, cutmix_alpha=0.0).cutmix_share == 0.0
    minmax = MixConfig(num_classes=3, cutmix_alpha=0.0, cutmix_minmax=[0.2, 0.8])
    assert minmax.cutmix_enabled and minmax.cutmix_minmax == (0.2, 0.8)
    assert not MixConfig(num_classes=3, cutmix_alpha=0.0).enabled
    assert not MixConfig(num_classes=3, prob=0.0).enabled


def test_minmax_refuses_correct_lam_off_which_it_could_not_honour() -> None:
    # timm weights a minmax box by its area whatever correct_lam says; keeping a lambda that
    # was never drawn would paste a box and leave the target one-hot.
    with pytest.raises(ValueError) as info:
        MixConfig(num_classes=3, cutmix_minmax=(0.3, 0.6), correct_lam=False)
    assert str(info.value) == (
        "cutmix_minmax=(0.3, 0.6) draws box sides with no lambda to keep: its label weight is "
        "always the box's area (timm's rule), so correct_lam cannot be turned off with it"
    )
    assert not MixConfig(num_classes=3, correct_lam=False).correct_lam


def test_json_round_trip_and_unknown_fields() -> None:
    config = MixConfig(num_classes=5, mixup_alpha=0.2, mode="batch", cutmix_minmax=(0.1, 0.3))
    again = MixConfig.from_dict(json.loads(config.to_json()))
    assert again == config
    with pytest.raises(ValueError, match="unknown MixConfig field"):
        MixConfig.from_dict({"num_classes": 5, "alpha": 1.0})
    # a TypeError of __init__, and of iterating None, before
    with pytest.raises(ValueError, match="^the MixConfig lacks num_classes$"):
        MixConfig.from_dict({"cutmix_alpha": 1.0})
    with pytest.raises(ValueError, match=r"^a MixConfig is the dict to_dict\(\) returns, got None"):
        MixConfig.from_dict(None)


def test_resolve_device_checks_and_resolves_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from dali_cutmix import Device, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") is Device.CPU
    assert resolve_device(Device.AUTO) is Device.CPU
    with pytest.raises(ValueError) as gpu:
        resolve_device("gpu")
    assert str(gpu.value) == (
        "device must be 'cpu' or 'auto': torch sees no CUDA device here (got 'gpu')"
    )
    with pytest.raises(ValueError) as tpu:
        resolve_device("tpu")
    assert str(tpu.value) == "device must be one of 'auto', 'cpu', 'gpu', got 'tpu'"
    # torch's name, the one a PyTorch user types: the GPU (it was refused as no device)
    with pytest.raises(ValueError) as cuda:
        resolve_device("cuda")
    assert str(cuda.value).endswith("torch sees no CUDA device here (got 'cuda')")
    with pytest.raises(ValueError, match="got 'cuda:1'"):  # an index would be dropped: refused
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (resolve_device("auto"), resolve_device("gpu")) == (Device.GPU, Device.GPU)
    assert resolve_device("cuda") is Device.GPU


def test_numpy_scalars_are_accepted_and_stored_as_python_numbers() -> None:
    config = MixConfig(
        num_classes=np.int64(10),
        mixup_alpha=np.float64(0.2),
        cutmix_alpha=np.int32(1),
        prob=np.float32(0.5),
        switch_prob=np.float16(0.25),
        label_smoothing=np.float32(0.125),
        cutmix_minmax=np.array([0.25, 0.5], dtype=np.float32),
    )
    assert config == MixConfig(
        num_classes=10,
        mixup_alpha=0.2,
        cutmix_alpha=1.0,
        prob=0.5,
        switch_prob=0.25,
        label_smoothing=0.125,
        cutmix_minmax=(0.25, 0.5),
    )
    assert type(config.num_classes) is int and type(config.prob) is float
    assert type(config.cutmix_minmax[0]) is float
    assert MixConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_augment_numpy_scalars_are_stored_as_python_numbers() -> None:
    from dali_cutmix.config import AugmentConfig

    config = AugmentConfig(
        ra_num_ops=np.int64(3),
        fill_value=np.uint8(128),
        random_erase=np.float32(0.25),
        erase_scale=(np.float32(0.125), np.float64(0.5)),
    )
    assert (config.ra_num_ops, config.fill_value, config.random_erase) == (3, 128, 0.25)
    assert [type(v) for v in (config.ra_num_ops, config.fill_value, config.random_erase)] == [
        int,
        int,
        float,
    ]
    data = json.loads(json.dumps(config.to_dict()))
    assert data["erase_scale"] == [0.125, 0.5]
    assert AugmentConfig.from_dict(data) == config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"num_classes": np.float64(10.0)},
            "num_classes must be an int >= 1, got np.float64(10.0)",
        ),
        ({"num_classes": np.bool_(True)}, "num_classes must be an int >= 1, got np.True_"),
        (
            {"num_classes": 2**40},
            "num_classes must be an int from 1 to 16777216, got 1099511627776",
        ),
        ({"prob": np.float32("nan")}, "prob must be a finite number, got np.float32(nan)"),
        ({"prob": np.float64(1.5)}, "prob must be in [0.0, 1.0], got np.float64(1.5)"),
        ({"cutmix_minmax": 5}, "cutmix_minmax must be (min, max), got 5"),
        ({"cutmix_minmax": "ab"}, "cutmix_minmax must be (min, max), got 'ab'"),
        ({"cutmix_minmax": (0.1, "x")}, "cutmix_minmax must be a finite number, got 'x'"),
        (
            {"mixup_alpha": 1e-50},
            "mixup_alpha must be 0 (off) or a positive float32, got 1e-50, which is 0.0 in float32",
        ),
        (
            {"cutmix_alpha": 1e-46},
            "cutmix_alpha must be 0 (off) or a positive float32, "
            "got 1e-46, which is 0.0 in float32",
        ),
        (
            {"cutmix_alpha": 1e39},
            "cutmix_alpha must be 0 (off) or a positive float32, "
            "got 1e+39, which is inf in float32",
        ),
        ({"cutmix_alpha": 10**400}, "cutmix_alpha must be a finite number >= 0.0, got 1000"),
        (  # DALI's random.beta(a, a) sums a + a in float32: inf, and no mixing, without a word
            {"mixup_alpha": 1.71e38},
            "mixup_alpha must be at most 1.701e+38 (float32's largest / 2), got 1.71e+38",
        ),
    ],
)
def test_bad_types_and_float32_alphas_are_named(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        MixConfig(**{"num_classes": 3} | fields)


def test_the_smallest_float32_alphas_are_kept() -> None:
    tiny = float(np.finfo(np.float32).smallest_subnormal)
    assert MixConfig(num_classes=3, mixup_alpha=tiny).mixup_alpha == tiny
    assert MixConfig(num_classes=3, cutmix_alpha=MAX_ALPHA).cutmix_alpha == MAX_ALPHA
    with pytest.raises(ValueError, match="cutmix_alpha must be at most 1.701e"):
        MixConfig(num_classes=3, cutmix_alpha=float(np.nextafter(MAX_ALPHA, math.inf)))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"erase_scale": 5}, "erase_scale must be (min, max) with 0 < min <= max <= 1, got 5"),
        (
            {"erase_scale": "ab"},
            "erase_scale must be (min, max) with 0 < min <= max <= 1, got 'ab'",
        ),
        (
            {"erase_scale": (0.1, float("nan"))},
            "erase_scale must be (min, max) with 0 < min <= max <= 1, got (0.1, nan)",
        ),
        (
            {"erase_ratio": ("a", "b")},
            "erase_ratio must be (min, max) with 0 < min <= max < inf, got ('a', 'b')",
        ),
        (
            {"random_erase": 1.0, "erase_ratio": (0.3, float("inf"))},
            "erase_ratio must be (min, max) with 0 < min <= max < inf, got (0.3, inf)",
        ),
        (
            {"erase_ratio": (True, 2)},
            "erase_ratio must be (min, max) with 0 < min <= max < inf, got (True, 2)",
        ),
        ({"ra_num_ops": np.float32(2)}, "ra_num_ops must be an int >= 0, got np.float32(2.0)"),
        (
            {"ra_num_ops": 17},
            "ra_num_ops must be at most 16 (each op adds about 0.35 s to the graph's build), "
            "got 17",
        ),
    ],
)
def test_augment_bad_intervals_and_types_are_named(fields: dict, message: str) -> None:
    from dali_cutmix.config import AugmentConfig

    with pytest.raises(ValueError, match=re.escape(message)):
        AugmentConfig(**fields)
