"""``python -m pipelines.soak`` and the loader's release of freed memory."""

from __future__ import annotations

import json
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


def test_a_ctrl_c_keeps_the_readings_taken_so_far(image_folder: Path, monkeypatch) -> None:
    # They were lost: "aborted by Ctrl-C; no report was written" after an hour of soak.
    monkeypatch.setattr(soak, "SPEC", soak.SPEC.__class__(num_classes=3, train_per_class=4))
    readings = iter([100.0, 101.0, 102.0])

    def reading() -> float:
        value = next(readings, None)
        if value is None:
            raise KeyboardInterrupt
        return value

    monkeypatch.setattr(soak, "rss_mb", reading)
    with pytest.raises(soak.SoakStopped) as caught:
        soak.soak(image_folder, epochs=2, resumes=5, batch_size=4, crop_size=16, warmup=0)
    report = caught.value.report
    assert report["stopped"] == "by Ctrl-C after 2 of 2 epochs and 1 of 5 resumes"
    assert report["epochs"]["rss_mb"] == [100.0, 101.0]
    assert report["resumes"]["rss_mb"] == [102.0]
    assert not caught.value.sigterm and isinstance(caught.value, KeyboardInterrupt)


@pytest.mark.parametrize("sigterm, status", [(False, 130), (True, 143)])
def test_a_stopped_soak_prints_and_writes_its_readings_and_says_so(
    tmp_path: Path, monkeypatch, capsys, sigterm: bool, status: int
) -> None:
    partial = {"epochs": {"rss_mb": [100.0]}, "resumes": None, "stopped": "by ... after 1"}

    def stopped(*args, **kwargs):
        raise soak.SoakStopped(dict(partial), sigterm=sigterm)

    monkeypatch.setattr(soak, "generate", lambda folder, spec: tmp_path)
    monkeypatch.setattr(soak, "soak", stopped)
    out = tmp_path / "soak.json"
    argv = ["--cache-dir", str(tmp_path), "--out", str(out)]
    assert soak.main(argv) == status
    captured = capsys.readouterr()
    written = json.loads(out.read_text())
    assert written == partial | {"command": f"python -m pipelines.soak {' '.join(argv)}"}
    assert json.loads(captured.out) == written
    assert captured.err.splitlines()[-1] == (
        f"python -m pipelines.soak: aborted by {'SIGTERM' if sigterm else 'Ctrl-C'}; the "
        f"readings taken so far are in {out} and above"
    )
