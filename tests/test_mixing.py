"""Exact-value tests of the mixing graph functions, run on DALI CPU pipelines."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
from conftest import requires_cuda
from nvidia.dali import fn, pipeline_def, types
from scipy import stats

from dali_cutmix import MixConfig, cutmix, cutout, mix, mixing, mixup, soft_targets
from dali_cutmix.config import MAX_ALPHA

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
    layout: str = "HWC",
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
        imgs = fn.external_source(name="images", layout=layout, dtype=dtype)
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


def both(
    config: MixConfig,
    images: list[np.ndarray],
    labels: list[np.ndarray] | None = None,
    *,
    size: tuple[int, int] | None = None,
    seed: int = 5,
    iterations: int = 4,
) -> tuple[list, list]:
    """``mix(..., config)`` by ``run_graph`` on the CPU and on GPU 0: (cpu runs, gpu runs)."""

    def graph(x, y):
        return mix(x, y, config, size=size)

    cpu = run_graph(graph, images, labels, seed=seed, iterations=iterations)
    gpu = run_graph(graph, images, labels, seed=seed, iterations=iterations, device_id=0)
    return cpu, gpu


def assert_same_runs(got: list, want: list) -> None:
    """Two ``run_graph`` results hold equal samples, dtypes included."""
    for a, b in zip(got, want):
        for out_a, out_b in zip(a, b):
            for s_a, s_b in zip(out_a, out_b):
                assert s_a.dtype == s_b.dtype
                np.testing.assert_array_equal(s_a, s_b)


def own_labels(n: int, dtype: type = np.int64) -> list[np.ndarray]:
    """Class ``i`` for sample ``i``, shape ``[1]``: a target names the samples it mixes."""
    return [np.array([i], dtype) for i in range(n)]


def flat_images(n: int, *, sizes: list[tuple[int, int]] | None = None) -> list[np.ndarray]:
    """Sample i is filled with value i + 1, so every pixel names its source."""
    sizes = sizes or [(20, 30)] * n
    return [np.full((h, w, 3), i + 1, np.uint8) for i, (h, w) in enumerate(sizes)]


def noise_images(sizes: list[tuple[int, int]], *, seed: int) -> list[np.ndarray]:
    """Random uint8 HWC images of the given ``(h, w)`` sizes."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def numbered(
    n: int, *, sizes: list[tuple[int, int]] | None = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``flat_images(n, sizes=sizes)`` and ``own_labels(n)``: sample i is value i + 1, class i."""
    return flat_images(n, sizes=sizes), own_labels(n)


def sources(image: np.ndarray, n: int) -> np.ndarray:
    """Pixel counts per source sample (channel 0 holds the sample value)."""
    return np.array([(image[..., 0] == i + 1).sum() for i in range(n)])


MIXED_SIZES = [(20, 30), (31, 17), (24, 24), (9, 40), (33, 33), (16, 28), (20, 30)]


@pytest.mark.parametrize("mode", ["elem", "batch", "pair"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cutmix_partner_weight_is_exact_pasted_fraction(mode: str, seed: int) -> None:
    n = len(MIXED_SIZES)
    images, labels = numbered(n, sizes=MIXED_SIZES)
    runs = run_graph(
        lambda x, y: cutmix(x, y, num_classes=K, alpha=1.0, mode=mode),
        images,
        labels,
        seed=seed,
        iterations=4,
    )
    assert count_exact_cutmix(runs, MIXED_SIZES) >= 3


def count_exact_cutmix(runs: list, sizes: list[tuple[int, int]]) -> int:
    """Checks every sample of ``runs`` (of ``flat_images(len(sizes), sizes=sizes)``) with
    :func:`check_cutmix_sample`; returns how many samples were mixed."""
    n = len(sizes)
    return sum(
        check_cutmix_sample(outs[i], targets[i], i, n, size)
        for outs, targets in runs
        for i, size in enumerate(sizes)
    )


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
    images, labels = numbered(8)
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
    images = noise_images([(12, 16)] * 6, seed=0)
    labels = own_labels(6, np.int32)
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
    images = noise_images([(10, 14)] * 5, seed=1)
    config = MixConfig(num_classes=K, cutmix_alpha=1.0, mixup_alpha=1.0, prob=0.0)
    [[outs, targets]] = run_graph(lambda x, y: mix(x, y, config), images)
    for i in range(5):
        np.testing.assert_array_equal(outs[i], images[i])
        np.testing.assert_array_equal(targets[i], np.eye(K, dtype=np.float32)[i])


@pytest.mark.parametrize(
    ("alphas", "options", "dtype"),
    [
        ((1.0, 0.0), {"prob": 0.0}, np.uint8),
        ((1.0, 0.0), {}, np.uint8),
        ((0.0, 1.0), {"prob": 0.0}, np.float32),
        ((1.0, 1.0), {"prob": 0.0}, np.float32),
        ((1.0, 1.0), {"switch_prob": 1.0}, np.float32),  # CutMix always: MixUp never blends
        ((1.0, 1.0), {"switch_prob": 0.5}, np.float32),
    ],
    ids=["cutmix-prob0", "cutmix", "mixup-prob0", "both-prob0", "switch1", "switch"],
)
def test_image_type_follows_the_methods_not_their_probabilities(alphas, options, dtype) -> None:
    # mixup(prob=0) and switch_prob=1 gave uint8 where any other prob gives float32
    images = noise_images([(10, 14)] * 4, seed=2)
    config = MixConfig(num_classes=K, cutmix_alpha=alphas[0], mixup_alpha=alphas[1], **options)
    for graph in (lambda x, y: mix(x, y, config), lambda x, y: mix(x, y, config, size=(10, 14))):
        [[outs, _]] = run_graph(graph, images)
        assert [out.dtype for out in outs] == [dtype] * 4
        if options.get("prob") == 0.0:
            for out, image in zip(outs, images):
                np.testing.assert_array_equal(out, image.astype(dtype))
    [[outs, _]] = run_graph(lambda x, y: mixup(x, y, num_classes=K, prob=0.0), images)
    assert [out.dtype for out in outs] == [np.float32] * 4


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
    images, labels = numbered(32, sizes=[(8, 8)] * 32)
    config = MixConfig(num_classes=32, mixup_alpha=1.0, cutmix_alpha=0.0, prob=0.3)
    runs = run_graph(lambda x, y: mix(x, y, config), images, labels, iterations=40)
    mixed = sum(int(t[i] < 1) for (_, targets) in runs for i, t in enumerate(targets))
    total = 32 * 40
    assert stats.binomtest(mixed, total, 0.3).pvalue > 0.001


@pytest.mark.parametrize("alpha", [0.4, 1.0, 2.0])
def test_lambda_follows_beta(alpha: float) -> None:
    images, labels = numbered(64, sizes=[(4, 4)] * 64)
    config = MixConfig(num_classes=64, mixup_alpha=alpha, cutmix_alpha=0.0)
    runs = run_graph(lambda x, y: mix(x, y, config), images, labels, iterations=50)
    lams = np.array([t[i] for (_, targets) in runs for i, t in enumerate(targets)], np.float64)
    assert len(lams) == 3200
    assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 0.001
    # A wrong alpha must be rejected by the same test.
    wrong = 2 * alpha
    assert stats.kstest(lams, stats.beta(wrong, wrong).cdf).pvalue < 0.001


def test_cutmix_lambda_follows_beta_when_not_corrected() -> None:
    images, labels = numbered(64, sizes=[(4, 4)] * 64)
    runs = run_graph(
        lambda x, y: cutmix(x, y, num_classes=64, alpha=1.0, correct_lam=False),
        images,
        labels,
        iterations=50,
    )
    lams = np.array([t[i] for (_, targets) in runs for i, t in enumerate(targets)], np.float64)
    assert stats.kstest(lams, stats.uniform.cdf).pvalue > 0.001


def test_same_seed_same_output_different_seed_differs() -> None:
    images = noise_images([(16, 16)] * 8, seed=2)
    config = MixConfig(num_classes=K, mixup_alpha=1.0, cutmix_alpha=1.0)

    def graph(x, y):
        return mix(x, y, config)

    first = run_graph(graph, images, seed=11, iterations=2)
    again = run_graph(graph, images, seed=11, iterations=2)
    other = run_graph(graph, images, seed=12, iterations=2)
    assert_same_runs(first, again)
    assert any(not np.array_equal(s_a, s_b) for s_a, s_b in zip(first[0][1], other[0][1]))
    # Successive batches draw anew.
    assert any(not np.array_equal(s_a, s_b) for s_a, s_b in zip(first[0][1], first[1][1]))


@pytest.mark.parametrize("n", [2, 3, 5])
def test_partner_is_never_itself(n: int) -> None:
    images, labels = numbered(n, sizes=[(6, 6)] * n)
    runs = run_graph(
        lambda x, y: mixup(x, y, num_classes=K, alpha=1.0), images, labels, iterations=20
    )
    for _, targets in runs:
        for i, t in enumerate(targets):
            others = [j for j in range(n) if j != i and t[j] > 0]
            assert len(others) == 1 and t[i] < 1


def test_each_samples_partner_is_uniform_over_the_others() -> None:
    # DALI's batch_permutation(no_fixed_points=True) draws one n-cycle: never a pair swap,
    # unlike the paper's randperm, but every sample's partner is still uniform.
    n = 4
    images, labels = numbered(n, sizes=[(2, 2)] * n)
    runs = run_graph(
        lambda x, y: mixup(x, y, num_classes=K, alpha=1.0), images, labels, iterations=150
    )
    counts = np.zeros((n, n), int)
    for _, targets in runs:
        for i, t in enumerate(targets):
            (j,) = [j for j in range(n) if j != i and t[j] > 0]
            counts[i, j] += 1
    observed = counts[~np.eye(n, dtype=bool)]  # 12 cells, 150 / 3 expected in each
    assert stats.chisquare(observed).pvalue > 0.001


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
    images, labels = numbered(n)
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
    images, labels = numbered(n)
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
    images, labels = numbered(n, sizes=[(8, 8)] * n)
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


@pytest.mark.parametrize("mode", ["elem", "batch", "pair"])
def test_mixup_of_other_sizes_blends_the_common_extent_and_weighs_the_label_by_it(
    mode: str,
) -> None:
    # The partner has pixels only in the common (top-left) extent: beyond it the sample
    # stays itself, and the label's partner weight is m times the common area's share.
    n = len(MIXED_SIZES)
    images, labels = numbered(n, sizes=MIXED_SIZES)
    config = MixConfig(num_classes=K, cutmix_alpha=1.0, mixup_alpha=1.0, mode=mode)
    mixed = 0
    for outs, targets in run_graph(lambda x, y: mix(x, y, config), images, labels, iterations=4):
        for i, (h, w) in enumerate(MIXED_SIZES):
            out = outs[i][..., 0]
            assert out.shape == (h, w)
            if np.array_equal(out, np.round(out)):  # CutMix or unmixed: whole pixels
                check_cutmix_sample(outs[i].astype(np.uint8), targets[i], i, n, (h, w))
                continue
            (j,) = [k for k in range(n) if k != i and targets[i][k] > 0]
            ch, cw = min(h, MIXED_SIZES[j][0]), min(w, MIXED_SIZES[j][1])
            inside = np.unique(out[:ch, :cw])
            assert len(inside) == 1  # one blend of two flat images
            m = (inside[0] - (i + 1)) / (j - i)
            beyond = np.ones((h, w), bool)
            beyond[:ch, :cw] = False
            assert np.all(out[beyond] == i + 1)  # exactly the sample itself
            np.testing.assert_allclose(targets[i][j], m * ch * cw / (h * w), rtol=1e-5)
            assert targets[i][i] == np.float32(1) - targets[i][j]
            mixed += int((ch, cw) != (h, w))
    assert mixed > 0  # some MixUp partners were smaller than their sample


def test_the_largest_alpha_still_mixes_at_one_half() -> None:
    # Beyond it, DALI's random.beta(a, a) summed a + a to inf in float32 and drew 0: no mixing.
    n = 4
    images, labels = numbered(n)
    config = MixConfig(num_classes=K, cutmix_alpha=0.0, mixup_alpha=MAX_ALPHA)
    ((_, targets),) = run_graph(lambda x, y: mix(x, y, config), images, labels)
    for i in range(n):
        (j,) = [k for k in range(n) if k != i and targets[i][k] > 0]
        np.testing.assert_allclose(targets[i][[i, j]], [0.5, 0.5], atol=1e-3)


@pytest.mark.parametrize(
    ("cutmix_alpha", "mixup_alpha"), [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)], ids=["cut", "up", "both"]
)
def test_an_empty_image_keeps_its_own_label_and_gives_none_of_nan(
    cutmix_alpha: float, mixup_alpha: float
) -> None:
    # Its partner weight was its box's area over its own, 0 / 0: NaN targets, without a word.
    sizes = [(0, 6), (6, 0), (6, 6), (5, 7), (6, 6), (4, 4)]
    images, labels = numbered(len(sizes), sizes=sizes)
    config = MixConfig(num_classes=K, cutmix_alpha=cutmix_alpha, mixup_alpha=mixup_alpha)
    graph = lambda x, y: mix(x, y, config)  # noqa: E731
    for outs, targets in run_graph(graph, images, labels, iterations=6):
        assert all(np.isfinite(t).all() for t in targets)
        for i in (0, 1):  # nothing of a partner in it: its own label alone
            assert outs[i].shape == (*sizes[i], 3)
            np.testing.assert_array_equal(targets[i], np.eye(K, dtype=np.float32)[i])
        for i in range(2, len(sizes)):  # an empty partner gives nothing either
            assert targets[i].sum() == pytest.approx(1.0, abs=1e-6)


def test_switch_prob_is_honoured_statistically() -> None:
    n = 32
    images, labels = numbered(n, sizes=[(6, 6)] * n)
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


@pytest.mark.parametrize("label", [K, K + 5, -1])
@pytest.mark.parametrize("prob", [1.0, 0.0], ids=["mixed", "unmixed"])
def test_a_label_outside_the_classes_fails_the_pipeline_naming_it(label: int, prob: float) -> None:
    # DALI's one_hot made its row zeros: that target, and its partner's, silently summed to < 1.
    images = flat_images(4)
    labels = [np.array([v], np.int32) for v in (0, 1, label, 2)]
    config = MixConfig(num_classes=K, prob=prob)
    with pytest.raises(RuntimeError) as info:
        run_graph(lambda x, y: mix(x, y, config), images, labels)
    assert f"input_shape={{{K}}}, slice_anchor={{{label}}}" in str(info.value)
    assert "# label not in [0, num_classes)" in str(info.value)  # DALI shows the line
    with pytest.raises(RuntimeError, match="input_shape"):  # the one-method functions too
        run_graph(lambda x, y: mixup(x, y, num_classes=K), images, labels)
    # make_loader's lists are checked when read: its graph leaves the check out
    [[_, targets]] = run_graph(lambda x, y: mix(x, y, config, check_labels=False), images, labels)
    assert targets[2].sum() < 0.99  # unchecked, its own label is a row of zeros


def test_pair_mode_refuses_a_batch_shorter_than_the_pipelines() -> None:
    # the flip is built for max_batch_size; DALI's permute_batch names both sizes
    config = MixConfig(num_classes=K, mode="pair")
    with pytest.raises(RuntimeError, match="sample indices 6 does not match .* which is 5"):
        run_graph(lambda x, y: mix(x, y, config), flat_images(5), batch_size=6)


def test_a_label_of_two_elements_fails_the_pipeline() -> None:
    labels = [np.array([i % K, 0], np.int32) for i in range(4)]
    with pytest.raises(RuntimeError, match="reshape") as info:
        run_graph(lambda x, y: cutmix(x, y, num_classes=K), flat_images(4), labels)
    assert "# label of more than one element" in str(info.value)  # DALI shows the line


def test_targets_sum_to_one_with_smoothing() -> None:
    images = flat_images(6)
    config = MixConfig(num_classes=K, cutmix_alpha=1.0, mixup_alpha=0.5, label_smoothing=0.2)
    for _, targets in run_graph(lambda x, y: mix(x, y, config), images, iterations=3):
        for t in targets:
            assert t.min() >= np.float32(0.2 / K) - 1e-7
            np.testing.assert_allclose(t.sum(), 1.0, atol=1e-5)


def test_cutmix_minmax_box_sides_within_bounds() -> None:
    n = 8
    images, labels = numbered(n, sizes=[(40, 50)] * n)
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


def test_cutout_places_its_box_by_the_layout() -> None:
    # CHW (crop_mirror_normalize's default output) erased nothing: the box was drawn
    # in the (C, H) extents of the shape and written to the H and W axes.
    sizes = [(20, 30), (31, 17), (20, 30), (8, 40)]
    hwc = [np.full((h, w, 3), 200, np.uint8) for h, w in sizes]
    chw = [np.ascontiguousarray(image.transpose(2, 0, 1)) for image in hwc]
    graph = lambda x, y: (cutout(x, size=0.5), y)  # noqa: E731
    runs_hwc = run_graph(graph, hwc, iterations=3)
    runs_chw = run_graph(graph, chw, iterations=3, layout="CHW")
    erased = 0
    for (outs_hwc, _), (outs_chw, _) in zip(runs_hwc, runs_chw):
        for out_hwc, out_chw in zip(outs_hwc, outs_chw):
            np.testing.assert_array_equal(out_chw, out_hwc.transpose(2, 0, 1))
            erased += int((out_hwc == 0).any())
    assert erased == 12  # prob 1: every sample has a box


@pytest.mark.parametrize(
    ("values", "dtype", "line"),
    [
        ((0, 1, 2.5, 3), np.float32, "# label not a whole number"),
        ((0, 1, np.nan, 3), np.float32, "# label not in [0, num_classes)"),
        ((0, 1, 2**31 + 2, 3), np.int64, "# label not in [0, num_classes)"),
    ],
    ids=["fraction", "nan", "beyond-int32"],
)
def test_a_label_that_is_not_a_whole_class_index_fails(values, dtype, line: str) -> None:
    # one_hot took 2.5 for class 2 and the cast made 2**31 + 2 a small number: silently
    images = flat_images(4)
    labels = [np.array([v], dtype) for v in values]
    with pytest.raises(RuntimeError) as info:
        run_graph(lambda x, y: mix(x, y, MixConfig(num_classes=K)), images, labels)
    assert line in str(info.value)
    if "whole" in line:
        assert "input_shape={1}, slice_anchor={1}" in str(info.value)


def test_whole_float_labels_give_the_targets_of_int_labels() -> None:
    images, labels = numbered(6)
    floats = [label.astype(np.float32) for label in labels]
    config = MixConfig(num_classes=K, cutmix_alpha=1.0, mixup_alpha=1.0)
    want = run_graph(lambda x, y: mix(x, y, config), images, labels, iterations=2)
    got = run_graph(lambda x, y: mix(x, y, config), images, floats, iterations=2)
    assert_same_runs(got, want)


@pytest.mark.parametrize(
    "shape", [(40, 48), (24, 32), (32, 40)], ids=["taller", "smaller", "narrower"]
)
@pytest.mark.parametrize(
    "alphas", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)], ids=["cutmix", "mixup", "switch"]
)
def test_images_not_of_mix_size_fail_naming_their_sides(shape, alphas) -> None:
    # A taller image was cut to size by the paste, a smaller one failed inside multi_paste.
    images = [np.full((*shape, 3), 100, np.uint8) for _ in range(4)]
    config = MixConfig(num_classes=K, cutmix_alpha=alphas[0], mixup_alpha=alphas[1])
    with pytest.raises(RuntimeError) as info:
        run_graph(lambda x, y: mix(x, y, config, size=(32, 48)), images)
    height, width = (side if side != want else 0 for side, want in zip(shape, (32, 48)))
    assert f"slice_anchor={{{height} x {width}}}" in str(info.value)
    assert "# image's (H, W) not mix's size" in str(info.value)
    if shape == (40, 48) and alphas[1] == 0.0:  # unchecked, the paste cuts it to size
        [[outs, _]] = run_graph(
            lambda x, y: mix(x, y, config, size=(32, 48), check_size=False), images
        )
        assert outs[0].shape == (32, 48, 3)


@pytest.mark.parametrize("shape", [(40, 48), (24, 32)], ids=["taller", "smaller"])
@pytest.mark.parametrize(
    "alphas", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)], ids=["cutmix", "mixup", "switch"]
)
def test_one_image_not_of_mix_size_fails_naming_its_sides(shape, alphas) -> None:
    # MixUp alone blended the odd image with a partner of mix's size first, and failed with
    # DALI's "Can't broadcast shapes" instead of the check's line.
    images = [np.full((32, 48, 3), 100, np.uint8) for _ in range(4)]
    images[1] = np.full((*shape, 3), 100, np.uint8)
    config = MixConfig(num_classes=K, cutmix_alpha=alphas[0], mixup_alpha=alphas[1])
    for seed in range(3):
        with pytest.raises(RuntimeError) as info:
            run_graph(lambda x, y: mix(x, y, config, size=(32, 48)), images, seed=seed)
        height, width = (side if side != want else 0 for side, want in zip(shape, (32, 48)))
        assert f"slice_anchor={{{height} x {width}}}" in str(info.value)
        assert "# image's (H, W) not mix's size" in str(info.value)


def test_mixup_of_a_known_size_reads_the_size_through_the_layout() -> None:
    images, labels = noise_images([(12, 20)] * 4, seed=3), own_labels(4)
    chw = [np.ascontiguousarray(image.transpose(2, 0, 1)) for image in images]
    config = MixConfig(num_classes=K, cutmix_alpha=0.0, mixup_alpha=1.0)
    graph = lambda x, y: mix(x, y, config, size=(12, 20))  # noqa: E731
    want = run_graph(graph, images, labels, iterations=2)
    got = run_graph(graph, chw, labels, iterations=2, layout="CHW")
    for (outs_hwc, targets_hwc), (outs_chw, targets_chw) in zip(want, got):
        for i in range(4):
            np.testing.assert_array_equal(outs_chw[i], outs_hwc[i].transpose(2, 0, 1))
            np.testing.assert_array_equal(targets_chw[i], targets_hwc[i])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x, y: cutmix(x, y, num_classes=K, alpha=0.0), "alpha"),
        (lambda x, y: mixup(x, y, num_classes=K, alpha=-1.0), "alpha"),
        (lambda x, y: cutout(x, size=1.5), "size"),
        (lambda x, y: cutmix(x, y, num_classes=0), "num_classes"),
        (
            lambda x, y: cutmix(x, y, num_classes=2**40),
            re.escape("num_classes must be an int from 1 to 16777216, got 1099511627776"),
        ),
        (
            lambda x, y: soft_targets(y, num_classes=2**24 + 1),
            "num_classes must be an int from 1 to 16777216, got 16777217",
        ),
        (
            lambda x, y: mix(x, y, MixConfig(num_classes=K), check_size=None),
            "check_size must be True or False, got None",
        ),
        (
            lambda x, y: mix(x, y, MixConfig(num_classes=K), check_labels="no"),
            "check_labels must be True or False, got 'no'",
        ),
        (
            lambda x, y: soft_targets(y, num_classes=K, check_labels=0),
            "check_labels must be True or False, got 0",
        ),
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
    images = noise_images([(24 + i, 32) for i in range(8)], seed=3)
    config = MixConfig(num_classes=K, cutmix_alpha=1.0, mode=mode)
    assert_same_runs(*both(config, images, seed=21, iterations=3))


@requires_cuda
@pytest.mark.gpu
def test_gpu_cutout_places_its_box_by_the_layout_as_the_cpu() -> None:
    hwc = noise_images([(20, 30), (31, 17), (8, 40), (20, 30)], seed=4)
    chw = [np.ascontiguousarray(image.transpose(2, 0, 1)) for image in hwc]
    graph = lambda x, y: (cutout(x, size=0.5), y)  # noqa: E731
    want = run_graph(graph, hwc, iterations=2)
    got = run_graph(graph, chw, iterations=2, layout="CHW", device_id=0)
    for (outs_hwc, _), (outs_chw, _) in zip(want, got):
        for out_hwc, out_chw in zip(outs_hwc, outs_chw):
            np.testing.assert_array_equal(out_chw, out_hwc.transpose(2, 0, 1))


@requires_cuda
@pytest.mark.gpu
def test_gpu_images_not_of_mix_size_fail_naming_their_sides() -> None:
    images = [np.full((40, 48, 3), 100, np.uint8) for _ in range(4)]
    config = MixConfig(num_classes=K, cutmix_alpha=1.0)
    with pytest.raises(RuntimeError, match=r"slice_anchor=\{40 x 0\}"):
        run_graph(lambda x, y: mix(x, y, config, size=(32, 48)), images, device_id=0)


# ---- the GPU path's predicted defects, checked on the CPU ----------------------------------
#
# DALI's GPU multi_paste (kernels/imgproc/paste/paste_gpu.h) differs from the CPU one in two
# ways the CPU cannot show: it sweeps region edges into patches (an empty region inside the
# canvas is opened and never closed), and it reads every input with input 0's row pitch. The
# tests below capture what the graph hands to multi_paste and check it against both.


def gpu_sweep_sources(out_size: tuple[int, int], anchors, shapes) -> np.ndarray:
    """Which region each output pixel comes from under the GPU kernel's patch sweep (-1: none).

    A line-by-line model of ``CreateSampleDescriptors`` in DALI's ``paste_gpu.h``.
    """
    h, w = out_size
    n = len(anchors)
    ys = sorted({0, h, *(a[0] for a in anchors), *(a[0] + s[0] for a, s in zip(anchors, shapes))})
    xs = sorted({0, w, *(a[1] for a in anchors), *(a[1] + s[1] for a, s in zip(anchors, shapes))})
    yi, xi = {y: k for k, y in enumerate(ys)}, {x: k for k, x in enumerate(xs)}
    ny, nx = len(ys) - 1, len(xs) - 1
    y_start = [[] for _ in range(ny + 1)]
    y_end = [[] for _ in range(ny + 1)]
    for r in range(n):
        (ay, ax), (sy, sx) = anchors[r], shapes[r]
        event = (r, xi[ax], xi[ax + sx])
        y_start[yi[ay]].append(event)
        y_end[yi[ay + sy]].append(event)
    starting = [set() for _ in range(nx + 1)]
    ending = [set() for _ in range(nx + 1)]
    open_regions: set[int] = set()
    source = np.full((h, w), -1, np.int64)
    for y in range(ny):
        for r, x0, x1 in y_start[y]:
            starting[x0].add(r)
            ending[x1].add(r)
        for x in range(nx):
            open_regions |= starting[x]
            top = max(open_regions, default=-1)
            source[ys[y] : ys[y + 1], xs[x] : xs[x + 1]] = top
            open_regions -= ending[x + 1]
        for r, x0, x1 in y_end[y + 1]:
            starting[x0].discard(r)
            ending[x1].discard(r)
    return source


def ordered_sources(out_size: tuple[int, int], anchors, shapes) -> np.ndarray:
    """The same for the CPU backend: regions pasted in order, later ones on top."""
    source = np.full(out_size, -1, np.int64)
    for r, ((ay, ax), (sy, sx)) in enumerate(zip(anchors, shapes)):
        source[ay : ay + sy, ax : ax + sx] = r
    return source


def test_gpu_sweep_model_shows_the_empty_region_defect() -> None:
    # The model is not vacuous: an empty box inside the canvas takes over its lower right.
    anchors, shapes = [(0, 0), (5, 7)], [(20, 30), (0, 4)]
    gpu = gpu_sweep_sources((20, 30), anchors, shapes)
    assert (gpu == 1).sum() == 15 * 4  # rows 5..19 of the box's columns
    assert (ordered_sources((20, 30), anchors, shapes) == 1).sum() == 0
    # At the far edge the same empty box is harmless.
    anchors = [(0, 0), (20, 7)]
    np.testing.assert_array_equal(
        gpu_sweep_sources((20, 30), anchors, shapes), ordered_sources((20, 30), anchors, shapes)
    )


@pytest.fixture
def paste_spy(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Records the inputs and arguments of the graph's ``multi_paste``."""
    import dali_cutmix.mixing as mixing

    calls: dict = {}
    real = mixing.fn.multi_paste

    def spy(*inputs, **kwargs):
        calls["inputs"], calls["kwargs"] = inputs, kwargs
        return real(*inputs, **kwargs)

    monkeypatch.setattr(mixing.fn, "multi_paste", spy)
    return calls


