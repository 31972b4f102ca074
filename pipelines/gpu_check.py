"""Proves the GPU path in one run: GPU tests, DALI probes, CPU-part cost, a short benchmark.

    python -m pipelines.gpu_check --out runs/gpu-check       # or: make gpu-check

Needs CUDA and DALI's GPU operators. Writes into ``--out``:

* ``gpu_check.json``: the machine (GPU, driver, versions), each step's exit
  status and figures, and for each defect predicted from DALI's source
  whether this GPU confirms it;
* one ``STEP.log`` per step (:data:`STEPS`, each a child process): every GPU
  test (``pytest -m gpu``); ``python -m train --device gpu`` (the embedded
  job); the ImageNet-like set generated on this machine (``--data`` to give
  one); the GPU loader's validation images against torchvision's
  (``val_parity.json``); one ResNet-50 epoch (224 px, bf16, channels-last,
  the DALI GPU loader); the graph's CPU part (``graph_cost.json``); the benchmark
  (``bench/results.json`` + ``results.png``: loaders, training, threads and
  ``hw_decoder_load`` sweeps, the recipes' augmentations). The training runs
  write into ``--train-dir``.

The probes call DALI's ``multi_paste`` directly, outside the project's graph,
with the inputs the project now avoids (an empty region inside the canvas,
inputs of different widths) and compare GPU with CPU: they tell whether the
prediction holds on this machine. The project's own graph is tested by the
GPU tests.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from dali_cutmix.cli import (
    add_count,
    add_shared_flags,
    check_folder,
    command_name,
    exit_on_user_error,
    interruptible,
    path_arg,
    start_command,
    write_json,
)
from dali_cutmix.files import DatasetError, list_image_folder
from dali_cutmix.procs import exit_with, signals_deferred

from .bench.cli import int_list

__all__ = ["main", "probe_empty_region", "probe_other_width"]

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


def _multi_paste(device_id: int | None, base, partner, anchors, shapes, size):
    """Runs one ``multi_paste`` of two fed uint8 HWC inputs; returns the first sample."""
    import numpy as np
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=device_id, seed=0)
    def pipe():
        a = fn.external_source(name="a", layout="HWC", dtype=types.UINT8)
        b = fn.external_source(name="b", layout="HWC", dtype=types.UINT8)
        if device_id is not None:
            a, b = a.gpu(), b.gpu()
        regions = types.Constant(np.array(anchors, np.int32))
        return fn.multi_paste(
            a,
            b,
            in_anchors=regions,
            out_anchors=regions,
            shapes=types.Constant(np.array(shapes, np.int32)),
            output_size=list(size),
        )

    p = pipe()
    p.build()
    p.feed_input("a", [base])
    p.feed_input("b", [partner])
    (out,) = p.run()
    out = out.as_cpu() if hasattr(out, "as_cpu") else out
    return np.array(out[0])


def probe_empty_region() -> dict[str, Any]:
    """Prediction 1: an empty region inside the canvas floods the rest of it on the GPU."""
    import numpy as np

    base = np.full((20, 30, 3), 1, np.uint8)
    partner = np.full((20, 30, 3), 2, np.uint8)
    anchors, shapes = [[0, 0], [5, 7]], [[20, 30], [0, 4]]
    cpu = _multi_paste(None, base, partner, anchors, shapes, (20, 30))
    gpu = _multi_paste(0, base, partner, anchors, shapes, (20, 30))
    at_edge = _multi_paste(0, base, partner, [[0, 0], [20, 7]], shapes, (20, 30))
    return {
        "prediction": "an empty multi_paste region inside the canvas floods it on the GPU",
        "cpu_partner_pixels": int((cpu[..., 0] == 2).sum()),
        "gpu_partner_pixels": int((gpu[..., 0] == 2).sum()),
        "gpu_partner_pixels_with_the_box_on_the_far_edge": int((at_edge[..., 0] == 2).sum()),
        "confirmed": bool(not np.array_equal(cpu, gpu)),
    }


def probe_other_width() -> dict[str, Any]:
    """Prediction 2: GPU multi_paste reads a second input with the first one's row pitch."""
    import numpy as np

    base = np.zeros((16, 16, 3), np.uint8)
    rng = np.random.default_rng(0)
    partner = rng.integers(1, 256, (16, 24, 3), dtype=np.uint8)  # wider than the base
    anchors, shapes = [[0, 0], [2, 3]], [[16, 16], [8, 8]]
    cpu = _multi_paste(None, base, partner, anchors, shapes, (16, 16))
    gpu = _multi_paste(0, base, partner, anchors, shapes, (16, 16))
    return {
        "prediction": "a partner of another width is pasted with the base's row pitch (sheared)",
        "cpu_box_equals_partner": bool(np.array_equal(cpu[2:10, 3:11], partner[2:10, 3:11])),
        "gpu_box_equals_partner": bool(np.array_equal(gpu[2:10, 3:11], partner[2:10, 3:11])),
        "confirmed": bool(not np.array_equal(cpu, gpu)),
    }


