"""The shared handling of user errors at every command's entry point."""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib
from conftest import build_image_folder, run_command, signalled_after, user_error_line

from dali_cutmix.cli import (
    add_count,
    add_shared_flags,
    command_line,
    dali_memory_named,
    exit_on_user_error,
    from_flags,
    path_arg,
    positive_int,
    replace_names,
    report_user_error,
    start_command,
    write_json,
)
from dali_cutmix.files import DatasetError
from dali_cutmix.procs import Terminated
from dali_cutmix.synthetic import SyntheticSpec

REPO = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tool")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mix-prob", type=float, default=1.0)
    parser.add_argument("--out", default="o")
    return parser


def _exit_line(error: Exception, capsys, **kwargs) -> tuple[int, str]:
    with pytest.raises(SystemExit) as caught, exit_on_user_error(_parser(), **kwargs):
        raise error
    return caught.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("message", "line"),
    [
        ("batch_size must be >= 1, got 0", "--batch-size must be >= 1, got 0"),
        ("seed must be an int >= 0, got -3", "--seed must be an int >= 0, got -3"),
        # fields names a setting whose field is named unlike its flag
        ("prob must be in [0.0, 1.0], got 3.0", "--mix-prob must be in [0.0, 1.0], got 3.0"),
        # inside a sentence only snake_case names are settings; "out" and "seed" are words here
        (
            "resize_size (3) must be >= batch_size (4): out of range",
            "resize_size (3) must be >= --batch-size (4): out of range",
        ),
        ("a seed of 'batch_size' in /d/batch_size/x", "a seed of 'batch_size' in /d/batch_size/x"),
        ("first line\n  second line\n", "first line second line"),
    ],
)
def test_a_value_error_ends_with_one_line_naming_the_flag(message: str, line: str, capsys) -> None:
    code, err = _exit_line(ValueError(message), capsys, fields={"prob": "--mix-prob"})
    assert code == 2
    assert err == f"python -m tool: error: {line}\n"


def test_a_dataset_error_keeps_its_paths(capsys) -> None:
    code, err = _exit_line(DatasetError("seed_data/batch_size has no class folders"), capsys)
    assert (code, err) == (2, "python -m tool: error: seed_data/batch_size has no class folders\n")


def test_an_os_error_naming_a_path_is_a_user_error(capsys) -> None:
    error = FileNotFoundError(2, "No such file or directory", "/nope/out")
    code, err = _exit_line(error, capsys, status=1)
    assert (code, err) == (
        1,
        "python -m tool: error: [Errno 2] No such file or directory: '/nope/out'\n",
    )


@pytest.mark.parametrize(
    "error", [RuntimeError("DALI failed"), KeyError("x"), BrokenPipeError(32, "Broken pipe")]
)
def test_other_errors_pass_through_with_their_traceback(error: Exception, capsys) -> None:
    with pytest.raises(type(error)) as caught, exit_on_user_error(_parser()):
        raise error
    assert caught.value is error
    assert capsys.readouterr().err == ""


def test_a_command_may_name_the_flags_its_own_way(capsys) -> None:
    code, err = _exit_line(ValueError("seed must be >= 0"), capsys, name_flags=str.upper)
    assert (code, err) == (2, "python -m tool: error: SEED MUST BE >= 0\n")


def test_report_user_error_returns_the_status_and_names_flags_in_configuration_errors(
    capsys,
) -> None:
    parser = _parser()
    assert report_user_error(parser, ValueError("batch_size must be >= 1, got 0"), status=4) == 4
    assert report_user_error(parser, "batch_size of '/d' is\n  not a folder") == 2
    assert capsys.readouterr().err == (
        "python -m tool: error: --batch-size must be >= 1, got 0\n"
        "python -m tool: error: batch_size of '/d' is not a folder\n"
    )


