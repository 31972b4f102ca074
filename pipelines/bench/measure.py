"""How the benchmark measures: timed windows of batches, each configuration in a fresh process.

:func:`measure` runs one spec (see :mod:`pipelines.bench.plan`) in this
process; :func:`run_isolated` runs it in a new Python process, so memory and
warm caches don't leak between configurations; :func:`measure_sections` runs
every spec of a plan, each distinct measurement once.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from dali_cutmix.config import AugmentConfig, MixConfig, MixMode
from dali_cutmix.files import BadImageError, class_folders

from .plan import (
    AUGMENTS,
    BAD_FILE,
    FAILED,
    MIXES,
    RECIPE_MIX,
    SETTLE_STEPS,
    buffered_batches,
    feed_format,
    measurement_key,
    spec_label,
)

__all__ = [
    "buffered_batches",
    "measure",
    "measure_sections",
    "measure_windows",
    "own_peak_rss_mb",
    "prepare_images",
    "run_isolated",
    "timing",
    "tree_peak_rss_mb",
    "tree_pss_mb",
]

logger = logging.getLogger(__name__)


def _sync(tensor: torch.Tensor | None) -> None:
    if isinstance(tensor, torch.Tensor) and tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)


def measure_windows(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    warmup: int,
    windows: int,
    window_batches: int,
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
    drain: int = 0,
) -> dict[str, Any]:
    """Times ``windows`` windows of ``window_batches`` batches after ``warmup`` batches.

    ``step`` (a training step, say) runs on every batch; CUDA is synchronised
    at each window's edges only. ``batches`` is cycled if it runs out.

    ``drain``: after the warm-up, this many batches are taken without the step, as fast
    as the loader gives them, then :data:`~pipelines.bench.plan.SETTLE_STEPS` more run the
    step untimed. The warm-up's slow first steps (cuDNN's autotuning, lazy starts) let the
    loader fill its buffer; drained, no timed batch was made before the clock started,
    whatever the loader's speed against the model's.

    Returns:
        ``{"images_per_s": images over all windows / their seconds, "median": the
        windows' median rate, "min": .., "max": .., "window_rates": [rate of each]}``.
    """

    def forever() -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            empty = True
            for batch in batches:
                empty = False
                yield batch
            if empty:
                raise ValueError("the loader yielded no batch")

    stream = iter(forever())
    last = None
    for _ in range(warmup):
        images, targets = next(stream)
        last = step(images, targets) if step else images
    if drain:
        _sync(last)
        for _ in range(drain):
            next(stream)
    if drain or step is not None:  # the ceiling, with no buffer to drain, settles as its feeds
        for _ in range(SETTLE_STEPS):
            images, targets = next(stream)
            last = step(images, targets) if step else images
    rates, total_images, total_seconds = [], 0, 0.0
    for _ in range(windows):
        _sync(last)
        start, count = time.perf_counter(), 0
        for _ in range(window_batches):
            images, targets = next(stream)
            last = step(images, targets) if step else images
            count += images.shape[0]
        _sync(last)
        seconds = time.perf_counter() - start
        rates.append(count / seconds)
        total_images, total_seconds = total_images + count, total_seconds + seconds
    return {
        # All windows together: a window of a few DataLoader worker rounds is bursty, and the
        # median of such windows is noisy (on the H100, 16 workers' windows of 20 batches
        # spread 1,330-2,685 images/s).
        "images_per_s": total_images / total_seconds,
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        # not "windows", the spec's count: a row reused from another section had the count
        # over its rates in results.json, and a row measured had the rates over the count
        "window_rates": rates,
    }


def prepare_images(
    images: torch.Tensor, *, layout: str, channels_last: bool, device: torch.device
) -> torch.Tensor:
    """A batch as the model takes it: NCHW ``[B, 3, H, W]`` on ``device``.

    An NHWC batch ``[B, H, W, 3]`` becomes ``images.permute(0, 3, 1, 2)``, an
    NCHW view that is already channels-last in memory (no copy); the memory
    format is then channels-last or contiguous as ``channels_last`` says.
    """
    images = images.to(device, non_blocking=True)
    if layout == "NHWC":
        images = images.permute(0, 3, 1, 2)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return images.contiguous(memory_format=memory_format)


def _mix_config(name: str, num_classes: int, loader: str) -> MixConfig | None:
    """The mixing ``name``; torchvision's CutMix and MixUp draw once per batch, DALI's
    per sample (each loader's own way, as ``python -m train`` defaults them)."""
    params = RECIPE_MIX if name == "recipe" else MIXES[name]
    if params is None:
        return None
    mode = MixMode.BATCH if loader == "torchvision" else MixMode.ELEM
    return MixConfig(num_classes=num_classes, **{"mode": mode, **params})


def _augment_config(name: str) -> AugmentConfig | None:
    params = AUGMENTS[name].augment
    return None if params is None else AugmentConfig(**params)


def spec_classes(spec: dict[str, Any]) -> int:
    """The classes of a spec's files: its root's class folders, which also name a file
    list's labels (:func:`dali_cutmix.files.read_file_list` with a root)."""
    return len(class_folders(spec["root"]))


def _build_loader(spec: dict[str, Any]):
    """The loader a measurement spec names, built in the measuring process."""
    root = Path(spec["root"])
    num_classes = spec_classes(spec)
    settings = {
        "train": True,
        "batch_size": spec["batch_size"],
        "mix": _mix_config(spec["mix"], num_classes, spec["loader"]),
        "augment": _augment_config(spec.get("augment", "none")),
        "crop_size": spec["crop_size"],
        "seed": 0,
    }
    if spec["loader"] == "torchvision":
        from ..torchvision_ref import make_torchvision_loader

        return make_torchvision_loader(
            root, file_list=spec.get("file_list"), workers=spec["workers"], **settings
        )
    from ..imagenet import GpuDecoderOptions, make_loader

    layout = feed_format(spec)["layout"]
    if "hw_decoder_load" in spec:
        settings["decoder"] = GpuDecoderOptions(hw_decoder_load=spec["hw_decoder_load"])
    return make_loader(
        root,
        file_list=spec.get("file_list"),
        device=spec["device"],
        num_threads=spec["workers"],
        output_layout=layout,
        **settings,
    )


def _training_step(spec: dict[str, Any], num_classes: int):
    """A plain ResNet step (SGD, cross-entropy) in the spec's :func:`feed_format`."""
    import torchvision

    fmt = feed_format(spec)
    device = torch.device("cuda" if spec["device"] == "gpu" else "cpu")
    model = torchvision.models.get_model(spec["arch"], num_classes=num_classes).to(device)
    if fmt["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    criterion = torch.nn.CrossEntropyLoss()

    def step(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        images = prepare_images(
            images, layout=fmt["layout"], channels_last=fmt["channels_last"], device=device
        )
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fmt["amp"] == "bf16"):
            loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def _synthetic_batches(
    spec: dict[str, Any], num_classes: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ceiling's input: one fixed batch already on the device, in the spec's layout, its
    targets soft ``[B, num_classes]`` float32 as the mixed feeds' are (integer labels made
    the ceiling's loss a little cheaper than theirs)."""
    device = torch.device("cuda" if spec["device"] == "gpu" else "cpu")
    gen = torch.Generator().manual_seed(0)
    size, batch = spec["crop_size"], spec["batch_size"]
    nhwc = feed_format(spec)["layout"] == "NHWC"
    shape = (batch, size, size, 3) if nhwc else (batch, 3, size, size)
    images = torch.randn(shape, generator=gen)
    labels = torch.randint(0, num_classes, (spec["batch_size"],), generator=gen)
    targets = torch.nn.functional.one_hot(labels, num_classes).float()
    return [(images.to(device), targets.to(device))]


def _peak_kb(pid: int | str) -> int | None:
    """A process's peak RSS in KiB (``VmHWM`` in ``/proc/PID/status``); ``None`` where it is
    gone or ``/proc`` is not Linux's."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmHWM:")), None)


def _pss_kb(pid: int | str) -> int | None:
    """A process's proportional set size in KiB (``Pss`` in ``/proc/PID/smaps_rollup``: each
    page shared by n processes counts 1/n); ``None`` where it is gone or unreadable."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    return next((int(ln.split()[1]) for ln in rollup.splitlines() if ln.startswith("Pss:")), None)


def _tree(root: int) -> list[int]:
    """``root`` and its living descendants (the DataLoader's workers, and the fork server and
    resource tracker that start them)."""
    pids, todo = [], [root]
    while todo:
        current = todo.pop()
        if current in pids:
            continue
        pids.append(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:  # a thread may end while it is read: its children are elsewhere then
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return pids


def tree_peak_rss_mb(pid: int | None = None) -> float | None:
    """The sum of each process's peak RSS (``VmHWM``) over ``pid`` (default: this one) and its
    living descendants: the DataLoader's workers included, which ``RUSAGE_CHILDREN`` misses
    while they live. Pages shared (the fork server's, which the workers are forked from,
    the libraries') count once per process, so it is an upper bound (a 2-worker
    DataLoader on the 2-core machine: 4,192 MiB, its :func:`tree_pss_mb` 2,933). ``None``
    where ``/proc`` is not Linux's."""
    root = os.getpid() if pid is None else pid
    if _peak_kb(root) is None:
        return None
    return sum(_peak_kb(p) or 0 for p in _tree(root)) / 1024  # 0: it ended meanwhile


def tree_pss_mb(pid: int | None = None) -> float | None:
    """The host memory of ``pid`` (default: this one) and its living descendants now: the
    sum of their proportional set sizes, each shared page counted once over them all.
    ``None`` where ``/proc`` has no ``smaps_rollup`` (not Linux, or before 4.14)."""
    root = os.getpid() if pid is None else pid
    if _pss_kb(root) is None:
        return None
    return sum(_pss_kb(p) or 0 for p in _tree(root)) / 1024


def own_peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM`` where ``/proc`` has it, else ``ru_maxrss``.

    Linux's ``ru_maxrss`` is no good in a process started by ``subprocess``: it keeps the
    parent's RSS at the fork, which ``exec`` does not reset (every isolated measurement
    reported at least the benchmark's own process until this was found).
    """
    peak = _peak_kb("self")
    if peak is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peak / 1024


def _memory_figures(device: str) -> dict[str, float | None]:
    figures = {
        "peak_rss_mb": own_peak_rss_mb(),
        "tree_peak_rss_mb": tree_peak_rss_mb(),
        # the tree's memory as it stands, while the loader and its workers live: the peaks'
        # sum counted each shared page once per process (the fork server's in every worker)
        "tree_pss_mb": tree_pss_mb(),
    }
    if device == "gpu" and torch.cuda.is_available():
        # Device-wide at the end of the run: DALI's memory pools (which never shrink) and
        # torch's; torch's own peak beside it.
        free, total = torch.cuda.mem_get_info()
        figures["gpu_used_mb"] = (total - free) / 2**20
        figures["torch_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    return figures


def timing(spec: dict[str, Any]) -> dict[str, int]:
    """The spec's warm-up, drain and windows, so that no timed batch was buffered before
    timing began.

    A loader timed alone empties its buffer within ``buffered_batches`` batches of the
    warm-up. Feeding a model, it refills its buffer during the warm-up's slow first steps,
    and one slower than the model empties it only slowly: after ``B / (1 - r)`` batches
    for ``B`` buffered and a loader ``r`` times as fast as the model, 340 batches of a
    16-worker DataLoader at r = 0.9. (Found on the H100, then in a simulation: 2 warm-up
    batches timed the DataLoader's 32 prefetched batches, reporting it 2.2x faster feeding
    ResNet-50 than it loads alone; twice the buffer as warm-up still overstated a loader
    at r = 0.75-0.9 by up to a third.) So the buffer is drained after the warm-up
    (:func:`measure_windows`), and windows are at least a buffer long.
    """
    buffered = buffered_batches(spec)
    if spec["kind"] == "train":
        return {
            "warmup": max(spec["warmup"], 1),  # the slow first step comes before the drain
            "drain": buffered,
            "windows": spec["windows"],
            "window_batches": max(spec["window_batches"], buffered),
        }
    return {
        "warmup": max(spec["warmup"], buffered),
        "drain": 0,
        "windows": spec["windows"],
        "window_batches": spec["window_batches"],
    }


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs one measurement spec in this process (see :func:`run_isolated`)."""
    torch.manual_seed(0)
    num_classes = spec_classes(spec)
    windows = timing(spec)
    step = _training_step(spec, num_classes) if spec["kind"] == "train" else None
    if spec["kind"] == "train" and spec["loader"] == "synthetic":
        feed = _synthetic_batches(spec, num_classes)
    else:
        feed = _build_loader(spec)
    # The ceiling's feed is one batch on the device, not an epoch of a data set.
    epoch = {"epoch_batches": len(feed)} if spec["loader"] != "synthetic" else {}
    result = measure_windows(feed, step=step, **windows)
    memory = _memory_figures(spec["device"])  # while ``feed`` and its workers are alive
    del feed
    return {**result, "timing": windows, **epoch, **memory}


def run_isolated(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs :func:`measure` in a fresh Python process; returns its result (or the error).

    Raises:
        BadImageError: the measurement met a file that does not decode (named); every
            other measurement would meet it too.
    """
    cmd = [sys.executable, "-m", __package__, "--measure", json.dumps(spec)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    bad = [ln for ln in proc.stdout.splitlines() if ln.startswith(BAD_FILE)]
    if bad:  # a file that the header check let through (truncated): named, the run stops
        found = json.loads(bad[-1][len(BAD_FILE) :])
        raise BadImageError(found["message"], path=found["path"])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        said = [ln for ln in proc.stdout.splitlines() if ln.startswith(FAILED)]
        if said:  # the child's error, on one line (its traceback is on its stderr)
            error = json.loads(said[-1][len(FAILED) :])
        else:  # it died without a word (a signal, the kernel's OOM killer): its last lines
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            error = " | ".join(tail) or f"exit status {proc.returncode}, without a word"
        logger.error("%s failed: %s", spec_label(spec), error)
        return {**spec, "error": error}
    result = {**spec, **json.loads(lines[-1][len("RESULT ") :])}
    logger.info(
        "%-44s %8.1f img/s  [%.1f .. %.1f]  (%.0fs)",
        spec_label(spec),
        result["images_per_s"],
        result["min"],
        result["max"],
        time.perf_counter() - started,
    )
    return result


def measure_sections(
    sections: dict[str, list[dict[str, Any]]],
    run: Callable[[dict[str, Any]], dict[str, Any]],
    so_far: Callable[[dict[str, list[dict[str, Any]]]], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """``run``'s result for every spec, each distinct measurement run once.

    A spec that an earlier one repeats (say, the augmentation sweep's baseline,
    which is the loaders section's ``mix="off"``) gets a copy of that result,
    with its own spec fields and ``measured_in`` naming the section that ran it.
    ``so_far`` is given the results measured so far after each one (a run killed by its
    time limit keeps them).
    """
    done: dict[str, tuple[str, dict[str, Any]]] = {}
    results: dict[str, list[dict[str, Any]]] = {}
    # Each measurement is said as it starts: a row was logged only at its end, and a CPU
    # training row is minutes of silence.
    total = len({measurement_key(spec) for specs in sections.values() for spec in specs})
    for section, specs in sections.items():
        rows = []
        for spec in specs:
            key = measurement_key(spec)
            if key in done:
                first, result = done[key]
                rows.append({**result, **spec, "measured_in": first})
            else:
                logger.info("measuring %d of %d: %s", len(done) + 1, total, spec_label(spec))
                result = run(spec)
                done[key] = (section, result)
                rows.append(result)
                if so_far is not None:
                    so_far({**results, section: list(rows)})
        results[section] = rows
    return results
