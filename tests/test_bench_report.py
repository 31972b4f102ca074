"""The benchmark's report: derived ratios, tables and the chart, on made-up figures."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from pipelines.bench import report


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
    report.derive(results)
    assert rows[2]["vs_torchvision"] == 3.0 and rows[3]["vs_torchvision"] == 3.0
    assert rows[1]["mix_cost_pct"] == pytest.approx(20.0) and rows[3][
        "mix_cost_pct"
    ] == pytest.approx(20.0)
    assert "mix_cost_pct" not in rows[0]
    assert training[1]["pct_of_ceiling"] == 80.0 and "pct_of_ceiling" not in training[2]


def test_a_mixing_cost_within_the_windows_spread_is_marked_as_noise() -> None:
    # A short run printed "-2.3 %", mixing that seemed to speed the loader up.
    def row(mix: str, rate: float, low: float, high: float) -> dict:
        return {"loader": "dali", "device": "cpu", "mix": mix, "workers": 2, "batch_size": 8} | {
            "images_per_s": rate,
            "min": low,
            "max": high,
        }

    rows = [row("off", 100.0, 95.0, 104.0), row("cutmix", 102.3, 99.0, 106.0)]
    rows.append(row("switch", 80.0, 78.0, 82.0))  # beyond the spread: a cost
    report.derive({"loaders": rows, "training": [], "scaling": []})
    assert rows[1]["mix_cost_pct"] == pytest.approx(-2.3)
    assert rows[1]["mix_cost_note"] == report.NOISE_NOTE
    assert "mix_cost_note" not in rows[2] and rows[2]["mix_cost_pct"] == pytest.approx(20.0)
    env = {"cpu_count": 2, "dali": "x", "torch": "y"}
    table = report.format_table(
        {"environment": env, "loaders": rows, "training": [], "scaling": []}
    )
    assert "| DALI CPU (2 w) | cutmix | 102.3 | 99-106 | - | -2.3 % (within noise) |" in table
    assert "| DALI CPU (2 w) | switch | 80.0 | 78-82 | - | 20.0 % |" in table


def test_a_mixing_cost_of_one_window_rows_is_marked_unresolved() -> None:
    # --windows 1: min == max, no spread, and "-3.1 %" printed unmarked, a gain of mixing.
    def row(mix: str, rate: float) -> dict:
        return {"loader": "dali", "device": "cpu", "mix": mix, "workers": 2, "batch_size": 8} | {
            "images_per_s": rate,
            "min": rate,
            "max": rate,
            "windows": [rate],
        }

    rows = [row("off", 100.0), row("cutmix", 103.1)]
    report.derive({"loaders": rows, "training": [], "scaling": []})
    assert rows[1]["mix_cost_pct"] == pytest.approx(-3.1)
    assert rows[1]["mix_cost_note"] == report.ONE_WINDOW_NOTE
    env = {"cpu_count": 2, "dali": "x", "torch": "y"}
    table = report.format_table(
        {"environment": env, "loaders": rows, "training": [], "scaling": []}
    )
    cell = "-3.1 % (one window: unresolved)"
    assert f"| DALI CPU (2 w) | cutmix | 103.1 | 103-103 | - | {cell} |" in table
    # a training feed above its one-window ceiling
    fed = {"loader": "dali", "images_per_s": 110.0, "min": 110.0, "max": 110.0, "windows": [110.0]}
    ceiling = {"loader": "synthetic", "images_per_s": 100.0, "min": 100.0, "max": 100.0}
    assert report.ceiling_note(fed, ceiling) == (
        "ceiling measured in another window; one window each: no spread to judge it by; "
        "re-run with more --train-windows"
    )


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
    summary = {"environment": env, "loaders": [row], "training": [], "scaling": [row]}
    table = report.format_table(summary)
    assert "| DALI CPU (2 w) | cutmix | 10.0 | 9-11 | 2.00x | 3.0 % |" in table
    report.plot_results(summary, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
    json.dumps(summary)


def test_epochs_shorter_than_the_timed_batches_are_flagged() -> None:
    # 60 images in batches of 8: 7 batches per epoch, against 6 + 2 x 2 timed.
    env = {"cpu_count": 2, "dali": "x", "torch": "y"}
    row = {
        "loader": "torchvision",
        "device": "cpu",
        "mix": "off",
        "workers": 2,
        "batch_size": 8,
        "images_per_s": 7357.9,
        "min": 289.3,
        "max": 14426.5,
        "peak_rss_mb": 5.0,
        "timing": {"warmup": 6, "windows": 2, "window_batches": 2},
        "epoch_batches": 7,
    }
    long = {**row, "loader": "dali", "epoch_batches": 10, "images_per_s": 10.0}
    summary = {"environment": env, "loaders": [row, long], "training": [], "scaling": []}
    assert report.format_table(summary).splitlines()[-1] == (
        "Warning: epochs of 7 batches, fewer than the warm-up and windows together: the "
        "figures include several epoch starts, which a full-size set hides (give a larger "
        "--data, or fewer --windows/--window-batches)."
    )
    summary["config"] = {"data": None}  # the generated set: its size is --per-class's
    assert (
        report.format_table(summary)
        .splitlines()[-1]
        .endswith("(give a larger --per-class, or fewer --windows/--window-batches).")
    )
    summary["loaders"] = [long]
    assert "Warning" not in report.format_table(summary)


def test_a_training_bar_above_its_ceiling_says_why() -> None:
    ceiling = {"loader": "synthetic", "images_per_s": 100.0, "min": 95.0, "max": 104.0}
    close = {"loader": "dali", "images_per_s": 102.0, "min": 99.0, "max": 103.0}
    far = {"loader": "torchvision", "images_per_s": 120.0, "min": 110.0, "max": 125.0}
    below = {"loader": "dali", "images_per_s": 90.0, "min": 80.0, "max": 105.0}
    assert report.ceiling_note(close, ceiling) == (
        "ceiling measured in another window; within noise"
    )
    assert report.ceiling_note(far, ceiling) == (
        "ceiling measured in another window; beyond the min-max spread; re-run to confirm"
    )
    assert report.ceiling_note(below, ceiling) is None
    assert report.ceiling_note(ceiling, ceiling) is None
    results = {"loaders": [], "training": [ceiling, close, below], "scaling": []}
    report.derive(results)
    assert close["pct_of_ceiling"] == 102.0 and "ceiling_note" in close
    assert "ceiling_note" not in below and "ceiling_note" not in ceiling
    for row in (ceiling, close, below):
        row.update(arch="resnet18", device="cpu", mix="cutmix")
    summary = {"environment": {"cpu_count": 2, "dali": "x", "torch": "y"}, **results}
    table = report.format_table(summary).splitlines()
    assert (
        "| resnet18 on cpu <- dali (cutmix) | 102.0 | 102.0 % (ceiling measured in another "
        "window; within noise) |"
    ) in table
    assert "| resnet18 on cpu <- dali (cutmix) | 90.0 | 90.0 % |" in table
    # to 0.1 %: 96.6 % printed "97 %", which read as the 97 % goal met; no ceiling: "-"
    below["pct_of_ceiling"] = 96.6
    del close["pct_of_ceiling"]
    table = report.format_table(summary).splitlines()
    assert "| resnet18 on cpu <- dali (cutmix) | 90.0 | 96.6 % |" in table
    assert any(line.startswith("| resnet18 on cpu <- dali (cutmix) | 102.0 | - ") for line in table)


def test_the_chart_shows_the_spread_of_every_bar_and_why_one_tops_its_ceiling() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def row(loader: str, rate: float, low: float, high: float, **more) -> dict:
        fields = {"device": "cpu", "arch": "resnet18", "mix": "cutmix", "workers": 2}
        return {"loader": loader, "images_per_s": rate, "min": low, "max": high, **fields, **more}

    training = [row("synthetic", 100.0, 95.0, 104.0), row("dali", 102.0, 99.0, 103.0)]
    scaling = [row("dali", 50.0, 40.0, 55.0, sweep="workers", batch_size=32)]
    results = {"loaders": [], "training": training, "scaling": scaling}
    report.derive(results)
    fig, (train_ax, scaling_ax) = plt.subplots(1, 2)
    report._plot_training(train_ax, results)
    report._plot_scaling(scaling_ax, results, sweep="workers")
    for ax, rows in ((train_ax, training), (scaling_ax, scaling)):
        (whiskers,) = [c for c in ax.containers if c.__class__.__name__ == "ErrorbarContainer"]
        (lines,) = whiskers.lines[2]
        spans = [tuple(segment[:, 1]) for segment in lines.get_segments()]
        assert spans == [(r["min"], r["max"]) for r in rows]
    labels = [text.get_text() for text in train_ax.texts]
    assert labels == ["100.0 %", "102.0 % *"]
    assert train_ax.get_xlabel() == "* ceiling measured in another window; within noise"
    plt.close(fig)


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
    report.derive({"loaders": [], "training": [], "scaling": [], "augment": rows})
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
    report.derive_augment(rows)
    env = {"cpu_count": 2, "dali": "x", "torch": "y"}
    summary = {"environment": env, "loaders": [], "training": [], "scaling": [], "augment": rows}
    table = report.format_table(summary).splitlines()
    assert "| DALI CPU (2 w) | none | 320.0 | 300-330 | 100.0 | - | - |" in table
    assert (
        "| DALI CPU (2 w) | ResNet-50 recipe: TA wide, erase 0.1, MixUp 0.2/CutMix 1.0, "
        "smoothing 0.1 | 160.0 | 150-170 | 200.0 | +100.0 ms (+100 %) | - |"
    ) in table
    assert not any("mixing cost" in line or "scaling" in line for line in table)
    report.plot_results(summary, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_the_hw_decoder_load_sweep_has_its_rows_and_its_panel(tmp_path: Path) -> None:
    env = {"gpu": "NVIDIA H100 80GB HBM3", "cpu_count": 16, "dali": "2.4.0", "torch": "2.11"}

    def row(load: float, rate: float, gpu_mb: float) -> dict:
        return {
            "loader": "dali",
            "device": "gpu",
            "mix": "cutmix",
            "workers": 16,
            "batch_size": 256,
            "hw_decoder_load": load,
            "sweep": "hw_decoder_load",
            "images_per_s": rate,
            "min": rate - 1,
            "max": rate + 1,
            "peak_rss_mb": 1000.0,
            "gpu_used_mb": gpu_mb,
        }

    rows = [row(0.0, 7000.0, 4600.0), row(0.99, 15000.0, 1255.0)]
    summary = {"environment": env, "loaders": [], "training": [], "scaling": rows}
    table = report.format_table(summary).splitlines()
    assert "| hw_decoder_load | dali-gpu | 0.0 | 7000.0 | - | 1000 | 4600 |" in table
    assert "| hw_decoder_load | dali-gpu | 0.99 | 15000.0 | - | 1000 | 1255 |" in table
    rows[1]["tree_pss_mb"] = 812.4  # measured since: the process tree's PSS beside the peaks
    table = report.format_table(summary).splitlines()
    assert "| hw_decoder_load | dali-gpu | 0.99 | 15000.0 | 812 | 1000 | 1255 |" in table
    report.plot_results(summary, tmp_path / "r.png")  # one panel: no empty workers panel
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    report._plot_scaling(ax, summary, sweep="hw_decoder_load")
    assert ax.get_xscale() == "linear"
    assert ax.get_xlabel() == "hw_decoder_load (share of JPEGs on the hardware decoder)"
    line = ax.get_lines()[0]  # the medians; the caps follow
    assert list(line.get_xdata()) == [0.0, 0.99] and list(line.get_ydata()) == [7000.0, 15000.0]
    plt.close(fig)


def test_a_failed_row_keeps_the_table_s_columns() -> None:
    # run_isolated joins the error's lines with " | ", which opened new columns in the table
    failed = {"loader": "dali", "device": "cpu", "mix": "cutmix", "workers": 2, "batch_size": 8}
    failed |= {"kind": "loader", "sweep": "workers"}
    failed["error"] = "exit 1: Traceback | RuntimeError: out of memory"
    env = {"cpu_count": 2, "dali": "x", "torch": "y"}
    summary = {"environment": env, "loaders": [failed], "training": [], "scaling": []}
    (line,) = [x for x in report.format_table(summary).splitlines() if "failed:" in x]
    cells = line.split(" | ")
    assert cells[1] == "failed: exit 1: Traceback / RuntimeError: out of memory"
    assert line.count("|") == 7  # the table's 6 columns


def test_a_failed_row_s_error_of_many_lines_stays_on_its_row() -> None:
    # DALI's "Critical error in pipeline:\n..." broke the row, and the table, in two
    failed = {"loader": "dali", "device": "cpu", "mix": "off", "workers": 2, "batch_size": 8}
    failed |= {"kind": "loader", "sweep": "workers"}
    error = "RuntimeError: Critical error in pipeline:\nError in CPU operator "
    failed["error"] = error + "x" * 200
    env = {"cpu_count": 2, "dali": "x", "torch": "y"}
    summary = {"environment": env, "loaders": [failed], "training": [], "scaling": []}
    (line,) = [x for x in report.format_table(summary).splitlines() if "failed:" in x]
    cell = line.split(" | ")[1]
    assert cell.startswith(f"failed: {' '.join(error.split())} x")
    assert len(cell) == len("failed: ") + report.CELL_CHARS and cell.endswith("...")


def test_a_report_whose_rows_all_failed_plots_without_a_warning(tmp_path: Path) -> None:
    # matplotlib warned "No artists with labels found to put in legend" under the table
    failed = {"loader": "dali", "device": "cpu", "mix": "off", "workers": 2, "batch_size": 8}
    failed |= {"kind": "loader", "sweep": "workers", "error": "ValueError: no"}
    env = {"cpu_count": 2, "dali": "x", "torch": "y"}
    summary = {"environment": env, "loaders": [failed], "training": [], "scaling": []}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report.plot_results(summary, tmp_path / "results.png")
    assert (tmp_path / "results.png").stat().st_size > 0
