"""The recipes' per-sample augmentations: RandomErasing's draw and fill, the automatic
augmentations' seeding and identities, and how both compose with CutMix/MixUp (CPU)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import nvidia.dali.fn as fn
import pytest
import torch
from conftest import requires_cuda, resumed_after, same_batches, small_loader
from nvidia.dali import pipeline_def
from scipy import stats
from torchvision import transforms

from dali_cutmix.augment import auto_augment, quiet_auto_aug, random_erase
from dali_cutmix.config import AugmentConfig, MixConfig, timm_auto_augment
from pipelines.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageNetOptions,
    augment_and_mix,
)

SIDE = 48
GPU = [requires_cuda, pytest.mark.gpu]
P_VALUE = 1e-3  # goodness-of-fit tests fail at this level; every draw is seeded


def _run(
    graph: Callable[..., tuple],
    batches: Sequence[Sequence[np.ndarray]],
    *,
    seed: int = 0,
    conditionals: bool = False,
    device_id: int | None = None,
) -> list[list[np.ndarray]]:
    """``graph(*inputs)`` over the given batches of each input in one pipeline.

    ``batches[k]`` is the list of per-iteration batches of input ``k``. On the
    CPU with ``device_id`` None, else with every input moved to that GPU first.
    Returns, per output, every sample of every iteration.
    """
    batch_size = len(batches[0][0])

    @pipeline_def(batch_size=batch_size, num_threads=2, device_id=device_id, seed=seed)
    def pipe():
        inputs = [
            fn.external_source(source=list(b), layout="HWC" if b[0][0].ndim == 3 else None)
            for b in batches
        ]
        if device_id is not None:
            inputs = [x.gpu() for x in inputs]
        return graph(*inputs)

    with quiet_auto_aug():
        p = pipe(enable_conditionals=conditionals)
        p.build()
    outputs: list[list[np.ndarray]] = []
    for _ in range(len(batches[0])):
        results = p.run()
        if not outputs:
            outputs = [[] for _ in results]
        for out, result in zip(outputs, results):
            out.extend(
                np.array(result.as_cpu().as_tensor())
                if device_id is not None
                else np.array(result.as_tensor())
            )
    return outputs


def _ones(count: int, batch: int) -> list[list[np.ndarray]]:
    return [[np.ones((SIDE, SIDE, 3), np.float32)] * batch for _ in range(count)]


def _box(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, h, w) of the zero pixels of ``image``, asserted to be one whole rectangle."""
    zero = (image == 0).all(-1)
    if not zero.any():
        return None
    rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
    top, left, h, w = rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert zero[top : top + h, left : left + w].all() and zero.sum() == h * w
    return int(top), int(left), int(h), int(w)


def _torchvision_boxes(count: int, config: AugmentConfig) -> np.ndarray:
    torch.manual_seed(0)
    image = torch.ones(3, SIDE, SIDE)
    boxes = []
    for _ in range(count):
        top, left, h, w, _ = transforms.RandomErasing.get_params(
            image, scale=config.erase_scale, ratio=config.erase_ratio, value=[0.0]
        )
        if (h, w) != (SIDE, SIDE):  # (0, 0, H, W, img): no box fitted in 10 attempts
            boxes.append((top, left, h, w))
    return np.array(boxes)


# ---- RandomErasing --------------------------------------------------------------------------


def test_random_erase_follows_torchvision_draw_and_probability() -> None:
    config = AugmentConfig(random_erase=0.4)
    (out,) = _run(lambda x: (random_erase(x, config, size=(SIDE, SIDE)),), [_ones(10, 256)])
    boxes = [_box(image) for image in out]
    erased = np.array([b for b in boxes if b is not None])
    for image, box in zip(out, boxes):  # outside the box, every pixel is untouched
        if box is not None:
            top, left, h, w = box
            image = image.copy()
            image[top : top + h, left : left + w] = 1.0
        assert (image == 1.0).all()
    assert stats.binomtest(len(erased), len(out), 0.4).pvalue > P_VALUE
    ref = _torchvision_boxes(4000, config)
    ours_h, ours_w = erased[:, 2].astype(float), erased[:, 3].astype(float)
    ref_h, ref_w = ref[:, 2].astype(float), ref[:, 3].astype(float)
    for ours, theirs in [
        (ours_h * ours_w / SIDE**2, ref_h * ref_w / SIDE**2),  # area fraction
        (np.log(ours_h / ours_w), np.log(ref_h / ref_w)),  # aspect ratio
        (erased[:, 0] / (SIDE - ours_h), ref[:, 0] / (SIDE - ref_h)),  # top, uniform in room
        (erased[:, 1] / (SIDE - ours_w), ref[:, 1] / (SIDE - ref_w)),  # left
    ]:
        assert stats.ks_2samp(ours, theirs).pvalue > P_VALUE
    # The draw's bounds hold exactly: every box fits, torchvision's rule h < H and w < W.
    assert (erased[:, 2] < SIDE).all() and (erased[:, 3] < SIDE).all()
    assert (erased[:, 0] + erased[:, 2] <= SIDE).all() and (
        erased[:, 1] + erased[:, 3] <= SIDE
    ).all()


