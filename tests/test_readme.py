"""The README's Python examples run as written, with the GPU and the paths swapped for the CPU's.

Each swap must match the README's text, so an example that changes fails here until this test
follows it: a newcomer pastes these blocks first.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from dali_cutmix.scan import main as scan_main
from dali_cutmix.synthetic import SyntheticSpec, generate

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
TINY = SyntheticSpec(num_classes=3, train_per_class=8, val_per_class=3, seed=0, size_scale=0.15)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("data") / "tiny", TINY, workers=1, progress=False)


def _swapped(block: str, swaps: dict[str, str]) -> str:
    for old, new in swaps.items():
        assert old in block, f"the README's example no longer holds {old!r}"
        block = block.replace(old, new)
    return block


def _paths(root: Path) -> dict[str, str]:
    return {
        '"/data/imagenet/train"': repr(str(root / "train")),
        '"/data/imagenet/val"': repr(str(root / "val")),
    }


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_within_the_readme_reaches_a_heading() -> None:
    prose = re.sub(r"```.*?```", "", README, flags=re.S)  # a shell comment is no heading
    anchors = {_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", prose, re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", prose)
    assert len(links) >= 10  # the contents, at least
    assert sorted(set(links) - anchors) == []
    assert _anchor("torchvision's ResNet-50 recipe") == "torchvisions-resnet-50-recipe"
    assert _anchor("The GPU run: one H100") == "the-gpu-run-one-h100"


def test_there_are_four_examples() -> None:
    assert len(BLOCKS) == 4, "a Python example was added or removed: test it here"


def test_the_graph_example_builds_and_mixes(root: Path) -> None:
    code = _swapped(
        BLOCKS[0],
        {"device_id=0": "device_id=None", 'device="mixed"': 'device="cpu"', "=1000": "=3"},
    )
    scope: dict = {}
    exec(code, scope)
    pipe = scope["train_pipe"](str(root / "train"))
    pipe.build()
    images, targets = (torch.from_numpy(out.as_array()) for out in pipe.run())
    assert images.shape == (64, 3, 224, 224) and images.dtype == torch.float32
    assert targets.shape == (64, 3)
    assert torch.allclose(targets.sum(dim=1), torch.ones(64))
    assert (targets.max(dim=1).values < 1).any()  # some samples were mixed


def test_the_loader_examples_run(root: Path, tmp_path: Path) -> None:
    scope = {"epochs": 1, "torch": torch, "model": lambda images: images.mean(dim=(2, 3))}
    placeholder = "model, epochs = ..., 90  # your model (on the loader's device) and epoch count"
    swaps = {**_paths(root), "num_classes=1000": "num_classes=3", placeholder: ""}
    loop = _swapped(BLOCKS[1], swaps)
    exec(_swapped(loop, {"batch_size=256": "batch_size=8"}), scope)
    assert len(scope["train"]) == 3 and len(scope["val"]) == 2
    assert torch.isfinite(scope["loss"])
    recipe = _swapped(BLOCKS[2], {'"/data/imagenet/train"': repr(str(root / "train"))})
    exec(
        _swapped(recipe, {"num_classes=1000": "num_classes=3", "batch_size=256": "batch_size=8"}),
        scope,
    )
    images, targets = next(iter(scope["train"]))
    assert images.shape == (8, 3, 176, 176) and targets.shape == (8, 3)
    assert scan_main([str(root / "train"), "--out", str(tmp_path / "scan"), "--workers", "1"]) == 0
    listed = _swapped(BLOCKS[3], {'"/data/imagenet/train"': repr(str(root / "train"))})
    swaps = {'"runs/scan-train/files.txt"': repr(str(tmp_path / "scan" / "files.txt"))}
    exec(_swapped(listed, {**swaps, "batch_size=256": "batch_size=8"}), scope)
    assert scope["train"].dataset_size == 24
