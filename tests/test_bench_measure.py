"""The benchmark's measurements: timed windows, isolated processes, each configuration once."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from dali_cutmix.config import AugmentConfig, MixConfig
from pipelines.bench import measure, plan


def fake_batches(n: int, batch: int = 4):
    return [(torch.zeros(batch, 3, 2, 2), torch.zeros(batch)) for _ in range(n)]


def test_measure_windows_counts_images_and_cycles_the_loader() -> None:
    steps = []
    result = measure.measure_windows(
        fake_batches(3), warmup=2, windows=4, window_batches=2, step=lambda x, y: steps.append(1)
    )
    # warm-up batches run the step too, then the settling steps (the ceiling's too, without
    # a buffer to drain, as its feeds), then 8 timed ones
    assert len(steps) == 2 + plan.SETTLE_STEPS + 4 * 2
    assert len(result["window_rates"]) == 4
    assert result["min"] <= result["images_per_s"] <= result["max"]
    with pytest.raises(ValueError, match="no batch"):
        measure.measure_windows([], warmup=1, windows=1, window_batches=1)


def tiny_spec(folder: Path, loader: str, **changes: Any) -> dict[str, Any]:
    """A loader measurement on ``folder``: CutMix, 4-image batches of 32-pixel crops, on the CPU."""
    spec = {
        "root": str(folder),
        "kind": "loader",
        "loader": loader,
        "device": "cpu",
        "mix": "cutmix",
        "workers": 1,
        "batch_size": 4,
        "crop_size": 32,
        "warmup": 1,
        "windows": 2,
        "window_batches": 2,
    }
    return spec | changes


@pytest.mark.parametrize("loader", ["dali", "torchvision"])
@pytest.mark.parametrize(
    ("run", "changes"),
    [
        (measure.run_isolated, {}),
        (measure.measure, {"mix": "recipe", "augment": "recipe", "windows": 1}),
    ],
    ids=["isolated", "whole-recipe"],
)
def test_a_measurement_on_a_tiny_folder(
    image_folder: Path, loader: str, run: Callable, changes: dict[str, Any]
) -> None:
    spec = tiny_spec(image_folder, loader, **changes)
    result = run(spec)
    assert "error" not in result, result.get("error")
    assert result["images_per_s"] > 0 and len(result["window_rates"]) == spec["windows"]
    assert result["peak_rss_mb"] > 0
    # the DataLoader's living worker (workers=1, torch imported) is in the tree's figure
    extra = 100 if loader == "torchvision" else 0
    # Two reads of one VmHWM may differ by a few KiB (Linux syncs its per-thread RSS
    # counters lazily): 599.652 after 599.660 MiB was seen.
    assert result["tree_peak_rss_mb"] >= result["peak_rss_mb"] + extra - 1
    # PSS splits shared pages among the processes: at most the peaks' sum, and more than
    # the main process alone where a worker lives
    assert 0 < result["tree_pss_mb"] <= result["tree_peak_rss_mb"]


def test_a_failed_measurement_gives_its_error_not_its_tracebacks_last_lines(
    image_folder: Path,
) -> None:
    # The table's cell read "failed:     batch_size = _fitting_batch(images, batch_size, ...".
    result = measure.run_isolated(tiny_spec(image_folder, "dali", batch_size=100))
    assert result["error"] == (
        f"DatasetError: {image_folder}: 15 images over 1 shard(s) give no batch of 100 per "
        "shard: lower the batch size"
    )


@pytest.mark.parametrize("loader", ["dali", "torchvision"])
def test_a_measurement_reads_only_the_files_its_list_names(
    image_folder: Path, loader: str, tmp_path: Path
) -> None:
    # --file-list (the scan's files.txt): 8 of the folder's 15 files, 2 batches of 4, not 3
    files = sorted(image_folder.rglob("img_*.JPEG"))[:8]
    listed = tmp_path / "files.txt"
    labels = {name: i for i, name in enumerate(sorted(p.name for p in image_folder.iterdir()))}
    listed.write_text("".join(f"{p} {labels[p.parent.name]}\n" for p in files))
    result = measure.measure(tiny_spec(image_folder, loader, file_list=str(listed), windows=1))
    assert "error" not in result, result.get("error")
    assert result["epoch_batches"] == 2
    assert measure.measure(tiny_spec(image_folder, loader, windows=1))["epoch_batches"] == 3


def test_nhwc_batches_reach_the_model_as_channels_last_nchw() -> None:
    cpu = torch.device("cpu")
    nhwc = torch.arange(2 * 4 * 5 * 3, dtype=torch.float32).reshape(2, 4, 5, 3)
    images = measure.prepare_images(nhwc, layout="NHWC", channels_last=True, device=cpu)
    assert images.shape == (2, 3, 4, 5) and images.stride() == (60, 1, 15, 3)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert images.data_ptr() == nhwc.data_ptr()  # a view of the batch, not a copy
    assert torch.equal(images, nhwc.permute(0, 3, 1, 2))
    plain = measure.prepare_images(nhwc, layout="NHWC", channels_last=False, device=cpu)
    assert plain.stride() == (60, 20, 5, 1) and torch.equal(plain, images)
    nchw = measure.prepare_images(plain, layout="NCHW", channels_last=True, device=cpu)
    assert nchw.stride() == (60, 1, 15, 3) and torch.equal(nchw, images)


@pytest.mark.parametrize("loader", ["dali", "synthetic"])
def test_gpu_feed_format_trains_on_the_cpu(image_folder: Path, loader: str) -> None:
    """The GPU's training branches (NHWC, channels-last, bf16 autocast), run on the CPU."""
    spec = tiny_spec(
        image_folder,
        loader,
        kind="train",
        layout="NHWC",
        channels_last=True,
        amp="bf16",
        arch="resnet18",
        mix="cutmix" if loader == "dali" else "off",
        windows=1,
        window_batches=1,
    )
    result = measure.measure(spec)
    assert len(result["window_rates"]) == 1
    assert math.isfinite(result["images_per_s"]) and result["images_per_s"] > 0


