"""Frozen, validated configuration for the mixing graph functions.

Names and meanings follow timm's ``Mixup`` (``mixup_alpha``, ``cutmix_alpha``,
``cutmix_minmax``, ``prob``, ``switch_prob``, ``mode``, ``correct_lam``,
``label_smoothing``, ``num_classes``) so that a timm user reads them as before.
The defaults differ where the project's purpose asks for it: CutMix on,
MixUp off, per-sample draws (``mode="elem"``) and no label smoothing.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import numbers
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class Device(str, enum.Enum):
    """Where a pipeline decodes and augments, and a run trains: ``auto`` is the GPU
    where torch sees CUDA, else the CPU (:func:`resolve_device`)."""

    AUTO = "auto"
    CPU = "cpu"
    GPU = "gpu"

    @classmethod
    def _missing_(cls, value: object) -> Device | None:
        # torch's name for it, the spelling a PyTorch user types first
        return cls.GPU if value == "cuda" else None


def resolve_device(device: Device | str) -> Device:
    """``device`` as the CPU or the GPU: ``auto`` resolved (and logged), ``gpu`` checked.

    Imports torch only to look for CUDA, so ``cpu`` costs nothing.

    Raises:
        ValueError: ``gpu`` where torch sees no CUDA device, or not a device.
    """
    given = getattr(device, "value", device)
    device = _enum(Device, "device", device)
    if device is Device.CPU:
        return device
    import torch

    cuda = torch.cuda.is_available()
    if device is Device.AUTO:
        device = Device.GPU if cuda else Device.CPU
        logger.info(
            "device auto: CUDA %s, using the %s",
            "available" if cuda else "not available",
            device.value.upper(),
        )
    elif not cuda:
        raise ValueError(
            f"device must be 'cpu' or 'auto': torch sees no CUDA device here (got {given!r})"
        )
    return device


class MixMode(str, enum.Enum):
    """How random draws are shared across a batch (timm's ``mode``).

    * ``BATCH``: one decision, lambda and box for the whole batch; each sample
      is mixed with a random other sample (the paper's code).
    * ``PAIR``: the batch is flipped (sample ``i`` pairs with ``N-1-i``, as in
      timm) and each pair shares its draws. Needs full batches, which DALI
      readers always produce; in an odd batch the middle sample is left unmixed.
    * ``ELEM``: every sample draws its own partner, decision, lambda and box.
    """

    BATCH = "batch"
    PAIR = "pair"
    ELEM = "elem"


def _is_number(value: Any) -> bool:
    """True for a finite real number, Python's or NumPy's (``np.float32(0.5)``), not a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _check_range(
    name: str, value: Any, low: float, high: float, *, high_open: bool = False
) -> float:
    """``value`` as a Python float, checked: finite, in ``[low, high]`` (``[low, high)``).
    With no upper bound (``high`` infinite) the message says ``a finite number >= low``:
    ``[0.0, inf]`` would hold the infinity it refuses."""
    unbounded = math.isinf(high)
    if unbounded and not (_is_number(value) and value >= low):
        raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")
    if not _is_number(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (value >= high if high_open else value > high):
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value!r}")
    return float(value)


# The largest side of an image this project makes (crop and resize sizes, mix's size):
# its area, 2**30 pixels, still fits the int32 that DALI's shapes and boxes take. A side
# of 2**31 wrapped round in DALI's resize, which gave images of 1 x 1 without a word.
MAX_SIDE = 2**15


# The most classes: a float32 label (DALI's one_hot takes them) names each class exactly
# only up to 2**24, and past it a target row alone is 64 MiB per sample. 2**40 classes
# failed while the graph was built, with NumPy's "Unable to allocate 4.00 TiB".
MAX_CLASSES = 2**24


def _check_bool(name: str, value: Any) -> bool:
    """``value``, checked to be True or False (None or "no" read as a choice before)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as a Python int, checked to be an integer (Python's or NumPy's) ``>= low``
    (and ``<= high``, where given)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be an int from {low} to {high}, got {value!r}")
    return int(value)


# The largest Beta parameter: DALI's ``random.beta(a, a)`` adds the two in float32, and
# from half of float32's largest number on the sum was inf and every draw 0 (no mixing,
# without a word).
MAX_ALPHA = float(np.finfo(np.float32).max) / 2


def _check_float32(name: str, value: float, *, off: bool = True) -> None:
    """A finite number ``>= 0`` that DALI or torch takes as float32 stays what it is there: a
    positive one neither 0 (1e-50) nor inf (1e39, which torch refused with a traceback,
    "value cannot be converted to type float without overflow"). ``off``: 0 is allowed
    and means off (the message says so)."""
    with np.errstate(over="ignore", under="ignore"):
        single = np.float32(value)
    if value > 0 and not 0 < single < math.inf:
        kind = "0 (off) or a positive float32" if off else "a positive float32"
        raise ValueError(f"{name} must be {kind}, got {value!r}, which is {single} in float32")


def _check_alpha(name: str, value: Any) -> float:
    """A Beta parameter: 0 (off) or a positive number that stays positive in float32, which
    DALI's ``random.beta`` takes (1e-50 would reach it as 0 and fail it), and at most
    :data:`MAX_ALPHA`."""
    alpha = _check_range(name, value, 0.0, math.inf)
    _check_float32(name, alpha)
    if alpha > MAX_ALPHA:
        raise ValueError(
            f"{name} must be at most {MAX_ALPHA:.4g} (float32's largest / 2), got {value!r}"
        )
    return alpha


def _two(name: str, value: Any, allowed: str) -> tuple[Any, Any]:
    """``value`` (a tuple, list or array) as a 2-tuple; ``allowed`` says what is, if it is not."""
    try:
        pair = tuple(value)
    except TypeError:
        pair = ()
    if isinstance(value, (str, bytes)) or len(pair) != 2:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return pair


def _check_minmax(value: Any) -> tuple[float, float]:
    pair = _two("cutmix_minmax", value, "(min, max)")
    low, high = (_check_range("cutmix_minmax", bound, 0.0, 1.0) for bound in pair)
    if low > high:
        raise ValueError(f"cutmix_minmax must have min <= max, got {value!r}")
    return low, high


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: ``{"mix": {"cutmix_alpha": 1.0}}`` as
    ``{"mix.cutmix_alpha": 1.0}`` (a configuration's fields, named in messages)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _store(config: Any, **values: Any) -> None:
    """Sets fields of a frozen dataclass to their checked, converted values."""
    for name, value in values.items():
        object.__setattr__(config, name, value)


@dataclasses.dataclass(frozen=True)
class MixConfig:
    """What mixing to apply, with timm's names and meanings.

    Attributes:
        num_classes: number of classes; targets have shape ``[num_classes]``.
        mixup_alpha: Beta(alpha, alpha) parameter of MixUp; 0 turns MixUp off.
        cutmix_alpha: Beta(alpha, alpha) parameter of CutMix; 0 turns CutMix off.
        cutmix_minmax: ``(min, max)`` fractions of each side for the CutMix box,
            drawn uniformly instead of from lambda (turns CutMix on, as in timm).
        prob: probability of mixing a sample (elem/pair) or a batch (batch).
        switch_prob: with both CutMix and MixUp on, probability of CutMix.
        mode: ``"batch"``, ``"pair"`` or ``"elem"``; see :class:`MixMode`.
        correct_lam: label weight = exact pasted-pixel fraction of the clipped
            box (the paper's code and timm's default). ``False`` keeps the drawn
            lambda, so labels no longer match pixels when the box is clipped;
            it needs the paper's box, so it is refused with ``cutmix_minmax``
            (whose box has no lambda: timm weights it by its area whatever
            ``correct_lam`` says).
        label_smoothing: timm's smoothing: off = s / num_classes, on = 1 - s + off.
    """

    num_classes: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 1.0
    cutmix_minmax: tuple[float, float] | None = None
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: MixMode = MixMode.ELEM
    correct_lam: bool = True
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        _store(
            self,
            num_classes=_check_int("num_classes", self.num_classes, 1, MAX_CLASSES),
            mixup_alpha=_check_alpha("mixup_alpha", self.mixup_alpha),
            cutmix_alpha=_check_alpha("cutmix_alpha", self.cutmix_alpha),
            prob=_check_range("prob", self.prob, 0.0, 1.0),
            switch_prob=_check_range("switch_prob", self.switch_prob, 0.0, 1.0),
            label_smoothing=_check_range(
                "label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True
            ),
        )
        if not isinstance(self.correct_lam, bool):
            raise ValueError(f"correct_lam must be True or False, got {self.correct_lam!r}")
        try:
            object.__setattr__(self, "mode", MixMode(self.mode))
        except ValueError:
            allowed = ", ".join(m.value for m in MixMode)
            raise ValueError(f"mode must be one of {allowed}, got {self.mode!r}") from None
        if self.cutmix_minmax is not None:
            _store(self, cutmix_minmax=_check_minmax(self.cutmix_minmax))
            if not self.correct_lam:
                raise ValueError(
                    f"cutmix_minmax={self.cutmix_minmax!r} draws box sides with no lambda to keep:"
                    " its label weight is always the box's area (timm's rule), so correct_lam"
                    " cannot be turned off with it"
                )

    @property
    def cutmix_enabled(self) -> bool:
        return self.cutmix_alpha > 0 or self.cutmix_minmax is not None

    @property
    def mixup_enabled(self) -> bool:
        return self.mixup_alpha > 0

    @property
    def enabled(self) -> bool:
        """True when any mixing can happen (``prob > 0`` and a method is on)."""
        return self.prob > 0 and (self.cutmix_enabled or self.mixup_enabled)

    @property
    def soft(self) -> bool:
        """True when targets are soft vectors: mixing can happen, or labels are smoothed
        (``mix`` smooths a disabled configuration's one-hot targets too)."""
        return self.enabled or self.label_smoothing > 0

    @property
    def cutmix_share(self) -> float:
        """Probability that a mixed sample uses CutMix rather than MixUp."""
        if not self.cutmix_enabled:
            return 0.0
        return self.switch_prob if self.mixup_enabled else 1.0

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["mode"] = self.mode.value
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MixConfig:
        """The configuration ``to_dict`` wrote; an unknown field raises ValueError naming it."""
        return _from_dict(cls, data)


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    if not isinstance(data, dict):  # None was "'NoneType' object is not iterable"
        raise ValueError(f"a {cls.__name__} is the dict to_dict() returns, got {data!r}")
    fields = dataclasses.fields(cls)
    unknown = sorted(set(data) - {f.name for f in fields})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    required = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in data
    ]
    if required:  # a TypeError of __init__ ("missing 1 required positional argument")
        raise ValueError(f"the {cls.__name__} lacks {', '.join(required)}")
    return cls(**data)


# ----------------------------------------------------------------------------- augmentation


class AutoAugment(str, enum.Enum):
    """Automatic augmentation policies, with torchvision's ``--auto-augment`` names.

    * ``TA_WIDE``: TrivialAugmentWide (one op of 31 magnitude bins per image).
    * ``RA``: RandAugment (``ra_num_ops`` ops at magnitude ``ra_magnitude``).
    * ``IMAGENET``: AutoAugment's ImageNet policy.

    All three are DALI's ``nvidia.dali.auto_aug`` graph functions.
    """

    TA_WIDE = "ta_wide"
    RA = "ra"
    IMAGENET = "imagenet"


class EraseMode(str, enum.Enum):
    """RandomErasing's fill (timm's ``--remode``), in normalized units.

    * ``CONST``: zeros (torchvision's ``value=0``, timm's ``const``).
    * ``RAND``: one standard normal value per channel (timm's ``rand``).
    * ``PIXEL``: one standard normal value per pixel and channel (timm's ``pixel``).
    """

    CONST = "const"
    RAND = "rand"
    PIXEL = "pixel"


class Interpolation(str, enum.Enum):
    """Resampling of the resizes and of the automatic augmentations' warps (torchvision's names)."""

    BILINEAR = "bilinear"
    NEAREST = "nearest"
    BICUBIC = "bicubic"


# torchvision's RandAugment and AutoAugment translate by up to 150/331 of the image side.
TORCHVISION_TRANSLATE = 150 / 331
TIMM_TRANSLATE = 0.45
# timm's magnitudes run 0..10 (_LEVEL_DENOM); torchvision's over 31 bins, 0..30.
TIMM_MAGNITUDE_BINS = 11


def _check_interval(name: str, value: Any, low: float, high: float) -> tuple[float, float]:
    """``value`` as ``(min, max)`` Python floats, finite, with ``low < min <= max <= high``
    (``high`` may be ``inf``: the bounds are finite all the same)."""
    upper = "< inf" if high == math.inf else f"<= {high}"
    allowed = f"(min, max) with {low} < min <= max {upper}"
    pair = _two(name, value, allowed)
    if not all(map(_is_number, pair)) or not low < pair[0] <= pair[1] <= high:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(pair[0]), float(pair[1])


# RandAugment's most ops per image. Each is a branch over 14 ops in the graph: 16 took
# 5.5 s to build on the 2-core machine, 1,000,000 would take days (the recipes use 2 or 3).
MAX_RA_NUM_OPS = 16


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Per-sample augmentations between the random-resized crop and the mixing.

    The order is torchvision's: crop, ``auto_augment`` (uint8 pixels), normalize,
    RandomErasing (normalized pixels), then CutMix/MixUp on the batch. The flip is
    fused into the normalization, after ``auto_augment`` (whose warps take either sign
    alike, so that changes no distribution; README: the recipe).

    Attributes:
        auto_augment: a policy, or ``None`` for none.
        ra_num_ops: RandAugment's ops per image (torchvision's ``num_ops``).
        ra_magnitude: RandAugment's magnitude bin, ``0 <= m < num_magnitude_bins``.
        num_magnitude_bins: RandAugment's bins (torchvision 31; timm's 0..10 scale is 11).
        ra_increasing: RandAugment's ops grow stronger with the magnitude (timm's
            ``inc1``, torchvision's only kind); ``False`` is timm's original suite.
        max_translate_rel: RandAugment's and AutoAugment's largest shift as a
            fraction of the side (torchvision 150/331, timm 0.45). TrivialAugmentWide
            shifts by up to 32 pixels, as in torchvision.
        fill_value: the value (0..255, all channels) of pixels that rotate, shear
            and translate uncover (torchvision: 0).
        random_erase: RandomErasing's probability per sample; 0 turns it off.
        erase_mode: the fill; see :class:`EraseMode`.
        erase_scale: range of the erased area as a fraction of the image
            (torchvision 0.02-0.33, timm 0.02-1/3), drawn uniformly.
        erase_ratio: range of the erased box's aspect ratio h/w (torchvision
            0.3-3.3, timm 0.3-1/0.3), drawn log-uniformly.
    """

    auto_augment: AutoAugment | None = None
    ra_num_ops: int = 2
    ra_magnitude: int = 9
    num_magnitude_bins: int = 31
    ra_increasing: bool = True
    max_translate_rel: float = TORCHVISION_TRANSLATE
    fill_value: int = 0
    random_erase: float = 0.0
    erase_mode: EraseMode = EraseMode.CONST
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)

    def __post_init__(self) -> None:
        if self.auto_augment is not None:
            object.__setattr__(
                self, "auto_augment", _enum(AutoAugment, "auto_augment", self.auto_augment)
            )
        object.__setattr__(self, "erase_mode", _enum(EraseMode, "erase_mode", self.erase_mode))
        _store(
            self,
            ra_num_ops=_check_int("ra_num_ops", self.ra_num_ops, 0),
            num_magnitude_bins=_check_int("num_magnitude_bins", self.num_magnitude_bins, 2),
            ra_magnitude=_check_int("ra_magnitude", self.ra_magnitude, 0),
        )
        if self.ra_num_ops > MAX_RA_NUM_OPS:
            raise ValueError(
                f"ra_num_ops must be at most {MAX_RA_NUM_OPS} (each op adds about 0.35 s to "
                f"the graph's build), got {self.ra_num_ops}"
            )
        if self.ra_magnitude >= self.num_magnitude_bins:
            raise ValueError(
                f"ra_magnitude must be < num_magnitude_bins ({self.num_magnitude_bins}), "
                f"got {self.ra_magnitude}"
            )
        if not isinstance(self.ra_increasing, bool):
            raise ValueError(f"ra_increasing must be True or False, got {self.ra_increasing!r}")
        _store(
            self,
            max_translate_rel=_check_range("max_translate_rel", self.max_translate_rel, 0.0, 1.0),
            fill_value=_check_int("fill_value", self.fill_value, 0),
        )
        if self.fill_value > 255:
            raise ValueError(f"fill_value must be in [0, 255], got {self.fill_value}")
        _store(
            self,
            random_erase=_check_range("random_erase", self.random_erase, 0.0, 1.0),
            erase_scale=_check_interval("erase_scale", self.erase_scale, 0, 1),
            erase_ratio=_check_interval("erase_ratio", self.erase_ratio, 0, math.inf),
        )

    @property
    def auto_augmenting(self) -> bool:
        """True when a policy is set (RandAugment with 0 ops is the identity, not counted)."""
        if self.auto_augment is AutoAugment.RA:
            return self.ra_num_ops > 0
        return self.auto_augment is not None

    @property
    def enabled(self) -> bool:
        """True when any augmentation changes the images."""
        return self.auto_augmenting or self.erasing

    @property
    def erasing(self) -> bool:
        return self.random_erase > 0

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["auto_augment"] = self.auto_augment.value if self.auto_augment else None
        data["erase_mode"] = self.erase_mode.value
        data["erase_scale"] = list(self.erase_scale)
        data["erase_ratio"] = list(self.erase_ratio)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        """The configuration ``to_dict`` wrote; an unknown field raises ValueError naming it."""
        return _from_dict(cls, data)


def _enum(kind: type[enum.Enum], name: str, value: Any) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in kind)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}") from None


def check_warp_interpolation(interpolation: Interpolation | str) -> Interpolation:
    """``interpolation`` for the automatic augmentations' warps, checked: they are bilinear
    or nearest only, DALI's and torchvision's alike, so bicubic raises ValueError (the one
    refusal of the pipeline, the torchvision loader and ``python -m train``)."""
    interpolation = _enum(Interpolation, "interpolation", interpolation)
    if interpolation is Interpolation.BICUBIC:
        raise ValueError(
            "interpolation (bicubic) cannot be used with auto_augment: the automatic "
            "augmentations warp with bilinear or nearest interpolation only (DALI's and "
            "torchvision's alike); use bilinear or nearest"
        )
    return interpolation


_TIMM_AA_HELP = (
    "supported: rand-m<M>[-n<N>][-inc<0|1>][-mstd0] (RandAugment, M in 0..10) and "
    "original[-mstd0] (AutoAugment's ImageNet policy)"
)


def timm_auto_augment(spec: str) -> dict[str, Any]:
    """:class:`AugmentConfig` fields for one of timm's ``--aa`` strings.

    ``rand-m9-n2-inc1`` is RandAugment with 2 ops at magnitude 9 of timm's 0..10
    (11 bins), increasing ops, shifts up to 0.45 of the side and a fill of 128
    (timm fills with the ImageNet mean per channel; DALI takes one value).
    ``original`` is AutoAugment's ImageNet policy.

    Raises:
        ValueError: what DALI cannot honour, named: magnitude noise
            (``mstd`` > 0), ``mmax``, op weights (``w``) or probability (``p``),
            timm's own policies (``v0``, ``v0r``, ``originalr``) and AugMix.
    """
    if not isinstance(spec, str):  # None, 5: an AttributeError on strip
        raise ValueError(f"--aa must be a string such as 'rand-m9-n2-inc1', got {spec!r}")
    parts = spec.strip().split("-")
    name, options = parts[0], parts[1:]
    if name == "augmix":
        raise ValueError(f"--aa {spec}: AugMix is not in DALI's auto_aug; {_TIMM_AA_HELP}")
    if name not in ("rand", "original"):
        raise ValueError(f"--aa {spec}: unknown or unsupported policy {name!r}; {_TIMM_AA_HELP}")
    fields: dict[str, Any] = {
        "max_translate_rel": TIMM_TRANSLATE,
        "fill_value": 128,
        "auto_augment": AutoAugment.RA if name == "rand" else AutoAugment.IMAGENET,
    }
    if name == "rand":  # timm's defaults: 2 ops at magnitude 10, non-increasing ops
        fields |= {
            "num_magnitude_bins": TIMM_MAGNITUDE_BINS,
            "ra_magnitude": TIMM_MAGNITUDE_BINS - 1,
            "ra_num_ops": 2,
            "ra_increasing": False,
        }
    for option in options:
        # "M9" (a capital: no match for [a-z], an AttributeError) is refused as timm does
        key, value = re.fullmatch(r"([A-Za-z]*)(.*)", option, flags=re.DOTALL).groups()
        if key == "mstd":
            if not re.fullmatch(r"0*\.?0*", value) or not value.strip("."):
                raise ValueError(
                    f"--aa {spec}: magnitude noise ({option}) cannot be honoured, DALI's "
                    f"RandAugment uses one fixed magnitude; drop it or write mstd0"
                )
        elif name == "rand" and key == "m" and value.isdigit() and int(value) <= 10:
            fields["ra_magnitude"] = int(value)
        elif name == "rand" and key == "n" and value.isdigit():
            if int(value) > MAX_RA_NUM_OPS:
                raise ValueError(
                    f"--aa {spec}: at most {MAX_RA_NUM_OPS} ops (n{MAX_RA_NUM_OPS}; each adds "
                    "about 0.35 s to the graph's build)"
                )
            fields["ra_num_ops"] = int(value)
        elif name == "rand" and key == "inc" and value in ("0", "1"):
            fields["ra_increasing"] = value == "1"
        else:
            raise ValueError(f"--aa {spec}: {option!r} cannot be honoured; {_TIMM_AA_HELP}")
    return fields


# ---- what both loaders take alike ------------------------------------------------------------


def _check_instance(name: str, value: Any, kind: type) -> None:
    """``value`` is ``None`` or a ``kind``; a ValueError naming ``name`` and ``kind`` if not."""
    if value is None or isinstance(value, kind):
        return
    article = "an" if kind.__name__[0] in "AEIOU" else "a"
    from_dict = isinstance(value, dict) and hasattr(kind, "from_dict")
    hint = f" ({kind.__name__}.from_dict makes one)" if from_dict else ""
    raise ValueError(f"{name} must be {article} {kind.__name__} or None, got {value!r}{hint}")


def resolve_shard(shard_id: int | None, num_shards: int | None) -> tuple[int, int]:
    """``(shard_id, num_shards)``: as given, else torchrun's ``RANK`` / ``WORLD_SIZE``, else (0, 1).

    Raises:
        ValueError: only one of the two given, or ``shard_id`` outside ``[0, num_shards)``.
    """
    if (shard_id is None) != (num_shards is None):
        raise ValueError(
            f"give both shard_id and num_shards or neither, got {shard_id!r}, {num_shards!r}"
        )
    if shard_id is None:
        shard_id, num_shards = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
        if not 0 <= shard_id < num_shards:  # neither was given: name where they came from
            raise ValueError(
                f"the environment's RANK={os.environ.get('RANK', '(unset)')} and WORLD_SIZE="
                f"{os.environ.get('WORLD_SIZE', '(unset)')} give no shard (need 0 <= RANK < "
                "WORLD_SIZE, as torchrun sets them); unset them, or give shard_id and num_shards"
            )
    for name, value in (("shard_id", shard_id), ("num_shards", num_shards)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be an int, got {value!r}")
    shard_id, num_shards = int(shard_id), int(num_shards)  # NumPy's too, as Python ints
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise ValueError(f"need 0 <= shard_id < num_shards, got {shard_id}, {num_shards}")
    return shard_id, num_shards


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"the environment's {name}={value!r} is not an int") from None


def check_seed(seed: Any) -> int:
    """``seed`` as an int in ``[0, 2**32)``; a ValueError naming it otherwise.

    DALI takes -1 for "a random seed": a negative one would silently lose determinism.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    return int(seed)