def paste_arguments(config: MixConfig, sizes, spy: dict, *, size=None, iterations=4, seed=3):
    """Per iteration and sample: (images out, anchors, shapes, input shapes, targets)."""

    def graph(x, y):
        out, targets = mix(x, y, config, size=size)
        kw = spy["kwargs"]
        shapes_in = [node.shape() for node in spy["inputs"]]
        return (out, targets, kw["out_anchors"], kw["in_anchors"], kw["shapes"], *shapes_in)

    images, labels = numbered(len(sizes), sizes=sizes)
    return images, run_graph(graph, images, labels, seed=seed, iterations=iterations)


EMPTY_BOX_CONFIGS = {
    "switch": MixConfig(num_classes=K, cutmix_alpha=1.0, mixup_alpha=1.0),
    "prob": MixConfig(num_classes=K, cutmix_alpha=1.0, prob=0.5),
    "batch": MixConfig(num_classes=K, cutmix_alpha=1.0, prob=0.5, mode="batch"),
    "tiny-boxes": MixConfig(num_classes=K, cutmix_alpha=0.05),  # many sides under 2 px
    "minmax": MixConfig(num_classes=K, cutmix_minmax=(0.0, 0.1), prob=0.7),
    "pair": MixConfig(num_classes=K, cutmix_alpha=0.1, mixup_alpha=1.0, mode="pair"),
}


