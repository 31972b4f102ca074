"""``python -m pipelines.soak`` and the loader's release of freed memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from dali_cutmix import loader as loader_module
from pipelines import soak


def test_slope_is_least_squares() -> None:
    assert soak._slope([1.0, 3.0, 5.0, 7.0]) == 2.0
    assert soak._slope([5.0, 5.0, 5.0]) == 0.0
    assert soak._slope([4.0]) == 0.0


def test_a_growth_figure_needs_three_readings_after_the_warm_up() -> None:
    # From one or two a slope of 0 was reported, as if it said the memory was steady.
    assert soak._summary([9.0, 1.0, 3.0, 5.0], warmup=1)["growth_mb_per_step"] == 2.0
    short = soak._summary([9.0, 1.0, 3.0], warmup=1)
    assert short["growth_mb_per_step"] is None
    assert short["growth_note"] == (
        "3 readings (1 of them warm-up); a growth figure needs 3 after the warm-up"
    )
    assert soak._summary([9.0], warmup=2)["growth_note"] == (
        "1 reading (1 of them warm-up); a growth figure needs 3 after the warm-up"
    )


def test_soak_reports_rss_per_epoch_and_resume(image_folder: Path, monkeypatch) -> None:
    monkeypatch.setattr(soak, "SPEC", soak.SPEC.__class__(num_classes=3, train_per_class=4))
    trims = []
    monkeypatch.setattr(loader_module, "_return_freed_memory", lambda: trims.append(1))
    report = soak.soak(image_folder, epochs=3, resumes=2, batch_size=4, crop_size=16, warmup=1)
    assert len(report["epochs"]["rss_mb"]) == 3 and len(report["resumes"]["rss_mb"]) == 2
    assert report["epochs"]["start_mb"] == report["epochs"]["rss_mb"][1]
    assert report["resumes"]["end_mb"] == report["resumes"]["rss_mb"][-1]
    assert report["epochs"]["growth_mb_per_step"] is None  # 2 readings after the warm-up
    assert all(r > 10 for r in report["epochs"]["rss_mb"])  # MiB: a real reading
    # Each resume releases the loader's pipeline and hands freed memory back.
    assert len(trims) == 2


def test_rejects_a_count_below_its_minimum(capsys) -> None:
    for argv, message in (
        (["--epochs", "0"], "argument --epochs: expected an int >= 1, got 0"),
        (["--resumes", "-1"], "argument --resumes: expected an int >= 0, got -1"),
    ):
        with pytest.raises(SystemExit) as caught:
            soak.main(argv)
        assert caught.value.code == 2
        assert message in capsys.readouterr().err


def test_no_resumes_measures_the_epochs_alone(image_folder: Path, monkeypatch) -> None:
    # --resumes 0 was refused ("expected an int >= 1"), where the epochs alone were wanted.
    monkeypatch.setattr(soak, "SPEC", soak.SPEC.__class__(num_classes=3, train_per_class=4))
    report = soak.soak(image_folder, epochs=3, resumes=0, batch_size=4, crop_size=16, warmup=0)
    assert len(report["epochs"]["rss_mb"]) == 3 and report["resumes"] is None
    assert soak.get_args_parser().parse_args(["--resumes", "0"]).resumes == 0
