"""CutMix, MixUp and Cutout as DALI graph functions.

CutMix: S. Yun et al., "CutMix: Regularization Strategy to Train Strong
Classifiers with Localizable Features", ICCV 2019. MixUp: H. Zhang et al.,
"mixup: Beyond Empirical Risk Minimization", ICLR 2018. Cutout: T. DeVries and
G. Taylor, "Improved Regularization of Convolutional Neural Networks with
Cutout", 2017.

Every function here takes DALI ``DataNode``s inside a ``@pipeline_def`` and
returns ``DataNode``s; nothing runs in Python per sample. All random draws
come from DALI's seeded CPU generators, so a CPU and a GPU pipeline built with
the same seed draw the same partners, lambdas and boxes.

One mechanism serves every mode: each sample ``i`` gets a partner ``j``, a
pixel-blend weight ``m`` (MixUp) and a box (CutMix). The output is

    p = paste(a, box of b);  out = p + (m * b - m * p);  target = t_a + w * (t_b - t_a)

where ``w`` is the partner's label weight. A sample that is not mixed has
``m = 0``, an empty box and ``w = 0``, so it comes out unchanged, bit for bit,
with its own (smoothed) one-hot target. For CutMix ``w`` is computed as
``pasted_area / (H * W)`` of the clipped box, so the partner's label weight is
exactly the fraction of pixels taken from it.
"""

from __future__ import annotations

import dataclasses

import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import Pipeline

from dali_cutmix.config import MixConfig, MixMode

__all__ = ["cutmix", "mixup", "cutout", "mix", "soft_targets"]


Partner = DataNode | list[int]


@dataclasses.dataclass(frozen=True)
class _Draws:
    """Per-sample random quantities, already shared as the mode says."""

    partner: Partner  # index of each sample's partner (a list in pair mode)
    mixed: DataNode  # float32 0/1: the sample is mixed at all
    use_cutmix: DataNode  # float32 0/1: CutMix (1) or MixUp (0), when mixed
    position: DataNode  # float32 [2] U[0, 1): box centre (or corner) as (y, x) fractions
    size: DataNode | None  # float32 [2] U[0, 1): box sides, cutmix_minmax only
    lam_cutmix: DataNode | None
    lam_mixup: DataNode | None


def _max_batch_size() -> int:
    pipe = Pipeline.current()
    if pipe is None:
        raise RuntimeError("dali_cutmix graph functions must be called inside a @pipeline_def")
    return pipe.max_batch_size


def _draw(config: MixConfig) -> _Draws:
    """Draws partners and random numbers on the CPU, shared per ``config.mode``."""
    share: DataNode | list[int] | None = None
    if config.mode is MixMode.PAIR:
        # timm's pairing: the batch flipped; both members of a pair share draws.
        n = _max_batch_size()
        partner: Partner = [n - 1 - i for i in range(n)]
        share = [min(i, n - 1 - i) for i in range(n)]
    else:
        partner = fn.batch_permutation(no_fixed_points=True)
        if config.mode is MixMode.BATCH:
            share = partner * 0  # every sample takes sample 0's draws

    def shared(node: DataNode) -> DataNode:
        return node if share is None else fn.permute_batch(node, indices=share)

    def coin(probability: float) -> DataNode:
        flip = fn.random.coin_flip(probability=probability, dtype=types.INT32)
        return shared(fn.cast(flip, dtype=types.FLOAT))

    def beta(alpha: float) -> DataNode | None:
        if alpha <= 0:
            return None
        return shared(fn.random.beta(alpha=alpha, beta=alpha, dtype=types.FLOAT))

    return _Draws(
        partner=partner,
        mixed=coin(config.prob),
        use_cutmix=coin(config.cutmix_share),
        position=shared(fn.random.uniform(range=[0.0, 1.0], shape=[2])),
        size=None
        if config.cutmix_minmax is None
        else shared(fn.random.uniform(range=[0.0, 1.0], shape=[2])),
        lam_cutmix=beta(config.cutmix_alpha) if config.cutmix_minmax is None else None,
        lam_mixup=beta(config.mixup_alpha),
    )


