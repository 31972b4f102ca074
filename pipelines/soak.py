"""Memory over a long run: many epochs through the DALI loader, then many resumes.

    python -m pipelines.soak                                  # 30 epochs, 20 resumes
    python -m pipelines.soak --epochs 30 --resumes 20 --out runs/soak.json

Host memory must stay flat over a run of many epochs, and over the resumes of
a run that is stopped and continued many times (each resume builds a new DALI
pipeline from a checkpoint and releases the old one). This runs the DALI
training loader (CutMix on, the CPU pipeline) over a generated set shaped like
``python -m train``'s embedded dataset (10 classes x 160 images of about
100 x 90 pixels, crop 64, batch 64) and records this process's resident set
size (RSS) after every epoch and every resume. It reports the RSS at start
(after the first epoch, when DALI's buffers have reached their size) and at
the end, and the growth per epoch and per resume as the slope of a
least-squares line through the readings after the first (``warmup``) ones.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from dali_cutmix.cli import (
    aborted,
    add_count,
    add_report_flag,
    add_shared_flags,
    check_report_path,
    command_line,
    command_name,
    exit_on_user_error,
    interruptible,
    non_negative_int,
    path_arg,
    start_command,
    write_json,
)
from dali_cutmix.config import MixConfig
from dali_cutmix.procs import Terminated, exit_with
from dali_cutmix.synthetic import CACHE_ENV, SyntheticSpec, checked_cache_dir, generate

__all__ = ["SoakStopped", "rss_mb", "soak", "main"]

logger = logging.getLogger(__name__)

SPEC = SyntheticSpec(num_classes=10, train_per_class=160, val_per_class=1, seed=0, size_scale=0.25)


def rss_mb() -> float:
    """This process's resident set size now, in MiB (Linux ``/proc``)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _slope(values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against 0, 1, 2, ... (0 for fewer than 2)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values))
    return num / sum((x - mean_x) ** 2 for x in range(n))


# Readings after the warm-up that a growth figure needs: from one or two, a slope of 0
# (or any other) says nothing, and it was reported as if it did.
MIN_READINGS = 3
WARMUP = 2  # epochs left out of the growth: the allocator's pools fill in the first ones


def _summary(readings: list[float], warmup: int) -> dict[str, Any]:
    """The readings, and their growth per step after the first ``warmup`` (``None``, with
    the reason, where fewer than :data:`MIN_READINGS` are left)."""
    steady = readings[warmup:]
    summary = {
        "rss_mb": [round(r, 1) for r in readings],
        "start_mb": round((steady or readings)[0], 1),
        "end_mb": round(readings[-1], 1),
        "growth_mb_per_step": round(_slope(steady), 3) if len(steady) >= MIN_READINGS else None,
    }
    if summary["growth_mb_per_step"] is None:
        n, ahead = len(readings), len(readings) - len(steady)
        summary["growth_note"] = (
            f"{n} reading{'' if n == 1 else 's'} ({ahead} of them warm-up); a growth figure "
            f"needs {MIN_READINGS} after the warm-up"
        )
    return summary