def _machine() -> dict[str, Any]:
    # a Ctrl-C inside these imports aborted it (status 134)
    with signals_deferred("torch and DALI are imported"):
        import nvidia.dali
        import torch
        import torchvision

    info = {
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "dali": nvidia.dali.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda_runtime"] = torch.version.cuda
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        info["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        info["nvidia_smi"] = f"unavailable: {err}"
    return info


def _step(name: str, command: list[str], log_path: Path, timeout: int) -> dict[str, Any]:
    """Runs one step as a child process (never a fork of one holding DALI pipelines)."""
    logger.info("%s: %s", name, " ".join(command))
    started = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with log_path.open("w") as out:
        try:
            done = subprocess.run(
                command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            )
            code = done.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    seconds = time.perf_counter() - started
    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
    logger.info("%s: exit %s in %.0f s; %s", name, code, seconds, " | ".join(tail))
    return {"command": " ".join(command), "exit": code, "seconds": round(seconds, 1), "tail": tail}


def run(args: argparse.Namespace, machine: dict[str, Any]) -> dict[str, Any]:
    """Every step, on a machine with CUDA (``machine``: :func:`_machine`'s description)."""
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": machine, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    report["probes"] = {}
    for name, probe in (("empty_region", probe_empty_region), ("other_width", probe_other_width)):
        try:
            report["probes"][name] = probe()
        except Exception as err:  # a probe that fails is itself a finding: record it
            report["probes"][name] = {"error": f"{type(err).__name__}: {err}"}
        logger.info("probe %s: %s", name, report["probes"][name])
    report["steps"] = {}
    for name, command in plan_steps(args, sys.executable).items():
        if name in args.skip:
            continue
        report["steps"][name] = _step(name, command, out / f"{name}.log", args.timeout)
        write_json(out / "gpu_check.json", report)  # each step's result kept as it comes
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json(out / "gpu_check.json", report)
    return report


STEPS = (
    "pytest",
    "train_embedded",
    "data",
    "val_parity",
    "train_resnet50",
    "graph_cost",
    "bench",
)


def data_folder(args: argparse.Namespace) -> Path:
    """The ImageNet-like set that the ResNet-50 epoch and the benchmark read."""
    if args.data is not None:
        return args.data
    from dali_cutmix.synthetic import checked_cache_dir

    return checked_cache_dir() / f"gpu-check-{args.classes}x{args.per_class}"


def plan_steps(args: argparse.Namespace, python: str) -> dict[str, list[str]]:
    """Each step's command, in the order they run; every one is a child process.

    The steps run in the clone's root (:data:`REPO`): the folders given, or their
    defaults, are the working folder's, made absolute here (from another folder they
    were the clone's)."""
    out, data, threads = args.out.absolute(), data_folder(args).absolute(), str(args.threads)
    batch = str(args.batch_size)
    package = __package__
    train_runs = args.train_dir.absolute()
    steps = {
        # Every test that needs CUDA, across the suite.
        "pytest": [
            python,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "-m",
            "gpu",
            "--timeout",
            "600",
            "-o",
            "faulthandler_timeout=630",  # pyproject's 330 s would end the whole step first
            "tests",
        ],
        # The embedded job as a newcomer runs it, on the GPU.
        "train_embedded": [
            python,
            "-m",
            "train",
            "--device",
            "gpu",
            "--output-dir",
            str(train_runs / "embedded"),
        ],
        # The ImageNet-like set, generated on this machine (a no-op when it is complete); not
        # with --data, a folder read as it is (the generator refused any it had not made).
        "data": [
            python,
            "-m",
            "dali_cutmix.synthetic",
            str(data),
            "--classes",
            str(args.classes),
            "--train-per-class",
            str(args.per_class),
            "--val-per-class",
            "10",
            "--no-progress",
        ],
        # The GPU loader's validation images against torchvision's, pixel by pixel.
        "val_parity": [
            python,
            "-m",
            f"{package}.val_parity",
            str(data / "val"),
            "--device",
            "gpu",
            "--threads",
            threads,
            "--out",
            str(out / "val_parity.json"),
        ],
        # One epoch of ResNet-50 at 224 px, AMP and channels-last, fed by the DALI GPU loader.
        "train_resnet50": [
            python,
            "-m",
            "train",
            "--data",
            str(data),
            "--arch",
            "resnet50",
            "--epochs",
            "1",
            "--warmup-epochs",
            "0",
            "--crop-size",
            "224",
            "-b",
            batch,
            "-j",
            threads,
            "--amp",
            "bf16",
            "--channels-last",
            "--device",
            "gpu",
            "--print-freq",
            "10",
            "--output-dir",
            str(train_runs / "resnet50"),
        ],
        "graph_cost": [
            python,
            "-m",
            f"{package}.graph_cost",
            "--threads",
            threads,
            "--out",
            str(out / "graph_cost.json"),
        ],
        "bench": [
            python,
            "-m",
            f"{package}.bench",
            "--data",
            str(data),
            "--device",
            "gpu",
            "--batch-size",
            batch,
            "--workers",
            threads,
            "--threads-list",
            ",".join(str(n) for n in args.threads_list),
            "--batch-size-list",
            batch,
            "--train-batch-size",
            batch,
            "--windows",  # 5: on the H100, 3 windows could not resolve CutMix's 1 % goal
            "5",
            "--window-batches",
            str(args.window_batches),
            "--train-windows",
            "3",
            "--train-window-batches",
            "10",
            "--sweeps",
            "loaders,training,scaling,augment",  # augment: the recipes' costs on the GPU
            "--out",
            str(out / "bench"),
        ],
    }
    if args.data is not None:
        del steps["data"]
    return steps


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # a prefix (--epoch) is refused, not taken for a flag
        prog=command_name(__spec__.name),
        description="Run the GPU tests, DALI probes, graph cost and a short benchmark on a GPU.",
    )
    parser.add_argument(
        "--out",
        type=path_arg,
        default=Path("runs/gpu-check"),
        help="output folder (default: %(default)s)",
    )
    add_shared_flags(
        parser,
        threads=16,
        batch_size=256,
        help={
            "threads": "DALI threads and DataLoader workers",
            "batch_size": "benchmark and ResNet-50 batch size",
        },
    )
    parser.add_argument(
        "--data",
        type=path_arg,
        help="ImageNet-style folder for the ResNet-50 epoch and the benchmark (default: one "
        "generated on this machine in the cache folder, gpu-check-<classes>x<per-class>)",
    )
    add_count(parser, "--classes", 100, "classes of the generated set")
    # 450: 175 batches of 256 per epoch, so that every timed window of the benchmark lies in
    # its loader's first epoch (an epoch start is a cost a 5,005-batch ImageNet epoch hides).
    add_count(parser, "--per-class", 450, "training images per class of the generated set")
    parser.add_argument(
        "--threads-list",
        type=int_list,
        default=(4, 8, 16),
        help="the benchmark's thread/worker sweep (default: 4,8,16)",
    )
    add_count(parser, "--window-batches", 20, "batches per timed loader window")
    parser.add_argument(
        "--train-dir",
        type=path_arg,
        # A new folder per check: python -m train refuses a folder holding another run.
        default=Path("runs") / time.strftime("gpu-check-train-%Y%m%d-%H%M%S"),
        help="output folder of the two training runs, new for each check "
        "(default: runs/gpu-check-train-<date-time>)",
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=STEPS,
        help="steps to leave out (default: none)",
    )
    add_count(parser, "--timeout", 1200, "seconds per step")
    parser.epilog = (
        "exit status: 0 every step passed, 1 some steps failed (gpu_check.json says which), 2"
        " bad usage or no CUDA device, 130 Ctrl-C, 143 SIGTERM"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = start_command(parser, argv)
    with exit_on_user_error(parser):
        if not (REPO / "tests").is_dir():  # installed: no suite to run, no `-m train`
            raise ValueError(
                f"the GPU check runs the project's test suite and python -m train from a "
                f"clone, and {REPO} is an installed copy without them: run python -m "
                "pipelines.gpu_check in the root of a clone"
            )
        check_folder(args.out, "--out")
        check_folder(args.train_dir, "--train-dir")
        if args.data is not None:  # read as it is: found unusable here, not steps later
            for split in ("train", "val"):
                try:
                    list_image_folder(args.data / split)
                except DatasetError as error:  # "dataset root '/x/train' ...": the flag's
                    raise DatasetError(f"--data {args.data}: {error}") from None
        data_folder(args)  # the generated set's: its cache folder can be made

    def check() -> int:
        with exit_on_user_error(parser):  # under interruptible: torch's import takes a while
            machine = _machine()
            if not machine["cuda_available"]:
                raise ValueError(
                    "torch sees no CUDA device on this machine; the GPU check needs one "
                    "(make test runs the CPU suite, where the GPU tests skip)"
                )
        with exit_on_user_error(parser, catch=(OSError,)):  # a full disk: the file named
            report = run(args, machine)
        failed = [name for name, step in report["steps"].items() if step["exit"] != 0]
        return 1 if failed else 0

    def what_is_left() -> str:
        if args.out.is_dir():
            return f"the steps' logs so far are in {args.out}"
        return "nothing was written"

    return interruptible(parser, what_is_left, check)


def entry() -> NoReturn:
    """The command: :func:`main`, then the process ends with its status, also on a Ctrl-C or
    SIGTERM during the interpreter's teardown (:func:`dali_cutmix.procs.exit_with`)."""
    exit_with(main())


if __name__ == "__main__":
    entry()
