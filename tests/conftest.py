"""Shared fixtures: tiny ImageNet-style JPEG folders built in tmp_path; small loaders on them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
from PIL import Image

if TYPE_CHECKING:
    from dali_cutmix.loader import DaliLoader


def write_image(
    path: Path, *, size: tuple[int, int], seed: int, mode: str = "RGB", fmt: str = "JPEG"
) -> Path:
    """Writes a small image with per-file content; ``size`` is (width, height)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, size=(h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    rgb = Image.fromarray(base).resize((w, h), Image.BILINEAR)
    img = rgb.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, quality=90)
    return path


def build_image_folder(
    root: Path, *, classes: int = 3, per_class: int = 4, extras: bool = True
) -> Path:
    """An ImageFolder tree ``root/<class>/*.JPEG`` with non-square sizes.

    With ``extras``, the first class also holds a grayscale JPEG, a CMYK JPEG
    and a PNG file named ``.JPEG`` (all decodable by DALI and PIL).
    """
    seed = 0
    for c in range(classes):
        for k in range(per_class):
            size = (40 + 7 * ((k + c) % 5), 32 + 5 * (k % 4))
            write_image(root / f"n{c:08d}" / f"img_{c}_{k}.JPEG", size=size, seed=seed)
            seed += 1
    if extras:
        first = root / f"n{0:08d}"
        write_image(first / "gray.JPEG", size=(37, 45), seed=1001, mode="L")
        write_image(first / "cmyk.JPEG", size=(50, 30), seed=1002, mode="CMYK")
        write_image(first / "png_named.JPEG", size=(33, 41), seed=1003, fmt="PNG")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return build_image_folder(tmp_path / "train")


# The tests' loader: batches of 4 training samples, 8-pixel crops (of 8-pixel resizes in
# validation), one thread, on the CPU.
SMALL_LOADER = {
    "train": True,
    "batch_size": 4,
    "device": "cpu",
    "crop_size": 8,
    "resize_size": 8,
    "num_threads": 1,
}


def small_loader(root: Path | None = None, **settings: Any) -> DaliLoader:
    """``make_loader(root, ...)`` with ``SMALL_LOADER``'s settings, which ``settings`` override
    or extend (any of ``make_loader``'s keywords)."""
    from pipelines.imagenet import make_loader  # DALI loads only in the tests that build one

    return make_loader(root, **(SMALL_LOADER | settings))


Batch = tuple[torch.Tensor, torch.Tensor]


def same_batches(got: list[Batch], want: list[Batch]) -> bool:
    """Whether two lists of ``(images, targets)`` batches are equal, bit for bit."""
    return len(got) == len(want) and all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(got, want)
    )


def resumed_after(make: Callable[[], DaliLoader], batches: int) -> DaliLoader:
    """A new ``make()`` loaded with the state of another one after its first ``batches`` (>= 1)."""
    first = make()
    stream = iter(first)
    for _ in range(batches):
        next(stream)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    return resumed


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def run_command(module: str, *args: str | Path) -> subprocess.CompletedProcess:
    """``python -m module args...`` in a child process (never a fork); stdout and stderr as text."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, timeout=120
    )


def user_error_line(done: subprocess.CompletedProcess, *, status: int = 2) -> str:
    """The last line on stderr of a command that ended on a user error, checked for the status
    and for the absence of any traceback (the command's or DALI's C++ context)."""
    assert done.returncode == status, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "C++ context" not in done.stderr, done.stderr
    return done.stderr.splitlines()[-1]


@contextlib.contextmanager
def started_command(
    command: list[str], log: Path, *, ctrl_c: bool = True
) -> Iterator[subprocess.Popen]:
    """``python command`` from the repository in a session of its own (one thread a process),
    its output into ``log``; Ctrl-C as at a terminal unless ``ctrl_c`` is False (then SIGINT
    stays as the suite has it). Killed with its group at the end of the block."""
    with open(log, "w") as stream:
        process = subprocess.Popen(
            [sys.executable, *command],
            cwd=Path(__file__).resolve().parents[1],
            stdout=stream,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            start_new_session=True,
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if ctrl_c else None,
        )
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def wait_for_text(log: Path, text: str, seconds: float = 180) -> None:
    """Until ``text`` appears in ``log`` (or ``seconds`` pass)."""
    deadline = time.monotonic() + seconds
    while text not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)


def signalled_after(command: list[str], log: Path, text: str, signum: int) -> tuple[int, str]:
    """Runs ``python command`` (:func:`started_command`), sends ``signum`` to its group as soon
    as ``text`` is in its output, and again 50 ms later (a terminal's Ctrl-C pressed twice);
    returns its exit status and its output."""
    with started_command(command, log) as process:
        wait_for_text(log, text)
        os.killpg(process.pid, signum)
        with contextlib.suppress(ProcessLookupError):  # gone already: nothing to test twice
            time.sleep(0.05)
            os.killpg(process.pid, signum)
        status = process.wait(timeout=60)
    return status, log.read_text()


# A --file-list line written for another folder, and the end of the line that answers it in
# a command whose folder flag is --data ({root}: the folder the paths resolve against).
LISTS_FOR_ANOTHER_FOLDER = [
    ("n00000000/img_0_0.JPEG 9", "give as --data the dataset folder the list was written for"),
    (
        "n00000000/gone.JPEG 0",
        "delete those lines, or give as --data the folder the paths are relative to "
        "(they resolve against '{root}')",
    ),
]
