"""The preview grid: captions carry the targets' classes and weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dali_cutmix import MixConfig
from dali_cutmix.preview import caption, main, mixed_batch, render_grid, write_preview


def test_caption_names_own_class_first_then_partner() -> None:
    names = ["cat", "dog", "fox"]
    target = np.array([0.25, 0.0, 0.75], np.float32)
    assert caption(target, 0, names) == "cat 0.25\n+ fox 0.75"
    assert caption(np.array([0.0, 1.0, 0.0], np.float32), 1, names) == "dog 1.00"


def test_render_grid_size() -> None:
    images = np.zeros((5, 10, 12, 3), np.uint8)
    grid = render_grid(images, ["a"] * 5, columns=2, caption_height=6)
    assert grid.size == (24, 3 * 16)


def test_write_preview_png_matches_the_batch(image_folder: Path, tmp_path: Path) -> None:
    config = MixConfig(num_classes=3, cutmix_alpha=1.0)
    out = write_preview(image_folder, tmp_path / "p.png", config, batch_size=8)
    with Image.open(out) as png:
        assert png.size == (4 * 160, 2 * (160 + 28))
    images, labels, targets = mixed_batch(image_folder, config, batch_size=8)
    assert images.shape == (8, 160, 160, 3) and images.dtype == np.uint8
    assert targets.shape == (8, 3)
    np.testing.assert_allclose(targets.sum(1), 1.0, atol=1e-6)
    assert set(labels.tolist()) <= {0, 1, 2}


def test_bad_inputs_fail_with_a_message(tmp_path: Path, image_folder: Path, caplog) -> None:
    assert main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2
    assert "missing" in caplog.text
    with pytest.raises(ValueError, match="num_classes=5"):
        write_preview(image_folder, tmp_path / "x.png", MixConfig(num_classes=5))


def test_without_data_it_previews_a_generated_set(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DALI_CUTMIX_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "p.png"
    assert main(["--out", str(out), "--batch-size", "4", "--mixup-alpha", "0.8"]) == 0
    with Image.open(out) as png:
        assert png.size == (4 * 160, 160 + 28)
    assert (tmp_path / "cache" / "preview" / "train").is_dir()
