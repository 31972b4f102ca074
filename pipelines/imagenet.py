"""ImageNet training and validation pipelines, and ``make_loader`` to iterate them.

Training: ``fn.readers.file`` (global shuffle every epoch, sharded) -> JPEG
decode fused with the random-resized crop -> resize to ``crop_size`` -> CutMix /
MixUp (``dali_cutmix.mix``) -> normalize with the random horizontal flip (after
the mix: a mixed image's two parts share the coin; with RandomErasing the flip
comes before the mix, per image, as in torchvision).
Validation: decode -> resize the shorter side to ``resize_size`` -> centre crop
``crop_size`` -> normalize, with torchvision's ``Resize`` + ``CenterCrop`` sizes and
offsets to the pixel; every image exactly once per epoch over all shards. Both
decoders ignore EXIF orientation, as torchvision's ``ImageFolder`` (PIL) does.

On the GPU the decoder runs as ``device="mixed"`` (nvJPEG, with the hardware
JPEG decoder of A100/H100/H200 where present) and every later step on the GPU;
on the CPU (``device_id=None``) the same graph runs on the CPU.

Example:
    >>> loader = make_loader("/data/imagenet/train", train=True, batch_size=256,
    ...                      mix=MixConfig(num_classes=1000))
    >>> for images, targets in loader:   # [256, 3, 224, 224] float32, [256, 1000] float32
    ...     loss = criterion(model(images), targets)
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import logging
import math
import os
from typing import Any

import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
import torch
from nvidia.dali import pipeline_def
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import Pipeline

from dali_cutmix.augment import (
    auto_augment,
    needs_conditionals,
    quiet_auto_aug,
    random_erase,
    warp_interp,
)
from dali_cutmix.config import (
    MAX_SIDE,
    AugmentConfig,
    Device,
    Interpolation,
    MixConfig,
    _check_instance,
    _check_int,
    _check_interval,
    _check_range,
    _enum,
    _store,
    check_seed,
    resolve_device,
    resolve_shard,
)
from dali_cutmix.files import (
    LOWER_BATCH_SIZE,
    DatasetError,
    ImageList,
    list_images,
)
from dali_cutmix.loader import DaliLoader, LastBatch
from dali_cutmix.mixing import mix as mix_images
from dali_cutmix.mixing import soft_targets
from dali_cutmix.scan import explain_decode_error

__all__ = [
    "DType",
    "Device",
    "GpuDecoderOptions",
    "ImageNetOptions",
    "Layout",
    "imagenet_options",
    "make_loader",
    "resolve_shard",
]

logger = logging.getLogger(__name__)

READER_NAME = "Reader"
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# mix's graph checks, off here: file lists are checked when read, and crops are resized
_CHECKED = {"check_labels": False, "check_size": False}


class Layout(str, enum.Enum):
    """Image batch layout: NCHW ``[B, 3, H, W]`` or NHWC ``[B, H, W, 3]``.

    ``images.permute(0, 3, 1, 2)`` of an NHWC batch is an NCHW view in
    ``torch.channels_last`` memory format: a channels-last model takes it with no copy.
    """

    NCHW = "NCHW"
    NHWC = "NHWC"


class DType(str, enum.Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"

    @classmethod
    def _missing_(cls, value: object) -> DType | None:
        # torch.float16, the spelling a PyTorch user types first (str: "torch.float16")
        name = str(value)
        return next((m for m in cls if name == f"torch.{m.value}"), None)

    @property
    def dali(self) -> types.DALIDataType:
        return types.FLOAT if self is DType.FLOAT32 else types.FLOAT16


@dataclasses.dataclass(frozen=True)
class GpuDecoderOptions:
    """Settings of the ``mixed`` (GPU) JPEG decoder that matter for speed.

    Defaults and why:

    * ``hw_decoder_load=0.99``: share of images sent to the hardware JPEG
      decoder (A100, H100, H200; ignored elsewhere). DALI's default 0.65 assumes
      many CPU threads per GPU to decode the rest; with the 6-8 threads per GPU
      of a typical node, nearly all on the hardware decoder is faster (MLPerf
      ResNet-50 submissions use 0.99 with 6 threads per H100).
    * ``device_memory_padding`` / ``host_memory_padding`` (201.25 MiB / 134 MiB)
      and ``preallocate_width_hint`` / ``preallocate_height_hint`` (5980 x 6430,
      the largest ImageNet image): nvJPEG's buffers are sized once for the
      largest image instead of being reallocated mid-epoch, which stalls the
      pipeline; the values are those of DALI's ResNet-50 example. They go to
      the training decoder only, see :func:`decoder_kwargs`.
    """

    hw_decoder_load: float = 0.99
    device_memory_padding: int = 211_025_920
    host_memory_padding: int = 140_544_512
    preallocate_width_hint: int = 5_980
    preallocate_height_hint: int = 6_430

    def __post_init__(self) -> None:
        _store(self, hw_decoder_load=_check_range("hw_decoder_load", self.hw_decoder_load, 0, 1))
        for field in dataclasses.fields(self)[1:]:
            _store(self, **{field.name: _check_int(field.name, getattr(self, field.name), 0)})


def decoder_kwargs(decoder: GpuDecoderOptions, *, train: bool, gpu: bool) -> dict[str, float | int]:
    """The keyword arguments one pipeline's JPEG decoder gets from ``decoder``.

    ``{}`` on the CPU (the settings apply to the ``mixed`` decoder only). On
    the GPU the training decoder gets them all; the validation decoder gets
    ``hw_decoder_load`` only (DALI's ResNet-50 example, too, gives it none of
    the memory settings). The hints make the hardware decoder preallocate for
    ``max_batch_size`` images of the largest size, and the paddings
    preallocate one device buffer and two pinned host buffers of that size per
    thread: GPU and host memory held all run by a pipeline that runs seconds
    per epoch, where growing a buffer once for a larger image costs next to
    nothing.

    Example:
        >>> decoder_kwargs(GpuDecoderOptions(), train=False, gpu=True)
        {'hw_decoder_load': 0.99}
    """
    if not gpu:
        return {}
    if train:
        return dataclasses.asdict(decoder)
    return {"hw_decoder_load": decoder.hw_decoder_load}


@dataclasses.dataclass(frozen=True)
class ImageNetOptions:
    """What the pipeline computes (not how fast): crop, mixing, output format.

    Attributes:
        train: the training recipe (random crop, flip, mixing) or validation.
        crop_size: side of the square output image.
        resize_size: validation only: shorter side before the centre crop.
        mix: mixing for training; ``None``, or disabled without ``label_smoothing``,
            gives int64 targets; disabled with it, smoothed one-hot float32 targets.
        output_layout, dtype: see :class:`Layout`, :class:`DType`.
        random_area, random_aspect_ratio: the random-resized crop's ranges.
        augment: training only: automatic augmentation and RandomErasing, see
            :class:`dali_cutmix.config.AugmentConfig`; ``None`` or disabled: none.
        interpolation: of the resizes and the automatic augmentations' warps.
    """

    train: bool
    crop_size: int = 224
    resize_size: int = 256
    mix: MixConfig | None = None
    output_layout: Layout = Layout.NCHW
    dtype: DType = DType.FLOAT32
    random_area: tuple[float, float] = (0.08, 1.0)
    random_aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    augment: AugmentConfig | None = None
    interpolation: Interpolation = Interpolation.BILINEAR

    def __post_init__(self) -> None:
        if not isinstance(self.train, bool):
            raise ValueError(f"train must be True or False, got {self.train!r}")
        _store(
            self,
            crop_size=_check_int("crop_size", self.crop_size, 1, MAX_SIDE),
            resize_size=_check_int("resize_size", self.resize_size, 1, MAX_SIDE),
        )
        _check_instance("mix", self.mix, MixConfig)
        _check_instance("augment", self.augment, AugmentConfig)
        if not self.train and self.resize_size < self.crop_size:
            raise ValueError(
                f"resize_size ({self.resize_size}) must be >= crop_size ({self.crop_size})"
            )
        if self.mix is not None and not self.train:
            raise ValueError("mix applies to training only; pass mix=None for validation")
        if self.augment is not None and self.augment.enabled and not self.train:
            raise ValueError("augment applies to training only; pass augment=None for validation")
        object.__setattr__(
            self, "interpolation", _enum(Interpolation, "interpolation", self.interpolation)
        )
        if self.augmenting and self.augment.auto_augmenting:
            warp_interp(self.interpolation)  # bicubic is refused
        object.__setattr__(
            self, "output_layout", _enum(Layout, "output_layout", self.output_layout)
        )
        object.__setattr__(self, "dtype", _enum(DType, "dtype", self.dtype))
        _store(
            self,
            random_area=_check_interval("random_area", self.random_area, 0, 1),
            random_aspect_ratio=_check_interval(
                "random_aspect_ratio", self.random_aspect_ratio, 0, math.inf
            ),
        )

    @property
    def mixing(self) -> bool:
        return self.mix is not None and self.mix.enabled

    @property
    def augmenting(self) -> bool:
        return self.augment is not None and self.augment.enabled

    @property
    def interp_type(self) -> types.DALIInterpType:
        return _INTERP[self.interpolation]


_INTERP = {
    Interpolation.BILINEAR: types.INTERP_LINEAR,
    Interpolation.NEAREST: types.INTERP_NN,
    Interpolation.BICUBIC: types.INTERP_CUBIC,
}


# ---- graph functions: DALI nodes in, DALI nodes out ------------------------------------------


def read_files(
    *, images: ImageList, shard_id: int, num_shards: int, shuffle: bool, seed: int
) -> tuple[DataNode, DataNode]:
    """Encoded files and int32 ``[1]`` labels from the named reader, padded to whole batches.

    Training shuffles the whole list after every epoch (first epoch included)
    with the same seed on every shard, so the shards partition each epoch.
    Validation reads each shard's fixed, contiguous part in order.
    """
    return fn.readers.file(
        files=list(images.paths),
        labels=list(images.labels),
        name=READER_NAME,
        shard_id=shard_id,
        num_shards=num_shards,
        pad_last_batch=True,
        shuffle_after_epoch=shuffle,
        shuffle_after_epoch_seed=seed if shuffle else None,
        stick_to_shard=not shuffle,
    )


def decode_random_crop(
    jpegs: DataNode, *, options: ImageNetOptions, gpu: bool, decoder: GpuDecoderOptions
) -> DataNode:
    """Random-resized crop decoded straight from the JPEG, resized to ``crop_size``; uint8 HWC."""
    extra = decoder_kwargs(decoder, train=True, gpu=gpu)
    images = fn.decoders.image_random_crop(
        jpegs,
        device="mixed" if gpu else "cpu",
        output_type=types.RGB,
        adjust_orientation=False,
        random_area=list(options.random_area),
        random_aspect_ratio=list(options.random_aspect_ratio),
        num_attempts=10,
        **extra,
    )
    size = options.crop_size
    return fn.resize(
        images, resize_x=size, resize_y=size, antialias=True, interp_type=options.interp_type
    )


def decode_resize(
    jpegs: DataNode,
    *,
    size: DataNode,
    options: ImageNetOptions,
    gpu: bool,
    decoder: GpuDecoderOptions,
) -> DataNode:
    """Whole image decoded and resized to ``size`` (per sample ``[height, width]``); uint8 HWC.

    ``size`` is :func:`torchvision_resize_size`'s: torchvision ``Resize(resize_size)``
    truncates the longer side, where DALI's ``resize_shorter`` rounds it (640 x 427
    becomes 383 x 256 in torchvision, 384 x 256 with ``resize_shorter``). It comes
    from the JPEG headers, on the CPU before decoding, so on the GPU nothing waits
    for the decoded images' shapes.
    """
    extra = decoder_kwargs(decoder, train=False, gpu=gpu)
    images = fn.decoders.image(
        jpegs,
        device="mixed" if gpu else "cpu",
        output_type=types.RGB,
        adjust_orientation=False,
        **extra,
    )
    return fn.resize(
        images,
        size=fn.cast(size, dtype=types.FLOAT),
        antialias=True,
        interp_type=options.interp_type,
    )


def read_headers(jpegs: DataNode) -> tuple[DataNode, DataNode]:
    """``(jpegs, shapes)``: the encoded images, to be decoded only once every header of the
    batch was read, and their ``[height, width, channels]`` (int64) in stored orientation.

    DALI 2.4's CPU decoder, running on several threads, crashes the process
    (SIGSEGV in its thread pool, no Python error) on a file whose format no
    decoder recognizes, a text file named ``.JPEG`` say: 4 runs of 16 at batch 48
    with 2 threads on full-size images (none of 20 with this check).
    ``fn.peek_image_shape`` fails on the same files with an error the loader names
    (:func:`dali_cutmix.scan.explain_decode_error`).
    The decoders read a zero-copy reshape whose shape depends on the headers, so
    they run after that check (4 CPU operators besides the header read). A
    truncated file passes the header read and fails in the decoder, cleanly.
    """
    shapes = fn.peek_image_shape(jpegs, dtype=types.INT64, adjust_orientation=False)
    length = jpegs.shape(dtype=types.INT64)
    return fn.reshape(jpegs, shape=length + 0 * fn.reductions.min(shapes)), shapes


def torchvision_resize_size(shapes: DataNode, resize_size: int) -> DataNode:
    """Per sample ``[height, width]`` (int64) of torchvision's ``Resize(resize_size)``.

    ``shapes`` are the images' ``[height, width, ...]`` (:func:`read_headers`), in their
    stored orientation (the decoders here ignore EXIF orientation, as PIL and so
    torchvision's ``ImageFolder`` do). Each side becomes ``side * resize_size // short``: the
    shorter exactly ``resize_size``, the longer torchvision's
    ``int(resize_size * long / short)`` (the same integer, as no quotient of two
    integers this size lies within a float's rounding of the next integer).
    Four operators for both sides: a CPU operator costs about the same whatever
    its arithmetic.
    """
    sides = shapes[0:2]
    return sides * resize_size // fn.reductions.min(sides)


def center_crop_position(extent: DataNode, crop: int) -> DataNode:
    """The normalized ``crop_pos`` that puts DALI's crop where torchvision's ``CenterCrop`` is.

    torchvision starts the crop at ``round((extent - crop) / 2)``, a half rounded to
    even; DALI at ``roundf(crop_pos * (extent - crop))``, a half rounded up, so
    ``crop_pos=0.5`` lands one pixel further right or down wherever the margin is
    odd and its half even (a 4:3 image at 256: 341 - 224 = 117 columns, 59 where
    torchvision takes 58). This returns ``start / margin`` (0 for no margin), in
    float32, which ``roundf`` turns back into exactly ``start``; element by
    element, so ``extent`` may be a sample's ``[height, width]``.
    """
    margin = extent - crop
    start = (margin + (margin // 2) % 2) // 2  # a half rounded to even
    return fn.cast(start, dtype=types.FLOAT) / fn.cast(dmath.max(margin, 1), dtype=types.FLOAT)


def normalize(
    images: DataNode,
    *,
    options: ImageNetOptions,
    mirror: DataNode | int = 0,
    crop: int | None = None,
    crop_pos: tuple[DataNode, DataNode] | None = None,
) -> DataNode:
    """``(x - mean) / std`` with ImageNet statistics (x in 0..255, uint8 or float).

    Returns ``options.dtype`` in ``options.output_layout`` (per sample CHW or HWC),
    cropped to ``crop`` when given (at ``crop_pos``, normalized ``(y, x)``, else
    centred as DALI rounds), flipped where ``mirror`` is 1.
    """
    pos_y, pos_x = crop_pos if crop_pos is not None else (0.5, 0.5)
    return fn.crop_mirror_normalize(
        images,
        crop=(crop, crop) if crop else None,
        crop_pos_x=pos_x,
        crop_pos_y=pos_y,
        mirror=mirror,
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        dtype=options.dtype.dali,
        output_layout="CHW" if options.output_layout is Layout.NCHW else "HWC",
    )


def class_indices(labels: DataNode) -> DataNode:
    """int64 scalar per sample from the reader's int32 ``[1]`` labels."""
    return fn.cast(fn.squeeze(labels, axes=[0]), dtype=types.INT64)


def unmixed_targets(labels: DataNode, options: ImageNetOptions) -> DataNode:
    """Targets of samples no mixing touches: int64 class indices, or, where ``options.mix``
    smooths labels (a disabled configuration's ``label_smoothing``), float32 smoothed
    one-hot ``[num_classes]`` vectors, as :func:`dali_cutmix.mix` gives them."""
    if options.mix is None or not options.mix.soft:
        return class_indices(labels)
    mix = options.mix
    return soft_targets(
        labels,
        num_classes=mix.num_classes,
        label_smoothing=mix.label_smoothing,
        check_labels=False,  # file lists are checked when read
    )


def augment_and_mix(
    images: DataNode, labels: DataNode, *, options: ImageNetOptions
) -> tuple[DataNode, DataNode]:
    """Augmentation, mixing, random flip and normalization of uint8 HWC crops.

    Without RandomErasing, mixing comes before the normalization, on uint8
    pixels: ``multi_paste`` needs HWC and the normalization transposes to CHW;
    MixUp's float output is still in 0..255, so the same mean and std apply.
    The flip is applied after mixing, inside ``crop_mirror_normalize``, instead
    of as a separate full-image pass before it. A mirrored mix of two crops is
    the mix of the two mirrored crops with a mirrored box: each part is still
    mirrored with probability 1/2, box positions are symmetric and the label
    areas are untouched. The one difference is that both parts of a mixed
    image share one coin. The automatic augmentation (uint8, before the flip)
    is symmetric under mirroring too: its shears, rotations and shifts take
    either sign with equal probability.
    """
    flip = fn.random.coin_flip(probability=0.5)
    size = (options.crop_size, options.crop_size)
    if options.augmenting:
        images = auto_augment(
            images, options.augment, size=size, interpolation=options.interpolation
        )
        if options.augment.erasing:
            return _erase_and_mix(images, labels, options=options, flip=flip)
    if not options.mixing:
        return normalize(images, options=options, mirror=flip), unmixed_targets(labels, options)
    # The crops' size is known: the box math runs on constants and, on the GPU, the
    # CPU part of the graph does not wait for the resize's output shapes.
    # labels of a file list are checked when it is read (dali_cutmix.files), and the
    # resize gives every crop exactly ``size``: both graph checks would only cost.
    images, targets = mix_images(images, labels, options.mix, size=size, **_CHECKED)
    return normalize(images, options=options, mirror=flip), targets


def _erase_and_mix(
    images: DataNode, labels: DataNode, *, options: ImageNetOptions, flip: DataNode
) -> tuple[DataNode, DataNode]:
    """torchvision's order with RandomErasing: flip, normalize, erase each image, mix the batch.

    Erasing writes normalized values (0 is the mean pixel), so it comes after the
    normalization, and before mixing, so that a pasted box carries its own
    image's erased part as in torchvision. Mixing normalized pixels gives the
    images that normalizing mixed pixels gives (normalization is affine, mixing
    a convex combination), so labels still equal pixel shares. The cost: the
    mix moves float32 instead of uint8 pixels, and one more pass makes the
    layout and dtype asked for.
    """
    size = (options.crop_size, options.crop_size)
    hwc = dataclasses.replace(options, output_layout=Layout.NHWC, dtype=DType.FLOAT32)
    out = random_erase(normalize(images, options=hwc, mirror=flip), options.augment, size=size)
    targets = unmixed_targets(labels, options)
    if options.mixing:
        out, targets = mix_images(out, labels, options.mix, size=size, **_CHECKED)
    if options.output_layout is Layout.NCHW:
        out = fn.transpose(out, perm=[2, 0, 1], output_layout="CHW")
    if options.dtype is not DType.FLOAT32:
        out = fn.cast(out, dtype=options.dtype.dali)
    return out, targets


@pipeline_def(enable_checkpointing=True)
def imagenet_pipeline(
    *,
    images: ImageList,
    options: ImageNetOptions,
    shard_id: int,
    num_shards: int,
    reader_seed: int,
    gpu: bool,
    decoder: GpuDecoderOptions,
) -> tuple[DataNode, DataNode]:
    """Reader, decode, crop, (flip, mix), normalize; returns (images, targets).

    On the GPU path the labels move to the GPU right after the reader, so the
    soft targets (``[num_classes]`` vectors per sample) are built by GPU
    operators and the CPU threads keep only the per-sample draws and box math
    (:mod:`pipelines.graph_cost` measures that CPU part). The arithmetic is the
    same operator by operator, so CPU and GPU targets agree bit for bit.
    """
    jpegs, labels = read_files(
        images=images,
        shard_id=shard_id,
        num_shards=num_shards,
        shuffle=options.train,
        seed=reader_seed,
    )
    if gpu:
        labels = labels.gpu()
    jpegs, shapes = read_headers(jpegs)
    if options.train:
        crops = decode_random_crop(jpegs, options=options, gpu=gpu, decoder=decoder)
        out, targets = augment_and_mix(crops, labels, options=options)
    else:
        size = torchvision_resize_size(shapes, options.resize_size)
        resized = decode_resize(jpegs, size=size, options=options, gpu=gpu, decoder=decoder)
        position = center_crop_position(size, options.crop_size)
        crop_pos = (position[0], position[1])
        out = normalize(resized, options=options, crop=options.crop_size, crop_pos=crop_pos)
        targets = class_indices(labels)
    return out, targets


# ---- the loader -------------------------------------------------------------------------------


def dali_device_id(device: Device | str, device_id: int | None) -> int | None:
    """The DALI ``device_id``: a CUDA device for the GPU path, ``None`` for the CPU path
    (``device`` resolved by :func:`dali_cutmix.config.resolve_device`)."""
    if resolve_device(device) is Device.CPU:
        return None
    if device_id is None:
        device_id = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
    logger.info("decoding and augmenting on the GPU (cuda:%d)", device_id)
    return device_id


def default_num_threads(*, gpu: bool) -> int:
    """CPU threads per pipeline: this rank's share of the cores; at most 8 on the GPU path.

    On the GPU the threads only feed the decoder (file reads, the JPEG parts the
    hardware decoder does not take), and more than ~8 per GPU stop paying; on
    the CPU every step runs on them.
    """
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    share = max(1, len(os.sched_getaffinity(0)) // max(local_ranks, 1))
    return min(share, 8) if gpu else share


def imagenet_options(options: ImageNetOptions | None = None, **fields: Any) -> ImageNetOptions:
    """``options`` with ``fields`` (:class:`ImageNetOptions`' fields) replaced in it.

    Without ``options``, ``ImageNetOptions(**fields)``, which needs ``train``.

    Example:
        >>> imagenet_options(ImageNetOptions(train=True), crop_size=160).crop_size
        160

    Raises:
        TypeError: ``options`` that is no :class:`ImageNetOptions`, a keyword that is no
            field of it (named), or neither ``options`` nor ``train``.
        ValueError: a bad value, from :class:`ImageNetOptions`.
    """
    if options is not None and not isinstance(options, ImageNetOptions):
        raise TypeError(
            f"options (make_loader's second argument) must be an ImageNetOptions or None, got "
            f"{options!r}; give the recipe's fields as keywords (train=True, crop_size=...) "
            f"and a file list as file_list=..."
        )
    known = [field.name for field in dataclasses.fields(ImageNetOptions)]
    unknown = [name for name in fields if name not in known]
    if unknown:
        raise TypeError(
            f"unknown keyword {', '.join(map(repr, unknown))}: neither a loader setting nor "
            f"a field of ImageNetOptions ({', '.join(known)})"
        )
    if options is None:
        if "train" not in fields:
            raise TypeError("give train=True or train=False, or options")
        return ImageNetOptions(**fields)
    return dataclasses.replace(options, **fields)


def _build_pipeline(checkpoint: str | None, **kwargs: Any) -> Pipeline:
    """:func:`imagenet_pipeline` built from ``checkpoint``, without AutoAugment's log noise."""
    with quiet_auto_aug():
        return imagenet_pipeline(checkpoint=checkpoint, **kwargs)


def _fitting_batch(images: ImageList, batch_size: int, num_shards: int, policy: LastBatch) -> int:
    """``batch_size``, or for ``PARTIAL`` the smallest shard's size if that is smaller.

    DALI's reader cannot start a shard smaller than one batch. Training (``DROP``)
    would yield nothing and is refused; validation yields every image once whatever
    its batch size, so its batch is lowered to fit (logged).
    """
    smallest = len(images) // num_shards
    if smallest >= batch_size:
        return batch_size
    if policy is LastBatch.PARTIAL and smallest >= 1:
        logger.info(
            "batches of %d, not %d: %d images over %d shard(s) leave %d on the smallest",
            smallest,
            batch_size,
            len(images),
            num_shards,
            smallest,
        )
        return smallest
    fix = LOWER_BATCH_SIZE if smallest else "use fewer shards (ranks) than images"
    raise DatasetError(
        f"{images.source}: {len(images)} images over {num_shards} shard(s) give no batch of "
        f"{batch_size} per shard: {fix}"
    )


def _recipe(options: ImageNetOptions) -> dict[str, Any]:
    """What ``options`` compute besides ``train`` (crop size, mixing, augmentation), JSON's
    values as a saved state holds them: a loader warns when a state was saved under others."""
    recipe = json.loads(json.dumps(dataclasses.asdict(options)))
    del recipe["train"]  # a setting, which must match
    return recipe


def make_loader(
    root: str | os.PathLike[str] | None = None,
    options: ImageNetOptions | None = None,
    *,
    batch_size: int,
    device: Device | str = Device.AUTO,
    num_threads: int | None = None,
    seed: int = 0,
    shard_id: int | None = None,
    num_shards: int | None = None,
    file_list: str | os.PathLike[str] | None = None,
    last_batch: LastBatch | str | None = None,
    decoder: GpuDecoderOptions | None = None,
    prefetch_queue_depth: int = 2,
    device_id: int | None = None,
    **fields: Any,
) -> DaliLoader:
    """A DataLoader-like loader over an ImageNet-style folder (``root/<class>/<image>``).

    What the pipeline computes is an :class:`ImageNetOptions`: ``options``, or
    its fields given as keywords (``train=True, crop_size=160, mix=...``, each
    documented there), which replace ``options``' when both are given. The other
    arguments say how it runs.

    Args:
        root: the dataset folder; class indices follow ``ImageFolder``.
        options: the recipe; ``mix.num_classes`` must equal the dataset's.
        batch_size: samples per batch (per shard). With ``PARTIAL`` (validation's
            default) a shard smaller than it is read in one batch of its size
            (``loader.batch_size`` says which; logged).
        device: ``"gpu"`` (decode with nvJPEG, tensors on CUDA; torch's ``"cuda"`` is
            taken for it), ``"cpu"``, or ``"auto"`` (GPU when CUDA is available; logged).
            Checked before the folder is listed.
        num_threads: DALI CPU threads; default :func:`default_num_threads`.
        seed: seeds augmentation (offset by ``shard_id``, so ranks differ) and
            the epoch shuffle (identical on every rank, so shards partition it).
        shard_id, num_shards: this rank's part; default from torchrun's env, else 0 of 1.
        file_list: ``path label`` lines (e.g. ``scan``'s ``files.txt``) read
            instead of listing ``root``; relative paths resolve against ``root``
            when given, else the list's folder.
        last_batch: :class:`LastBatch`; default ``DROP`` for training, ``PARTIAL``
            for validation (every image exactly once over all shards).
        decoder: GPU decoder settings, see :class:`GpuDecoderOptions`.
        prefetch_queue_depth: batches DALI prepares ahead (2 hides one batch of latency).
        device_id: CUDA device; default ``LOCAL_RANK`` or the current device.
        **fields: :class:`ImageNetOptions`' fields (``train``, ``crop_size``,
            ``resize_size``, ``mix``, ``output_layout``, ``dtype``, ``random_area``,
            ``random_aspect_ratio``, ``augment``, ``interpolation``).

    Returns:
        A :class:`DaliLoader` yielding ``(images, targets)``: images
        ``[B, 3, crop, crop]`` (NCHW) or ``[B, crop, crop, 3]`` (NHWC) of ``dtype``,
        normalized with ImageNet mean/std; targets int64 ``[B]``, or float32
        ``[B, num_classes]`` when mixing or smoothing labels (``mix.label_smoothing``,
        also where ``mix`` is disabled). CUDA tensors on the GPU path.

    Raises:
        TypeError: a keyword that is neither an argument nor a field (named).
        ValueError: a bad setting (the message names it).
        dali_cutmix.files.DatasetError: a missing or empty root, a dataset root
            holding only ``train/`` and ``val/`` (give one of them), a class folder
            without images, or (as ``BadImageError``) a file that does not decode,
            while iterating or already here: DALI decodes the first batches ahead
            as the loader is built. The message names the path and the fix.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = check_seed(seed)
    if num_threads is not None:  # None: default_num_threads; 0 is no default but a mistake
        num_threads = _check_int("num_threads", num_threads, 1)
    prefetch_queue_depth = _check_int("prefetch_queue_depth", prefetch_queue_depth, 1)
    _check_instance("decoder", decoder, GpuDecoderOptions)
    options = imagenet_options(options, **fields)
    train = options.train
    if last_batch is None:  # "" is refused as a value, not taken for the default
        last_batch = LastBatch.DROP if train else LastBatch.PARTIAL
    policy = _enum(LastBatch, "last_batch", last_batch)
    shard_id, num_shards = resolve_shard(shard_id, num_shards)
    # before the listing, which takes a while on ImageNet: "gpu" without CUDA is refused at once
    dali_device = dali_device_id(device, device_id)
    gpu = dali_device is not None
    images = list_images(root, file_list)
    images.check_names(train=options.train)
    images.check_mix(options.mix)
    batch_size = _fitting_batch(images, batch_size, num_shards, policy)
    build = functools.partial(
        _build_pipeline,
        images=images,
        options=options,
        shard_id=shard_id,
        num_shards=num_shards,
        reader_seed=seed,
        gpu=gpu,
        decoder=decoder or GpuDecoderOptions(),
        batch_size=batch_size,
        num_threads=default_num_threads(gpu=gpu) if num_threads is None else num_threads,
        device_id=dali_device,
        seed=seed + shard_id,
        prefetch_queue_depth=prefetch_queue_depth,
        enable_conditionals=needs_conditionals(options.augment),
    )
    loader = DaliLoader(
        build=build,
        reader_name=READER_NAME,
        last_batch=policy,
        classes=list(images.classes),
        explain=functools.partial(explain_decode_error, images=images, train=train),
        settings={
            "train": train,
            "seed": seed,
            "shard_id": shard_id,
            "num_shards": num_shards,
            "num_images": len(images),
            "num_classes": images.num_classes,
        },
        recipe=_recipe(options),
    )
    logger.info(
        "%s loader, shard %d/%d: %r",
        "training" if train else "validation",
        shard_id,
        num_shards,
        loader,
    )
    return loader