def test_the_ceiling_s_batch_has_soft_targets_as_its_feeds() -> None:
    # int64 labels made the ceiling's loss a little cheaper than its CutMix feeds'
    spec = {"device": "cpu", "crop_size": 8, "batch_size": 4, "loader": "synthetic"}
    spec |= {"kind": "train", "mix": "off", "layout": "NCHW"}
    ((images, targets),) = measure._synthetic_batches(spec, num_classes=5)
    assert images.shape == (4, 3, 8, 8) and targets.shape == (4, 5)
    assert targets.dtype == torch.float32 and torch.equal(targets.sum(1), torch.ones(4))


def test_augment_cases_are_the_recipes_settings() -> None:
    assert measure._augment_config("none") is None
    assert measure._augment_config("ta_wide") == AugmentConfig(auto_augment="ta_wide")
    assert measure._augment_config("ra") == AugmentConfig(
        auto_augment="ra", ra_num_ops=2, ra_magnitude=9
    )
    assert measure._augment_config("imagenet") == AugmentConfig(auto_augment="imagenet")
    assert measure._augment_config("erase") == AugmentConfig(random_erase=0.1)
    assert measure._augment_config("recipe") == AugmentConfig(
        auto_augment="ta_wide", random_erase=0.1
    )
    recipe = dict(mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.5, label_smoothing=0.1)
    assert measure._mix_config("recipe", 1000, "dali") == MixConfig(num_classes=1000, **recipe)
    # torchvision's CutMix and MixUp draw per batch, DALI's per sample
    assert measure._mix_config("cutmix", 10, "torchvision") == MixConfig(
        num_classes=10, cutmix_alpha=1.0, mixup_alpha=0.0, mode="batch"
    )
    assert measure._mix_config("off", 10, "torchvision") is None