@pytest.mark.parametrize("name", sorted(EMPTY_BOX_CONFIGS))
@pytest.mark.parametrize("known", [True, False], ids=["known-size", "shape-of"])
def test_no_empty_region_inside_the_canvas(name: str, known: bool, paste_spy: dict) -> None:
    sizes = [(12, 12)] * 7 if known else MIXED_SIZES
    config = EMPTY_BOX_CONFIGS[name]
    _, runs = paste_arguments(
        config, sizes, paste_spy, size=(12, 12) if known else None, iterations=6
    )
    empty = 0
    for _out, _, out_anchors, in_anchors, shapes, *_ in runs:
        for i, (h, w) in enumerate(sizes):
            np.testing.assert_array_equal(out_anchors[i], in_anchors[i])
            anchors = [tuple(a) for a in out_anchors[i]]
            sides = [tuple(s) for s in shapes[i]]
            assert anchors[0] == (0, 0) and sides[0] == (h, w)
            for axis, extent in enumerate((h, w)):
                if sides[1][axis] == 0:
                    empty += 1
                    assert anchors[1][axis] == extent, "an empty side must lie on the far edge"
            # What the GPU kernel would paste is what the CPU pastes.
            np.testing.assert_array_equal(
                gpu_sweep_sources((h, w), anchors, sides), ordered_sources((h, w), anchors, sides)
            )
    assert empty > 0  # the configuration does produce empty boxes