def _dashed(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_replace_names_replaces_settings_not_prose() -> None:
    message = "lr must be > 0; warmup_epochs (3) must be <= epochs (2); the epochs ran"
    assert replace_names(message, ["lr", "epochs", "warmup_epochs"], _dashed) == (
        "--lr must be > 0; --warmup-epochs (3) must be <= --epochs (2); the epochs ran"
    )
    assert replace_names(message, [], _dashed) == message


def test_from_flags_takes_the_flags_named_like_the_fields() -> None:
    args = argparse.Namespace(classes=3, seed=5, quality=80, out="x")
    assert from_flags(SyntheticSpec, args, num_classes=args.classes, seed=7) == SyntheticSpec(
        num_classes=3, seed=7, quality=80
    )


def test_shared_flags_keep_their_order_wording_and_default() -> None:
    parser = argparse.ArgumentParser()
    add_shared_flags(parser, threads=2, batch_size=16, help={"batch_size": "samples in the grid"})
    add_count(parser, "--epochs", 3, "epochs to run", type=int)
    flags = [(a.option_strings[-1], a.default, a.help) for a in parser._actions[1:]]
    assert flags == [
        ("--threads", 2, "DALI CPU threads (default: %(default)s)"),
        ("--batch-size", 16, "samples in the grid (default: %(default)s)"),
        ("--epochs", 3, "epochs to run (default: %(default)s)"),
    ]
    assert parser.parse_args(["--epochs", "0"]).epochs == 0  # int: checked by a configuration
    with pytest.raises(SystemExit):
        parser.parse_args(["--threads", "0"])


def test_write_json_makes_the_folder_and_ends_the_file_with_a_newline(tmp_path) -> None:
    path = write_json(tmp_path / "a" / "r.json", {"x": [1]})
    assert path == tmp_path / "a" / "r.json"
    assert path.read_text() == '{\n  "x": [\n    1\n  ]\n}\n'


def test_command_line_is_the_command_as_typed(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/x/soak.py", "--epochs", "3"])
    assert command_line("pipelines.soak", None) == "python -m pipelines.soak --epochs 3"
    assert command_line("pipelines.soak", ["--out", "o"]) == "python -m pipelines.soak --out o"


def test_positive_int() -> None:
    assert positive_int("3") == 3
    for text, message in (("0", "expected an int >= 1, got 0"), ("x", "got 'x'")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            positive_int(text)


# ------------------------------------------------------------------------- every command's --help

COMMANDS = {  # program name -> the module whose get_args_parser() builds its parser
    "pipelines.bench": "pipelines.bench.cli",
    "pipelines.graph_cost": "pipelines.graph_cost",
    "pipelines.soak": "pipelines.soak",
    "pipelines.gpu_check": "pipelines.gpu_check",
    "dali_cutmix.preview": "dali_cutmix.preview",
    "dali_cutmix.scan": "dali_cutmix.scan",
    "dali_cutmix.synthetic": "dali_cutmix.synthetic",
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_has_one_line_of_help_and_its_default_once(command: str) -> None:
    parser = importlib.import_module(COMMANDS[command]).get_args_parser()
    assert parser.prog == f"python -m {command}"
    flags = [
        action
        for action in parser._actions  # argparse has no public list of its actions
        if action.option_strings and action.help != argparse.SUPPRESS
    ]
    assert len(flags) > 1
    for action in flags:
        flag = max(action.option_strings, key=len)
        assert action.help and "\n" not in action.help, flag
        shown = action.help.count("(default:")
        assert shown <= 1, flag
        if action.default not in (None, False, argparse.SUPPRESS):
            assert shown == 1, flag  # a value the user does not give is said once
    text = parser.format_help()
    assert "(default: None)" not in text
    assert text.count("(default:") == sum(a.help.count("(default:") for a in flags)


@pytest.mark.parametrize(
    ("command", "statuses"),
    [
        ("dali_cutmix.scan", "0 every file decodes, 1 some do not (listed), 2 bad usage"),
        ("dali_cutmix.preview", "0 the grid is written, 2 bad usage or a file that is no image"),
        ("pipelines.bench", "0 every row measured, 1 some rows failed (their cells say why), 2"),
        ("dali_cutmix.synthetic", "0 the folder is written (or reused), 2 bad usage"),
        ("pipelines.val_parity", "0 measured (the report is printed, and written with --out), 2"),
        ("pipelines.soak", "0 the soak ran to its end, 2 bad usage, 130 Ctrl-C, 143 SIGTERM"),
        ("pipelines.graph_cost", "0 measured, 2 bad usage (or the batch does not fit in memory)"),
        ("pipelines.gpu_check", "0 every step passed, 1 some steps failed (gpu_check.json says"),
    ],
)
def test_every_commands_help_ends_with_its_exit_statuses(command: str, statuses: str) -> None:
    # bench's --help said nothing of them (the README did); scan's left out 130 and 143;
    # synthetic's, val_parity's, soak's, graph_cost's and gpu_check's had no epilog
    module = COMMANDS.get(command, command)
    epilog = importlib.import_module(module).get_args_parser().epilog
    assert epilog.startswith(f"exit status: {statuses}"), epilog
    assert "130 Ctrl-C, 143 SIGTERM" in epilog


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_loads_neither_torch_nor_dali_beyond_the_package(command: str) -> None:
    """``--help`` and a bad flag answer before the heavy libraries load: building the
    parser imports nothing heavy that ``import dali_cutmix`` itself does not."""
    script = (
        "import importlib, sys\n"
        "import dali_cutmix\n"
        "before = set(sys.modules)\n"
        f"importlib.import_module({COMMANDS[command]!r}).get_args_parser()\n"
        "heavy = ('torch', 'torchvision', 'nvidia', 'matplotlib')\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("command", sorted(COMMANDS) + ["train"])
def test_a_prefix_of_a_flag_is_refused_not_taken_for_it(command: str, capsys) -> None:
    # argparse's default takes --epoch for --epochs and --mixup for --mixup-alpha.
    module = "train.cli" if command == "train" else COMMANDS[command]
    parser = importlib.import_module(module).get_args_parser()
    flag = max((f for a in parser._actions for f in a.option_strings), key=len)
    needed = [  # what the command requires, so that only the prefix is wrong
        arg
        for a in parser._actions
        if a.required
        for arg in ([a.option_strings[0], "x"] if a.option_strings else ["x"])
    ]
    with pytest.raises(SystemExit) as caught:
        parser.parse_args([*needed, flag[:-1], "1"])
    assert caught.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith(f"error: unrecognized arguments: {flag[:-1]} 1")
    )


def _path_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.type in (Path, path_arg)]


@pytest.mark.parametrize("command", sorted(COMMANDS) + ["train"])
def test_an_empty_path_is_refused_naming_its_flag(command: str, capsys) -> None:
    # Path("") is the working folder: scan ROOT --out "" wrote its report there, and
    # --data "" measured or previewed whatever the working folder held (train's
    # --output-dir "" and --cache-dir "" wrote there too)
    module = "train.cli" if command == "train" else COMMANDS[command]
    parser = importlib.import_module(module).get_args_parser()
    paths = _path_actions(parser)
    assert paths and all(a.type is path_arg for a in paths), [a.dest for a in paths]
    for action in paths:
        argv = [
            arg
            for a in parser._actions
            if a.required or a is action
            for arg in (
                [a.option_strings[0], "" if a is action else "x"]
                if a.option_strings
                else ["" if a is action else "x"]
            )
        ]
        with pytest.raises(SystemExit) as caught:
            parser.parse_args(argv)
        assert caught.value.code == 2
        name = action.option_strings[0] if action.option_strings else action.dest
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"{parser.prog}: error: argument {name}: an empty path; give a path "
            "(. for the working folder)"
        )


def test_a_report_path_is_checked_before_the_work_and_nothing_is_left(tmp_path) -> None:
    from dali_cutmix.cli import check_report_path

    check_report_path(tmp_path / "new" / "r.json")  # a folder to be made: probed, not made
    check_report_path(tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError) as caught:
        check_report_path(tmp_path)
    assert str(caught.value) == f"--out {tmp_path} is a folder or not writable; give a file"
    fifo = tmp_path / "fifo.json"  # graph_cost --out FIFO replaced the FIFO by its report
    os.mkfifo(fifo)
    with pytest.raises(ValueError) as caught:
        check_report_path(fifo)
    assert str(caught.value) == (
        f"--out {fifo} is not a regular file (a folder, a FIFO, a device or a socket); give a file"
    )
    fifo.unlink()
    if Path("/proc/self").is_dir():  # root may write anywhere else; /proc takes no file
        with pytest.raises(ValueError) as caught:
            check_report_path(Path("/proc/r.json"))
        assert str(caught.value) == (
            "--out /proc/r.json cannot be written (No such file or directory); give a file in "
            "another folder"
        )
        with pytest.raises(ValueError) as caught:
            check_report_path(Path("/proc/x/r.json"), "--report")
        assert str(caught.value) == (
            "--report /proc/x/r.json: its folder /proc/x: cannot be made, /proc takes no folder "
            "(No such file or directory)"
        )


# --------------------------------------------------------------------- every command's bad value

BAD_VALUES = [  # module, a bad value (in a tmp folder) and the line that answers it
    ("train", ["--epochs", "0"], "--epochs must be an int >= 1, got 0"),
    ("train", ["-j", "0"], "-j must be an int >= 1, got 0"),
    (
        "train",
        ["--device", "cpu", "--amp", "fp16"],
        "--amp fp16 needs a GPU (it uses a GradScaler); use bf16 or off",
    ),
    ("train", ["--amp", "fp16", "--mix-prob", "2"], "--mix-prob must be in [0.0, 1.0], got 2.0"),
    ("pipelines.bench", ["--classes", "0", "--out", "{tmp}/o"], "--classes must be >= 1, got 0"),
    (
        "pipelines.bench",
        ["--device", "both", "--windows", "0"],
        "--windows must be >= 1, got 0",
    ),
    (
        "pipelines.graph_cost",
        ["--batch-size", "0"],
        "argument --batch-size: expected an int >= 1, got 0",
    ),
    (  # DALI's OverflowError (int32) or TypeError, a traceback
        "pipelines.graph_cost",
        ["--batch-size", "2147483648"],
        "argument --batch-size: expected an int from 1 to 2147483647, got 2147483648",
    ),
    (  # numpy's OverflowError at 2**63; 100000 was taken where every other command refused it
        "pipelines.graph_cost",
        ["--crop-size", "100000"],
        "argument --crop-size: expected an int from 1 to 32768, got 100000",
    ),
    (
        "pipelines.val_parity",
        ["{tmp}/data", "--crop-size", "9223372036854775808"],
        "argument --crop-size: expected an int from 1 to 32768, got 9223372036854775808",
    ),
    (  # it wrote r.json into a class folder, which the next run listed and left out
        "pipelines.val_parity",
        ["{tmp}/data", "--out", "{tmp}/data/n00000001/r.json"],
        "--out {tmp}/data/n00000001/r.json is inside the folder compared {tmp}/data, where what "
        "it writes would be read as part of the set (a folder as a class, an image as a "
        "sample); give a place outside it",
    ),
    ("pipelines.soak", ["--epochs", "0"], "argument --epochs: expected an int >= 1, got 0"),
    ("pipelines.soak", ["--out", "{tmp}"], "--out {tmp} is a folder or not writable; give a file"),
    ("pipelines.gpu_check", ["--threads", "0"], "argument --threads: expected an int >= 1, got 0"),
    (
        "dali_cutmix.preview",
        ["--data", "{tmp}/data", "--mix-prob", "3", "--out", "{tmp}/p.png"],
        "--mix-prob must be in [0.0, 1.0], got 3.0",
    ),
    (
        "dali_cutmix.scan",
        ["{tmp}/data", "--out", "{tmp}/o", "--workers", "0"],
        "argument --workers: expected an int >= 1, got 0",
    ),
    ("dali_cutmix.synthetic", ["{tmp}/s", "--classes", "0"], "--classes must be >= 1, got 0"),
    (  # a file where a folder is needed: [Errno 17] File exists, or the lock file's Errno
        "dali_cutmix.synthetic",
        ["{tmp}/data/n00000000/img_0_0.JPEG/s"],
        "{tmp}/data/n00000000/img_0_0.JPEG/s: its folder {tmp}/data/n00000000/img_0_0.JPEG: "
        "not a folder",
    ),
    (
        "pipelines.soak",
        ["--cache-dir", "{tmp}/data/n00000000/img_0_0.JPEG"],
        "--cache-dir {tmp}/data/n00000000/img_0_0.JPEG: not a folder",
    ),
]


@pytest.mark.parametrize(("command", "argv", "line"), BAD_VALUES)
def test_a_bad_value_is_answered_before_torch_or_dali_loads(
    command: str, argv: list[str], line: str, tmp_path
) -> None:
    """Loading torch and DALI takes seconds: every value that needs neither is checked first
    (``--device auto``, ``--amp auto`` and train's workers are resolved after)."""
    build_image_folder(tmp_path / "data", classes=2, per_class=1, extras=False)
    argv = [a.format(tmp=tmp_path) for a in argv]
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", command, *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == f"python -m {command}: error: " + line.format(
        tmp=tmp_path
    )
    imported = {row.split("|")[-1].strip() for row in done.stderr.splitlines() if "|" in row}
    assert not {m for m in imported if m.split(".")[0] in ("torch", "torchvision")}
    assert not {m for m in imported if m.startswith("nvidia.dali")}


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("dali_cutmix.preview", ["--out", "{tmp}/p.png"]),
        ("pipelines.bench", ["--device", "cpu", "--out", "{tmp}/b"]),
        ("pipelines.gpu_check", ["--out", "{tmp}/g"]),
    ],
)
def test_a_cache_folder_that_is_a_file_is_named_with_where_it_came_from(
    command: str, argv: list[str], tmp_path: Path
) -> None:
    # It was a raw [Errno 17] File exists (preview), a traceback (bench, gpu_check).
    (tmp_path / "cache").write_text("")
    done = subprocess.run(
        [sys.executable, "-m", command, *(a.format(tmp=tmp_path) for a in argv)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DALI_CUTMIX_CACHE": str(tmp_path / "cache")},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == (
        f"python -m {command}: error: the cache folder ($DALI_CUTMIX_CACHE) {tmp_path}/cache: "
        "not a folder"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # nothing else was made


@pytest.mark.parametrize(
    ("argv0", "scan", "train"),
    [
        ("/venv/bin/dali-cutmix-train", "dali-cutmix-scan", "dali-cutmix-train"),
        ("/repo/train/__main__.py", "python -m dali_cutmix.scan", "python -m train"),
    ],
    ids=["console-script", "python-m"],
)
def test_advice_names_the_commands_the_way_the_user_starts_them(
    monkeypatch: pytest.MonkeyPatch, argv0: str, scan: str, train: str
) -> None:
    from dali_cutmix.files import scan_hint
    from train.status import DataFailure

    monkeypatch.setattr(sys, "argv", [argv0, "--epochs", "2"])
    assert scan_hint("/data/my set", train=False) == (
        f"Run `{scan} '/data/my set' --out DIR` (DIR: any writable folder) to find every bad "
        "file and write a list of the good ones, then read that list: "
        f'`make_loader(..., file_list="DIR/files.txt")`, or `{train} ... --val-list '
        "DIR/files.txt`."
    )
    failure = DataFailure(
        "x.JPEG does not decode.",
        split="train",
        folder=Path("/d/train"),
        scan_dir=Path("/s"),
        checkpoint=None,
        world_size=1,
    )
    assert failure.message(["--epochs", "2"]) == (
        f"x.JPEG does not decode. Find every bad file with: {scan} /d/train --out /s; "
        f"then run again with: {train} --epochs 2 --train-list /s/files.txt"
    )


def test_a_bad_file_of_the_users_own_list_is_deleted_from_that_list() -> None:
    # Scanning the folder would replace the list's chosen subset by the whole folder, and
    # the command repeated with a second --train-list.
    from train.status import DataFailure

    def failure(checkpoint: Path | None) -> DataFailure:
        return DataFailure(
            "x.JPEG does not decode.",
            split="train",
            folder=Path("/d/train"),
            scan_dir=Path("/s"),
            checkpoint=checkpoint,
            world_size=1,
            file_list=Path("/lists/subset.txt"),
        )

    argv = ["--data", "/d", "--train-list", "/lists/subset.txt"]
    assert failure(None).message(argv) == (
        "x.JPEG does not decode. It is listed in --train-list /lists/subset.txt: delete its "
        "line there; then run the same command again: python -m train --data /d --train-list "
        "/lists/subset.txt"
    )
    assert failure(Path("/run/checkpoint.pth")).message(argv) == (
        "x.JPEG does not decode. It is listed in --train-list /lists/subset.txt: delete its "
        "line there; then continue with: python -m train --resume /run/checkpoint.pth "
        "--train-list /lists/subset.txt"
    )


def test_interruptible_answers_ctrl_c_in_one_line_and_sigterm_through_finally(capsys) -> None:
    from dali_cutmix.cli import interruptible

    parser = argparse.ArgumentParser(prog="python -m tool")

    def ctrl_c() -> int:
        raise KeyboardInterrupt

    assert interruptible(parser, "nothing was written", ctrl_c) == 130
    assert capsys.readouterr().err == "python -m tool: aborted by Ctrl-C; nothing was written\n"
    cleaned = []

    def terminated() -> int:
        try:
            signal.raise_signal(signal.SIGTERM)
            time.sleep(5)  # the handler raises at once
            return 0
        finally:
            cleaned.append(True)

    # SIGTERM: through the finally clauses, then the same line (it was no word at all)
    assert interruptible(parser, lambda: "nothing was written", terminated) == 143
    assert cleaned == [True]
    assert capsys.readouterr().err == "python -m tool: aborted by SIGTERM; nothing was written\n"
    assert interruptible(parser, "unused", lambda: 7) == 7


@pytest.mark.parametrize(
    ("stop", "status", "said"), [(KeyboardInterrupt, 130, "Ctrl-C"), (Terminated, 143, "SIGTERM")]
)
def test_a_stop_inside_an_extension_modules_import_is_a_stop(
    capsys, stop: type, status: int, said: str
) -> None:
    # DALI's backend_impl, interrupted as it loaded, raised "ImportError: initialization
    # failed" from the stop: two tracebacks and status 1 (timeout -s TERM 1.3 python -m train)
    from dali_cutmix.cli import interruptible, stop_behind

    def importing() -> int:
        try:
            raise stop(143) if stop is Terminated else stop()
        except BaseException as cause:
            raise ImportError("initialization failed") from cause

    parser = argparse.ArgumentParser(prog="python -m tool")
    assert interruptible(parser, "nothing was written", importing) == status
    assert capsys.readouterr().err == f"python -m tool: aborted by {said}; nothing was written\n"
    other = ImportError("no module named x")
    assert stop_behind(other) is None
    with pytest.raises(ImportError, match="no module named x"):  # not a stop: its traceback

        def failing() -> int:
            raise other

        interruptible(parser, "unused", failing)


@pytest.mark.parametrize("module", ["pipelines.graph_cost", "pipelines.val_parity"])
def test_a_thread_count_beyond_the_machine_is_refused_in_one_line(module: str, tmp_path) -> None:
    # --threads 100000 aborted the process in DALI's thread pool (SIGABRT, status 134).
    args = ["--threads", "100000"] + ([str(tmp_path)] if module.endswith("val_parity") else [])
    done = run_command(module, *args)
    limit, cpus = max(16, 4 * (os.cpu_count() or 1)), os.cpu_count() or 1
    assert user_error_line(done) == (
        f"python -m {module}: error: argument --threads: expected an int >= 1 and at most "
        f"{limit} (the larger of 16 and 4 per CPU of this machine's {cpus}), got 100000"
    )


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("dali_cutmix.scan", ["{tmp}", "--out", "{tmp}/scan"]),
        ("dali_cutmix.synthetic", ["{tmp}/set"]),
        ("pipelines.bench", ["--out", "{tmp}/bench"]),
    ],
)
def test_a_worker_count_beyond_the_machine_is_refused_in_one_line(
    module: str, args: list[str], tmp_path
) -> None:
    # They took any count: a scan started 100000000 workers (as many as it had files).
    done = run_command(module, *[a.format(tmp=tmp_path) for a in args], "--workers", "100000")
    limit, cpus = max(16, 4 * (os.cpu_count() or 1)), os.cpu_count() or 1
    assert user_error_line(done) == (
        f"python -m {module}: error: argument --workers: expected an int >= 1 and at most "
        f"{limit} (the larger of 16 and 4 per CPU of this machine's {cpus}), got 100000"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_dali_memory_named_turns_dali_out_of_memory_alone_into_a_memory_error() -> None:
    oom = RuntimeError(
        "Critical error in pipeline:\nError in CPU operator ...\nencountered:\n\nstd::bad_alloc"
    )
    message = "^DALI ran out of memory for these sizes: lower -b$"
    with pytest.raises(MemoryError, match=message), dali_memory_named("-b"):
        raise oom
    other = RuntimeError("encountered: something else")
    with pytest.raises(RuntimeError) as caught, dali_memory_named("-b"):
        raise other
    assert caught.value is other


def test_torch_s_info_lines_stay_out_of_a_command_s_log(caplog) -> None:
    # After a Ctrl-C that came before torch set its loggers' levels, torch's atexit
    # "FakeTensor cache stats:" lines followed the command's one-line message (6 of 6).
    from torch._subclasses.fake_tensor import dump_cache_stats

    caplog.set_level(logging.INFO)
    logging.getLogger("torch").setLevel(logging.NOTSET)
    start_command(argparse.ArgumentParser(), [])
    dump_cache_stats()
    assert not [r for r in caplog.records if r.name.startswith("torch")]


@pytest.mark.parametrize(
    ("module", "argv", "out", "words"),
    [
        ("dali_cutmix.scan", ["{data}"], "{data}/scan", "the folder scanned"),
        ("dali_cutmix.scan", ["{data}"], "{data}", "the folder scanned"),
        ("dali_cutmix.preview", ["--data", "{data}"], "{data}/c0/grid.png", "--data"),
        (
            "pipelines.bench",
            ["--data", "{data}", "--batch-size", "2"],
            "{data}/b",
            "the folder measured",
        ),
    ],
)
def test_an_output_inside_the_data_read_is_refused(
    tmp_path: Path, capsys, module: str, argv: list[str], out: str, words: str
) -> None:
    # scan train --out train/scan made its report folder a class of the set it scanned; a
    # preview grid in a class folder became a training image.
    data = build_image_folder(tmp_path / "data", classes=2, per_class=2, extras=False)
    before = sorted(data.rglob("*"))
    out = out.format(data=data)
    main = importlib.import_module(module if module != "pipelines.bench" else "pipelines.bench.cli")
    with pytest.raises(SystemExit) as caught:
        main.main([a.format(data=data) for a in argv] + ["--out", out])
    assert caught.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith(
            f"error: --out {out} is inside {words} {data}, where what it writes would be read as "
            "part of the set (a folder as a class, an image as a sample); give a place outside it"
        )
    )
    assert sorted(data.rglob("*")) == before


