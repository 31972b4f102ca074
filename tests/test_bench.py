"""The benchmark's timing, derived ratios and report, on tiny inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import build_image_folder, run_command, user_error_line

from dali_cutmix.config import AugmentConfig, MixConfig
from pipelines import bench


def fake_batches(n: int, batch: int = 4):
    return [(torch.zeros(batch, 3, 2, 2), torch.zeros(batch)) for _ in range(n)]


def test_measure_windows_counts_images_and_cycles_the_loader() -> None:
    steps = []
    result = bench.measure_windows(
        fake_batches(3), warmup=2, windows=4, window_batches=2, step=lambda x, y: steps.append(1)
    )
    assert len(steps) == 2 + 4 * 2  # warm-up batches run the step too, then 8 timed ones
    assert len(result["windows"]) == 4
    assert result["min"] <= result["images_per_s"] <= result["max"]
    with pytest.raises(ValueError, match="no batch"):
        bench.measure_windows([], warmup=1, windows=1, window_batches=1)


def test_derive_ratios_against_torchvision_and_mix_cost() -> None:
    rows = [
        {"loader": "torchvision", "device": "cpu", "mix": "off", "images_per_s": 100.0},
        {"loader": "torchvision", "device": "cpu", "mix": "cutmix", "images_per_s": 80.0},
        {"loader": "dali", "device": "cpu", "mix": "off", "images_per_s": 300.0},
        {"loader": "dali", "device": "cpu", "mix": "cutmix", "images_per_s": 240.0},
    ]
    training = [
        {"loader": "synthetic", "images_per_s": 50.0},
        {"loader": "dali", "images_per_s": 40.0},
        {"loader": "torchvision", "error": "boom"},
    ]
    results = {"loaders": rows, "training": training, "scaling": []}
    bench._derive(results)
    assert rows[2]["vs_torchvision"] == 3.0 and rows[3]["vs_torchvision"] == 3.0
    assert rows[1]["mix_cost_pct"] == pytest.approx(20.0) and rows[3][
        "mix_cost_pct"
    ] == pytest.approx(20.0)
    assert "mix_cost_pct" not in rows[0]
    assert training[1]["pct_of_ceiling"] == 80.0 and "pct_of_ceiling" not in training[2]


@pytest.mark.parametrize("loader", ["dali", "torchvision"])
def test_one_isolated_measurement_on_a_tiny_folder(image_folder: Path, loader: str) -> None:
    spec = {
        "root": str(image_folder),
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
    result = bench._run_isolated(spec)
    assert "error" not in result, result.get("error")
    assert result["images_per_s"] > 0 and len(result["windows"]) == 2
    assert result["peak_rss_mb"] > 0


def test_feed_format_defaults_to_nhwc_channels_last_bf16_on_the_gpu(tmp_path: Path) -> None:
    config = bench.BenchConfig(out=tmp_path, devices=("gpu", "cpu"))
    specs = bench._specs(config, tmp_path)
    gpu = {"layout": "NHWC", "channels_last": True, "amp": "bf16"}
    training = {s["loader"]: {k: s[k] for k in gpu} for s in specs["training"]}
    assert training == {
        "synthetic": gpu,
        "dali": gpu,
        "torchvision": {"layout": "NCHW", "channels_last": True, "amp": "bf16"},
    }
    loaders = {(s["loader"], s["device"], s["layout"]) for s in specs["loaders"]}
    assert loaders == {
        ("torchvision", "cpu", "NCHW"),
        ("dali", "gpu", "NHWC"),
        ("dali", "cpu", "NCHW"),
    }
    cpu = bench.feed_format({"device": "cpu", "loader": "dali"})
    assert cpu == {"layout": "NCHW", "channels_last": False, "amp": "off"}
    with pytest.raises(ValueError, match="torchvision loader yields NCHW"):
        bench.feed_format({"device": "cpu", "loader": "torchvision", "layout": "NHWC"})
    with pytest.raises(ValueError, match="layout must be 'NCHW' or 'NHWC', got 'CHW'"):
        bench.feed_format({"device": "cpu", "loader": "dali", "layout": "CHW"})
    with pytest.raises(ValueError, match="amp must be 'off' or 'bf16', got 'fp16'"):
        bench.feed_format({"device": "cpu", "loader": "dali", "amp": "fp16"})


def test_nhwc_batches_reach_the_model_as_channels_last_nchw() -> None:
    cpu = torch.device("cpu")
    nhwc = torch.arange(2 * 4 * 5 * 3, dtype=torch.float32).reshape(2, 4, 5, 3)
    images = bench.prepare_images(nhwc, layout="NHWC", channels_last=True, device=cpu)
    assert images.shape == (2, 3, 4, 5) and images.stride() == (60, 1, 15, 3)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert images.data_ptr() == nhwc.data_ptr()  # a view of the batch, not a copy
    assert torch.equal(images, nhwc.permute(0, 3, 1, 2))
    plain = bench.prepare_images(nhwc, layout="NHWC", channels_last=False, device=cpu)
    assert plain.stride() == (60, 20, 5, 1) and torch.equal(plain, images)
    nchw = bench.prepare_images(plain, layout="NCHW", channels_last=True, device=cpu)
    assert nchw.stride() == (60, 1, 15, 3) and torch.equal(nchw, images)


@pytest.mark.parametrize("loader", ["dali", "synthetic"])
def test_gpu_feed_format_trains_on_the_cpu(image_folder: Path, loader: str) -> None:
    """The GPU's training branches (NHWC, channels-last, bf16 autocast), run on the CPU."""
    spec = {
        "root": str(image_folder),
        "kind": "train",
        "loader": loader,
        "device": "cpu",
        "layout": "NHWC",
        "channels_last": True,
        "amp": "bf16",
        "arch": "resnet18",
        "mix": "cutmix" if loader == "dali" else "off",
        "workers": 1,
        "batch_size": 4,
        "crop_size": 32,
        "warmup": 1,
        "windows": 1,
        "window_batches": 1,
    }
    result = bench.measure(spec)
    assert len(result["windows"]) == 1
    assert math.isfinite(result["images_per_s"]) and result["images_per_s"] > 0


