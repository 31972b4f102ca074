"""Exact-value tests of the mixing graph functions, run on DALI CPU pipelines."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from conftest import requires_cuda
from nvidia.dali import fn, pipeline_def, types
from scipy import stats

from dali_cutmix import MixConfig, cutmix, cutout, mix, mixup

K = 10  # classes in these tests


def run_graph(
    graph: Callable,
    images: list[np.ndarray],
    labels: list[np.ndarray] | None = None,
    *,
    seed: int = 7,
    iterations: int = 1,
    device_id: int | None = None,
    batch_size: int | None = None,
) -> list[list[list[np.ndarray]]]:
    """Runs ``graph(images, labels)`` over the same batch; returns [iteration][output][sample]."""
    if labels is None:
        labels = [np.array([i % K], np.int32) for i in range(len(images))]
    dtype = types.UINT8 if images[0].dtype == np.uint8 else types.FLOAT

    @pipeline_def(
        batch_size=batch_size or len(images),
        num_threads=1,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=1,
    )
    def pipe():
        imgs = fn.external_source(name="images", layout="HWC", dtype=dtype)
        lbls = fn.external_source(name="labels")
        if device_id is not None:
            imgs = imgs.gpu()
        out = graph(imgs, lbls)
        return out if isinstance(out, tuple) else (out,)

    p = pipe()
    p.build()
    results = []
    for _ in range(iterations):
        p.feed_input("images", images)
        p.feed_input("labels", labels)
        outs = p.run()
        outs = [t.as_cpu() if hasattr(t, "as_cpu") else t for t in outs]
        results.append([[np.array(t[i]) for i in range(len(t))] for t in outs])
    return results


def flat_images(n: int, *, sizes: list[tuple[int, int]] | None = None) -> list[np.ndarray]:
    """Sample i is filled with value i + 1, so every pixel names its source."""
    sizes = sizes or [(20, 30)] * n
    return [np.full((h, w, 3), i + 1, np.uint8) for i, (h, w) in enumerate(sizes)]


def sources(image: np.ndarray, n: int) -> np.ndarray:
    """Pixel counts per source sample (channel 0 holds the sample value)."""
    return np.array([(image[..., 0] == i + 1).sum() for i in range(n)])


MIXED_SIZES = [(20, 30), (31, 17), (24, 24), (9, 40), (33, 33), (16, 28), (20, 30)]


@pytest.mark.parametrize("mode", ["elem", "batch", "pair"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cutmix_partner_weight_is_exact_pasted_fraction(mode: str, seed: int) -> None:
    n = len(MIXED_SIZES)
    images = flat_images(n, sizes=MIXED_SIZES)
    labels = [np.array([i], np.int64) for i in range(n)]
    runs = run_graph(
        lambda x, y: cutmix(x, y, num_classes=K, alpha=1.0, mode=mode),
        images,
        labels,
        seed=seed,
        iterations=4,
    )
    mixed = 0
    for outs, targets in runs:
        for i in range(n):
            mixed += check_cutmix_sample(outs[i], targets[i], i, n, MIXED_SIZES[i])
    assert mixed >= 3


def check_cutmix_sample(out: np.ndarray, target: np.ndarray, i: int, n: int, size) -> bool:
    """Asserts the CutMix invariants for sample i; returns whether it was mixed."""
    h, w = size
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    counts = sources(out, n)
    assert counts.sum() == h * w  # every pixel comes from the sample or one partner
    assert target.dtype == np.float32 and target.shape == (K,)
    for j in range(n):
        if j != i:
            assert target[j] == np.float32(counts[j]) / np.float32(h * w)
    assert target[i] == np.float32(1) - np.float32(h * w - counts[i]) / np.float32(h * w)
    partner_pixels = np.argwhere(out[..., 0] != i + 1)
    if len(partner_pixels) == 0:
        return False
    (y0, x0), (y1, x1) = partner_pixels.min(0), partner_pixels.max(0)
    assert (y1 - y0 + 1) * (x1 - x0 + 1) == len(partner_pixels)  # a solid box
    return True


def test_cutmix_clips_boxes_at_the_border_and_still_matches() -> None:
    # Over many samples some boxes must be clipped: box area < the unclipped size.
    images = flat_images(8)
    labels = [np.array([i]) for i in range(8)]
    runs = run_graph(lambda x, y: cutmix(x, y, num_classes=K), images, labels, iterations=30)
    fractions = [
        t[j]
        for (_, targets) in runs
        for i, t in enumerate(targets)
        for j in range(8)
        if j != i and t[j] > 0
    ]
    assert len(fractions) > 150
    # correct_lam: E[lambda'] is about 0.68 at alpha=1, i.e. partner share about 0.32, not 0.5.
    shares = [1 - t[i] for (_, targets) in runs for i, t in enumerate(targets)]
    assert 0.25 < np.mean(shares) < 0.40


def test_mixup_pixels_and_labels_share_lambda() -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (12, 16, 3), dtype=np.uint8) for _ in range(6)]
    labels = [np.array([i], np.int32) for i in range(6)]
    [[outs, targets]] = run_graph(
        lambda x, y: mixup(x, y, num_classes=K, alpha=0.4), images, labels
    )
    for i in range(6):
        assert outs[i].dtype == np.float32
        (partners,) = np.nonzero((targets[i] > 0) & (np.arange(K) != i))
        assert len(partners) == 1, "MixUp must mix every sample with one other sample"
        j = partners[0]
        w = targets[i][j]
        a, b = images[i].astype(np.float32), images[j].astype(np.float32)
        np.testing.assert_allclose(outs[i], a + w * (b - a), rtol=0, atol=1e-3)
        np.testing.assert_allclose(outs[i], (1 - w) * a + w * b, rtol=0, atol=1e-3)
        assert targets[i][i] == np.float32(1) - w


def test_prob_zero_returns_images_unchanged_and_one_hot() -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (10, 14, 3), dtype=np.uint8) for _ in range(5)]
    config = MixConfig(num_classes=K, cutmix_alpha=1.0, mixup_alpha=1.0, prob=0.0)
    [[outs, targets]] = run_graph(lambda x, y: mix(x, y, config), images)
    for i in range(5):
        np.testing.assert_array_equal(outs[i], images[i])
        np.testing.assert_array_equal(targets[i], np.eye(K, dtype=np.float32)[i])


def test_mixing_off_keeps_dtype_and_gives_smoothed_one_hot() -> None:
    images = flat_images(3)
    config = MixConfig(num_classes=K, cutmix_alpha=0.0, mixup_alpha=0.0, label_smoothing=0.1)
    [[outs, targets]] = run_graph(lambda x, y: mix(x, y, config), images)
    off, on = np.float32(0.1 / K), np.float32(1 - 0.1 + 0.1 / K)
    for i in range(3):
        np.testing.assert_array_equal(outs[i], images[i])
        expected = np.full(K, off, np.float32)
        expected[i] = on
        np.testing.assert_array_equal(targets[i], expected)


def test_prob_is_honoured_statistically() -> None:
    images = flat_images(32, sizes=[(8, 8)] * 32)
    config = MixConfig(num_classes=32, mixup_alpha=1.0, cutmix_alpha=0.0, prob=0.3)
    labels = [np.array([i]) for i in range(32)]
    runs = run_graph(lambda x, y: mix(x, y, config), images, labels, iterations=40)
    mixed = sum(int(t[i] < 1) for (_, targets) in runs for i, t in enumerate(targets))
    total = 32 * 40
    assert stats.binomtest(mixed, total, 0.3).pvalue > 0.001


@pytest.mark.parametrize("alpha", [0.4, 1.0, 2.0])
def test_lambda_follows_beta(alpha: float) -> None:
    images = flat_images(64, sizes=[(4, 4)] * 64)
    labels = [np.array([i]) for i in range(64)]
    config = MixConfig(num_classes=64, mixup_alpha=alpha, cutmix_alpha=0.0)
    runs = run_graph(lambda x, y: mix(x, y, config), images, labels, iterations=50)
    lams = np.array([t[i] for (_, targets) in runs for i, t in enumerate(targets)], np.float64)
    assert len(lams) == 3200
    assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 0.001
    # A wrong alpha must be rejected by the same test.
    wrong = 2 * alpha
    assert stats.kstest(lams, stats.beta(wrong, wrong).cdf).pvalue < 0.001


def test_cutmix_lambda_follows_beta_when_not_corrected() -> None:
    images = flat_images(64, sizes=[(4, 4)] * 64)
    labels = [np.array([i]) for i in range(64)]
    runs = run_graph(
        lambda x, y: cutmix(x, y, num_classes=64, alpha=1.0, correct_lam=False),
        images,
        labels,
        iterations=50,
    )
    lams = np.array([t[i] for (_, targets) in runs for i, t in enumerate(targets)], np.float64)
    assert stats.kstest(lams, stats.uniform.cdf).pvalue > 0.001


def test_same_seed_same_output_different_seed_differs() -> None:
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(8)]
    config = MixConfig(num_classes=K, mixup_alpha=1.0, cutmix_alpha=1.0)

    def graph(x, y):
        return mix(x, y, config)

    first = run_graph(graph, images, seed=11, iterations=2)
    again = run_graph(graph, images, seed=11, iterations=2)
    other = run_graph(graph, images, seed=12, iterations=2)
    for a, b in zip(first, again):
        for out_a, out_b in zip(a, b):
            for s_a, s_b in zip(out_a, out_b):
                np.testing.assert_array_equal(s_a, s_b)
    assert any(not np.array_equal(s_a, s_b) for s_a, s_b in zip(first[0][1], other[0][1]))
    # Successive batches draw anew.
    assert any(not np.array_equal(s_a, s_b) for s_a, s_b in zip(first[0][1], first[1][1]))


@pytest.mark.parametrize("n", [2, 3, 5])
def test_partner_is_never_itself(n: int) -> None:
    images = flat_images(n, sizes=[(6, 6)] * n)
    labels = [np.array([i]) for i in range(n)]
    runs = run_graph(
        lambda x, y: mixup(x, y, num_classes=K, alpha=1.0), images, labels, iterations=20
    )
    for _, targets in runs:
        for i, t in enumerate(targets):
            others = [j for j in range(n) if j != i and t[j] > 0]
            assert len(others) == 1 and t[i] < 1


@pytest.mark.parametrize("mode", ["elem", "batch", "pair"])
def test_batch_of_one_is_left_unmixed(mode: str) -> None:
    images = flat_images(1)
    config = MixConfig(num_classes=K, mixup_alpha=1.0, cutmix_alpha=1.0, mode=mode)
    for _, (outs, targets) in zip(
        range(5), run_graph(lambda x, y: mix(x, y, config), images, iterations=5)
    ):
        np.testing.assert_array_equal(outs[0], images[0].astype(outs[0].dtype))
        np.testing.assert_array_equal(targets[0], np.eye(K, dtype=np.float32)[0])


def test_pair_mode_swaps_the_same_box_and_leaves_the_middle_sample() -> None:
    n = 5
    images = flat_images(n)
    labels = [np.array([i]) for i in range(n)]
    [[outs, targets]] = run_graph(
        lambda x, y: cutmix(x, y, num_classes=K, mode="pair"), images, labels, seed=5
    )
    for i in range(n):
        j = n - 1 - i
        if i == j:
            np.testing.assert_array_equal(outs[i], images[i])
            np.testing.assert_array_equal(targets[i], np.eye(K, dtype=np.float32)[i])
            continue
        box_i = outs[i][..., 0] == j + 1
        box_j = outs[j][..., 0] == i + 1
        np.testing.assert_array_equal(box_i, box_j)  # the pair shares its box
        assert targets[i][j] == targets[j][i]


def test_batch_mode_shares_lambda_and_box() -> None:
    n = 6
    images = flat_images(n)
    labels = [np.array([i]) for i in range(n)]
    for seed in (1, 2, 3):
        [[outs, targets]] = run_graph(
            lambda x, y: cutmix(x, y, num_classes=K, mode="batch"), images, labels, seed=seed
        )
        masks = [outs[i][..., 0] != i + 1 for i in range(n)]
        for mask in masks[1:]:
            np.testing.assert_array_equal(mask, masks[0])
        assert len({float(targets[i][i]) for i in range(n)}) == 1


def test_switching_mixes_some_samples_with_cutmix_and_others_with_mixup() -> None:
    n = 16
    images = flat_images(n, sizes=[(8, 8)] * n)
    labels = [np.array([i]) for i in range(n)]
    config = MixConfig(num_classes=n, cutmix_alpha=1.0, mixup_alpha=1.0, switch_prob=0.5)
    kinds = set()
    for outs, targets in run_graph(lambda x, y: mix(x, y, config), images, labels, iterations=4):
        for i in range(n):
            values = np.unique(outs[i][..., 0])
            whole = np.all(np.isin(values, np.arange(1, n + 1)))
            (j,) = [k for k in range(n) if k != i and targets[i][k] > 0] or [None]
            if whole:  # CutMix: the exact pasted fraction
                if j is not None:
                    assert targets[i][j] == np.float32(
                        (outs[i][..., 0] == j + 1).sum()
                    ) / np.float32(64)
                kinds.add("cutmix")
            else:  # MixUp: one blended value everywhere
                assert len(values) == 1
                np.testing.assert_allclose(values[0], (i + 1) + targets[i][j] * (j - i), atol=1e-4)
                kinds.add("mixup")
    assert kinds == {"cutmix", "mixup"}


def test_switch_prob_is_honoured_statistically() -> None:
    n = 32
    images = flat_images(n, sizes=[(6, 6)] * n)
    labels = [np.array([i]) for i in range(n)]
    config = MixConfig(num_classes=n, cutmix_alpha=1.0, mixup_alpha=1.0, switch_prob=0.25)
    runs = run_graph(lambda x, y: mix(x, y, config), images, labels, iterations=20)
    # MixUp leaves non-integer pixels; CutMix only copies the integer ones.
    blended = sum(int(not np.array_equal(out, np.round(out))) for outs, _ in runs for out in outs)
    assert stats.binomtest(n * 20 - blended, n * 20, 0.25).pvalue > 0.001


def test_float_images_keep_float_and_scalar_labels_work() -> None:
    images = [np.full((10, 10, 3), float(i + 1), np.float32) for i in range(4)]
    labels = [np.array(i, np.int64) for i in range(4)]  # shape []
    [[outs, targets]] = run_graph(lambda x, y: cutmix(x, y, num_classes=K), images, labels)
    for i in range(4):
        assert outs[i].dtype == np.float32
        assert targets[i].shape == (K,)
        np.testing.assert_allclose(targets[i].sum(), 1.0, atol=1e-6)


def test_targets_sum_to_one_with_smoothing() -> None:
    images = flat_images(6)
    config = MixConfig(num_classes=K, cutmix_alpha=1.0, mixup_alpha=0.5, label_smoothing=0.2)
    for _, targets in run_graph(lambda x, y: mix(x, y, config), images, iterations=3):
        for t in targets:
            assert t.min() >= np.float32(0.2 / K) - 1e-7
            np.testing.assert_allclose(t.sum(), 1.0, atol=1e-5)


def test_cutmix_minmax_box_sides_within_bounds() -> None:
    n = 8
    images = flat_images(n, sizes=[(40, 50)] * n)
    labels = [np.array([i]) for i in range(n)]
    runs = run_graph(
        lambda x, y: cutmix(x, y, num_classes=K, minmax=(0.2, 0.5)), images, labels, iterations=5
    )
    for outs, targets in runs:
        for i in range(n):
            box = np.argwhere(outs[i][..., 0] != i + 1)
            (y0, x0), (y1, x1) = box.min(0), box.max(0)
            assert 8 <= y1 - y0 + 1 <= 20 and 10 <= x1 - x0 + 1 <= 25
            assert 1 - targets[i][i] == pytest.approx(len(box) / 2000, abs=1e-6)


def test_cutout_fills_a_clipped_box_and_honours_prob() -> None:
    images = [np.full((20, 30, 3), 200, np.uint8) for _ in range(16)]
    runs = run_graph(lambda x, y: (cutout(x, size=0.5), y), images, iterations=3)
    for outs, _ in runs:
        for out in outs:
            zeros = np.argwhere(out[..., 0] == 0)
            assert len(zeros) > 0
            (y0, x0), (y1, x1) = zeros.min(0), zeros.max(0)
            assert (y1 - y0 + 1) * (x1 - x0 + 1) == len(zeros)
            assert y1 - y0 + 1 <= 10 and x1 - x0 + 1 <= 15
            assert np.all(out[out[..., 0] != 0] == 200)
    [[outs, _]] = run_graph(lambda x, y: (cutout(x, size=0.5, prob=0.0), y), images)
    for out, image in zip(outs, images):
        np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x, y: cutmix(x, y, num_classes=K, alpha=0.0), "alpha"),
        (lambda x, y: mixup(x, y, num_classes=K, alpha=-1.0), "alpha"),
        (lambda x, y: cutout(x, size=1.5), "size"),
        (lambda x, y: cutmix(x, y, num_classes=0), "num_classes"),
    ],
)
def test_bad_arguments_raise_value_error(call: Callable, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_graph(call, flat_images(2))


def test_graph_has_no_python_or_external_source_for_mixing() -> None:
    @pipeline_def(batch_size=4, num_threads=1, device_id=None, seed=1)
    def pipe():
        imgs = fn.external_source(name="images", layout="HWC", dtype=types.UINT8)
        lbls = fn.external_source(name="labels")
        config = MixConfig(num_classes=K, mixup_alpha=1.0, cutmix_alpha=1.0)
        return mix(imgs, lbls, config)

    p = pipe()
    p.build()
    names = [type(op._op).__name__ for op in p._ops]  # DALI exposes no public list of ops
    ops = set(names)
    assert "ExternalSource" in ops and "MultiPaste" in ops
    assert names.count("ExternalSource") == 2  # only the test's own inputs
    assert not {"PythonFunction", "DLTensorPythonFunction", "TorchPythonFunction"} & ops


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["elem", "batch", "pair"])
def test_cpu_and_gpu_pipelines_are_bit_identical(mode: str) -> None:
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (24 + i, 32, 3), dtype=np.uint8) for i in range(8)]
    config = MixConfig(num_classes=K, cutmix_alpha=1.0, mode=mode)

    def graph(x, y):
        return mix(x, y, config)

    cpu = run_graph(graph, images, seed=21, iterations=3)
    gpu = run_graph(graph, images, seed=21, iterations=3, device_id=0)
    for c, g in zip(cpu, gpu):
        for out_c, out_g in zip(c, g):
            for s_c, s_g in zip(out_c, out_g):
                np.testing.assert_array_equal(s_c, s_g)