def _extent(images: DataNode) -> DataNode:
    """Per-sample ``(H, W)`` of an HWC batch: float32 ``[2]``, on the CPU."""
    return fn.cast(images.shape()[0:2], dtype=types.FLOAT)


def _area(sides: DataNode) -> DataNode:
    return sides[0] * sides[1]


def _cutmix_box(config: MixConfig, draws: _Draws, extent: DataNode) -> tuple[DataNode, DataNode]:
    """Box ``(corner, sides)``, float32 ``[2]`` each in (y, x) order, inside ``extent``.

    The box math runs on ``[2]`` vectors, so each step is one operator for
    both axes: on the CPU the per-operator cost, not the arithmetic, dominates.
    """
    if config.cutmix_minmax is None:
        # The paper's box: sides extent * sqrt(1 - lambda), centre ~ U{0..extent-1},
        # +-floor(side / 2) around it, clipped to the image.
        sides = dmath.floor(extent * dmath.sqrt(1.0 - draws.lam_cutmix))
        centre = dmath.floor(draws.position * extent)
        half = dmath.floor(sides * 0.5)
        corner = dmath.clamp(centre - half, 0.0, extent)
        return corner, dmath.clamp(centre + half, 0.0, extent) - corner
    # timm's rand_bbox_minmax: sides uniform in [min, max] of each extent, box inside.
    low, high = config.cutmix_minmax
    sides = dmath.floor((low + (high - low) * draws.size) * extent)
    corner = dmath.min(dmath.floor(draws.position * (extent - sides + 1.0)), extent - sides)
    return corner, sides


def _paste_box(
    base: DataNode, partner_images: DataNode, corner: DataNode, sides: DataNode
) -> DataNode:
    """``base`` with the box (``corner``, ``sides``, float32 [2]) of ``partner_images`` on top."""
    corner = fn.cast(corner, dtype=types.INT32)
    full = base.shape(dtype=types.INT32)[0:2]
    # Region 0 is the whole base image, region 1 the box (later regions win).
    return fn.multi_paste(
        base,
        partner_images,
        in_anchors=fn.stack(corner * 0, corner),
        out_anchors=fn.stack(corner * 0, corner),
        shapes=fn.stack(full, fn.cast(sides, dtype=types.INT32)),
        output_size=full,
    )


def soft_targets(
    labels: DataNode,
    *,
    num_classes: int,
    label_smoothing: float = 0.0,
    partner: Partner | None = None,
    partner_weight: DataNode | None = None,
) -> DataNode:
    """float32 ``[num_classes]`` targets: ``t_a + w * (t_b - t_a)``, timm's smoothing.

    Args:
        labels: integer class indices, shape ``[]`` or ``[1]`` per sample.
        num_classes: length of each target.
        label_smoothing: off = s / num_classes, on = 1 - s + off (timm's ``mixup_target``).
        partner: index of each sample's partner (``permute_batch`` indices).
        partner_weight: float32 scalar per sample, the partner's share ``w``.

    Returns:
        float32 ``[num_classes]`` per sample, on the device of ``labels``. With
        ``w == 0`` or a sample that is its own partner, the (smoothed) one-hot
        vector exactly.
    """
    off = label_smoothing / num_classes
    on = 1.0 - label_smoothing + off
    labels = fn.cast(labels, dtype=types.INT32)

    def one_hot(lbl: DataNode) -> DataNode:
        return fn.one_hot(
            lbl, num_classes=num_classes, on_value=on, off_value=off, dtype=types.FLOAT
        )

    own = one_hot(labels)
    if partner is None or partner_weight is None:
        return own
    other = one_hot(fn.permute_batch(labels, indices=partner))
    return own + partner_weight * (other - own)