def test_random_erase_that_cannot_fit_erases_nothing() -> None:
    # Every box has area >= 0.99 of the image with aspect >= 2: h >= H always, 10 misses.
    config = AugmentConfig(random_erase=1.0, erase_scale=(0.99, 1.0), erase_ratio=(2.0, 3.0))
    (out,) = _run(lambda x: (random_erase(x, config, size=(SIDE, SIDE)),), [_ones(1, 64)])
    assert all((image == 1.0).all() for image in out)


@pytest.mark.parametrize("mode", ["rand", "pixel"])
def test_random_erase_noise_modes_fill_the_box(mode: str) -> None:
    config = AugmentConfig(random_erase=1.0, erase_mode=mode)
    const = AugmentConfig(random_erase=1.0)
    # The same seed gives the same boxes in both modes (same draws, in the same order).
    (noisy,) = _run(lambda x: (random_erase(x, config, size=(SIDE, SIDE)),), [_ones(2, 64)])
    (zeros,) = _run(lambda x: (random_erase(x, const, size=(SIDE, SIDE)),), [_ones(2, 64)])
    values = []
    for image, reference in zip(noisy, zeros):
        box = _box(reference)
        assert box is not None
        top, left, h, w = box
        inside = image[top : top + h, left : left + w]
        outside = image.copy()
        outside[top : top + h, left : left + w] = 1.0
        assert (outside == 1.0).all()
        if mode == "rand":  # one value per channel over the whole box
            assert (inside == inside[0, 0]).all()
            values.append(inside[0, 0])
        else:
            values.extend(inside.reshape(-1, 3))
    values = np.array(values).ravel()
    assert stats.kstest(values, "norm").pvalue > P_VALUE


def _erase_then_mix(
    mix: MixConfig, scale: tuple[float, float], device_id: int | None = None
) -> tuple[list, list]:
    colours = np.array([[200, 30, 40], [20, 60, 230], [90, 160, 10], [250, 250, 250]], np.uint8)
    images = [[np.broadcast_to(c, (SIDE, SIDE, 3)).copy() for c in colours] * 8] * 3
    labels = [[np.array([k % 4], np.int32) for k in range(32)]] * 3
    options = ImageNetOptions(
        train=True,
        crop_size=SIDE,
        mix=mix,
        output_layout="NHWC",
        augment=AugmentConfig(random_erase=0.7, erase_scale=scale),
    )
    out, targets = _run(
        lambda x, y: augment_and_mix(x, y, options=options), [images, labels], device_id=device_id
    )
    return out, targets


COLOURS = (
    np.array([[200, 30, 40], [20, 60, 230], [90, 160, 10], [250, 250, 250]])
    - np.array(IMAGENET_MEAN)
) / np.array(IMAGENET_STD)


