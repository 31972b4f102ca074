"""``python -m pipelines.bench``: its flags, defaults and one-line errors."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import (
    LISTS_FOR_ANOTHER_FOLDER,
    build_image_folder,
    run_command,
    user_error_line,
)

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
        (  # it measured nothing, wrote empty results and a blank chart, and exited 0
            ["--sweeps", "training", "--skip-training"],
            "--sweeps (training) with --skip-training leaves nothing to measure; drop one of them",
        ),
        # each loader's row failed on it, once the dataset was made
        (["--crop-size", "100000"], "--crop-size must be at most 32768, got 100000"),
        (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
        (
            ["--sweeps", "augment,aug"],
            "--sweeps must be one or more of loaders, training, scaling, augment, got "
            "'augment,aug'",
        ),
        (
            ["--threads-list", "0,2"],
            "argument --threads-list: expected comma-separated integers in "
            f"[1, {max(16, 4 * (os.cpu_count() or 1))}], got '0,2'",
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
        (
            ["--file-list", "{tmp}/files.txt"],
            "--file-list must come with --data (the folder whose classes its labels number, "
            "and that its relative paths start from)",
        ),
        (
            ["--data", "{tmp}/imagenet/val", "--file-list", "{tmp}/files.txt"],
            "--file-list '{tmp}/files.txt' does not exist or is not a file; give a file of 'path "
            "label' lines (`python -m dali_cutmix.scan ROOT --out DIR` writes one for the "
            "dataset ROOT: DIR/files.txt).",
        ),
        # Each loader refused the batch in every row: a table of traceback lines, status 1.
        (
            ["--data", "{tmp}/imagenet/val", "--batch-size", "3"],
            "--batch-size 3: the 2 images measured give no batch of 3; lower --batch-size",
        ),
        (
            [
                "--data",
                "{tmp}/imagenet/val",
                "--batch-size",
                "2",
                "--sweeps",
                "scaling",
                "--batch-size-list",
                "1,3",
            ],
            "--batch-size-list 3: the 2 images measured give no batch of 3; lower "
            "--batch-size-list",
        ),
        (
            [
                "--data",
                "{tmp}/imagenet/val",
                "--batch-size",
                "9",
                "--sweeps",
                "training",
                "--train-batch-size",
                "3",
            ],
            "--train-batch-size 3: the 2 images measured give no batch of 3; lower "
            "--train-batch-size",
        ),
        (
            ["--classes", "2", "--per-class", "3", "--batch-size", "7"],
            "--batch-size 7: the 6 images measured give no batch of 7; lower --batch-size",
        ),
        (  # "lower --batch-size-list" read as a flag typed: it was the scaling sweep's default
            ["--data", "{tmp}/imagenet/val", "--batch-size", "1", "--sweeps", "scaling"],
            "--batch-size-list 64 (its default): the 2 images measured give no batch of 64; "
            "give a smaller --batch-size-list",
        ),
    ]
    + (
        []
        if torch.cuda.is_available()
        else [
            (["--device", "gpu"], "--device gpu needs CUDA, which this machine does not have"),
            # every GPU row failed, and the run exited 1
            (["--device", "both"], "--device both needs CUDA, which this machine does not have"),
        ]
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
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("out", "line"),
    [
        ("{tmp}/a-file", "--out {tmp}/a-file: not a folder"),
        (
            "/proc/bench",
            "--out /proc/bench: cannot be made, /proc takes no folder (No such file or directory)",
        ),
        ("/proc", "--out /proc: cannot be written (No such file or directory)"),
    ],
)
def test_an_out_folder_that_cannot_be_written_ends_the_command_before_the_work(
    tmp_path: Path, capsys, monkeypatch, out: str, line: str
) -> None:
    # They were a raw [Errno 17] File exists, or [Errno 2], after torch loaded.
    if out.startswith("/proc") and not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(cli, "run_benchmark", lambda *a: pytest.fail("the benchmark ran"))
    with pytest.raises(SystemExit) as caught:
        cli.main(["--device", "cpu", "--out", out.format(tmp=tmp_path)])
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
        cli.main(
            ["--data", str(root), "--device", "cpu", "--out", str(tmp_path / "out")]
            + ["--batch-size", "2", "--sweeps", "loaders"]
        )
    assert caught.value.code == 2
    # the benchmark's own way on: it has no --train-list, which the loaders' advice named;
    # the command's own flags kept (it was --data and --file-list alone: the default batch
    # of 32 was then larger than the good files, and --out went back to its default)
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m pipelines.bench: error: {str(bad)!r} is not a decodable image "
        "(its header: not an image format PIL knows). Find every bad file with: python -m "
        f"dali_cutmix.scan {root} --out DIR (DIR: any writable folder); then measure the good "
        f"ones with: python -m pipelines.bench --data {root} --device cpu --out "
        f"{tmp_path / 'out'} --batch-size 2 --sweeps loaders --file-list DIR/files.txt"
    )
    assert not (tmp_path / "out").exists()  # nothing measured, no folder left


@pytest.fixture
def unmeasured(tmp_path: Path, monkeypatch) -> tuple[Path, list[str]]:
    """A folder of 2 classes of 2 images, and the flags that measure its loaders section
    into ``tmp_path/out``; a measurement fails the test (the command must end before)."""
    root = build_image_folder(tmp_path / "data", classes=2, per_class=2, extras=False)
    monkeypatch.setattr(
        "pipelines.bench.measure.measure_sections", lambda *a, **k: pytest.fail("it measured")
    )
    argv = ["--data", str(root), "--device", "cpu", "--out", str(tmp_path / "out")]
    return root, [*argv, "--batch-size", "2", "--sweeps", "loaders"]


def test_the_generated_set_s_sizes_beside_data_are_refused(
    unmeasured, capsys, monkeypatch, caplog
) -> None:
    # --data tiny --classes 5 measured tiny's 2 classes without a word
    _, argv = unmeasured
    refused = {
        "--classes sizes the generated set, which --data replaces (its folder is measured as "
        "it is); leave it out": ["--classes", "5"],
        "--classes and --per-class size the generated set, which --data replaces (its folder "
        "is measured as it is); leave them out": ["--per-class", "9", "--classes", "5"],
    }
    for line, sizes in refused.items():
        with pytest.raises(SystemExit) as caught:
            cli.main([*argv, *sizes])
        assert caught.value.code == 2
        said = capsys.readouterr().err.splitlines()[-1]
        assert said == f"python -m pipelines.bench: error: {line}"
    typed = cli.typed_dests([*argv, "--hw-decoder-loads", "0.5"])
    assert typed == {"data", "device", "out", "batch_size", "sweeps", "hw_decoder_loads"}
    # the GPU decoder's share on a CPU-only run: told, not refused (one command for both)
    monkeypatch.setattr(cli, "_measure_all", lambda *a: 0)
    caplog.set_level(logging.WARNING, logger="pipelines.bench")
    assert cli.main([*argv, "--hw-decoder-loads", "0.5"]) == 0
    assert caplog.messages == [
        "--hw-decoder-loads is not used: it sets DALI's decoder on the GPU, and this run "
        "measures DALI on the CPU only (--device cpu)"
    ]


def test_a_file_dali_does_not_decode_ends_the_command_before_any_measurement(
    unmeasured, tmp_path: Path, capsys
) -> None:
    # A GIF named .JPEG, and a .bmp that holds one (ImageFolder lists it, the statistics
    # looked only at .jpg/.jpeg/.png): PIL read their headers, so the run went through the
    # torchvision rows and stopped at its first DALI measurement, minutes later.
    from PIL import Image

    root, argv = unmeasured
    for bad in (root / "n00000000" / "a.JPEG", root / "n00000001" / "b.bmp"):
        Image.new("RGB", (8, 8)).save(bad, format="GIF")
        with pytest.raises(SystemExit) as caught:
            cli.main(argv)
        assert caught.value.code == 2
        line = capsys.readouterr().err.splitlines()[-1]
        assert line.startswith(
            f"python -m pipelines.bench: error: {str(bad)!r} is not a decodable image "
            "(its header: format GIF is not one DALI decodes). Find every bad file with: "
        )
        assert not (tmp_path / "out").exists()
        bad.unlink()


@pytest.mark.slow
def test_a_truncated_file_stops_the_run_at_its_first_measurement_in_one_line(
    tmp_path: Path, capsys
) -> None:
    # Its header reads, so the statistics let it through: every measurement then failed
    # with a traceback's last lines for its table cell, and the run wrote empty results.
    root = build_image_folder(tmp_path / "data", classes=2, per_class=4, extras=False)
    bad = sorted(root.rglob("*.JPEG"))[3]
    bad.write_bytes(bad.read_bytes()[:-200])
    argv = ["--data", str(root), "--device", "cpu", "--out", str(tmp_path / "out")]
    argv += ["--sweeps", "loaders", "--batch-size", "4", "--workers", "1", "--warmup", "1"]
    with pytest.raises(SystemExit) as caught:
        cli.main([*argv, "--windows", "1", "--window-batches", "1"])
    assert caught.value.code == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith(f"python -m pipelines.bench: error: {str(bad)!r} is not a decodable ")
    assert line.endswith(
        f"Find every bad file with: python -m dali_cutmix.scan {root} --out DIR (DIR: any "
        f"writable folder); then measure the good ones with: python -m pipelines.bench "
        f"{' '.join(argv)} --windows 1 --window-batches 1 --file-list DIR/files.txt"
    )
    assert not (tmp_path / "out" / "results.json").exists()


def test_the_scan_list_the_bad_file_line_names_is_what_the_benchmark_measures(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    from dali_cutmix.scan import main as scan

    root = build_image_folder(tmp_path / "data", classes=2, per_class=2, extras=False)
    bad = root / "n00000001" / "img_1_1.JPEG"
    bad.write_text("not an image\n")
    assert scan([str(root), "--out", str(tmp_path / "scan")]) == 1  # 1: bad files found
    measured = []

    def measure_sections(sections, run, so_far):
        measured.extend(spec for specs in sections.values() for spec in specs)
        raise KeyboardInterrupt  # the rows are not needed; the line it ends with is

    monkeypatch.setattr("pipelines.bench.measure.measure_sections", measure_sections)
    listed = tmp_path / "scan" / "files.txt"
    argv = ["--data", str(root), "--file-list", str(listed), "--device", "cpu"]
    argv += ["--batch-size", "2"]
    assert cli.main([*argv, "--sweeps", "loaders", "--out", str(tmp_path / "out")]) == 130
    assert {spec["file_list"] for spec in measured} == {str(listed)}
    assert {spec["root"] for spec in measured} == {str(root)}
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m pipelines.bench: aborted by Ctrl-C; nothing was written to {tmp_path}/out"
    )
    assert not (tmp_path / "out").exists()
    # a list of the user's own that names the bad file: the line to delete
    own = tmp_path / "mine.txt"
    own.write_text(f"n00000000/img_0_0.JPEG 0\n{bad.relative_to(root)} 1\n")
    with pytest.raises(SystemExit) as caught:
        cli.main(
            ["--data", str(root), "--file-list", str(own), "--out", str(tmp_path / "out")]
            + ["--batch-size", "2", "--sweeps", "loaders"]
        )
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m pipelines.bench: error: {str(bad)!r} is not a decodable image "
        f"(its header: not an image format PIL knows). It is listed in --file-list {own}: "
        "delete its line there."
    )


def test_a_generated_set_its_disk_cannot_hold_is_one_line_with_benchs_own_advice(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    # generate()'s ValueError was a traceback (status 1) advising synthetic's flags.
    from dali_cutmix import synthetic

    monkeypatch.setenv("DALI_CUTMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(synthetic, "_free_bytes", lambda path: 10**6)
    monkeypatch.setattr(synthetic, "estimated_bytes", lambda spec: 900_000)
    monkeypatch.setattr("pipelines.bench.measure.measure_sections", lambda *a: pytest.fail())
    argv = ["--device", "cpu", "--classes", "2", "--per-class", "4", "--batch-size", "2"]
    with pytest.raises(SystemExit) as caught:
        cli.main([*argv, "--sweeps", "loaders", "--out", str(tmp_path / "out")])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m pipelines.bench: error: {tmp_path}/cache/bench-2x4: 10 images need about "
        "0.9 MB, and its disk has 1.0 MB free (the check asks for 1.2 x the estimate); free "
        "space there, give $DALI_CUTMIX_CACHE a folder on a disk with more room, or lower "
        "--classes or --per-class"
    )
    assert not (tmp_path / "out").exists()
    # a cache folder that is a file: its source named, not a traceback
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("DALI_CUTMIX_CACHE", str(tmp_path / "a-file"))
    with pytest.raises(SystemExit) as caught:
        cli.main([*argv, "--sweeps", "loaders", "--out", str(tmp_path / "out")])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m pipelines.bench: error: the cache folder ($DALI_CUTMIX_CACHE) "
        f"{tmp_path}/a-file: not a folder"
    )


def test_a_stopped_run_says_where_its_rows_so_far_are(tmp_path: Path, capsys, monkeypatch) -> None:
    # It said "nothing was written" beside the results.partial.json it had written.
    root = build_image_folder(tmp_path / "data", classes=2, per_class=2, extras=False)

    def measure_sections(sections, run, so_far):
        so_far({"loaders": [{"images_per_s": 1.0}]})
        raise KeyboardInterrupt

    monkeypatch.setattr("pipelines.bench.measure.measure_sections", measure_sections)
    out = tmp_path / "out"
    argv = ["--data", str(root), "--device", "cpu", "--sweeps", "loaders", "--out", str(out)]
    assert cli.main([*argv, "--batch-size", "2"]) == 130
    partial = out / "results.partial.json"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m pipelines.bench: aborted by Ctrl-C; the rows measured so far are in {partial}"
    )
    assert json.loads(partial.read_text())["loaders"] == [{"images_per_s": 1.0}]


@pytest.mark.parametrize(
    ("stop", "status", "line"),
    [
        (lambda: signal.raise_signal(signal.SIGINT), 130, "aborted by Ctrl-C"),
        (lambda: signal.raise_signal(signal.SIGTERM), 143, "aborted by SIGTERM"),
    ],
)
def test_a_signal_during_the_checks_ends_it_in_one_line(
    tmp_path: Path, capsys, monkeypatch, stop, status: int, line: str
) -> None:
    # Before the measurements the checks take seconds (torchvision's import, listing --data):
    # a Ctrl-C there was a KeyboardInterrupt's traceback, a SIGTERM status 143 without a word.
    def unhandled(signum, frame):
        raise AssertionError("SIGTERM reached the default handler: the process died silently")

    before = signal.signal(signal.SIGTERM, unhandled)
    monkeypatch.setattr(cli, "check_arch", lambda arch: stop())
    monkeypatch.setattr(cli, "run_benchmark", lambda *a: pytest.fail("the benchmark ran"))
    try:
        assert cli.main(["--device", "cpu", "--out", str(tmp_path / "out")]) == status
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped as a KeyboardInterrupt (a traceback)")
    finally:
        signal.signal(signal.SIGTERM, before)
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m pipelines.bench: {line}; nothing was written"
    )
    assert not (tmp_path / "out").exists()


def test_a_failed_measurement_is_said_by_its_cause_on_one_line() -> None:
    # A DataLoader worker's error: the cell read "RuntimeError: Caught RuntimeError in
    # DataLoader worker proce", cut before the cause
    from torch._utils import ExceptionWrapper

    try:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: 30000000000 bytes")
    except RuntimeError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(RuntimeError) as raised:
        wrapped.reraise()
    assert cli.failure_line(raised.value) == (
        "RuntimeError: DefaultCPUAllocator: can't allocate memory: 30000000000 bytes"
    )
    assert cli.failure_line(ValueError("Critical error in pipeline:\n  Error in CPU op")) == (
        "ValueError: Critical error in pipeline: Error in CPU op"
    )


@pytest.mark.parametrize(("entry", "advice"), LISTS_FOR_ANOTHER_FOLDER, ids=["beyond", "missing"])
def test_a_list_for_another_folder_is_answered_with_the_data_flag(
    tmp_path: Path, capsys, entry: str, advice: str
) -> None:
    # The library's advice said "as the root, or no root"; bench refuses --file-list alone
    root = build_image_folder(tmp_path / "train", classes=2, per_class=2, extras=False)
    listed = tmp_path / "files.txt"
    listed.write_text(f"{entry}\n")
    argv = ["--data", str(root), "--file-list", str(listed), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as caught:
        cli.main([*argv, "--device", "cpu", "--batch-size", "1", "--sweeps", "loaders"])
    assert caught.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.endswith(f"; {advice.format(root=root)}.") and f"--file-list '{listed}'" in last
    assert "as the root" not in last and "no root" not in last
