"""Where drawing the CutMix box from tables stops paying: ``dali_cutmix.mixing.TABLE_MAX_SIDE``.

On a known square canvas of side H the box centre is drawn from a table of H
pixels and the paper's half side from one of H / 2 + 1 probabilities; otherwise
fractions are drawn and scaled (six operators more). This times the CPU
part of the CutMix graph (``pipelines.graph_cost``'s, labels and box) both ways
for several H: the build, and ms per batch (the best of ``--repeats``
interleaved passes, each 5 windows of 20 batches after 10 warm-up batches,
median window).

    PYTHONPATH=. python bench/box_tables.py --out bench/results/cpu-2core/box_tables.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import nvidia.dali
from nvidia.dali import pipeline_def

from dali_cutmix import mixing
from dali_cutmix.config import MixConfig
from pipelines.graph_cost import _cpu_part


def measure(side: int, *, tables: bool, batch: int, threads: int) -> tuple[float, float]:
    """(build s, ms per batch) of the CutMix CPU part at ``side``, with or without tables."""
    saved = mixing.TABLE_MAX_SIDE
    mixing.TABLE_MAX_SIDE = side if tables else 0
    try:
        start = time.perf_counter()
        pipe = pipeline_def(
            _cpu_part(MixConfig(num_classes=1000), crop_size=side, targets=False),
            batch_size=batch,
            num_threads=threads,
            device_id=None,
            seed=0,
        )()
        pipe.build()
        built = time.perf_counter() - start
    finally:
        mixing.TABLE_MAX_SIDE = saved
    for _ in range(10):
        pipe.run()
    windows = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(20):
            pipe.run()
        windows.append(1000 * (time.perf_counter() - start) / 20)
    del pipe
    return built, statistics.median(windows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[224, 512, 1024, 2048, 4096])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    best: dict[tuple[int, bool], tuple[float, float]] = {}
    for repeat in range(args.repeats):
        for side in args.sides:
            # alternate which goes first, so that drift does not favour one
            for tables in (True, False) if repeat % 2 == 0 else (False, True):
                built, ms = measure(
                    side, tables=tables, batch=args.batch_size, threads=args.threads
                )
                old = best.get((side, tables), (built, ms))
                best[(side, tables)] = (min(old[0], built), min(old[1], ms))
                print(
                    f"{side:5d} {'tables   ' if tables else 'fractions'} build {built:.3f} s"
                    f"  {ms:6.2f} ms/batch",
                    flush=True,
                )
    rows = []
    print("\n| side | tables ms/batch | fractions ms/batch | tables build s | fractions build s |")
    print("|---:|---:|---:|---:|---:|")
    for side in args.sides:
        (tb, tm), (fb, fm) = best[(side, True)], best[(side, False)]
        rows.append(
            {
                "side": side,
                "tables_ms": tm,
                "fractions_ms": fm,
                "tables_build_s": tb,
                "fractions_build_s": fb,
            }
        )
        print(f"| {side} | {tm:.2f} | {fm:.2f} | {tb:.3f} | {fb:.3f} |")
    if args.out:
        report = {
            "machine": platform.node(),
            "cpus": __import__("os").cpu_count(),
            "dali": nvidia.dali.__version__,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "repeats": args.repeats,
            "rows": rows,
        }
        with open(args.out, "w") as f:
            f.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