def soak(
    root: Path,
    *,
    epochs: int,
    resumes: int,
    batch_size: int = 64,
    crop_size: int = 64,
    threads: int = 2,
    warmup: int = WARMUP,
) -> dict[str, Any]:
    """Runs ``epochs`` epochs, then ``resumes`` stop-and-resume cycles; returns RSS figures.

    Raises:
        SoakStopped: Ctrl-C or SIGTERM (under :func:`dali_cutmix.procs.exit_on_sigterm`)
            stopped it; the exception holds the readings taken until then.
    """
    from .imagenet import make_loader  # here, so that --help answers without DALI

    def loader():
        return make_loader(
            root,
            train=True,
            batch_size=batch_size,
            device="cpu",
            mix=MixConfig(num_classes=SPEC.num_classes),
            crop_size=crop_size,
            num_threads=threads,
            seed=0,
        )

    started = time.perf_counter()
    train = loader()
    epoch_rss: list[float] = []
    resume_rss: list[float] = []
    stop = None
    try:
        for epoch in range(epochs):
            batches = sum(1 for _ in train)
            gc.collect()
            epoch_rss.append(rss_mb())
            logger.info("epoch %d: %d batches, RSS %.1f MiB", epoch + 1, batches, epoch_rss[-1])
        half = max(1, len(train) // 2)
        for k in range(resumes):
            stream = iter(train)
            for _ in range(half):  # stop mid-epoch, as a Ctrl-C would
                next(stream)
            state = train.state_dict()
            del stream
            train = loader()
            train.load_state_dict(state)
            sum(1 for _ in train)  # the rest of the epoch
            gc.collect()
            resume_rss.append(rss_mb())
            logger.info("resume %d: RSS %.1f MiB", k + 1, resume_rss[-1])
    except (KeyboardInterrupt, Terminated) as stopped:  # the readings so far are reported
        stop = stopped
    report = {
        "batch_size": batch_size,
        "crop_size": crop_size,
        "threads": threads,
        "images_per_epoch": train.dataset_size,
        "epochs": _summary(epoch_rss, warmup) if epoch_rss else None,
        "resumes": (  # None: not asked for (or stopped before the first)
            _summary(resume_rss, min(warmup, max(0, resumes - MIN_READINGS)))
            if resume_rss
            else None
        ),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if stop is not None:
        sigterm = isinstance(stop, Terminated)
        report["stopped"] = (
            f"by {'SIGTERM' if sigterm else 'Ctrl-C'} after {len(epoch_rss)} of {epochs} "
            f"epochs and {len(resume_rss)} of {resumes} resumes"
        )
        raise SoakStopped(report, sigterm=sigterm) from stop
    return report


class SoakStopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped :func:`soak`: ``report`` has the readings taken so far
    (its ``"stopped"`` says when); ``sigterm`` tells the two apart."""

    def __init__(self, report: dict[str, Any], *, sigterm: bool) -> None:
        super().__init__(report["stopped"])
        self.report, self.sigterm = report, sigterm


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # a prefix (--epoch) is refused, not taken for a flag
        prog=command_name(__spec__.name),
        description="Host memory over many epochs and resumes of the DALI training loader.",
    )
    add_count(parser, "--epochs", 30, "epochs to run")
    add_count(
        parser,
        "--resumes",
        20,
        "stop-and-resume cycles after the epochs (0: the epochs alone)",
        type=non_negative_int,
    )
    add_shared_flags(parser, threads=2)
    parser.add_argument(
        "--cache-dir",
        type=path_arg,
        default=None,
        help=f"where the generated set is kept (default: ${CACHE_ENV}, else ./data)",
    )
    add_report_flag(parser, "figures")
    parser.epilog = (
        "exit status: 0 the soak ran to its end, 2 bad usage, 130 Ctrl-C, 143 SIGTERM (both "
        "print, and write with --out, the readings taken so far)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = start_command(parser, argv)

    def run_soak() -> int:
        stopped = None
        with exit_on_user_error(parser):
            check_report_path(args.out)
            root = generate(checked_cache_dir(args.cache_dir) / "soak-embedded", SPEC) / "train"
            try:
                report = soak(root, epochs=args.epochs, resumes=args.resumes, threads=args.threads)
            except SoakStopped as stop:  # the readings so far: printed and written
                stopped, report = stop, stop.report
        report["command"] = command_line(__spec__.name, argv)
        print(json.dumps(report, indent=2))
        if stopped is not None:
            if args.out:
                with exit_on_user_error(parser, catch=(OSError,)):
                    write_json(args.out, report)
            kept = f"in {args.out} and above" if args.out else "above"
            return aborted(parser, f"the readings taken so far are {kept}", stopped.sigterm)
        for name, flag in (("epochs", "--epochs"), ("resumes", "--resumes")):
            if report[name] is not None and "growth_note" in report[name]:
                logger.warning(
                    "no growth figure for the %s: %s (give %s %d or more)",
                    name,
                    report[name]["growth_note"],
                    flag,
                    (WARMUP if name == "epochs" else 0) + MIN_READINGS,
                )
        if args.out:
            with exit_on_user_error(parser, catch=(OSError,)):  # a full disk: the file named
                write_json(args.out, report)
        return 0

    return interruptible(parser, "no report was written", run_soak)


def entry() -> NoReturn:
    """The command: :func:`main`, then the process ends with its status, also on a Ctrl-C or
    SIGTERM during the interpreter's teardown (:func:`dali_cutmix.procs.exit_with`)."""
    exit_with(main())


if __name__ == "__main__":
    entry()