def test_check_outside_follows_links_and_passes_a_sibling(tmp_path: Path) -> None:
    from dali_cutmix.cli import check_outside

    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    with pytest.raises(ValueError, match=r"^--out .*/link/x is inside --data .*/data, "):
        check_outside(tmp_path / "link" / "x", "--out", tmp_path / "data", "--data")
    check_outside(tmp_path / "data-scan", "--out", tmp_path / "data", "--data")  # a prefix only
    check_outside(tmp_path / "scan", "--out", tmp_path / "data", "--data")


# ------------------------------------------------------------- the status kept through teardown


def _main_block_calls(path: Path) -> list[str]:
    """The source of each statement under ``path``'s ``if __name__ == "__main__":``."""
    tree = ast.parse(path.read_text())
    blocks = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"
    ]
    return [ast.unparse(statement) for block in blocks for statement in block.body]


@pytest.mark.parametrize(
    "module", sorted({*COMMANDS.values(), "pipelines.val_parity", "train.__main__"})
)
def test_every_command_ends_through_exit_with(module: str) -> None:
    # Only train did: every other command, run from a shell, died of a Ctrl-C or SIGTERM that
    # came in the ~1.5 s of teardown after it had finished (status -2 or -15, its output kept)
    entry = importlib.import_module(module).entry
    assert "exit_with(main())" in inspect.getsource(entry)
    main_file = REPO / (module.replace(".", "/") + ".py")
    if module == "pipelines.bench.cli":  # python -m pipelines.bench runs its __main__
        main_file = REPO / "pipelines" / "bench" / "__main__.py"
    assert _main_block_calls(main_file) == ["entry()"]


def test_every_installed_command_is_an_entry() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert len(scripts) == 4
    assert all(target.endswith(":entry") for target in scripts.values()), scripts


@pytest.mark.parametrize(
    ("command", "last", "signum"),
    [
        (["-m", "dali_cutmix.preview", "--batch-size", "4", "--out"], "wrote", signal.SIGTERM),
        (["-m", "dali_cutmix.scan", "--workers", "1", "--out"], "clean file list", signal.SIGINT),
    ],
    ids=["preview-TERM", "scan-INT"],
)
def test_a_signal_after_the_command_finished_keeps_its_status_and_says_nothing(
    tmp_path: Path, command: list[str], last: str, signum: int
) -> None:
    root = build_image_folder(tmp_path / "train", classes=2, per_class=2, extras=False)
    out = tmp_path / ("grid.png" if "preview" in command[1] else "scan")
    where = ["--data", str(root)] if "preview" in command[1] else [str(root)]
    status, text = signalled_after([*command, str(out), *where], tmp_path / "log.txt", last, signum)
    assert status == 0, text[-3000:]
    assert "Traceback" not in text and "Exception ignored" not in text, text[-3000:]
    assert last in text.splitlines()[-1]