def test_a_configuration_two_sections_share_is_measured_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = plan.BenchConfig(out=tmp_path, sweeps=("loaders", "scaling", "augment"), workers=2)
    specs = plan.plan_sections(config, tmp_path)
    runs = []

    def run(spec):
        runs.append(spec)
        # as run_isolated: the spec, then the result (measure_windows' window_rates)
        return {**spec, "images_per_s": float(len(runs)), "window_rates": [1.0, 2.0]}

    with caplog.at_level(logging.INFO, logger="pipelines.bench.measure"):
        results = measure.measure_sections(specs, run)
    keys = [plan.measurement_key(s) for s in runs]
    assert len(keys) == len(set(keys))  # nothing measured twice
    # each said as it starts, numbered among the measurements (a row was silent for minutes)
    assert caplog.messages == [
        f"measuring {i} of {len(runs)}: {plan.spec_label(spec)}" for i, spec in enumerate(runs, 1)
    ]
    # Each loader's "none" is the loaders section's mix="off"; the scaling sweep's
    # 2 workers and batch 32 are its "cutmix": 2 + 2 * 2 reused of 12 + 10 + 6.
    assert len(runs) == 6 + 10 + 12 - 2 - 4
    none = [r for r in results["augment"] if r["augment"] == "none"]
    off = [r for r in results["loaders"] if r["mix"] == "off"]
    assert [r["measured_in"] for r in none] == ["loaders", "loaders"]
    assert [r["images_per_s"] for r in none] == [r["images_per_s"] for r in off]
    assert none == [{**r, "measured_in": "loaders"} for r in off]
    # a reused row keeps its window rates and its spec's window count (the result's rates
    # were "windows", which the spec's count then replaced in results.json)
    assert all(r["window_rates"] == [1.0, 2.0] for r in none + off)
    assert all(r["windows"] == config.windows for r in none + off)
    assert all("measured_in" not in r for r in results["loaders"])
    assert {len(results[name]) for name in ("loaders", "scaling", "augment")} == {6, 10, 12}


@pytest.mark.parametrize(
    ("loader", "kind", "workers", "expected"),
    [
        # alone, a loader empties its buffer within the batches it holds
        (
            "torchvision",
            "loader",
            16,
            {"warmup": 34, "drain": 0, "windows": 3, "window_batches": 20},
        ),
        ("dali", "loader", 16, {"warmup": 10, "drain": 0, "windows": 3, "window_batches": 20}),
        # feeding a model: the buffer drained after the warm-up, windows at least a buffer long
        (
            "torchvision",
            "train",
            16,
            {"warmup": 10, "drain": 34, "windows": 3, "window_batches": 34},
        ),
        ("dali", "train", 16, {"warmup": 10, "drain": 3, "windows": 3, "window_batches": 20}),
        ("synthetic", "train", 16, {"warmup": 10, "drain": 0, "windows": 3, "window_batches": 20}),
        ("torchvision", "train", 2, {"warmup": 10, "drain": 6, "windows": 3, "window_batches": 20}),
    ],
)
def test_no_timed_batch_was_buffered_before_timing(
    loader: str, kind: str, workers: int, expected: dict
) -> None:
    spec = {"loader": loader, "kind": kind, "workers": workers}
    spec |= {"warmup": 10, "windows": 3, "window_batches": 20}
    assert measure.timing(spec) == expected


class SimulatedFeed:
    """A loader on a fake clock: one batch of 4 images every ``period`` seconds, up to
    ``capacity`` batches held ready (it starts full, as after a model's construction)."""

    def __init__(self, clock: list[float], period: float, capacity: int) -> None:
        self.clock, self.period, self.capacity = clock, period, capacity
        self.ready, self.next_done = capacity, math.inf

    def _advance(self) -> None:
        while self.ready < self.capacity and self.next_done <= self.clock[0]:
            self.ready, self.next_done = self.ready + 1, self.next_done + self.period

    def __iter__(self):
        while True:
            self._advance()
            if self.ready == 0:  # the consumer waits for the next batch
                self.clock[0] = self.next_done
                self._advance()
            if self.ready == self.capacity:  # the producer was idle, full: it starts again
                self.next_done = self.clock[0] + self.period
            self.ready -= 1
            yield torch.zeros(4, 1), torch.zeros(4)