@pytest.mark.parametrize("device_id", [None, pytest.param(0, marks=GPU)], ids=["cpu", "gpu"])
@pytest.mark.parametrize("method", ["cutmix", "mixup"])
def test_erasing_composes_with_mixing(method: str, device_id: int | None) -> None:
    """Through ``augment_and_mix``: erase each image, then mix; targets untouched by erasing.

    Two runs with one seed: the second with boxes too small to erase anything (the
    erase scale only rescales the same random stream). The targets are identical;
    the second run's pixels are the shares the targets claim; the first run differs
    from it only by erased pixels: exactly 0 under CutMix, and under MixUp the blend
    with the erased image's weighted colour taken out.
    """
    cutmix = method == "cutmix"
    mix = MixConfig(num_classes=4, cutmix_alpha=float(cutmix), mixup_alpha=float(not cutmix))
    erased, targets = _erase_then_mix(mix, (0.02, 0.33), device_id)
    kept, kept_targets = _erase_then_mix(mix, (1e-9, 2e-9), device_id)
    np.testing.assert_array_equal(np.array(targets), np.array(kept_targets))
    changed = 0
    for image, original, target in zip(erased, kept, targets):
        if method == "cutmix":
            nearest = np.linalg.norm(original[..., None, :] - COLOURS, axis=-1).argmin(-1)
            shares = np.bincount(nearest.ravel(), minlength=4) / SIDE**2
            np.testing.assert_allclose(shares, target, atol=1e-6)
            assert ((image == original) | (image == 0)).all()
        else:
            np.testing.assert_allclose(
                original, np.broadcast_to(target @ COLOURS, original.shape), atol=1e-4
            )
            missing = (original - image).reshape(-1, 3)
            parts = [w * COLOURS[k] for k, w in enumerate(target) if w > 0]
            allowed = np.array([np.zeros(3), *parts, sum(parts)])
            if len(parts) == 1:  # a partner of the same class: any share of that colour
                shares = np.linspace(0, 1, 10001)[:, None] * COLOURS[target.argmax()]
                allowed = np.concatenate([allowed, shares])
            gap = np.linalg.norm(missing[:, None, :] - allowed[None], axis=-1).min(1)
            assert (gap < 1e-3).all()
        changed += int((image != original).any(-1).sum())
    assert changed > 0  # the first run did erase


# ---- automatic augmentations ----------------------------------------------------------------


def _random_images(count: int, batch: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        [rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8) for _ in range(batch)]
        for _ in range(count)
    ]


def _monotone_per_channel(before: np.ndarray, after: np.ndarray) -> bool:
    """True when each channel of ``after`` is a non-decreasing function of ``before``'s."""
    for c in range(3):
        order = np.lexsort((after[..., c].ravel(), before[..., c].ravel()))
        x, y = before[..., c].ravel()[order], after[..., c].ravel()[order]
        if (np.diff(y.astype(int)) < 0).any() or (y[1:] != y[:-1])[x[1:] == x[:-1]].any():
            return False
    return True


def test_randaugment_magnitude_zero_moves_no_pixel() -> None:
    """At magnitude 0 the shifts, shears, rotations are 0 and the enhancements factor 1;
    what is left (autocontrast, equalize, posterize 8 bits) maps each channel's values
    monotonically. At magnitude 9 the geometry moves pixels, and the check sees it."""
    images = _random_images(2, 32)
    results = {}
    for m in (0, 9):
        config = AugmentConfig(auto_augment="ra", ra_magnitude=m)
        (out,) = _run(
            lambda x, c=config: (auto_augment(x, c, size=(SIDE, SIDE)),),
            [images],
            conditionals=True,
        )
        flat = [image for batch in images for image in batch]
        results[m] = [_monotone_per_channel(b, a) for b, a in zip(flat, out)]
    assert all(results[0])
    assert sum(not ok for ok in results[9]) > 16


def _loader(root: Path, augment: AugmentConfig | None, **settings):
    """A mixing training loader of 32-pixel crops with ``augment``; ``settings`` override."""
    mine = {"crop_size": 32, "num_threads": 2, "mix": MixConfig(num_classes=3)}
    return small_loader(root, augment=augment, **(mine | settings))


@pytest.mark.parametrize(
    "augment",
    [
        AugmentConfig(),
        AugmentConfig(random_erase=0.0, erase_mode="pixel"),
        AugmentConfig(auto_augment="ra", ra_num_ops=0),
    ],
    ids=["default", "erase-0", "ra-0-ops"],
)
def test_disabled_augmentation_is_bit_identical_to_none(image_folder: Path, augment) -> None:
    assert not augment.enabled
    assert same_batches(list(_loader(image_folder, None)), list(_loader(image_folder, augment)))