@pytest.mark.parametrize("mode", ["elem", "pair", "batch"])
def test_partner_reaches_multi_paste_at_the_samples_extent(mode: str, paste_spy: dict) -> None:
    # GPU multi_paste reads every input with input 0's pitch: inputs must agree in shape.
    config = MixConfig(num_classes=K, cutmix_alpha=1.0, mixup_alpha=1.0, mode=mode)
    _, runs = paste_arguments(config, MIXED_SIZES, paste_spy)
    for *_, base_shape, partner_shape in runs:
        for i, (h, w) in enumerate(MIXED_SIZES):
            np.testing.assert_array_equal(base_shape[i], [h, w, 3])
            np.testing.assert_array_equal(partner_shape[i], [h, w, 3])


KNOWN_SIZES = [(16, 16), (12, 20)]


@pytest.mark.parametrize("size", KNOWN_SIZES, ids=["square", "oblong"])
@pytest.mark.parametrize("mode", ["elem", "batch", "pair"])
@pytest.mark.parametrize("prob", [1.0, 0.6])
def test_known_size_cutmix_is_exact(size, mode: str, prob: float) -> None:
    n = 7
    images, labels = numbered(n, sizes=[size] * n)
    config = MixConfig(num_classes=K, cutmix_alpha=1.0, prob=prob, mode=mode)
    runs = run_graph(lambda x, y: mix(x, y, config, size=size), images, labels, iterations=5)
    assert count_exact_cutmix(runs, [size] * n) >= 5


