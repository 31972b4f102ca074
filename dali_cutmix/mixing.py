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
import math
import numbers
from typing import Any

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import Pipeline, do_not_convert

from dali_cutmix.config import (
    MAX_CLASSES,
    MAX_SIDE,
    MixConfig,
    MixMode,
    _check_bool,
    _check_int,
    _check_range,
    _is_number,
)

__all__ = ["cutmix", "mixup", "cutout", "mix", "soft_targets"]


Partner = DataNode | list[int]
Weight = DataNode | float  # per-sample float32 scalar, or a constant folded while building


@dataclasses.dataclass(frozen=True)
class _Draws:
    """Per-sample random quantities, already shared as the mode says.

    ``cut`` and ``blend`` are 1 where the sample gets CutMix or MixUp and 0
    elsewhere: an int32 node, or a Python float when the configuration fixes them.
    """

    partner: Partner  # index of each sample's partner (a list in pair mode)
    cut: Weight
    blend: Weight
    # (y, x) of the box: float32 [2] U[0, 1) fractions of the extent, or int32 [2]
    # pixels U{0..H-1} of a tabled canvas (the paper's box only)
    position: DataNode | None
    size: DataNode | None  # float32 [2] U[0, 1): box sides, cutmix_minmax only
    cutmix_share: DataNode | None  # Beta(a, a) = the law of 1 - lambda: the partner's share
    half: DataNode | None  # int32 half side of the paper's box, drawn directly (tabled canvas)
    mixup_share: DataNode | None


def _max_batch_size() -> int:
    pipe = Pipeline.current()
    if pipe is None:
        raise RuntimeError("dali_cutmix graph functions must be called inside a @pipeline_def")
    return pipe.max_batch_size


def _graph_input(
    function: str, name: str, node: Any, instead: str = "torchvision.transforms.v2.CutMix / MixUp"
) -> None:
    """Refuses a value that is no DALI node: these functions build graph operators."""
    if not isinstance(node, DataNode):
        kind = f"{type(node).__module__}.{type(node).__qualname__}".removeprefix("builtins.")
        raise TypeError(
            f"{function} builds DALI operators: its {name} must be a DataNode of a "
            f"@pipeline_def graph (a reader's or fn.external_source's output), got {kind}; "
            f"on torch tensors, use {instead}"
        )


def _never(weight: Weight) -> bool:
    return isinstance(weight, float) and weight == 0.0


def _times(a: Weight, b: Weight) -> Weight:
    """``a * b``, folded where one side is a constant 0 or 1 (no operator then)."""
    if isinstance(a, float):
        a, b = b, a
    if isinstance(b, float):
        if isinstance(a, float):
            return a * b
        return 0.0 if b == 0.0 else (a if b == 1.0 else a * b)
    return a * b


def _minus(a: Weight, b: Weight) -> Weight:
    """``a - b``, folded where ``b`` is a constant 0 or both are constants."""
    if isinstance(a, float) and isinstance(b, float):
        return a - b
    return a if _never(b) else a - b