def mix(images: DataNode, labels: DataNode, config: MixConfig) -> tuple[DataNode, DataNode]:
    """CutMix and/or MixUp inside a DALI graph, with timm's semantics.

    Args:
        images: HWC batch (uint8 or float, CPU or GPU), any size per sample.
            Samples of different sizes are mixed within their common extent.
        labels: integer class per sample, shape ``[]`` or ``[1]``.
        config: what to apply; see :class:`dali_cutmix.MixConfig`.

    Returns:
        ``(images, targets)``. Images keep the input layout, size and device;
        they keep the input dtype when only CutMix can happen and are float32
        when MixUp is on. Targets are float32 ``[num_classes]`` per sample,
        summing to 1, on the device of ``labels``.

    Example:
        >>> @pipeline_def(batch_size=64, num_threads=4, device_id=0, seed=42)
        ... def train():
        ...     jpegs, labels = fn.readers.file(file_root=root, random_shuffle=True)
        ...     images = fn.decoders.image_random_crop(jpegs, device="mixed")
        ...     images = fn.resize(images, size=[224, 224])
        ...     return mix(images, labels, MixConfig(num_classes=1000, cutmix_alpha=1.0))
    """
    if not config.enabled:
        return images, soft_targets(
            labels, num_classes=config.num_classes, label_smoothing=config.label_smoothing
        )
    draws = _draw(config)
    partner_images = fn.permute_batch(images, indices=draws.partner)
    extent = _extent(images)
    cut = draws.mixed * draws.use_cutmix  # 1 where this sample gets CutMix
    blend = draws.mixed - cut  # 1 where it gets MixUp
    out = images
    partner_weight = None
    if config.cutmix_enabled:
        # Both images hold the box: it lies in their common extent.
        common = dmath.min(extent, fn.permute_batch(extent, indices=draws.partner))
        corner, sides = _cutmix_box(config, draws, common)
        sides = sides * cut  # an empty box where the sample gets no CutMix
        if config.correct_lam or draws.lam_cutmix is None:
            partner_weight = _area(sides) / _area(extent)  # exact pasted fraction
        else:
            partner_weight = cut * (1.0 - draws.lam_cutmix)
        # Pasting before blending keeps the copy in the input dtype (uint8 crops).
        out = _paste_box(images, partner_images, corner, sides)
    if config.mixup_enabled:
        mix_weight = blend * (1.0 - draws.lam_mixup)
        # At most one of the two weights is non-zero for any sample, so the sum is exact.
        partner_weight = mix_weight if partner_weight is None else partner_weight + mix_weight
        # Blending needs equal shapes: the partner is cut (or zero-padded) to the
        # sample's size from its top-left corner; a plain copy when sizes agree.
        partner_images = fn.crop(
            partner_images,
            crop_h=extent[0],
            crop_w=extent[1],
            crop_pos_x=0.0,
            crop_pos_y=0.0,
            out_of_bounds_policy="pad",
            fill_values=0,
        )
        # out + (m*b - m*out) in one fused float32 pass over the input dtype: no
        # casts, no uint8 wrap-around, and exactly ``out`` where m == 0 (CutMix and
        # unmixed samples) or where the partner is the sample itself.
        # (DALI's arithmetic moves the CPU per-sample weight to the GPU by itself.)
        out = out + (partner_images * mix_weight - out * mix_weight)
    targets = soft_targets(
        labels,
        num_classes=config.num_classes,
        label_smoothing=config.label_smoothing,
        partner=draws.partner,
        partner_weight=partner_weight,
    )
    return out, targets