def test_report_table_and_plot(tmp_path: Path) -> None:
    env = {"cpu_count": 2, "dali": "x", "torch": "y"}
    row = {
        "loader": "dali",
        "device": "cpu",
        "mix": "cutmix",
        "workers": 2,
        "batch_size": 8,
        "images_per_s": 10.0,
        "min": 9.0,
        "max": 11.0,
        "peak_rss_mb": 5.0,
        "vs_torchvision": 2.0,
        "mix_cost_pct": 3.0,
        "sweep": "workers",
        "kind": "loader",
    }
    report = {"environment": env, "loaders": [row], "training": [], "scaling": [row]}
    table = bench.format_table(report)
    assert "| DALI CPU (2 w) | cutmix | 10.0 | 9-11 | 2.00x | 3.0 % |" in table
    bench.plot_results(report, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
    json.dumps(report)


def test_bad_settings_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="windows"):
        bench.BenchConfig(out=tmp_path, windows=0)
    with pytest.raises(ValueError, match="devices"):
        bench.BenchConfig(out=tmp_path, devices=("tpu",))


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
        (
            ["--sweeps", "augment,aug"],
            "--sweeps must be one or more of loaders, training, scaling, augment, got "
            "'augment,aug'",
        ),
        (
            ["--threads-list", "0,2"],
            "argument --threads-list: expected comma-separated integers >= 1, got '0,2'",
        ),
        (
            ["--data", "{tmp}/imagenet"],
            "'{tmp}/imagenet' has only the subfolder val/: it looks like a dataset root, not a "
            "folder of classes; give '{tmp}/imagenet/val', whose subfolders are the classes.",
        ),
    ]
    + (
        []
        if torch.cuda.is_available()
        else [(["--device", "gpu"], "--device gpu needs CUDA, which this machine does not have")]
    ),
)
def test_bad_arguments_end_with_one_line_before_any_measurement(
    tmp_path: Path, capsys, monkeypatch, args: list[str], line: str
) -> None:
    build_image_folder(tmp_path / "imagenet" / "val", classes=2, per_class=1, extras=False)
    monkeypatch.setattr(bench, "run_benchmark", lambda *a: pytest.fail("the benchmark ran"))
    with pytest.raises(SystemExit) as caught:
        bench.main([a.format(tmp=tmp_path) for a in args] + ["--out", str(tmp_path / "out")])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m pipelines.bench: error: {line.format(tmp=tmp_path)}"
    )


def test_a_missing_data_folder_ends_the_command_with_one_line(tmp_path: Path) -> None:
    done = run_command("pipelines.bench", "--data", tmp_path / "nope", "--out", tmp_path / "out")
    assert user_error_line(done) == (
        f"python -m pipelines.bench: error: dataset root '{tmp_path}/nope' does not exist. Give a "
        "folder laid out as ROOT/<class>/<image>.JPEG, one subfolder per class (ImageFolder's "
        "layout)."
    )
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- augmentation sweep


def test_the_augment_sweep_is_off_by_default_and_plans_each_case_per_loader(
    tmp_path: Path,
) -> None:
    default = bench._specs(bench.BenchConfig(out=tmp_path), tmp_path)
    assert default["augment"] == [] and default["loaders"]
    config = bench.BenchConfig(out=tmp_path, sweeps=("augment",), devices=("gpu", "cpu"))
    specs = bench._specs(config, tmp_path)
    assert specs["loaders"] == specs["training"] == specs["scaling"] == []
    planned = [(s["loader"], s["device"], s["augment"], s["mix"]) for s in specs["augment"]]
    cases = [("none", "off"), ("ta_wide", "off"), ("ra", "off"), ("imagenet", "off")]
    cases += [("erase", "off"), ("recipe", "recipe")]
    assert planned == [
        (loader, device, augment, mix)
        for loader, device in (("torchvision", "cpu"), ("dali", "gpu"), ("dali", "cpu"))
        for augment, mix in cases
    ]
    assert all(s["batch_size"] == 32 and s["windows"] == 5 for s in specs["augment"])


