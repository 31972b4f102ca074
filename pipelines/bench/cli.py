"""``python -m pipelines.bench``: the command line, and one run from flags to report.

See :mod:`pipelines.bench` for what is measured and how.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from dali_cutmix.cli import (
    add_count,
    add_shared_flags,
    bad_file_advice,
    check_folder,
    check_outside,
    command_line,
    command_name,
    exit_on_user_error,
    from_flags,
    interruptible,
    one_line,
    path_arg,
    start_command,
    worker_count,
    worker_limit,
    write_json,
)
from dali_cutmix.cli import typed_dests as cli_typed_dests
from dali_cutmix.files import (
    BadImageError,
    file_list_named,
    list_image_folder,
    list_root_named,
    read_file_list,
)
from dali_cutmix.procs import exit_with

from .plan import BAD_FILE, FAILED, SWEEPS, BenchConfig, plan_sections

__all__ = [
    "config_from_args",
    "data_root",
    "default_out",
    "fraction_list",
    "get_args_parser",
    "int_list",
    "main",
    "number_list",
    "run_benchmark",
]

logger = logging.getLogger(__name__)

PARTIAL = "results.partial.json"  # the rows so far, which a stopped run keeps; removed at the end


def _environment() -> dict[str, Any]:
    import numpy
    import nvidia.dali
    import PIL
    import torch
    import torchvision
    from PIL import features

    env = {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        # the load as the run ended (1, 5 and 15 minutes: a shared VM's neighbours slow rows)
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "dali": nvidia.dali.__version__,
        "dali_package": _dali_package(),  # "2.4.0" says not which CUDA build
        "numpy": numpy.__version__,
        # the DataLoader's decoder: PIL over libjpeg-turbo
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "commit": _commit(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as info:
            names = [ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")]
    except OSError:
        return platform.processor() or None
    return names[0] if names else None


def _dali_package() -> str | None:
    """The installed DALI distribution (``nvidia-dali-cuda120 2.4.0``)."""
    import importlib.metadata

    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or ""
        if name.startswith("nvidia-dali"):
            return f"{name} {dist.version}"
    return None


def _commit() -> str | None:
    """The project's commit, ``+dirty`` where files differ from it; ``None`` outside a clone."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def check_arch(arch: str) -> None:
    """``arch`` is a torchvision classification model (the training sweep builds it with
    ``torchvision.models.get_model``); it was found only as each training row failed."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        raise ValueError(
            f"--arch must be a torchvision classification model ({', '.join(known[:4])}, ...: "
            f"torchvision.models.list_models(module=torchvision.models)), got {arch!r}"
        )


def data_root(data: Path) -> Path:
    """The folder measured for ``--data``: its ``train/`` where it has one, else itself."""
    return data / "train" if (data / "train").is_dir() else data


def listed_files(config: BenchConfig) -> tuple[str, ...] | None:
    """The files ``--file-list`` names (every one there), or ``None`` without it."""
    if config.file_list is None:
        return None
    with file_list_named("--file-list"), list_root_named("--data"):
        return read_file_list(config.file_list, root=data_root(config.data), must_exist=True).paths


def check_batch_sizes(config: BenchConfig, images: int, typed: set[str] | None = None) -> None:
    """Every batch size the asked sections use fits in the ``images`` measured.

    Each loader refuses a batch larger than its files, so without this check every
    row failed and the table held traceback lines. Raises ``ValueError`` naming the flag,
    and that the value is its default where ``typed`` (the flags' dests) lacks it: "lower
    --batch-size-list" read as a flag the user had given.
    """
    asked = config.asked_sections
    used: list[tuple[str, tuple[int, ...]]] = []
    if asked & {"loaders", "augment", "scaling"}:
        used.append(("--batch-size", (config.batch_size,)))
    if "scaling" in asked:
        used.append(("--batch-size-list", config.batch_size_list))
    if "training" in asked:
        used.append(("--train-batch-size", (config.train_batch_size,)))
    for flag, sizes in used:
        if max(sizes) > images:
            default = typed is not None and flag.lstrip("-").replace("-", "_") not in typed
            raise ValueError(
                f"{flag} {max(sizes)}{' (its default)' * default}: the {images} images "
                f"measured give no batch of {max(sizes)}; "
                + (f"give a smaller {flag}" if default else f"lower {flag}")
            )


class DatasetUnusable(ValueError):
    """The set to measure cannot be had (the generated one's cache or disk): the command
    ends in one line, status 2, before any measurement."""


# Where the generated set's disk is too small: this command's ways to a smaller set or
# another disk.
_NO_ROOM = (
    "free space there, give $DALI_CUTMIX_CACHE a folder on a disk with more room, or "
    "lower --classes or --per-class"
)


def _dataset(config: BenchConfig) -> tuple[Path, dict[str, Any]]:
    from dali_cutmix.synthetic import SyntheticSpec, checked_cache_dir, dataset_stats, generate

    files = None
    if config.data is not None:
        root = data_root(config.data)
        source = str(config.data)
        files = listed_files(config)
        if files is not None:
            source += f", the files listed in {config.file_list}"
    else:
        spec = SyntheticSpec(
            num_classes=config.classes, train_per_class=config.per_class, val_per_class=1
        )
        try:
            cache = checked_cache_dir() / f"bench-{config.classes}x{config.per_class}"
            root = generate(cache, spec, no_room=_NO_ROOM) / "train"
        except ValueError as error:  # a cache it cannot use, a disk too small: a traceback
            raise DatasetUnusable(str(error)) from None
        source = f"generated: {spec.to_dict()}"
    try:
        # every header the loaders will read (ImageFolder's listing where no list names the
        # files): a file DALI refuses ends the run here, not after the torchvision rows
        files = files if files is not None else list_image_folder(root).paths
        stats = dataset_stats(root, files=files).to_dict()
    except BadImageError:  # said with the way on, by the caller
        raise
    except ValueError as error:  # a file changed since it was checked
        raise DatasetUnusable(str(error)) from None
    return root, {"source": source, "root": str(root), **stats}


def failure_line(error: BaseException) -> str:
    """``Type: message`` of a failed measurement, on one line. A DataLoader worker's error
    is the worker's own, its message's last line (the cell read "RuntimeError: Caught
    RuntimeError in DataLoader worker proce", cut before the cause); DALI's many lines are
    joined (one broke the Markdown table in two)."""
    text = str(error)
    if "Original Traceback" in text:  # torch's ExceptionWrapper: the worker's error is last
        return [line.strip() for line in text.splitlines() if line.strip()][-1]
    return f"{type(error).__name__}: {one_line(text)}"


def run_benchmark(config: BenchConfig, command: str) -> dict[str, Any]:
    """Measures every configuration; writes ``results.json`` and ``results.png`` in ``out``."""
    from .measure import measure_sections, run_isolated
    from .report import derive, format_table, plot_results

    root, dataset = _dataset(config)
    logger.info("dataset: %s", json.dumps(dataset))
    partial = config.out / PARTIAL

    def so_far(results: dict[str, Any]) -> None:
        write_json(partial, {"command": command, "dataset": dataset, **results})

    results = measure_sections(plan_sections(config, root), run_isolated, so_far)
    derive(results)
    report = {
        "command": command,
        "environment": _environment(),
        "dataset": dataset,
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()
        },
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **results,
    }
    write_json(config.out / "results.json", report)
    partial.unlink(missing_ok=True)
    plot_results(report, config.out / "results.png")
    print(format_table(report))
    return report


def number_list(
    number: Callable[[str], float], accept: Callable[[float], bool], expected: str
) -> Callable[[str], tuple[float, ...]]:
    """An argparse type for comma-separated ``number``s that ``accept`` takes; a bad value
    says ``expected comma-separated <expected>, got '<text>'``."""

    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(number(v) for v in text.split(","))
        except ValueError:
            values = ()
        if not values or not all(accept(v) for v in values):
            raise argparse.ArgumentTypeError(f"expected comma-separated {expected}, got {text!r}")
        return values

    return parse


int_list = number_list(int, lambda v: v >= 1, "integers >= 1")
fraction_list = number_list(float, lambda v: 0.0 <= v <= 1.0, "numbers in [0, 1]")


def get_args_parser() -> argparse.ArgumentParser:
    """The command's flags; building it imports neither torch nor DALI."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # a prefix (--epoch) is refused, not taken for a flag
        prog=command_name(__package__),
        description="Benchmark DALI and torchvision loaders and training on the same files.",
    )
    add = parser.add_argument
    add(
        "--data",
        type=path_arg,
        help="ImageNet-style folder, or its train/ (default: a generated set)",
    )
    add(
        "--file-list",
        type=path_arg,
        metavar="FILE",
        help="measure only the files this lists, 'path label' per line, labels numbering "
        "--data's classes (e.g. the scan's files.txt: the decodable ones); relative paths "
        "start from --data (default: every image under --data)",
    )
    add(
        "--out",
        type=path_arg,
        help="folder for results.json and results.png (default: runs/bench-<date>-<time>)",
    )
    add_count(parser, "--classes", 40, "classes of the generated set", type=int)
    # 180: 7,200 images, 112 batches of 64, so the default timing (110 batches) fits an epoch
    add_count(
        parser, "--per-class", 180, "training images per class of the generated set", type=int
    )
    add_shared_flags(parser, batch_size=32, help={"batch_size": "loader batch size"}, type=int)
    add(
        "--workers",
        type=worker_count,
        default=os.cpu_count() or 1,
        help="DataLoader workers and DALI threads for the side-by-side figures "
        "(default: the CPU count, %(default)s)",
    )
    add(
        "--threads-list",
        type=number_list(
            int, lambda v: 1 <= v <= worker_limit(), f"integers in [1, {worker_limit()}]"
        ),
        help="the scaling sweep's worker/thread counts, e.g. 1,2,4,8 "
        "(default: powers of 2 up to the CPU count)",
    )
    add(
        "--batch-size-list",
        type=int_list,
        default=(16, 32, 64),
        help="the scaling sweep's batch sizes (default: 16,32,64)",
    )
    add(
        "--hw-decoder-loads",
        type=fraction_list,
        default=(0.0, 0.5, 0.75, 0.99),
        help="the scaling sweep's shares of JPEGs sent to the hardware decoder, DALI on the GPU "
        "only (default: 0,0.5,0.75,0.99)",
    )
    add("--arch", default="resnet50", help="torchvision model trained (default: %(default)s)")
    add_count(parser, "--train-batch-size", 16, "training batch size", type=int)
    add_shared_flags(parser, crop_size=224, type=int)
    # BenchConfig checks the counts, naming the flag (--warmup may be 0)
    for flag, default, help_text in (
        ("--warmup", 10, "batches run before timing (a loader alone: at least its buffer)"),
        ("--windows", 5, "timed windows per loader"),
        ("--window-batches", 20, "batches per loader window"),
        ("--train-windows", 3, "timed training windows"),
        (
            "--train-window-batches",
            10,
            "batches per training window (at least the DataLoader's buffer, 2 x workers + 2)",
        ),
    ):
        add_count(parser, flag, default, help_text, type=int)
    add(
        "--device",
        choices=["auto", "cpu", "gpu", "both"],
        default="auto",
        help="where DALI runs: gpu, cpu, both (GPU and CPU; gpu and both need CUDA), or "
        "auto = both when CUDA is there, else CPU (default: auto)",
    )
    add("--skip-training", action="store_true", help="leave out the training section")
    add(
        "--sweeps",
        type=lambda text: tuple(name.strip() for name in text.split(",")),
        default=("loaders", "training", "scaling"),
        help=f"comma-separated sections to run, of {','.join(SWEEPS)}; augment: each recipe "
        "augmentation's cost on each loader (default: loaders,training,scaling)",
    )
    add("--measure", help=argparse.SUPPRESS)  # internal: one isolated measurement
    parser.epilog = (
        "exit status: 0 every row measured, 1 some rows failed (their cells say why), 2 bad "
        "usage or a file that is no image (named), 130 Ctrl-C, 143 SIGTERM (the rows so far "
        "are kept in --out's results.partial.json)"
    )
    return parser


def default_out() -> Path:
    """Where a run writes without ``--out``: ``runs/bench-<date>-<time>`` in the working folder."""
    return Path("runs") / time.strftime("bench-%Y%m%d-%H%M%S")


def _devices(device: str) -> tuple[str, ...]:
    """Where DALI runs for ``--device``; torch is asked about CUDA only where it decides."""
    if device == "cpu":
        return ("cpu",)
    import torch

    cuda = torch.cuda.is_available()
    if device in ("gpu", "both") and not cuda:  # both: every GPU row failed, and exit 1
        raise ValueError(f"--device {device} needs CUDA, which this machine does not have")
    return {"gpu": ("gpu",), "both": ("gpu", "cpu")}.get(device) or (
        ("gpu", "cpu") if cuda else ("cpu",)  # auto
    )


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` the flags ask for (``--device`` resolved against CUDA).

    Every value is checked before torch loads (seconds), so that a bad one answers at once.
    """
    threads = args.threads_list or tuple(
        n for n in (1, 2, 4, 8, 16, 32) if n <= (os.cpu_count() or 1)
    )
    config = from_flags(BenchConfig, args, out=args.out or default_out(), threads_list=threads)
    return dataclasses.replace(config, devices=_devices(args.device))


def _measure_one(spec: str) -> int:
    """``--measure``: one isolated measurement (:func:`~pipelines.bench.measure.run_isolated`
    reads its lines); 0 measured, 3 a bad file, else the error's traceback."""
    from .measure import measure

    try:
        result = measure(json.loads(spec))
    except BadImageError as error:  # the parent stops the run: every measurement meets it
        print(BAD_FILE + json.dumps({"message": str(error), "path": error.path}), flush=True)
        return 3
    except Exception as error:  # the row's cell says it; the traceback goes to stderr
        print(FAILED + json.dumps(failure_line(error)), flush=True)
        raise
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def typed_dests(argv: Sequence[str] | None) -> set[str]:
    """The ``dest`` of every flag typed in ``argv`` (parsed already, so without a word)."""
    return cli_typed_dests(get_args_parser(), argv)


def _check_unused_flags(config: BenchConfig, typed: set[str]) -> None:
    """Refuses the generated set's sizes beside ``--data`` (a run on another set than asked,
    without a word); warns of ``--hw-decoder-loads`` where no DALI runs on a GPU."""
    named = (("classes", "--classes"), ("per_class", "--per-class"))
    sizes = [flag for dest, flag in named if dest in typed]
    if config.data is not None and sizes:
        raise ValueError(
            f"{' and '.join(sizes)} size{'s' * (len(sizes) == 1)} the generated set, which "
            "--data replaces (its folder is measured as it is); leave "
            f"{'it' if len(sizes) == 1 else 'them'} out"
        )
    if "hw_decoder_loads" in typed and "gpu" not in config.devices:
        logger.warning(
            "--hw-decoder-loads is not used: it sets DALI's decoder on the GPU, and this run "
            "measures DALI on the CPU only (--device %s)",
            "/".join(config.devices),
        )


def _checked_config(
    parser: argparse.ArgumentParser, args: argparse.Namespace, typed: set[str]
) -> BenchConfig:
    """The run's configuration, every flag, ``--data`` and ``--out`` checked before any
    measurement (a bad one ends the command in one line, status 2)."""
    with exit_on_user_error(parser, fields={"devices": "--device"}):
        config = config_from_args(args)
        check_arch(config.arch)
        _check_unused_flags(config, typed)
        # checked, not made: a run that ends before its first row leaves no empty folder;
        # before --data is listed (minutes on ImageNet)
        check_folder(config.out, "--out")
        if config.data is not None:  # found unusable here, not in every measurement
            root = data_root(config.data)
            check_outside(config.out, "--out", root, "the folder measured")
            folder = list_image_folder(root)
            files = listed_files(config)
            check_batch_sizes(config, len(folder if files is None else files), typed)
        else:  # the generated set's folder
            from dali_cutmix.synthetic import checked_cache_dir

            checked_cache_dir()
            check_batch_sizes(config, config.classes * config.per_class, typed)
    return config


def _measure_all(
    parser: argparse.ArgumentParser, config: BenchConfig, argv: Sequence[str] | None
) -> int:
    """The run: 0 every row measured, 1 some failed; a bad file (with the way on), a
    generated set it cannot have (its cache folder, its disk) or a report's write that
    failed (a full disk) ends it in one line."""
    with exit_on_user_error(parser, catch=(BadImageError, DatasetUnusable, OSError)):
        try:
            report = run_benchmark(config, command_line(__package__, argv))
        except BadImageError as error:
            root = data_root(config.data) if config.data is not None else Path(".")
            advice = bad_file_advice(
                error, root, config.file_list, "pipelines.bench", "measure", argv
            )
            raise BadImageError(advice, path=error.path) from None
    failed = [r for section in SWEEPS for r in report[section] if "error" in r]
    return 1 if failed else 0


def _what_is_left(config: BenchConfig | None) -> str:
    """What a run stopped by a signal leaves (``config`` ``None``: stopped while checking)."""
    if config is None:
        return "nothing was written"
    partial = config.out / PARTIAL  # results.json is written at the end
    if partial.is_file():
        return f"the rows measured so far are in {partial}"
    return f"nothing was written to {config.out}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: 0 when every measurement ran, 1 when some failed.

    A bad value or an unusable ``--data`` or ``--out`` ends it before any
    measurement with one line on stderr and status 2
    (:func:`dali_cutmix.cli.exit_on_user_error`). Ctrl-C and SIGTERM end it in one
    line from the checks on (importing torchvision, listing ``--data``: seconds).
    """
    parser = get_args_parser()
    args = start_command(parser, argv)
    if args.measure:
        return _measure_one(args.measure)
    checked: list[BenchConfig] = []  # the configuration, once checked

    def run() -> int:
        checked.append(_checked_config(parser, args, typed_dests(argv)))
        return _measure_all(parser, checked[0], argv)

    return interruptible(parser, lambda: _what_is_left(next(iter(checked), None)), run)


def entry() -> NoReturn:
    """The command: :func:`main`, then the process ends with its status, also on a Ctrl-C or
    SIGTERM during the interpreter's teardown (:func:`dali_cutmix.procs.exit_with`)."""
    exit_with(main())
