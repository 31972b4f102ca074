"""The per-sample augmentations of today's ImageNet recipes, inside a DALI graph.

torchvision's ResNet-50 recipe (TrivialAugmentWide, RandomErasing, MixUp /
CutMix, label smoothing) and timm's (RandAugment, RandomErasing) apply these
to each image before the batch is mixed:

* :func:`auto_augment`: TrivialAugmentWide (Muller and Hutter, ICCV 2021),
  RandAugment (Cubuk et al., CVPR-W 2020) and AutoAugment's ImageNet policy
  (Cubuk et al., CVPR 2019), all DALI's own ``nvidia.dali.auto_aug`` graph
  functions with torchvision's parameters, on uint8 HWC crops.
* :func:`random_erase`: RandomErasing (Zhong et al., AAAI 2020) on normalized
  HWC images, with torchvision's draw of the box (``RandomErasing.get_params``).

Both run on the CPU and the GPU alike. The automatic augmentations use DALI's
conditional execution: the pipeline needs ``enable_conditionals=True``
(:func:`needs_conditionals`). The project's other graph functions have no
data-dependent Python branches and are marked ``do_not_convert``, so that
AutoGraph leaves them as written.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
from nvidia.dali.auto_aug import auto_augment as _auto_augment
from nvidia.dali.auto_aug import rand_augment as _rand_augment
from nvidia.dali.auto_aug import trivial_augment as _trivial_augment
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import do_not_convert

from dali_cutmix.config import (
    AugmentConfig,
    AutoAugment,
    EraseMode,
    Interpolation,
    check_warp_interpolation,
)

__all__ = [
    "ERASE_ATTEMPTS",
    "auto_augment",
    "needs_conditionals",
    "quiet_auto_aug",
    "random_erase",
    "warp_interp",
]

# torchvision's RandomErasing tries this many boxes before leaving the image as it is.
ERASE_ATTEMPTS = 10
# torchvision's TrivialAugmentWide shifts by up to 32 pixels whatever the image size.
TRIVIAL_AUGMENT_TRANSLATE = 32


def needs_conditionals(config: AugmentConfig | None) -> bool:
    """True when the graph of ``config`` needs ``@pipeline_def(enable_conditionals=True)``."""
    return config is not None and config.auto_augmenting


def warp_interp(interpolation: Interpolation) -> types.DALIInterpType:
    """DALI's interpolation for the automatic augmentations' warps; bicubic raises ValueError."""
    nearest = check_warp_interpolation(interpolation) is Interpolation.NEAREST
    return types.INTERP_NN if nearest else types.INTERP_LINEAR


def auto_augment(
    images: DataNode,
    config: AugmentConfig,
    *,
    size: tuple[int, int],
    interpolation: Interpolation = Interpolation.BILINEAR,
) -> DataNode:
    """``config.auto_augment`` applied per sample to uint8 HWC images of ``size`` (H, W).

    The parameters are torchvision's: 31 magnitude bins; shifts of up to 32
    pixels for TrivialAugmentWide and ``max_translate_rel`` of the side for
    RandAugment and AutoAugment; uncovered pixels get ``fill_value``. Draws
    come from the pipeline's seed. Returns uint8 HWC images of the same size,
    on the device of ``images``. ``auto_augment`` None (or RandAugment with 0
    ops) returns ``images``.
    """
    if not config.auto_augmenting:
        return images
    common = {
        "fill_value": config.fill_value,
        "interp_type": warp_interp(Interpolation(interpolation)),
    }
    return _policy(images, config, size=size, common=common)


@contextlib.contextmanager
def quiet_auto_aug() -> Iterator[None]:
    """Silences the DeprecationWarnings of DALI's own ``auto_aug`` while a pipeline is defined.

    ``auto_aug`` still calls operators by their ``fn.experimental`` names, once per
    graph; the warnings are DALI's to fix and tell a user nothing. Wrap the
    ``@pipeline_def`` call (where the graph is generated) in it.
    """
    # DALI issues them under its own ``simplefilter("default")``, so a filter cannot
    # silence them: they are dropped where they would be shown.
    with warnings.catch_warnings():
        show = warnings.showwarning

        def shown_unless_dalis(message: Warning | str, category: type[Warning], *rest) -> None:
            if not str(message).startswith("WARNING: `nvidia.dali.fn.experimental."):
                show(message, category, *rest)

        warnings.showwarning = shown_unless_dalis
        yield


def _policy(
    images: DataNode, config: AugmentConfig, *, size: tuple[int, int], common: dict
) -> DataNode:
    policy = config.auto_augment
    if policy is AutoAugment.TA_WIDE:
        return _trivial_augment.trivial_augment_wide(
            images,
            num_magnitude_bins=31,
            max_translate_abs=TRIVIAL_AUGMENT_TRANSLATE,
            **common,
        )
    shaped = {"shape": size, "max_translate_rel": config.max_translate_rel, **common}
    if policy is AutoAugment.RA:
        return _rand_augment.rand_augment(
            images,
            n=config.ra_num_ops,
            m=config.ra_magnitude,
            num_magnitude_bins=config.num_magnitude_bins,
            monotonic_mag=config.ra_increasing,
            **shaped,
        )
    return _auto_augment.auto_augment(images, policy_name="image_net", **shaped)


def _erase_box(config: AugmentConfig, size: tuple[int, int]) -> tuple[DataNode, DataNode]:
    """Per sample, float32 ``[2]`` corner (top, left) and sides (h, w) of the erased box.

    torchvision's ``RandomErasing.get_params``, all attempts at once: up to
    ``ERASE_ATTEMPTS`` boxes of area ``U(scale) * H * W`` and aspect ratio h/w
    ``exp(U(log ratio))``, sides rounded; the first box smaller than the image
    on both sides is taken, at a uniform integer corner. No such box, or a lost
    coin, gives sides 0 (nothing erased).
    """
    limits = types.Constant(np.array(size, dtype=np.float32))
    area = fn.random.uniform(range=list(config.erase_scale), shape=[ERASE_ATTEMPTS, 1])
    low, high = (math.log(r) for r in config.erase_ratio)
    log_ratio = fn.random.uniform(range=[low, high], shape=[ERASE_ATTEMPTS, 1])
    # [attempts, 2]: (sqrt(A * r), sqrt(A / r)) by broadcasting log r against [[1, -1]].
    signs = types.Constant(np.array([[1.0, -1.0]], dtype=np.float32))
    target = area * float(size[0] * size[1])
    sides = dmath.floor(dmath.sqrt(target * dmath.exp(log_ratio * signs)) + 0.5)
    fits = fn.reductions.min(fn.cast(sides < limits, dtype=types.INT32), axes=[1], keep_dims=True)
    order = types.Constant(np.arange(ERASE_ATTEMPTS, dtype=np.int32).reshape(-1, 1))
    first = fn.reductions.min(order + ERASE_ATTEMPTS * (1 - fits))
    chosen = fn.reductions.sum(sides * fn.cast(order == first, dtype=types.FLOAT), axes=[0])
    if config.random_erase < 1.0:
        coin = fn.random.coin_flip(probability=config.random_erase, dtype=types.INT32)
        chosen = chosen * fn.cast(coin, dtype=types.FLOAT)
    # A uniform integer corner in [0, side - box] (the min guards float rounding near 1).
    uniform = fn.random.uniform(range=[0.0, 1.0], shape=[2])
    room = limits - chosen
    corner = dmath.min(dmath.floor(uniform * (room + 1.0)), room)
    return corner, chosen


@do_not_convert
def random_erase(images: DataNode, config: AugmentConfig, *, size: tuple[int, int]) -> DataNode:
    """RandomErasing per sample of normalized float HWC images of ``size`` (H, W).

    With probability ``config.random_erase`` a box drawn as torchvision draws it
    (:func:`_erase_box`) is filled: zeros (``CONST``, exactly 0 after
    normalization), one standard normal value per channel (``RAND``) or per
    pixel and channel (``PIXEL``), as timm's modes. Labels are not touched.
    Returns images of the same dtype, shape and device. ``random_erase`` 0
    returns ``images``.
    """
    if not config.erasing:
        return images
    corner, sides = _erase_box(config, size)
    erase = {"anchor": corner, "shape": sides, "axis_names": "HW"}
    if config.erase_mode is EraseMode.CONST:
        return fn.erase(images, fill_value=0.0, **erase)
    if config.erase_mode is EraseMode.PIXEL:
        # Noise for the box only, placed by a zero-padded slice: the box is 0 in
        # ``erased`` and the patch is 0 outside it, so the sum is exactly one or the other.
        erased = fn.erase(images, fill_value=0.0, **erase)
        channels = types.Constant(np.array([3], dtype=np.int32))
        shape = fn.cat(fn.cast(sides, dtype=types.INT32), channels)
        patch = fn.random.normal(shape=shape, dtype=types.FLOAT, device=images.device)
        placed = fn.slice(
            patch,
            start=fn.cast(-corner, dtype=types.INT32),
            shape=list(size),
            axes=[0, 1],
            out_of_bounds_policy="pad",
            fill_values=0.0,
        )
        return erased + placed
    # keep: 1 outside the box, 0 inside; x * 1 + n * 0 is exactly x, x * 0 + n * 1 exactly n.
    height, width = size
    ones = fn.constant(
        fdata=1.0, shape=[height, width, 1], layout="HWC", dtype=types.FLOAT, device=images.device
    )
    keep = fn.erase(ones, fill_value=0.0, **erase)
    noise = fn.random.normal(shape=[1, 1, 3], dtype=types.FLOAT, device=images.device)
    return images * keep + noise * (1.0 - keep)