def test_augment_cases_are_the_recipes_settings() -> None:
    assert bench._augment_config("none") is None
    assert bench._augment_config("ta_wide") == AugmentConfig(auto_augment="ta_wide")
    assert bench._augment_config("ra") == AugmentConfig(
        auto_augment="ra", ra_num_ops=2, ra_magnitude=9
    )
    assert bench._augment_config("imagenet") == AugmentConfig(auto_augment="imagenet")
    assert bench._augment_config("erase") == AugmentConfig(random_erase=0.1)
    assert bench._augment_config("recipe") == AugmentConfig(
        auto_augment="ta_wide", random_erase=0.1
    )
    assert bench._mix_config("recipe", 1000) == MixConfig(
        num_classes=1000, mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.5, label_smoothing=0.1
    )


def test_a_configuration_two_sections_share_is_measured_once(tmp_path: Path) -> None:
    config = bench.BenchConfig(out=tmp_path, sweeps=("loaders", "scaling", "augment"), workers=2)
    specs = bench._specs(config, tmp_path)
    runs = []

    def run(spec):
        runs.append(spec)
        return {**spec, "images_per_s": float(len(runs))}

    results = bench.measure_sections(specs, run)
    keys = [bench._measurement_key(s) for s in runs]
    assert len(keys) == len(set(keys))  # nothing measured twice
    # Each loader's "none" is the loaders section's mix="off"; the scaling sweep's
    # 2 workers and batch 32 are its "cutmix": 2 + 2 * 2 reused of 12 + 10 + 6.
    assert len(runs) == 6 + 10 + 12 - 2 - 4
    none = [r for r in results["augment"] if r["augment"] == "none"]
    off = [r for r in results["loaders"] if r["mix"] == "off"]
    assert [r["measured_in"] for r in none] == ["loaders", "loaders"]
    assert [r["images_per_s"] for r in none] == [r["images_per_s"] for r in off]
    assert none == [{**r, "measured_in": "loaders"} for r in off]
    assert all("measured_in" not in r for r in results["loaders"])
    assert {len(results[name]) for name in ("loaders", "scaling", "augment")} == {6, 10, 12}


def test_augment_cost_is_the_added_time_per_batch_against_none() -> None:
    def row(loader: str, augment: str, rate: float) -> dict:
        return {
            "loader": loader,
            "device": "cpu",
            "augment": augment,
            "batch_size": 32,
            "images_per_s": rate,
        }

    rows = [
        row("torchvision", "none", 160.0),
        row("torchvision", "ra", 64.0),
        row("dali", "none", 320.0),
        row("dali", "ra", 256.0),
        row("dali", "recipe", 160.0),
        {**row("dali", "erase", 0.0), "error": "boom"},
    ]
    bench._derive({"loaders": [], "training": [], "scaling": [], "augment": rows})
    assert [r.get("ms_per_batch") for r in rows] == [200.0, 500.0, 100.0, 125.0, 200.0, None]
    assert [r.get("added_ms_per_batch") for r in rows] == [None, 300.0, None, 25.0, 100.0, None]
    assert [r.get("cost_pct") for r in rows] == [None, 150.0, None, 25.0, 100.0, None]
    assert [r.get("vs_torchvision") for r in rows] == [1.0, 1.0, 2.0, 4.0, None, None]


def test_augment_table_and_plot(tmp_path: Path) -> None:
    common = {"loader": "dali", "device": "cpu", "workers": 2, "batch_size": 32}
    rows = [
        {**common, "augment": "none", "images_per_s": 320.0, "min": 300.0, "max": 330.0},
        {**common, "augment": "recipe", "images_per_s": 160.0, "min": 150.0, "max": 170.0},
    ]
    bench._derive_augment(rows)
    env = {"cpu_count": 2, "dali": "x", "torch": "y"}
    report = {"environment": env, "loaders": [], "training": [], "scaling": [], "augment": rows}
    table = bench.format_table(report).splitlines()
    assert "| DALI CPU (2 w) | none | 320.0 | 300-330 | 100.0 | - | - |" in table
    assert (
        "| DALI CPU (2 w) | ResNet-50 recipe: TA wide, erase 0.1, MixUp 0.2/CutMix 1.0, "
        "smoothing 0.1 | 160.0 | 150-170 | 200.0 | +100.0 ms (+100 %) | - |"
    ) in table
    assert not any("mixing cost" in line or "scaling" in line for line in table)
    bench.plot_results(report, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 1000


@pytest.mark.parametrize("loader", ["dali", "torchvision"])
def test_the_whole_recipe_is_measured_on_a_tiny_folder(image_folder: Path, loader: str) -> None:
    spec = {
        "root": str(image_folder),
        "kind": "loader",
        "loader": loader,
        "device": "cpu",
        "mix": "recipe",
        "augment": "recipe",
        "workers": 1,
        "batch_size": 4,
        "crop_size": 32,
        "warmup": 1,
        "windows": 1,
        "window_batches": 2,
    }
    result = bench.measure(spec)
    assert len(result["windows"]) == 1 and result["images_per_s"] > 0
