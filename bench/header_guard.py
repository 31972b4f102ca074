"""What the header guard (``pipelines.imagenet.read_headers``) costs the CPU loader.

Loader throughput with the guard and without it (the decoders reading the files
at once, as before), train and validation, interleaved in alternating order:
each measurement builds its loader, runs one warm-up epoch and times two more.

    PYTHONPATH=. python bench/header_guard.py data/bench-40x50/train --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import nvidia.dali
import nvidia.dali.fn as fn
import nvidia.dali.types as types

import pipelines.imagenet as imagenet

GUARDED = imagenet.read_headers


def unguarded(jpegs):  # the graph before the guard: the same header read, nothing waits on it
    return jpegs, fn.peek_image_shape(jpegs, dtype=types.INT64, adjust_orientation=False)


def images_per_s(root: str, *, train: bool, guard: bool, batch: int, threads: int) -> float:
    imagenet.read_headers = GUARDED if guard else unguarded
    try:
        loader = imagenet.make_loader(
            root, batch_size=batch, device="cpu", num_threads=threads, train=train
        )
        for _ in loader:  # warm-up epoch
            pass
        images, start = 0, time.perf_counter()
        for _ in range(2):
            for x, _ in loader:
                images += x.shape[0]
        return images / (time.perf_counter() - start)
    finally:
        imagenet.read_headers = GUARDED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="an ImageFolder-style folder of JPEGs")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument(
        "--repeats", type=int, default=3, help="measurements of each (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument(
        "--threads", type=int, default=2, help="DALI CPU threads (default: %(default)s)"
    )
    args = parser.parse_args()
    rates: dict[str, dict[str, list[float]]] = {
        split: {"guarded": [], "unguarded": []} for split in ("train", "val")
    }
    for repeat in range(args.repeats):
        for split in rates:
            order = (True, False) if repeat % 2 == 0 else (False, True)
            for guard in order:
                rate = images_per_s(
                    args.root,
                    train=split == "train",
                    guard=guard,
                    batch=args.batch_size,
                    threads=args.threads,
                )
                rates[split]["guarded" if guard else "unguarded"].append(rate)
                print(f"{repeat} {split} guard={guard}: {rate:.1f} images/s", flush=True)
    summary = {
        split: {
            "guarded_mean": statistics.mean(r["guarded"]),
            "unguarded_mean": statistics.mean(r["unguarded"]),
            "ratio": statistics.mean(r["guarded"]) / statistics.mean(r["unguarded"]),
        }
        for split, r in rates.items()
    }
    for split, s in summary.items():
        print(
            f"{split}: {s['guarded_mean']:.1f} images/s guarded, {s['unguarded_mean']:.1f} "
            f"without, ratio {s['ratio']:.3f}"
        )
    report = {
        "root": args.root,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "device": "cpu",
        "machine": platform.machine(),
        "dali": nvidia.dali.__version__,
        "images_per_s": rates,
        "summary": summary,
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
