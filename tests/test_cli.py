"""The shared handling of user errors at every command's entry point."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from dali_cutmix.cli import exit_on_user_error, positive_int
from dali_cutmix.files import DatasetError


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