RECIPES = {
    "ta_wide": AugmentConfig(auto_augment="ta_wide"),
    "ra": AugmentConfig(auto_augment="ra"),
    "imagenet": AugmentConfig(auto_augment="imagenet"),
    "timm": AugmentConfig(
        **timm_auto_augment("rand-m9-mstd0-inc1"), random_erase=0.25, erase_mode="pixel"
    ),
    "torchvision": AugmentConfig(auto_augment="ta_wide", random_erase=0.1),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_augmentation_is_seeded_and_resumes_exactly(image_folder: Path, name: str) -> None:
    augment = RECIPES[name]
    loader = _loader(image_folder, augment)
    reference = list(loader) + list(loader)  # two epochs
    again = _loader(image_folder, augment)
    assert same_batches(list(again) + list(again), reference)
    one_epoch = reference[: len(reference) // 2]
    assert not same_batches(list(_loader(image_folder, None)), one_epoch)
    assert not same_batches(list(_loader(image_folder, augment, seed=1)), one_epoch)
    resumed = resumed_after(lambda: _loader(image_folder, augment), 1)
    assert same_batches(list(resumed) + list(resumed), reference[1:])


# ---- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"auto_augment": "augmix"}, "auto_augment must be one of 'ta_wide', 'ra', 'imagenet'"),
        ({"random_erase": 1.5}, r"random_erase must be in \[0.0, 1.0\], got 1.5"),
        ({"erase_mode": "noise"}, "erase_mode must be one of 'const', 'rand', 'pixel'"),
        ({"ra_magnitude": 31}, r"ra_magnitude must be < num_magnitude_bins \(31\), got 31"),
        ({"erase_scale": (0.5, 0.2)}, r"erase_scale must be \(min, max\) with 0 < min <= max"),
        ({"fill_value": 256}, r"fill_value must be in \[0, 255\], got 256"),
    ],
)
def test_bad_augment_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**kwargs)