@pytest.mark.parametrize("warmup", [0, 10], ids=lambda n: f"--warmup {n}")
@pytest.mark.parametrize("speed", [0.5, 0.75, 0.9, 1.5], ids=lambda r: f"loader at {r}x")
def test_a_fed_model_is_timed_at_the_slower_of_the_two(
    monkeypatch: pytest.MonkeyPatch, speed: float, warmup: int
) -> None:
    # A 16-worker DataLoader (32 batches ready) feeding a model of 10 ms a step whose first
    # step takes 1 s: the buffer fills during it, and a loader slower than the model but not
    # by half drained it so slowly that twice the buffer as warm-up timed buffered batches.
    clock = [0.0]
    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock[0])
    steps = []

    def step(images: torch.Tensor, targets: torch.Tensor) -> None:
        clock[0] += 1.0 if not steps else 0.01
        steps.append(1)

    spec = {"loader": "torchvision", "kind": "train", "workers": 16}
    spec |= {"warmup": warmup, "windows": 3, "window_batches": 10}
    steady = 4 / max(0.01, 0.01 / speed)  # images/s of the slower one
    feed = SimulatedFeed(clock, period=0.01 / speed, capacity=32)
    result = measure.measure_windows(feed, step=step, **measure.timing(spec))
    assert result["images_per_s"] == pytest.approx(steady, rel=0.01)
    assert result["max"] == pytest.approx(steady, rel=0.03)
    if 0.5 < speed < 1:  # what the timing of before (twice the buffer as warm-up) reported
        clock[0], steps[:] = 0.0, []
        feed = SimulatedFeed(clock, period=0.01 / speed, capacity=32)
        before = {"warmup": 68, "windows": 3, "window_batches": 34}
        overstated = measure.measure_windows(feed, step=step, **before)["images_per_s"]
        assert overstated > steady * 1.1  # by 17 % at 0.75x, 11 % at 0.9x


def test_the_drain_takes_batches_without_the_step_after_the_warm_up() -> None:
    calls: list[str] = []
    feed = [(torch.full((2, 1), float(i)), torch.zeros(2)) for i in range(100)]
    result = measure.measure_windows(
        feed,
        warmup=3,
        drain=5,
        windows=2,
        window_batches=4,
        step=lambda images, targets: calls.append(int(images[0, 0])),
    )
    # warm-up 0-2, drained 3-7 (no step), settled 8-9, timed 10-17
    assert calls == [0, 1, 2, *range(8, 18)]
    assert len(result["window_rates"]) == 2 and result["min"] <= result["median"] <= result["max"]


@pytest.mark.parametrize(
    ("figure", "most"),
    [
        ("tree_peak_rss_mb", None),
        # PSS: the child's own pages once (the peaks' sum counted each page a worker shares
        # with the fork server it came from once per process)
        ("tree_pss_mb", 64 + 64),
    ],
)
def test_the_tree_s_memory_counts_living_workers(figure: str, most: int | None) -> None:
    read = getattr(measure, figure)
    own = read()
    assert own is not None and own > 0
    code = "import time; x = bytearray(64 << 20); x[::4096] = b'1' * len(x[::4096]); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while read() - own < 64 and time.monotonic() < deadline:
            time.sleep(0.1)
        grown = read() - own
        assert grown >= 64  # the child's 64 MiB, while it lives
        assert most is None or grown < most  # and its interpreter's own pages
    finally:
        child.kill()
        child.wait()


def test_a_child_reports_its_own_peak_not_its_parents() -> None:
    # ru_maxrss in a child started by subprocess keeps the parent's RSS at the fork: a
    # parent holding 2 GiB made every isolated measurement report at least that.
    code = (
        "import subprocess, sys\n"
        "x = bytearray(2048 << 20); x[::4096] = b'1' * len(x[::4096])\n"
        "child = ('import resource; from pipelines.bench import measure; '\n"
        "         'print(measure.own_peak_rss_mb(), '\n"
        "         'resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)')\n"
        "print(subprocess.run([sys.executable, '-c', child], capture_output=True, text=True,"
        " check=True).stdout)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    own, maxrss = (float(v) for v in done.stdout.split())
    assert maxrss >= 2048  # what the benchmark used to report: the parent's 2 GiB
    assert 0 < own < 1500  # the child imported torch and DALI's config, never 2 GiB


def test_the_results_so_far_are_given_after_each_measurement(tmp_path: Path) -> None:
    # results.json was written only at the end: a benchmark killed by its time limit (or by
    # the GPU machine going back) kept no figure.
    config = plan.BenchConfig(out=tmp_path, sweeps=("loaders",), workers=2)
    specs = plan.plan_sections(config, tmp_path)
    seen = []

    def run(spec):
        return {**spec, "images_per_s": 1.0}

    results = measure.measure_sections(specs, run, lambda so_far: seen.append(so_far))
    assert [len(s["loaders"]) for s in seen] == list(range(1, 7))
    assert seen[-1]["loaders"] == results["loaders"]
