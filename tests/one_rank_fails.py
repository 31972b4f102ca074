"""``torchrun --nproc_per_node 2 tests/one_rank_fails.py POINT FILE ARGV...``: ``python -m
train ARGV`` whose rank 1 alone meets a data failure at ``POINT``, one of :data:`POINTS`.

The torchrun tests of ``tests/test_train.py`` use it to reach the points where the ranks
agree on a loader failure, which a bad file in the dataset reaches only by the luck of the
shuffle (which rank reads it, and when). Rank 0 runs ``python -m train`` unchanged. With
``SLOW_EXIT_RANK=R`` in the environment, rank R sleeps 3 s after ``main`` returns: a slow
teardown (DALI and CUDA, under load), which torchrun ended with SIGTERM when another rank
exited non-zero first. With ``CLOCK_AHEAD_RANK=R``, rank R's clock reads an hour ahead
for ``time.strftime``: ranks that parse their flags on either side of a second's turn.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # torchrun puts tests/ first

import train.runner  # noqa: E402
import train.trainer  # noqa: E402
from dali_cutmix.files import BadImageError, DatasetError  # noqa: E402
from train.__main__ import main  # noqa: E402

# what fails on rank 1 (an error of a file names "FILE", the path given after POINT)
POINTS = {
    "none": "nothing fails (for a stop or SLOW_EXIT_RANK alone)",
    "build": "the loaders cannot be built (a shard of no image, say)",
    "test-only": "--test-only's validation loader cannot be built",
    "restore": "FILE fails as the train loader restores its saved state",
    "tail": "FILE fails after the train loader's last batch, in the tail DROP leaves out",
    "val-first": "FILE fails as the validation loader reads its first batch",
}


class _Failing:
    """``loader``, whose iterator raises ``error`` before its first batch or after its last."""

    def __init__(self, loader: Any, error: Exception, *, first: bool) -> None:
        self._loader, self._error, self._first = loader, error, first

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __iter__(self) -> Iterator[Any]:
        if not self._first:
            yield from self._loader
        raise self._error


def _bad(path: str) -> BadImageError:
    return BadImageError(f"{path!r} is not a decodable image (made to fail on rank 1)", path=path)


def _cannot_build(*args: Any) -> Any:
    raise DatasetError("rank 1's shard cannot be read (made to fail on rank 1)")


def fail_at(point: str, path: str) -> None:
    """Makes this process's data fail at ``point`` (see :data:`POINTS`)."""
    build = train.trainer.build_loaders

    def wrapped(*args: Any) -> Any:
        training, validation = build(*args)
        if point == "tail":
            return _Failing(training, _bad(path), first=False), validation
        return training, _Failing(validation, _bad(path), first=True)

    def restore(loader: Any, state: Any) -> None:
        raise _bad(path)

    if point == "none":
        return
    if point == "build":
        train.trainer.build_loaders = _cannot_build
    elif point == "test-only":
        train.runner.build_val_loader = _cannot_build
    elif point == "restore":
        train.trainer.restore_loader = restore
    elif point in ("tail", "val-first"):
        train.trainer.build_loaders = wrapped
    else:
        raise SystemExit(f"POINT must be one of {', '.join(POINTS)}, not {point!r}")


if __name__ == "__main__":
    point, path, *argv = sys.argv[1:]
    if os.environ.get("RANK") == "1":
        fail_at(point, path)
    if os.environ.get("CLOCK_AHEAD_RANK") == os.environ.get("RANK"):
        strftime = time.strftime
        time.strftime = lambda form, t=None: strftime(form, time.localtime(time.time() + 3600))
    status = main(argv)
    if os.environ.get("SLOW_EXIT_RANK") == os.environ.get("RANK"):
        time.sleep(3)
    sys.exit(status)