def test_augment_config_round_trips_through_a_dict() -> None:
    config = AugmentConfig(**timm_auto_augment("rand-m7-n3-inc1"), random_erase=0.25)
    assert AugmentConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("spec", "fields"),
    [
        (
            "rand-m9-mstd0-inc1",
            {
                "auto_augment": "ra",
                "ra_magnitude": 9,
                "ra_num_ops": 2,
                "num_magnitude_bins": 11,
                "ra_increasing": True,
                "max_translate_rel": 0.45,
                "fill_value": 128,
            },
        ),
        (
            "rand-m6-n1",
            {
                "auto_augment": "ra",
                "ra_magnitude": 6,
                "ra_num_ops": 1,
                "num_magnitude_bins": 11,
                "ra_increasing": False,
                "max_translate_rel": 0.45,
                "fill_value": 128,
            },
        ),
        (
            "rand",  # timm's defaults: magnitude 10 of 0..10, 2 ops, its original ops
            {
                "auto_augment": "ra",
                "ra_magnitude": 10,
                "ra_num_ops": 2,
                "num_magnitude_bins": 11,
                "ra_increasing": False,
                "max_translate_rel": 0.45,
                "fill_value": 128,
            },
        ),
        ("original", {"auto_augment": "imagenet", "max_translate_rel": 0.45, "fill_value": 128}),
    ],
)
def test_timm_auto_augment_strings(spec: str, fields: dict) -> None:
    assert timm_auto_augment(spec) == fields


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rand-m9-mstd0.5-inc1", "magnitude noise \\(mstd0.5\\) cannot be honoured"),
        ("augmix-m5-w4-d2", "AugMix is not in DALI's auto_aug"),
        ("v0", "unknown or unsupported policy 'v0'"),
        ("rand-m12", "'m12' cannot be honoured"),
        ("rand-m9-w0", "'w0' cannot be honoured"),
        # a graph of 1,000,000 ops took days to build
        ("rand-m9-n17", "^--aa rand-m9-n17: at most 16 ops \\(n16; each adds about 0.35 s"),
        # a capital letter (timm refuses it too) was an AttributeError, also from train's --aa
        ("rand-M9", "^--aa rand-M9: 'M9' cannot be honoured; supported: rand-m<M>"),
        ("rand-m9-Inc1", "^--aa rand-m9-Inc1: 'Inc1' cannot be honoured"),
        ("rand-mstd", "magnitude noise \\(mstd\\) cannot be honoured"),
        (5, "^--aa must be a string such as 'rand-m9-n2-inc1', got 5$"),
        (None, "^--aa must be a string such as 'rand-m9-n2-inc1', got None$"),
    ],
)
def test_timm_strings_dali_cannot_honour_are_refused(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        timm_auto_augment(spec)


def test_pipeline_options_refuse_what_cannot_apply() -> None:
    with pytest.raises(ValueError, match="augment applies to training only"):
        ImageNetOptions(train=False, augment=AugmentConfig(random_erase=0.1))
    with pytest.raises(
        ValueError, match=r"interpolation \(bicubic\) cannot be used with auto_augment"
    ):
        ImageNetOptions(
            train=True, augment=AugmentConfig(auto_augment="ra"), interpolation="bicubic"
        )
    with pytest.raises(ValueError, match="interpolation must be one of"):
        ImageNetOptions(train=True, interpolation="lanczos")
    # Bicubic resizes alone are fine, and so is erasing with them.
    ImageNetOptions(train=True, augment=AugmentConfig(random_erase=0.1), interpolation="bicubic")


@pytest.mark.parametrize("interpolation", ["nearest", "bicubic"])
def test_interpolation_reaches_the_resizes(image_folder: Path, interpolation: str) -> None:
    bilinear = list(_loader(image_folder, None))
    other = list(_loader(image_folder, None, interpolation=interpolation))
    assert not same_batches(bilinear, other)
    assert all(torch.equal(y, v) for (_, y), (_, v) in zip(bilinear, other))  # same draws
    assert same_batches(bilinear, list(_loader(image_folder, None, interpolation="bilinear")))


# ---- on the GPU (skipped without CUDA) --------------------------------------------------------


@pytest.mark.parametrize("mode", ["const", "pixel"])
@pytest.mark.parametrize("p", [0.5, 1.0])
@requires_cuda
@pytest.mark.gpu
def test_gpu_erases_the_cpu_boxes(mode: str, p: float) -> None:
    """The box draws run on the CPU in both pipelines: same seed, same boxes; the GPU
    ``erase`` fills them exactly and leaves the rest (and coin-lost, zero-size boxes) alone."""
    config = AugmentConfig(random_erase=p, erase_mode=mode)
    const = AugmentConfig(random_erase=p)

    def graph(x, c=config):
        return (random_erase(x, c, size=(SIDE, SIDE)),)

    (cpu,) = _run(lambda x: graph(x, const), [_ones(2, 64)])
    (gpu,) = _run(graph, [_ones(2, 64)], device_id=0)
    for on_cpu, on_gpu in zip(cpu, gpu):
        box = _box(on_cpu)
        if mode == "const":
            np.testing.assert_array_equal(on_gpu, on_cpu)
        elif box is None:
            assert (on_gpu == 1.0).all()
        else:
            top, left, h, w = box
            outside = on_gpu.copy()
            outside[top : top + h, left : left + w] = 1.0
            assert (outside == 1.0).all()
            assert (on_gpu[top : top + h, left : left + w] != 1.0).all()


@pytest.mark.parametrize("policy", ["ta_wide", "ra", "imagenet"])
@requires_cuda
@pytest.mark.gpu
def test_gpu_auto_augment_is_seeded(policy: str) -> None:
    config = AugmentConfig(auto_augment=policy)
    images = _random_images(2, 32)

    def graph(x):
        return (auto_augment(x, config, size=(SIDE, SIDE)),)

    (first,) = _run(graph, [images], conditionals=True, device_id=0)
    (again,) = _run(graph, [images], conditionals=True, device_id=0)
    flat = [image for batch in images for image in batch]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert sum(not np.array_equal(a, b) for a, b in zip(first, flat)) > 16


@requires_cuda
@pytest.mark.gpu
def test_gpu_randaugment_magnitude_zero_moves_no_pixel() -> None:
    config = AugmentConfig(auto_augment="ra", ra_magnitude=0)
    images = _random_images(2, 32)
    (out,) = _run(
        lambda x: (auto_augment(x, config, size=(SIDE, SIDE)),),
        [images],
        conditionals=True,
        device_id=0,
    )
    flat = [image for batch in images for image in batch]
    assert all(_monotone_per_channel(b, a) for b, a in zip(flat, out))


@requires_cuda
@pytest.mark.gpu
def test_gpu_recipe_loader_resumes_exactly(image_folder: Path) -> None:
    augment = RECIPES["torchvision"]
    mix = MixConfig(num_classes=3, mixup_alpha=0.2, label_smoothing=0.1)

    def loader():
        return _loader(image_folder, augment, device="gpu", mix=mix)

    reference = list(loader())
    assert same_batches(list(resumed_after(loader, 1)), reference[1:])
