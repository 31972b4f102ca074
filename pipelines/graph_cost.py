"""What mixing costs the CPU threads of a DALI pipeline, per batch and in operators.

    python -m pipelines.graph_cost                      # batch 256, 224 px, 2 threads
    python -m pipelines.graph_cost --threads 8 --out runs/graph_cost.json

On the GPU path the images never touch the CPU, but every per-sample draw and
every box coordinate is computed by CPU operators (DALI's argument inputs live
on the CPU), once per batch. On the 2-core CPU machine those operators cost about 0.15 ms
each per batch of 256 (README), whatever their arithmetic: the operator count, not the
arithmetic, sets the price. This tool builds, for each mixing setting, the
CPU part of the ImageNet training graph (the labels from a stand-in reader,
then the partners, draws, box regions and weights that ``dali_cutmix.mix``
computes for a known crop size) and times it against the same graph without
mixing. ``--targets`` adds the soft targets on the CPU (the CPU pipeline's
case; the GPU pipeline builds them on the GPU).

Each setting is timed in 7 windows of 50 batches after 20 warm-up batches
(:func:`measure_setting`'s defaults; no flag sets them), with DALI's usual
prefetching; the median window is reported, with the min and max, and
``--repeats`` interleaved passes over the settings keep each one's best.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from dali_cutmix.cli import (
    add_count,
    add_report_flag,
    add_shared_flags,
    check_report_path,
    command_name,
    dali_memory_named,
    exit_on_user_error,
    interruptible,
    start_command,
    write_json,
)
from dali_cutmix.config import MixConfig
from dali_cutmix.procs import exit_with

if TYPE_CHECKING:
    from nvidia.dali.data_node import DataNode

# DALI is imported where a graph is built, so that --help answers without loading it.

__all__ = ["SETTINGS", "measure_setting", "main"]

logger = logging.getLogger(__name__)

# Mixing settings measured, with timm's names (None: the graph without mixing).
SETTINGS: dict[str, dict[str, Any] | None] = {
    "off": None,
    "cutmix": {"cutmix_alpha": 1.0},
    "cutmix prob=0.5": {"cutmix_alpha": 1.0, "prob": 0.5},
    "cutmix batch": {"cutmix_alpha": 1.0, "mode": "batch"},
    "cutmix pair": {"cutmix_alpha": 1.0, "mode": "pair"},
    "switch": {"cutmix_alpha": 1.0, "mixup_alpha": 0.8, "switch_prob": 0.5},
    "mixup": {"cutmix_alpha": 0.0, "mixup_alpha": 0.2},
}


def _labels(num_classes: int) -> DataNode:
    """Stand-in for the reader's int32 ``[1]`` labels (two operators in every graph)."""
    from nvidia.dali import fn, types

    drawn = fn.random.uniform(range=[0, num_classes], shape=[1])
    return fn.cast(drawn, dtype=types.INT32)


def _cpu_part(
    mix: MixConfig | None, *, crop_size: int, targets: bool
) -> Callable[[], tuple[DataNode, ...]]:
    """The CPU operators that the training graph runs for ``mix`` per batch."""
    from nvidia.dali import fn, types
    from nvidia.dali.data_node import DataNode

    # the graph's CPU part, no pixels
    from dali_cutmix.mixing import _Canvas, _plan, soft_targets

    def graph() -> tuple[DataNode, ...]:
        labels = _labels(1000 if mix is None else mix.num_classes)
        if mix is None or not mix.enabled:  # class indices, as pipelines.imagenet does
            return (fn.cast(fn.squeeze(labels, axes=[0]), dtype=types.INT64),)
        plan = _plan(mix, _Canvas.known((crop_size, crop_size)))
        outputs = [labels, plan.partner_weight]  # the labels travel on to the GPU
        if isinstance(plan.partner, DataNode):
            outputs.append(plan.partner)
        if plan.regions is not None:
            outputs += plan.regions
        if isinstance(plan.blend, DataNode):
            outputs.append(plan.blend)
        if targets:
            outputs.append(
                soft_targets(
                    labels,
                    num_classes=mix.num_classes,
                    partner=plan.partner,
                    partner_weight=plan.partner_weight,
                    check_labels=False,  # as make_loader, whose lists are checked when read
                )
            )
        return tuple(outputs)

    return graph


