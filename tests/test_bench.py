"""``python -m pipelines.bench``: its flags, defaults and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import build_image_folder, run_command, user_error_line

from pipelines.bench import cli


def test_results_go_to_runs_in_the_working_folder_by_default(tmp_path: Path) -> None:
    parser = cli.get_args_parser()
    out = cli.config_from_args(parser.parse_args(["--device", "cpu"])).out
    assert out.parent == Path("runs") and out.name.startswith("bench-")
    given = parser.parse_args(["--device", "cpu", "--out", str(tmp_path / "here")])
    assert cli.config_from_args(given).out == tmp_path / "here"


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
            ["--hw-decoder-loads", "0,1.2"],
            "argument --hw-decoder-loads: expected comma-separated numbers in [0, 1], got '0,1.2'",
        ),
        (
            ["--arch", "foo"],
            "--arch must be a torchvision classification model (alexnet, convnext_base, "
            "convnext_large, convnext_small, ...: torchvision.models.list_models(module="
            "torchvision.models)), got 'foo'",
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
    monkeypatch.setattr(cli, "run_benchmark", lambda *a: pytest.fail("the benchmark ran"))
    with pytest.raises(SystemExit) as caught:
        cli.main([a.format(tmp=tmp_path) for a in args] + ["--out", str(tmp_path / "out")])
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


def test_a_file_that_is_no_image_ends_the_command_with_one_line(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    # The dataset's statistics read every header before any measurement.
    root = build_image_folder(tmp_path / "data", classes=2, per_class=2, extras=False)
    bad = sorted(root.rglob("*.JPEG"))[0]
    bad.write_text("not an image\n")
    monkeypatch.setattr(
        "pipelines.bench.measure.measure_sections", lambda *a, **k: pytest.fail("it measured")
    )
    with pytest.raises(SystemExit) as caught:
        cli.main(["--data", str(root), "--device", "cpu", "--out", str(tmp_path / "out")])
    assert caught.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .startswith(
            f"python -m pipelines.bench: error: {str(bad)!r} is not a readable image "
            f"(UnidentifiedImageError). Run `python -m dali_cutmix.scan {root} --out DIR`"
        )
    )
    assert not (tmp_path / "out" / "results.json").exists()
