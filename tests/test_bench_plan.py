"""The benchmark's plan: its settings, and one spec per measurement."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.bench import plan


def test_feed_format_defaults_to_nhwc_channels_last_bf16_on_the_gpu(tmp_path: Path) -> None:
    config = plan.BenchConfig(out=tmp_path, devices=("gpu", "cpu"))
    specs = plan.plan_sections(config, tmp_path)
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
    cpu = plan.feed_format({"device": "cpu", "loader": "dali"})
    assert cpu == {"layout": "NCHW", "channels_last": False, "amp": "off"}
    with pytest.raises(ValueError, match="torchvision loader yields NCHW"):
        plan.feed_format({"device": "cpu", "loader": "torchvision", "layout": "NHWC"})
    with pytest.raises(ValueError, match="layout must be 'NCHW' or 'NHWC', got 'CHW'"):
        plan.feed_format({"device": "cpu", "loader": "dali", "layout": "CHW"})
    with pytest.raises(ValueError, match="amp must be 'off' or 'bf16', got 'fp16'"):
        plan.feed_format({"device": "cpu", "loader": "dali", "amp": "fp16"})


def test_bad_settings_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="windows"):
        plan.BenchConfig(out=tmp_path, windows=0)
    with pytest.raises(ValueError, match="devices"):
        plan.BenchConfig(out=tmp_path, devices=("tpu",))


def test_the_augment_sweep_is_off_by_default_and_plans_each_case_per_loader(
    tmp_path: Path,
) -> None:
    default = plan.plan_sections(plan.BenchConfig(out=tmp_path), tmp_path)
    assert default["augment"] == [] and default["loaders"]
    config = plan.BenchConfig(out=tmp_path, sweeps=("augment",), devices=("gpu", "cpu"))
    specs = plan.plan_sections(config, tmp_path)
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


def test_the_scaling_sweep_plans_hw_decoder_loads_for_dali_on_the_gpu_only(tmp_path: Path) -> None:
    config = plan.BenchConfig(
        out=tmp_path,
        devices=("gpu", "cpu"),
        threads_list=(4,),
        batch_size_list=(256,),
        hw_decoder_loads=(0.0, 0.5),
    )
    scaling = plan.plan_sections(config, tmp_path)["scaling"]
    planned = [(s["loader"], s["device"], s["sweep"], s.get("hw_decoder_load")) for s in scaling]
    assert planned == [
        ("torchvision", "cpu", "workers", None),
        ("torchvision", "cpu", "batch_size", None),
        ("dali", "gpu", "workers", None),
        ("dali", "gpu", "batch_size", None),
        ("dali", "gpu", "hw_decoder_load", 0.0),
        ("dali", "gpu", "hw_decoder_load", 0.5),
        ("dali", "cpu", "workers", None),
        ("dali", "cpu", "batch_size", None),
    ]
    assert {s["mix"] for s in scaling} == {"cutmix"}
    with pytest.raises(ValueError, match=r"hw_decoder_loads must be in \[0, 1\], got 1.5"):
        plan.BenchConfig(out=tmp_path, hw_decoder_loads=(0.5, 1.5))


@pytest.mark.parametrize(
    ("workers", "per_class", "warned"),
    # both loaders' batch-64 rows: they warm up alike (DALI's row ran 24 batches fewer)
    [
        (5, 180, []),
        (6, 180, [("scaling", 64), ("scaling", 64)]),
        (11, 200, []),
        (12, 200, [("scaling", 64), ("scaling", 64)]),
    ],
)
def test_the_default_set_warns_of_short_epochs_as_the_readme_says(
    workers: int, per_class: int, warned: list
) -> None:
    # The README said the default batch sizes "never warn"; from 6 workers the DataLoader's
    # prefetch (2 x workers + 2 batches of warm-up) made the batch-64 scaling row warn.
    from pipelines.bench.measure import timing

    config = plan.BenchConfig(out=Path("out"), workers=workers, per_class=per_class)
    images = config.classes * per_class
    short = [
        (section, spec["batch_size"])
        for section, specs in plan.plan_sections(config, Path("root")).items()
        for spec in specs
        if plan.short_epochs(
            {"timing": timing(spec), "epoch_batches": images // spec["batch_size"]}
        )
    ]
    assert short == warned


def test_the_loaders_compared_warm_up_alike() -> None:
    # DALI's rows warmed up for its own 3 batches, the DataLoader's for 2 x workers + 2:
    # with 16 workers 134 batches against 110, and only the DataLoader's windows could
    # cross an epoch's start.
    from pipelines.bench.measure import timing

    config = plan.BenchConfig(out=Path("out"), workers=16, sweeps=("loaders", "scaling"))
    sections = plan.plan_sections(config, Path("root"))
    loaders = {(s["loader"], timing(s)["warmup"]) for s in sections["loaders"]}
    assert loaders == {("torchvision", 34), ("dali", 34)}
    for spec in sections["scaling"]:  # each row as the DataLoader of its worker count
        assert timing(spec)["warmup"] == max(config.warmup, 2 * spec["workers"] + 2)