def cutmix(
    images: DataNode,
    labels: DataNode,
    *,
    num_classes: int,
    alpha: float = 1.0,
    prob: float = 1.0,
    mode: MixMode | str = MixMode.ELEM,
    minmax: tuple[float, float] | None = None,
    correct_lam: bool = True,
    label_smoothing: float = 0.0,
) -> tuple[DataNode, DataNode]:
    """CutMix (Yun et al., 2019): paste a box of a partner image, weight labels by area.

    Lambda ~ Beta(alpha, alpha); the box has sides ``H * sqrt(1 - lambda)`` and
    ``W * sqrt(1 - lambda)`` around a uniform centre, clipped to the image. The
    partner's label weight is the exact pasted fraction ``h * w / (H * W)``.

    Args:
        images: HWC batch, uint8 or float, CPU or GPU.
        labels: integer class per sample, shape ``[]`` or ``[1]``.
        num_classes: length of the targets.
        alpha: Beta parameter (> 0).
        prob: probability that a sample (or batch, ``mode="batch"``) is mixed.
        mode: ``"elem"`` (per sample), ``"pair"`` or ``"batch"``.
        minmax: draw box sides uniformly in these fractions instead (timm).
        correct_lam: see :class:`MixConfig`.
        label_smoothing: see :class:`MixConfig`.

    Returns:
        ``(images, targets)``: images with the input dtype, layout and size;
        float32 targets ``[num_classes]``.
    """
    if alpha <= 0:
        raise ValueError(f"cutmix alpha must be > 0, got {alpha!r}")
    config = MixConfig(
        num_classes=num_classes,
        cutmix_alpha=alpha,
        mixup_alpha=0.0,
        cutmix_minmax=minmax,
        prob=prob,
        mode=mode,
        correct_lam=correct_lam,
        label_smoothing=label_smoothing,
    )
    return mix(images, labels, config)


def mixup(
    images: DataNode,
    labels: DataNode,
    *,
    num_classes: int,
    alpha: float = 0.2,
    prob: float = 1.0,
    mode: MixMode | str = MixMode.ELEM,
    label_smoothing: float = 0.0,
) -> tuple[DataNode, DataNode]:
    """MixUp (Zhang et al., 2018): ``lam * a + (1 - lam) * b``, same weights on labels.

    Args:
        images: HWC batch, uint8 or float, CPU or GPU.
        labels: integer class per sample, shape ``[]`` or ``[1]``.
        num_classes: length of the targets.
        alpha: Beta parameter (> 0); 0.2 is the paper's ImageNet value.
        prob, mode, label_smoothing: see :class:`MixConfig`.

    Returns:
        ``(images, targets)``: float32 images of the input layout and size;
        float32 targets ``[num_classes]``.
    """
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha!r}")
    config = MixConfig(
        num_classes=num_classes,
        mixup_alpha=alpha,
        cutmix_alpha=0.0,
        prob=prob,
        mode=mode,
        label_smoothing=label_smoothing,
    )
    return mix(images, labels, config)


def cutout(
    images: DataNode,
    *,
    size: float = 0.5,
    prob: float = 1.0,
    fill_value: float = 0.0,
) -> DataNode:
    """Cutout (DeVries and Taylor, 2017): fill a random square-ish box; labels unchanged.

    The box has sides ``floor(size * H)`` and ``floor(size * W)`` around a
    uniform centre and is clipped at the border, as in the reference code.

    Args:
        images: HWC batch, uint8 or float, CPU or GPU.
        size: box side as a fraction of each image side, in (0, 1].
        prob: probability that a sample gets a box.
        fill_value: value written into the box.

    Returns:
        Images of the input dtype, layout, size and device.
    """
    if isinstance(size, bool) or not 0.0 < size <= 1.0:
        raise ValueError(f"cutout size must be in (0, 1], got {size!r}")
    if isinstance(prob, bool) or not 0.0 <= prob <= 1.0:
        raise ValueError(f"cutout prob must be in [0, 1], got {prob!r}")
    extent = _extent(images)
    apply = fn.cast(fn.random.coin_flip(probability=prob, dtype=types.INT32), dtype=types.FLOAT)
    centre = dmath.floor(fn.random.uniform(range=[0.0, 1.0], shape=[2]) * extent)
    half = dmath.floor(dmath.floor(extent * size) * 0.5)
    corner = dmath.clamp(centre - half, 0.0, extent)
    sides = dmath.clamp(centre + half, 0.0, extent) - corner
    return fn.erase(
        images,
        anchor=corner,
        shape=sides * apply,
        axis_names="HW",
        fill_value=fill_value,
    )