@pytest.mark.parametrize("size", KNOWN_SIZES, ids=["square", "oblong"])
def test_known_size_switching_and_smoothing_stay_exact(size) -> None:
    n = 8
    images, labels = numbered(n, sizes=[size] * n)
    s = 0.1
    config = MixConfig(num_classes=K, cutmix_alpha=1.0, mixup_alpha=0.5, label_smoothing=s)
    runs = run_graph(lambda x, y: mix(x, y, config, size=size), images, labels, iterations=4)
    off = np.float32(s / K)
    area = size[0] * size[1]
    for outs, targets in runs:
        for i in range(n):
            t = targets[i]
            np.testing.assert_allclose(t.sum(), 1.0, atol=1e-5)
            values = np.unique(outs[i][..., 0])
            if np.all(np.isin(values, np.arange(1, n + 1))):  # CutMix (or nothing)
                counts = sources(outs[i].astype(np.uint8), n)
                assert counts.sum() == area
                for j in range(n):
                    if j != i:
                        share = np.float32(counts[j]) / np.float32(area)
                        expected = off + share * (np.float32(1 - s + s / K) - off)
                        assert abs(t[j] - expected) <= 1e-6


@pytest.mark.parametrize("mode", ["elem", "pair"])
def test_known_size_beyond_the_tables_is_exact(mode: str, monkeypatch) -> None:
    # A known square side above mixing.TABLE_MAX_SIDE draws fractions, as an unknown size.
    monkeypatch.setattr(mixing, "TABLE_MAX_SIDE", 15)
    n, size = 7, (16, 16)
    images, labels = numbered(n, sizes=[size] * n)
    config = MixConfig(num_classes=K, cutmix_alpha=1.0, mode=mode)
    runs = run_graph(lambda x, y: mix(x, y, config, size=size), images, labels, iterations=5)
    assert count_exact_cutmix(runs, [size] * n) >= 5


