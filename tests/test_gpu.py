"""The GPU path, sample by sample: run by ``make gpu-check`` on a machine with CUDA.

Every test here needs CUDA and DALI's GPU operators and is skipped without
them (the CPU suite checks the same graph on the CPU, and what the graph hands
to the GPU kernels, in ``test_mixing.py``). They check on the GPU itself:

* targets equal pixel shares, sample by sample, in every mode (elem, pair,
  batch) with CutMix, MixUp and switching, ``prob=0.5``, label smoothing, on
  known sizes and on mixed sizes (partners of another width);
* a CPU and a GPU pipeline with the same seed give identical partners, boxes,
  uint8 CutMix images and targets;
* empty boxes (the predicted multi_paste defect) leave pixels untouched;
* resume is bit-exact, a bad file is named, ``python -m train`` runs with AMP
  and channels-last on the GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import requires_cuda, resumed_after, same_batches, small_loader
from test_mixing import (
    EMPTY_BOX_CONFIGS,
    MIXED_SIZES,
    K,
    assert_same_runs,
    both,
    flat_images,
    noise_images,
    own_labels,
    run_graph,
    sources,
)

from dali_cutmix import BadImageError, MixConfig, mix

pytestmark = [requires_cuda, pytest.mark.gpu]

REPO = Path(__file__).resolve().parents[1]
KNOWN = (24, 24)
MODES = ["elem", "pair", "batch"]


def assert_agree(cpu: list, gpu: list) -> None:
    """CPU and GPU runs give identical targets (same draws, same arithmetic) and images equal
    to 1e-3 (MixUp's float blend may round differently)."""
    for (out_c, t_c), (out_g, t_g) in zip(cpu, gpu):
        for i in range(len(t_c)):
            np.testing.assert_array_equal(t_c[i], t_g[i])
            np.testing.assert_allclose(out_c[i], out_g[i], rtol=0, atol=1e-3)


def check_sample(out: np.ndarray, target: np.ndarray, i: int, sizes, smoothing: float) -> str:
    """Targets equal pixel shares: exact for CutMix, to float precision for MixUp.

    Sample ``k`` of the batch is a flat image of value ``k + 1`` and class ``k``.
    MixUp of two sizes blends within their common extent only, and the
    label's share is the blend weight times that extent's share of the image.
    """
    n = len(sizes)
    h, w = sizes[i]
    off = np.float32(smoothing / K)  # as soft_targets gives them to fn.one_hot
    on = np.float32(1 - smoothing + smoothing / K)
    values = np.unique(out[..., 0])
    if np.all(np.isin(values, np.arange(1, n + 1))):  # copied pixels only: CutMix or none
        counts = sources(out.astype(np.uint8), n)
        assert counts.sum() == h * w
        for j in range(n):
            if j != i:
                share = np.float32(counts[j]) / np.float32(h * w)
                assert target[j] == off + share * (on - off)
        return "cutmix" if counts[i] < h * w else "none"
    (j,) = [k for k in range(n) if k != i and target[k] > off]
    share = (target[j] - off) / (on - off)
    ch, cw = min(h, sizes[j][0]), min(w, sizes[j][1])
    blend = share * (h * w) / (ch * cw)
    np.testing.assert_allclose(out[:ch, :cw, 0], (i + 1) + blend * (j - i), atol=1e-3)
    beyond = np.ones((h, w), bool)
    beyond[:ch, :cw] = False
    assert np.all(out[..., 0][beyond] == i + 1)
    return "mixup"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("known", [True, False], ids=["known-size", "mixed-sizes"])
@pytest.mark.parametrize(
    "params",
    [
        {"cutmix_alpha": 1.0},
        {"cutmix_alpha": 0.0, "mixup_alpha": 0.4},
        {"cutmix_alpha": 1.0, "mixup_alpha": 0.8, "prob": 0.5, "label_smoothing": 0.1},
    ],
    ids=["cutmix", "mixup", "switch-prob-smoothing"],
)
def test_gpu_targets_equal_pixel_shares(mode: str, known: bool, params: dict) -> None:
    sizes = [KNOWN] * 7 if known else MIXED_SIZES
    n = len(sizes)
    config = MixConfig(num_classes=K, mode=mode, **params)
    images = flat_images(n, sizes=sizes)
    labels = own_labels(n, np.int32)
    gpu = run_graph(
        lambda x, y: mix(x, y, config, size=KNOWN if known else None),
        images,
        labels,
        seed=9,
        iterations=5,
        device_id=0,
    )
    kinds = set()
    for outs, targets in gpu:
        for i in range(n):
            assert outs[i].shape[:2] == sizes[i]
            kinds.add(check_sample(outs[i], targets[i], i, sizes, config.label_smoothing))
    assert kinds - {"none"}, "nothing was mixed"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("known", [True, False], ids=["known-size", "mixed-sizes"])
def test_cpu_and_gpu_give_identical_cutmix(mode: str, known: bool) -> None:
    sizes = [KNOWN] * 8 if known else [(24 + i, 32 - i) for i in range(8)]
    images = noise_images(sizes, seed=3)
    labels = own_labels(8, np.int32)
    config = MixConfig(num_classes=K, cutmix_alpha=1.0, prob=0.7, mode=mode, label_smoothing=0.1)
    assert_same_runs(*both(config, images, labels, size=KNOWN if known else None))


def test_cpu_and_gpu_switching_agree() -> None:
    images = noise_images([KNOWN] * 8, seed=4)
    labels = own_labels(8, np.int32)
    config = MixConfig(num_classes=K, cutmix_alpha=1.0, mixup_alpha=0.8, prob=0.8)
    assert_agree(*both(config, images, labels, size=KNOWN))


@pytest.mark.parametrize("name", sorted(EMPTY_BOX_CONFIGS))
@pytest.mark.parametrize("known", [True, False], ids=["known-size", "mixed-sizes"])
def test_gpu_empty_boxes_leave_pixels_alone(name: str, known: bool) -> None:
    # The predicted defect: an empty multi_paste region inside the canvas floods the
    # rest of it on the GPU. CutMix-or-nothing samples must match the CPU exactly.
    sizes = [(12, 12)] * 7 if known else MIXED_SIZES
    n = len(sizes)
    images = flat_images(n, sizes=sizes)
    labels = own_labels(n, np.int32)
    cpu, gpu = both(
        EMPTY_BOX_CONFIGS[name], images, labels, size=(12, 12) if known else None, iterations=6
    )
    assert_agree(cpu, gpu)
    for out_g, t_g in gpu:
        for i in range(n):
            check_sample(out_g[i], t_g[i], i, sizes, 0.0)


def test_gpu_loader_cutmix_is_exact_per_sample(tmp_path: Path) -> None:
    # Through the whole GPU loader (decode, crop, mix, flip, normalize): in solid-colour
    # images the red channel names the class, so each sample's per-class pixel shares
    # must equal its targets.
    from test_imagenet import _solid_folder

    from pipelines.imagenet import IMAGENET_MEAN, IMAGENET_STD

    _solid_folder(tmp_path / "train", counts=(4, 4, 4))  # red = 40 + 50 * class
    mix = MixConfig(num_classes=3, cutmix_alpha=1.0)
    loader = small_loader(
        tmp_path / "train", batch_size=6, device="gpu", crop_size=16, mix=mix, output_layout="NHWC"
    )
    mixed = 0
    for _ in range(3):
        for images, targets in loader:
            assert images.is_cuda and targets.is_cuda
            red = images[..., 0].double().cpu() * IMAGENET_STD[0] + IMAGENET_MEAN[0]
            classes = ((red - 40) / 50).round().long()
            shares = torch.stack([(classes == c).double().mean(dim=(1, 2)) for c in range(3)], 1)
            assert torch.allclose(shares, targets.double().cpu(), atol=1e-6)
            mixed += int((targets.max(1).values < 1).sum())
    assert mixed > 0


@pytest.mark.parametrize(
    ("mix", "batches"),
    [
        (MixConfig(num_classes=3, cutmix_alpha=1.0, mixup_alpha=0.4, switch_prob=0.5), 1),
        (MixConfig(num_classes=3, cutmix_alpha=1.0, mixup_alpha=0.4, prob=0.8), 2),
    ],
    ids=["switch", "prob"],
)
def test_gpu_resume_is_bit_exact(image_folder: Path, mix: MixConfig, batches: int) -> None:
    def loader():
        return small_loader(image_folder, device="gpu", crop_size=16, mix=mix)

    reference = list(loader())
    assert same_batches(list(resumed_after(loader, batches)), reference[batches:])


@pytest.mark.parametrize("train", [True, False])
def test_gpu_bad_file_is_named(image_folder: Path, train: bool) -> None:
    bad = image_folder / "n00000001" / "img_1_1.JPEG"
    bad.write_bytes(b"not an image\n" * 20)
    with pytest.raises(BadImageError) as caught:
        list(small_loader(image_folder, train=train, batch_size=8, device="gpu"))
    assert caught.value.path == str(bad)


def test_train_runs_an_epoch_on_the_gpu_with_amp_and_channels_last(tmp_path: Path) -> None:
    from dali_cutmix.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(num_classes=4, train_per_class=16, val_per_class=4, seed=0)
    root = generate(tmp_path / "data", spec, workers=2, progress=False)
    command = [
        sys.executable,
        "-m",
        "train",
        "--data",
        str(root),
        "--device",
        "gpu",
        "--arch",
        "resnet18",
        "--crop-size",
        "64",
        "-b",
        "16",
        "--epochs",
        "1",
        "--amp",
        "bf16",
        "--channels-last",
        "--output-dir",
        str(tmp_path / "run"),
    ]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert len(records) == 1 and np.isfinite(records[0]["train_loss"])
    assert records[0]["train_images"] == 64 and records[0]["val_images"] == 16
