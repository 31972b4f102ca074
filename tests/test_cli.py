"""The shared handling of user errors at every command's entry point."""

from __future__ import annotations

import argparse

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