def measure_setting(
    name: str,
    *,
    batch_size: int,
    threads: int,
    crop_size: int = 224,
    num_classes: int = 1000,
    targets: bool = False,
    warmup: int = 20,
    windows: int = 7,
    window_batches: int = 50,
) -> dict[str, Any]:
    """Times one setting's CPU part; returns ms per batch (median, min, max) and operators."""
    from nvidia.dali import pipeline_def

    params = SETTINGS[name]
    mix = None if params is None else MixConfig(num_classes=num_classes, **params)
    pipe = pipeline_def(
        _cpu_part(mix, crop_size=crop_size, targets=targets),
        batch_size=batch_size,
        num_threads=threads,
        device_id=None,
        seed=0,
    )()
    pipe.build()
    for _ in range(warmup):
        pipe.run()
    times = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(window_batches):
            pipe.run()
        times.append(1000 * (time.perf_counter() - start) / window_batches)
    operators = len(pipe._ops)  # DALI exposes no public list of a pipeline's operators
    del pipe
    return {
        "setting": name,
        "mix": params,
        "operators": operators,
        "ms_per_batch": statistics.median(times),
        "min": min(times),
        "max": max(times),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measures every setting (twice, interleaved, to expose drift); adds the cost over ``off``."""
    rows = []
    for _ in range(args.repeats):
        for name in SETTINGS:
            rows.append(
                measure_setting(
                    name,
                    batch_size=args.batch_size,
                    threads=args.threads,
                    crop_size=args.crop_size,
                    targets=args.targets,
                )
            )
            logger.info(
                "%-16s %3d operators  %6.2f ms/batch  [%.2f .. %.2f]",
                name,
                rows[-1]["operators"],
                rows[-1]["ms_per_batch"],
                rows[-1]["min"],
                rows[-1]["max"],
            )
    results = []
    for name in SETTINGS:
        mine = [r for r in rows if r["setting"] == name]
        best = min(mine, key=lambda r: r["ms_per_batch"])  # the least disturbed repeat
        results.append({**best, "repeats_ms": [r["ms_per_batch"] for r in mine]})
    base = results[0]
    for r in results:
        r["added_operators"] = r["operators"] - base["operators"]
        r["added_ms"] = r["ms_per_batch"] - base["ms_per_batch"]
    return {
        "batch_size": args.batch_size,
        "threads": args.threads,
        "crop_size": args.crop_size,
        "targets_on_cpu": args.targets,
        "results": results,
    }


def format_table(report: dict[str, Any]) -> str:
    targets = "on the CPU" if report["targets_on_cpu"] else "not included"
    lines = [
        f"CPU part of the training graph, batch {report['batch_size']}, "
        f"{report['threads']} threads, targets {targets}",
        "",
        "| setting | operators | ms per batch | added operators | added ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['setting']} | {r['operators']} | {r['ms_per_batch']:.2f} "
            f"| {r['added_operators']} | {r['added_ms']:.2f} |"
        )
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # a prefix (--epoch) is refused, not taken for a flag
        prog=command_name(__spec__.name),
        description="Per-batch CPU cost of the mixing graph (operators and ms), by setting.",
    )
    add_shared_flags(parser, batch_size=256, threads=2, crop_size=224)
    parser.add_argument(
        "--targets", action="store_true", help="build the soft targets on the CPU too"
    )
    add_count(parser, "--repeats", 2, "interleaved passes over the settings")
    add_report_flag(parser, "results")
    parser.epilog = (
        "exit status: 0 measured, 2 bad usage (or the batch does not fit in memory), 130 "
        "Ctrl-C, 143 SIGTERM"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = start_command(parser, argv)
    with exit_on_user_error(parser):  # a bad --out stops it before the run, not after
        check_report_path(args.out)

    def measure() -> int:
        sizes = "--batch-size or --crop-size"
        with exit_on_user_error(parser, catch=(MemoryError,)), dali_memory_named(sizes):
            report = run(args)
        print(format_table(report))
        if args.out:
            with exit_on_user_error(parser, catch=(OSError,)):  # a full disk: the file named
                write_json(args.out, report)
        return 0

    return interruptible(parser, "no report was written", measure)


def entry() -> NoReturn:
    """The command: :func:`main`, then the process ends with its status, also on a Ctrl-C or
    SIGTERM during the interpreter's teardown (:func:`dali_cutmix.procs.exit_with`)."""
    exit_with(main())


if __name__ == "__main__":
    entry()