def test_known_size_draws_follow_the_same_box_law() -> None:
    # On a known square canvas the centre is drawn as integers and the half side with one
    # floor; the partner's share must follow the same law as with the extent read from the
    # images (which draws fractions): a two-sample KS test, which a wrong law fails.
    n = 16
    images, labels = numbered(n, sizes=[(32, 32)] * n)

    def shares(graph, seed: int) -> np.ndarray:
        runs = run_graph(graph, images, labels, seed=seed, iterations=60)
        return np.array([1 - t[i] for (_, targets) in runs for i, t in enumerate(targets)])

    config = MixConfig(num_classes=n)
    known = shares(lambda x, y: mix(x, y, config, size=(32, 32)), seed=1)
    read = shares(lambda x, y: mix(x, y, config), seed=2)
    assert 0.28 < known.mean() < 0.36  # clipped boxes: about 0.32 at alpha = 1
    assert stats.ks_2samp(known, read).pvalue > 0.001
    # The same test tells a different alpha apart.
    other = shares(lambda x, y: mix(x, y, MixConfig(num_classes=n, cutmix_alpha=0.3)), seed=3)
    assert stats.ks_2samp(known, other).pvalue < 0.001


def test_known_size_must_be_two_positive_ints() -> None:
    for bad in [(0, 4), (4,), (4.0, 4), (True, 3)]:
        with pytest.raises(ValueError, match="size"):
            run_graph(
                lambda x, y, bad=bad: mix(x, y, MixConfig(num_classes=K), size=bad), flat_images(2)
            )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda x, y: soft_targets(y, num_classes=K, label_smoothing=-0.5),
            "label_smoothing must be in [0.0, 1.0), got -0.5",
        ),
        (
            lambda x, y: soft_targets(y, num_classes=K, label_smoothing=1.5),
            "label_smoothing must be in [0.0, 1.0), got 1.5",
        ),
        (
            lambda x, y: soft_targets(y, num_classes=K, label_smoothing=float("nan")),
            "label_smoothing must be a finite number, got nan",
        ),
        (lambda x, y: soft_targets(y, num_classes=0), "num_classes must be an int >= 1, got 0"),
        (  # a partner alone gave the unmixed targets without a word
            lambda x, y: soft_targets(y, num_classes=K, partner=fn.random.uniform(shape=[1])),
            "soft_targets got partner without partner_weight; give both or neither",
        ),
        (
            lambda x, y: soft_targets(y, num_classes=K, partner_weight=fn.random.uniform()),
            "soft_targets got partner_weight without partner; give both or neither",
        ),
        (lambda x, y: soft_targets(y, num_classes=3.0), "num_classes must be an int >= 1, got 3.0"),
        (
            lambda x, y: mix(x, y, {"num_classes": 3}),
            "config must be a MixConfig, got {'num_classes': 3} (MixConfig.from_dict makes one)",
        ),
        (
            lambda x, y: mix(x, y, MixConfig(num_classes=K), size=224),
            "size must be (H, W) with two ints from 1 to 32768, got 224",
        ),
        (  # was numpy's OverflowError for int32, naming nothing
            lambda x, y: mix(x, y, MixConfig(num_classes=K), size=(2**40, 2**40)),
            "size must be (H, W) with two ints from 1 to 32768, got (1099511627776, 1099511627776)",
        ),
        (
            lambda x, y: cutmix(x, y, num_classes=K, alpha="1"),
            "cutmix alpha must be a finite number > 0, got '1'",
        ),
        (
            lambda x, y: mixup(x, y, num_classes=K, alpha=None),
            "mixup alpha must be a finite number > 0, got None",
        ),
        (
            lambda x, y: mixup(x, y, num_classes=K, alpha=float("inf")),
            "mixup alpha must be a finite number > 0, got inf",
        ),
        (
            lambda x, y: mixup(x, y, num_classes=K, alpha=1e-50),
            "mixup_alpha must be 0 (off) or a positive float32, got 1e-50",
        ),
        (lambda x, y: cutout(x, size="0.5"), "cutout size must be a number in (0, 1], got '0.5'"),
        (lambda x, y: cutout(x, prob="1"), "cutout prob must be a number in [0, 1], got '1'"),
        (lambda x, y: cutout(x, prob=None), "cutout prob must be a number in [0, 1], got None"),
        (
            lambda x, y: cutout(x, fill_value="x"),
            "cutout fill_value must be a finite number (or a list, one per channel), got 'x'",
        ),
        (
            lambda x, y: cutout(x, fill_value=[1.0, None, 3.0]),
            "cutout fill_value must be a finite number (or a list, one per channel), got [1.0,",
        ),
    ],
)
def test_bad_argument_types_are_named(call: Callable, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        run_graph(call, flat_images(2))


def test_arrays_and_tensors_outside_a_graph_are_refused_by_name() -> None:
    # numpy images failed with "'tuple' object is not callable", torch's with "'torch.Size'
    # object is not callable", inside the box math
    images, labels = np.zeros((4, 8, 8, 3), np.uint8), np.arange(4)
    config = MixConfig(num_classes=K)
    rule = "must be a DataNode of a @pipeline_def graph (a reader's or fn.external_source's output)"
    cases = [
        (lambda: mix(images, labels, config), "mix", "images", "numpy.ndarray", "CutMix / MixUp"),
        (
            lambda: cutmix(torch.zeros(4, 3, 8, 8), labels, num_classes=K),
            "cutmix",
            "images",
            "torch.Tensor",
            "CutMix / MixUp",
        ),
        (lambda: mixup([1, 2], labels, num_classes=K), "mixup", "images", "list", "CutMix / MixUp"),
        (
            lambda: soft_targets(labels, num_classes=K),
            "soft_targets",
            "labels",
            "numpy.ndarray",
            "CutMix / MixUp",
        ),
        (lambda: cutout(images), "cutout", "images", "numpy.ndarray", "RandomErasing"),
    ]
    for call, function, name, kind, instead in cases:
        with pytest.raises(TypeError) as refused:
            call()
        assert str(refused.value) == (
            f"{function} builds DALI operators: its {name} {rule}, got {kind}; on torch "
            f"tensors, use torchvision.transforms.v2.{instead}"
        )


def test_numpy_arguments_give_the_graph_of_python_numbers() -> None:
    images = flat_images(4)

    def graph(n: Callable):
        def run(x, y):
            config = MixConfig(num_classes=n(K), cutmix_alpha=n(1), mixup_alpha=0.5)
            out, targets = mix(x, y, config, size=(n(20), n(30)))
            smooth = soft_targets(y, num_classes=n(K), label_smoothing=n(0.25))
            return cutout(out, size=n(0.5), prob=n(0.5), fill_value=n(7)), targets, smooth

        return run

    want = run_graph(graph(lambda v: v), images, iterations=2)
    numpy = graph(lambda v: np.int64(v) if isinstance(v, int) else np.float32(v))
    got = run_graph(numpy, images, iterations=2)
    assert_same_runs(got, want)
    [[_, [smooth]]] = run_graph(
        lambda x, y: (x, soft_targets(y, num_classes=np.int64(4), label_smoothing=np.float32(0.5))),
        flat_images(1),
    )
    np.testing.assert_allclose(smooth, [0.625, 0.125, 0.125, 0.125])


def test_cutout_fills_each_channel_with_its_value_from_a_list() -> None:
    images = [np.full((4, 6, 3), 200, np.uint8)]
    [[[out], _]] = run_graph(lambda x, y: (cutout(x, size=1.0, fill_value=[1, 2.0, 3]), y), images)
    box = out[..., 0] != 200
    assert box.any()
    np.testing.assert_array_equal(out[box], np.tile([1, 2, 3], (box.sum(), 1)))