def _beta_cdf(x: float, alpha: float) -> float:
    """P(r <= x) for r ~ Beta(alpha, alpha): the regularized incomplete beta function.

    Lentz's continued fraction (Numerical Recipes, ``betacf``), to about 1e-15;
    ``tests/test_mixing.py`` checks it against SciPy.
    """
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > 0.5:  # symmetric law; the fraction converges fast below the mean
        return 1.0 - _beta_cdf(1.0 - x, alpha)
    a = b = alpha
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    value = d
    for m in range(1, 10_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            value *= c * d
        if abs(c * d - 1.0) < 1e-16:
            break
    return front * value / a


def _half_side_law(alpha: float, extent: int) -> list[float]:
    """P(floor(sqrt(1 - lambda) * extent / 2) = k) for k = 0 .. extent // 2.

    With lambda ~ Beta(alpha, alpha), the paper's box on a square ``extent``
    canvas has sides ``extent * sqrt(1 - lambda)`` around a centre, so ``k`` is
    the half side of its unclipped box: ``k`` is the value where
    ``(2k / extent)**2 <= 1 - lambda < (2(k+1) / extent)**2``.
    """
    edges = [min(1.0, (2 * k / extent) ** 2) for k in range(extent // 2 + 2)]
    cdf = [_beta_cdf(edge, alpha) for edge in edges]
    law = [max(0.0, high - low) for low, high in zip(cdf, cdf[1:])]
    total = sum(law)
    return [p / total for p in law]


def _draw(config: MixConfig, canvas: _Canvas) -> _Draws:
    """Draws partners and random numbers on the CPU, shared per ``config.mode``.

    Only what the configuration needs is drawn: a probability of 0 or 1 costs
    no coin, as Beta(a, a) is symmetric the partner's share ``1 - lambda`` is
    drawn directly, and on a tabled canvas (known, square, at most :data:`TABLE_MAX_SIDE`)
    the paper's box centre is drawn as integers ``U{0..H-1}`` (the law of
    ``floor(U[0, 1) * H)``).
    """
    minmax = config.cutmix_minmax is not None
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

    def coin(probability: float) -> Weight:
        if probability in (0.0, 1.0):
            return float(probability)
        return shared(fn.random.coin_flip(probability=probability, dtype=types.INT32))

    def beta(alpha: float) -> DataNode:
        return shared(fn.random.beta(alpha=alpha, beta=alpha, dtype=types.FLOAT))

    def uniform() -> DataNode:
        return shared(fn.random.uniform(range=[0.0, 1.0], shape=[2]))

    def centre() -> DataNode:
        if minmax or not canvas.tabled:
            return uniform()
        pixels = list(range(canvas.size[0]))
        return shared(fn.random.uniform(values=pixels, shape=[2], dtype=types.INT32))

    mixed = coin(config.prob)
    cut = _times(mixed, coin(config.cutmix_share))
    blend = _minus(mixed, cut)
    cutmix = config.cutmix_enabled and not _never(cut)
    paper = cutmix and not minmax
    # On a tabled canvas the paper's half side floor(sqrt(1 - lambda) * H / 2)
    # is drawn from its exact law: one operator instead of five.
    direct = paper and canvas.tabled and config.correct_lam
    half = None
    if direct:
        law = _half_side_law(config.cutmix_alpha, canvas.size[0])
        half = shared(fn.random.choice(len(law), p=law))
    return _Draws(
        partner=partner,
        cut=cut,
        blend=blend,
        position=centre() if cutmix else None,
        size=uniform() if cutmix and minmax else None,
        cutmix_share=beta(config.cutmix_alpha) if paper and not direct else None,
        half=half,
        mixup_share=beta(config.mixup_alpha)
        if config.mixup_enabled and not _never(blend)
        else None,
    )


# The largest known square side whose box is drawn in whole pixels from tables: the
# centre from H values, the paper's half side from H / 2 + 1 probabilities (six
# operators fewer than drawing fractions and scaling them). A table costs Python time
# while the graph is built and DALI time on every draw, both growing with H; beyond
# this side fractions are drawn (the same law), so that a huge size cannot stall the
# build (a side of 10**8 took minutes) nor slow every batch (bench/box_tables.py).
TABLE_MAX_SIDE = 1024


@dataclasses.dataclass(frozen=True)
class _Canvas:
    """The images' ``(H, W)`` in the forms the graph needs: constants where known.

    Box coordinates are int32 (what ``multi_paste`` takes). A known square
    extent is a plain int, which DALI's arithmetic inlines (no operator); a
    vector constant is one operator, built once.
    """

    extent: DataNode | int  # int32 [2] (H, W), or H == W as an int
    sides: DataNode  # int32 [2] (H, W): region 0's shape
    area: DataNode | float  # float32 H * W
    size: DataNode | list[int]  # multi_paste's output_size
    fixed: bool  # one size, known while building, for every sample

    @property
    def tabled(self) -> bool:
        """Draws the box in whole pixels from tables (see :data:`TABLE_MAX_SIDE`)."""
        return isinstance(self.extent, int) and self.extent <= TABLE_MAX_SIDE

    @classmethod
    def known(cls, size: tuple[int, int]) -> _Canvas:
        height, width = size
        sides = types.Constant(np.array(size, dtype=np.int32))
        return cls(
            extent=height if height == width else sides,
            sides=sides,
            area=float(height * width),
            size=[height, width],
            fixed=True,
        )

    @classmethod
    def of(cls, images: DataNode) -> _Canvas:
        extent = images.shape(dtype=types.INT32)[0:2]
        # at least 1: an empty image's weights are 0 / 1 (nothing of its partner), not NaN;
        # for any other, the area itself
        area = dmath.max(fn.cast(_area(extent), dtype=types.FLOAT), 1.0)
        return cls(extent=extent, sides=extent, area=area, size=extent, fixed=False)


def _layout_extent(images: DataNode) -> DataNode:
    """int32 ``[2]`` (H, W) of each sample, read through its layout: HWC, CHW, FHWC alike.

    ``images.shape()`` has no layout, so its first two extents are (C, H) for CHW.
    Two slices of 1 x 1 and 2 x 3 pixels, placed by ``axis_names="HW"`` (which
    reads the layout), differ by 1 on the H axis, 2 on the W axis and 0 on every
    other: that marks which extents of the shape are H and W. Each slice copies
    a few values per sample; a layout without H or W fails with DALI's error.
    """
    probes = (
        fn.slice(images, start=[0, 0], shape=shape, axis_names="HW", out_of_bounds_policy="pad")
        for shape in ([1, 1], [2, 3])
    )
    small, large = (probe.shape(dtype=types.INT32) for probe in probes)
    marks = large - small
    shape = images.shape(dtype=types.INT32)
    height, width = (
        fn.reductions.sum(shape * (marks == mark), dtype=types.INT32) for mark in (1, 2)
    )
    return fn.stack(height, width)


def _area(sides: DataNode) -> DataNode:
    return sides[0] * sides[1]


def _int(node: DataNode) -> DataNode:
    return fn.cast(node, dtype=types.INT32)


def _cutmix_box(
    config: MixConfig, draws: _Draws, canvas: _Canvas, extent: DataNode | int
) -> tuple[DataNode, DataNode]:
    """Box ``(corner, sides)``, int32 ``[2]`` each in (y, x) order, for ``multi_paste``.

    The box lies in ``extent``, the one the sample and its partner have in
    common (the canvas's own where every size is known and equal); a sample
    that gets no CutMix has sides 0. Every side that is 0 has its corner on the
    canvas's far edge (see :func:`_far_if_empty` for why). The math runs on ``[2]``
    vectors, so each step is one operator for both axes: on the CPU the
    per-operator cost, not the arithmetic, dominates.
    """
    if config.cutmix_minmax is not None:
        # timm's rand_bbox_minmax: sides uniform in [min, max] of each extent, box inside.
        low, high = config.cutmix_minmax
        sides = _times(_int(dmath.floor((low + (high - low) * draws.size) * extent)), draws.cut)
        room = extent - sides
        corner = dmath.min(_int(dmath.floor(draws.position * (room + 1))), room)
        return _far_if_empty(corner, sides, canvas), sides
    # The paper's box: sides extent * sqrt(1 - lambda), centre ~ U{0..extent-1},
    # +-floor(side / 2) around it, clipped to the image. floor(floor(x) / 2) ==
    # floor(x / 2) and halving is exact in floating point, so the half side is one
    # floor of sqrt(1 - lambda) * (extent / 2). The box is empty where half is 0.
    half = draws.half
    if half is None:
        half = _int(dmath.floor(dmath.sqrt(draws.cutmix_share) * (extent * 0.5)))
    half = _times(half, draws.cut)
    centre = draws.position  # int32 pixels on a tabled canvas, else fractions
    if not canvas.tabled:
        centre = _int(dmath.floor(centre * extent))
    if canvas.fixed:
        # lower bound 0, or the far edge where the box is empty: one clamp places it.
        low = (half == 0) * canvas.extent
        corner = dmath.clamp(centre - half, low, extent)
        return corner, dmath.clamp(centre + half, low, extent) - corner
    corner = dmath.max(centre - half, 0)
    sides = dmath.min(centre + half, extent) - corner
    return _far_if_empty(corner, sides, canvas), sides


def _far_if_empty(corner: DataNode, sides: DataNode, canvas: _Canvas) -> DataNode:
    """``corner``, with the canvas's far edge on every axis where ``sides`` is 0.

    The graph must never hand ``multi_paste`` an empty region inside the
    canvas. DALI's GPU ``multi_paste`` splits the canvas into patches by
    sweeping the region edges (``kernels/imgproc/paste/paste_gpu.h``); a
    region with a side of 0 inside the canvas is opened and never closed, so
    its source then fills everything from its anchor to the bottom-right
    corner, and pixels no longer match labels. An edge at the canvas's far
    side (y = H or x = W) is the sweep's last point, where nothing is ever
    opened, and ``anchor + 0 <= size`` passes the bounds check; so an empty
    box there is harmless on the GPU and on the CPU (which pastes in order).
    """
    return dmath.max(corner, (sides == 0) * canvas.extent)


def _regions(corner: DataNode, sides: DataNode, canvas: _Canvas) -> tuple[DataNode, DataNode]:
    """``multi_paste``'s int32 ``[2, 2]`` anchors and shapes: the whole image, then the box."""
    # [[0, 0], corner] by broadcasting against a [2, 1] mask: one operator, no stack.
    anchors = corner * types.Constant(np.array([[0], [1]], dtype=np.int32))
    return anchors, fn.stack(canvas.sides, sides)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything ``mix`` decides per sample, before touching a pixel (all on the CPU)."""

    partner: Partner
    regions: tuple[DataNode, DataNode] | None  # multi_paste anchors and shapes (CutMix)
    blend: Weight | None  # MixUp's pixel weight of the partner
    partner_weight: Weight  # the partner's label weight
    # int32 [2]: the extent of the sample and its partner in common, where sizes differ
    common: DataNode | None


def _plan(config: MixConfig, canvas: _Canvas) -> _Plan:
    """Partners, CutMix regions and weights: the graph's per-sample CPU part."""
    draws = _draw(config, canvas)
    regions, blend, weight = None, None, 0.0
    common = None
    if not canvas.fixed:
        common = dmath.min(canvas.extent, fn.permute_batch(canvas.extent, indices=draws.partner))
    if draws.position is not None:
        extent = canvas.extent if common is None else common
        corner, sides = _cutmix_box(config, draws, canvas, extent)
        regions = _regions(corner, sides, canvas)
        if config.correct_lam:
            weight = _area(sides) / canvas.area  # exactly the pasted fraction (float32)
        else:
            weight = _times(draws.cut, draws.cutmix_share)
    if draws.mixup_share is not None:
        blend = _times(draws.blend, draws.mixup_share)
        # The blend covers the common extent only (the partner is nowhere else), so
        # the label gets m * common / own; exactly m where the sizes agree.
        share = blend if common is None else blend * (_area(common) / canvas.area)
        # At most one of the two weights is non-zero for any sample, so the sum is exact.
        weight = share if _never(weight) else weight + share
    return _Plan(
        partner=draws.partner, regions=regions, blend=blend, partner_weight=weight, common=common
    )


def _with_zero(plan: _Plan, zero: DataNode) -> _Plan:
    """``plan`` with an int32 zero (a check) added to its label weight, paste anchors and
    blend weight, so that the targets, the paste and the blend wait for the check and fail
    with it (a MixUp-only blend of two sizes failed first, with DALI's broadcast error)."""
    regions, blend = plan.regions, plan.blend
    if regions is not None:
        regions = (regions[0] + zero, regions[1])
    if blend is not None:
        blend = blend + zero  # float32 + int32 zero: float32, the same values
    return dataclasses.replace(
        plan, partner_weight=plan.partner_weight + zero, regions=regions, blend=blend
    )


@do_not_convert
def checked_labels(labels: DataNode, num_classes: int) -> DataNode:
    """A float32 zero ``[1]`` per sample that fails the pipeline unless its label is one whole
    number in ``[0, num_classes)``.

    DALI's ``one_hot`` gives a label outside the range a row of zeros (the sample's target,
    and its partner's share of the other target, then silently do not sum to 1), a label
    of two elements two rows, and a float label such as 2.5 the row of its integer part.
    These slices fail instead, and DALI's error shows the line below that failed: an
    out-of-range label is its ``slice_anchor`` and ``num_classes`` its ``input_shape``; a
    label that is not a whole number (or NaN) gives ``slice_anchor={1}, input_shape={1}``.
    Six CPU operators and two additions per batch; labels on the GPU cannot be checked
    here (an argument input must be on the CPU): check them before ``.gpu()``.
    """
    zeros = types.Constant(np.zeros([num_classes], dtype=np.float32))
    # DALI's error quotes the failing line: each check's comment is on it. Slice takes
    # int32 (or float) anchors.
    label = fn.reshape(labels, shape=[1])  # label of more than one element: "Actual volume"
    index = fn.cast(label, dtype=types.INT32)
    fits = fn.slice(  # label not in [0, num_classes): slice_anchor={label}, input_shape={classes}
        zeros, start=index, shape=[1], axes=[0], out_of_bounds_policy="error"
    )
    # 1 where the cast changed the label (2.5, NaN, an int64 beyond int32), else 0
    changed = fn.cast(label != index, dtype=types.INT32)
    whole = fn.slice(  # label not a whole number: slice_anchor={1}, input_shape={1}
        types.Constant(np.zeros([1], dtype=np.float32)),
        start=changed,
        shape=[1],
        axes=[0],
        out_of_bounds_policy="error",
    )
    return fits + whole


@do_not_convert
def checked_size(images: DataNode, size: tuple[int, int]) -> DataNode:
    """An int32 zero scalar per sample that fails the pipeline unless the image's (H, W)
    is ``size``.

    ``mix(size=...)`` builds its boxes for that size: a larger image would be cut to it, a
    smaller one fail inside ``multi_paste``. This slice fails first; DALI's error shows the
    line below, with the image's side as ``slice_anchor`` where it differs from ``size``
    (0 where it agrees). (H, W) is read through the layout (:func:`_layout_extent`); on GPU
    images, the CPU operators after it then wait for the images' shapes.
    """
    extent = _layout_extent(images)
    differs = extent * (extent != types.Constant(np.array(size, dtype=np.int32)))
    zero = fn.slice(  # image's (H, W) not mix's size: slice_anchor={its side where it differs}
        types.Constant(np.zeros([1, 1], dtype=np.int32)),
        start=differs,
        shape=[1, 1],
        axes=[0, 1],
        out_of_bounds_policy="error",
    )
    return fn.reductions.sum(zero, dtype=types.INT32)


@do_not_convert
def soft_targets(
    labels: DataNode,
    *,
    num_classes: int,
    label_smoothing: float = 0.0,
    partner: Partner | None = None,
    partner_weight: DataNode | None = None,
    check_labels: bool = True,
) -> DataNode:
    """float32 ``[num_classes]`` targets: ``t_a + w * (t_b - t_a)``, timm's smoothing.

    Args:
        labels: integer class indices, shape ``[]`` or ``[1]`` per sample.
        num_classes: length of each target.
        label_smoothing: off = s / num_classes, on = 1 - s + off (timm's ``mixup_target``).
        partner: index of each sample's partner (``permute_batch`` indices).
        partner_weight: float32 scalar per sample, the partner's share ``w``; ``partner``
            and ``partner_weight`` come together (one alone raises ValueError).
        check_labels: fail the pipeline on a label outside ``[0, num_classes)`` or of more
            than one element (see :func:`checked_labels`; CPU labels only), where DALI's
            ``one_hot`` would silently give that sample a row of zeros.

    Returns:
        float32 ``[num_classes]`` per sample, on the device of ``labels``. With
        ``w == 0`` or a sample that is its own partner, the (smoothed) one-hot
        vector exactly.
    """
    _graph_input("soft_targets", "labels", labels)
    if (partner is None) != (partner_weight is None):  # one alone gave unmixed targets
        given, lacking = "partner", "partner_weight"
        if partner is None:
            given, lacking = lacking, given
        raise ValueError(f"soft_targets got {given} without {lacking}; give both or neither")
    num_classes = _check_int("num_classes", num_classes, 1, MAX_CLASSES)
    check_labels = _check_bool("check_labels", check_labels)
    label_smoothing = _check_range("label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)
    off = label_smoothing / num_classes
    on = 1.0 - label_smoothing + off
    own = fn.one_hot(labels, num_classes=num_classes, on_value=on, off_value=off, dtype=types.FLOAT)
    if check_labels and labels.device == "cpu":
        own = own + checked_labels(labels, num_classes)  # adds 0.0: only its failure counts
    if partner is None or partner_weight is None:
        return own
    other = fn.permute_batch(own, indices=partner)
    return own + partner_weight * (other - own)


@do_not_convert
def mix(
    images: DataNode,
    labels: DataNode,
    config: MixConfig,
    *,
    size: tuple[int, int] | None = None,
    check_labels: bool = True,
    check_size: bool = True,
) -> tuple[DataNode, DataNode]:
    """CutMix and/or MixUp inside a DALI graph, with timm's semantics.

    Args:
        images: HWC batch (uint8 or float, CPU or GPU), any size per sample
            unless ``size`` is given.
        labels: integer class per sample, shape ``[]`` or ``[1]``, on the CPU or
            the GPU (the targets are computed there).
        config: what to apply; see :class:`dali_cutmix.MixConfig`.
        size: ``(H, W)`` of every image, when it is known while the graph is
            built (e.g. after ``fn.resize`` to a crop size). The box math then
            works on constants: fewer operators, and on the GPU (with
            ``check_size=False``) the CPU part of the graph no longer waits for
            the images' shapes. Every image must have exactly this size.
        check_labels: fail the pipeline on a CPU label outside ``[0, num_classes)`` or
            not a whole number (:func:`checked_labels`); ``make_loader``, whose file
            lists are checked when read, turns it off.
        check_size: with ``size``, fail the pipeline on an image of another (H, W)
            (:func:`checked_size`), which would otherwise be cut to ``size`` or fail
            obscurely; ``make_loader``, whose resize gives exactly ``size``, turns it off.
            On GPU images it reads their shapes, which needs DALI's dynamic executor.

    Returns:
        ``(images, targets)``. Images keep the input layout, size and device;
        they keep the input dtype when MixUp is off and are float32 (from uint8)
        when it is on (``mixup_alpha > 0``), even at ``prob=0`` or
        ``switch_prob=1``, where it never blends. Samples of different sizes are mixed within their
        common extent (top-left aligned), and the partner's label weight is
        its share of the sample's pixels: a MixUp weight ``m`` becomes
        ``m * common_area / area``. Targets are float32 ``[num_classes]`` per
        sample, summing to 1, on the device of ``labels``.

    Example:
        >>> @pipeline_def(batch_size=64, num_threads=4, device_id=0, seed=42)
        ... def train():
        ...     jpegs, labels = fn.readers.file(file_root=root, random_shuffle=True)
        ...     images = fn.decoders.image_random_crop(jpegs, device="mixed")
        ...     images = fn.resize(images, size=[224, 224])
        ...     config = MixConfig(num_classes=1000, cutmix_alpha=1.0)
        ...     return mix(images, labels.gpu(), config, size=(224, 224))
    """
    _graph_input("mix", "images", images)
    _graph_input("mix", "labels", labels)
    if not isinstance(config, MixConfig):
        hint = " (MixConfig.from_dict makes one)" if isinstance(config, dict) else ""
        raise ValueError(f"config must be a MixConfig, got {config!r}{hint}")
    check_labels = _check_bool("check_labels", check_labels)
    check_size = _check_bool("check_size", check_size)
    if size is not None:
        size = _known_size(size)
    if not config.enabled:
        return _blend_type(images, config), soft_targets(
            labels,
            num_classes=config.num_classes,
            label_smoothing=config.label_smoothing,
            check_labels=check_labels,
        )
    canvas = _Canvas.known(size) if size is not None else _Canvas.of(images)
    plan = _plan(config, canvas)
    if size is not None and check_size:
        plan = _with_zero(plan, checked_size(images, size))
    partner_images = fn.permute_batch(images, indices=plan.partner)
    if size is None:
        # Every step below needs the partner at the sample's extent: the GPU
        # multi_paste reads every input with input 0's row pitch, and the blend
        # needs equal shapes. The partner is cut (or zero-padded) from its
        # top-left corner; the box lies in the common extent, so no padding is pasted.
        partner_images = fn.slice(
            partner_images,
            start=[0, 0],
            shape=canvas.extent,
            axes=[0, 1],
            out_of_bounds_policy="pad",
            fill_values=0,
        )
        if plan.blend is not None:
            # MixUp blends the partner only where it has pixels: beyond the common
            # extent the "partner" is the sample itself, so the blend leaves it as is.
            zero = types.Constant(np.zeros((2, 2), dtype=np.int32))
            partner_images = fn.multi_paste(
                images,
                partner_images,
                in_anchors=zero,
                out_anchors=zero,
                shapes=fn.stack(canvas.sides, plan.common),
                output_size=canvas.size,
            )
    out = images
    if plan.regions is not None:
        # Region 0 is the whole image, region 1 the box (later regions win).
        # Pasting before blending keeps the copy in the input dtype (uint8 crops).
        anchors, shapes = plan.regions
        out = fn.multi_paste(
            images,
            partner_images,
            in_anchors=anchors,
            out_anchors=anchors,
            shapes=shapes,
            output_size=canvas.size,
        )
    if plan.blend is not None:
        # out + (m*b - m*out) in one fused float32 pass over the input dtype: no
        # casts, no uint8 wrap-around, and exactly ``out`` where m == 0 (CutMix and
        # unmixed samples) or where the partner is the sample itself.
        # (DALI's arithmetic moves the CPU per-sample weight to the GPU by itself.)
        out = out + (partner_images * plan.blend - out * plan.blend)
    else:
        out = _blend_type(out, config)
    targets = soft_targets(
        labels,
        num_classes=config.num_classes,
        label_smoothing=config.label_smoothing,
        partner=plan.partner,
        partner_weight=plan.partner_weight,
        check_labels=check_labels,
    )
    return out, targets


def _blend_type(images: DataNode, config: MixConfig) -> DataNode:
    """``images`` in the type a blend gives them (float32 for uint8), where MixUp is on
    (``mixup_alpha > 0``) but ``prob`` or ``switch_prob`` keep it from ever blending: the
    output type then depends on the methods configured, not on their probabilities."""
    # Times a float32 1.0: the blend's own type promotion, and the same values.
    return images * 1.0 if config.mixup_enabled else images


def _known_size(size: Any) -> tuple[int, int]:
    """``mix``'s ``size`` as two Python ints, or a ValueError saying what is allowed."""
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or any(
            isinstance(s, bool) or not isinstance(s, numbers.Integral) or not 1 <= s <= MAX_SIDE
            for s in size
        )
    ):
        raise ValueError(f"size must be (H, W) with two ints from 1 to {MAX_SIDE}, got {size!r}")
    return int(size[0]), int(size[1])


def _fill(fill_value: Any) -> float | list[float]:
    """``cutout``'s ``fill_value`` as Python floats: one number, or DALI's one per channel."""
    many = isinstance(fill_value, (tuple, list))
    values = list(fill_value) if many else [fill_value]
    if not values or not all(map(_is_number, values)):
        raise ValueError(
            f"cutout fill_value must be a finite number (or a list, one per channel), "
            f"got {fill_value!r}"
        )
    return [float(v) for v in values] if many else float(fill_value)


def _one_method_config(
    method: str,
    alpha: float,
    num_classes: int,
    prob: float,
    mode: MixMode | str,
    label_smoothing: float,
    **options: Any,
) -> MixConfig:
    """The configuration of ``cutmix`` or ``mixup`` (``method``): that method at ``alpha``
    (> 0, a user error otherwise) and the other off; ``options`` are the method's own fields."""
    if not _is_number(alpha) or alpha <= 0:
        raise ValueError(f"{method} alpha must be a finite number > 0, got {alpha!r}")
    alphas = {"cutmix_alpha": 0.0, "mixup_alpha": 0.0, f"{method}_alpha": alpha}
    return MixConfig(
        num_classes=num_classes,
        prob=prob,
        mode=mode,
        label_smoothing=label_smoothing,
        **alphas,
        **options,
    )


@do_not_convert
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
    _graph_input("cutmix", "images", images)
    _graph_input("cutmix", "labels", labels)
    box = {"cutmix_minmax": minmax, "correct_lam": correct_lam}
    config = _one_method_config("cutmix", alpha, num_classes, prob, mode, label_smoothing, **box)
    return mix(images, labels, config)


@do_not_convert
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
    _graph_input("mixup", "images", images)
    _graph_input("mixup", "labels", labels)
    config = _one_method_config("mixup", alpha, num_classes, prob, mode, label_smoothing)
    return mix(images, labels, config)


@do_not_convert
def cutout(
    images: DataNode,
    *,
    size: float = 0.5,
    prob: float = 1.0,
    fill_value: float = 0.0,
) -> DataNode:
    """Cutout (DeVries and Taylor, 2017): fill a random square-ish box; labels unchanged.

    The box spans ``floor(floor(size * H) / 2)`` rows (and likewise columns) on each
    side of a uniform centre pixel and is clipped at the border, as in the reference
    code (``length // 2`` around the centre): an odd ``floor(size * H)`` gives one row
    fewer (H = 11, size 0.5: at most 4 rows).

    Args:
        images: uint8 or float batch, CPU or GPU, of any layout that names H and W
            (HWC, CHW after ``crop_mirror_normalize``, FHWC); the box is placed by it.
        size: box side as a fraction of each image side, in (0, 1].
        prob: probability that a sample gets a box.
        fill_value: value written into the box, or a list of one value per channel.
            It is converted to the images' dtype as DALI's ``erase`` does, without
            clamping: on uint8 images give values in [0, 255] (300 is written as 44).

    Returns:
        Images of the input dtype, layout, size and device.
    """
    _graph_input("cutout", "images", images, "torchvision.transforms.v2.RandomErasing")
    if not _is_number(size) or not 0.0 < size <= 1.0:
        raise ValueError(f"cutout size must be a number in (0, 1], got {size!r}")
    if not _is_number(prob) or not 0.0 <= prob <= 1.0:
        raise ValueError(f"cutout prob must be a number in [0, 1], got {prob!r}")
    size, prob, fill_value = float(size), float(prob), _fill(fill_value)
    extent = _layout_extent(images)
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
