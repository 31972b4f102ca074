"""Pipeline benchmark: loaders and training throughput, side by side, on the same files.

    python -m pipelines.bench                      # generated ImageNet-like set, this machine
    python -m pipelines.bench --data /imagenet     # a real ImageNet-style folder (uses DATA/train)
    python -m pipelines.bench --sweeps augment     # only what each recipe augmentation costs

Every figure is measured in this run: each configuration runs in a fresh
process (so memory and warm caches don't leak between configurations), skips
``--warmup`` batches (for the DataLoader at least ``2 * workers + 2``, more
than its workers prefetch, so no window is served from batches buffered before
timing began), then times ``--windows`` windows of ``--window-batches``
batches and reports the median images/s with the min and max over windows.
Ratios are against the torchvision DataLoader measured in the same run.
A configuration that two sections share (a scaling point, the augmentation
sweep's baseline) is measured once and reported in both, marked ``measured_in``.

``--sweeps`` picks the sections: ``loaders`` (each loader with each mixing),
``training``, ``scaling`` (threads and batch size) by default, and
``augment``: each loader with each augmentation of torchvision's ResNet-50
recipe and timm's (:data:`AUGMENTS`) and with the whole recipe, each one's
cost given as the time it adds to the same loader without augmentation.
Results go to ``OUT/results.json`` and ``OUT/results.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from dali_cutmix.cli import exit_on_user_error
from dali_cutmix.config import AugmentConfig, MixConfig
from dali_cutmix.files import list_image_folder

__all__ = [
    "AUGMENTS",
    "AugmentCase",
    "BenchConfig",
    "MIXES",
    "RECIPE_MIX",
    "SWEEPS",
    "feed_format",
    "measure_sections",
    "measure_windows",
    "prepare_images",
    "run_benchmark",
    "main",
]

log = logging.getLogger(__name__)

# The three mixing settings every loader is measured with: none, CutMix alone
# (the paper's ImageNet recipe) and timm's usual CutMix/MixUp switching.
MIXES: dict[str, dict[str, Any] | None] = {
    "off": None,
    "cutmix": {"cutmix_alpha": 1.0, "mixup_alpha": 0.0},
    "switch": {"cutmix_alpha": 1.0, "mixup_alpha": 0.8, "switch_prob": 0.5},
}
# torchvision's ResNet-50 recipe's mixing: --mixup-alpha 0.2 --cutmix-alpha 1.0
# (one of the two per batch) --label-smoothing 0.1.
RECIPE_MIX: dict[str, Any] = {
    "mixup_alpha": 0.2,
    "cutmix_alpha": 1.0,
    "switch_prob": 0.5,
    "label_smoothing": 0.1,
}


@dataclasses.dataclass(frozen=True)
class AugmentCase:
    """One configuration of the augmentation sweep.

    Attributes:
        label: its name in the table and the plot.
        augment: :class:`AugmentConfig` fields, or ``None`` for no augmentation.
        mix: a key of :data:`MIXES`, or ``"recipe"`` for :data:`RECIPE_MIX`.
    """

    label: str
    augment: dict[str, Any] | None
    mix: str = "off"


# The augmentation sweep (--sweeps augment): each augmentation alone, then torchvision's
# whole ResNet-50 recipe; every one is compared with "none" on the same loader.
AUGMENTS: dict[str, AugmentCase] = {
    "none": AugmentCase("none", None),
    "ta_wide": AugmentCase("TrivialAugmentWide", {"auto_augment": "ta_wide"}),
    "ra": AugmentCase(
        "RandAugment n=2 m=9", {"auto_augment": "ra", "ra_num_ops": 2, "ra_magnitude": 9}
    ),
    "imagenet": AugmentCase("AutoAugment imagenet", {"auto_augment": "imagenet"}),
    "erase": AugmentCase("RandomErasing 0.1", {"random_erase": 0.1}),
    "recipe": AugmentCase(
        "ResNet-50 recipe: TA wide, erase 0.1, MixUp 0.2/CutMix 1.0, smoothing 0.1",
        {"auto_augment": "ta_wide", "random_erase": 0.1},
        mix="recipe",
    ),
}

SWEEPS = ("loaders", "training", "scaling", "augment")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to measure. ``*_list`` fields are the scaling sweeps."""

    out: Path
    data: Path | None = None
    classes: int = 40
    per_class: int = 50
    batch_size: int = 32
    workers: int = 2
    threads_list: tuple[int, ...] = (1, 2)
    batch_size_list: tuple[int, ...] = (16, 32, 64)
    arch: str = "resnet50"
    train_batch_size: int = 16
    crop_size: int = 224
    warmup: int = 10
    windows: int = 5
    window_batches: int = 20
    train_windows: int = 3
    train_window_batches: int = 2
    devices: tuple[str, ...] = ("cpu",)
    skip_training: bool = False
    sweeps: tuple[str, ...] = ("loaders", "training", "scaling")

    def __post_init__(self) -> None:
        for name in (
            "classes",
            "per_class",
            "batch_size",
            "workers",
            "train_batch_size",
            "crop_size",
            "windows",
            "window_batches",
            "train_windows",
            "train_window_batches",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        for device in self.devices:
            if device not in ("cpu", "gpu"):
                raise ValueError(f"devices must be cpu and/or gpu, got {device!r}")
        unknown = [name for name in self.sweeps if name not in SWEEPS]
        if unknown or not self.sweeps:
            raise ValueError(
                f"sweeps must be one or more of {', '.join(SWEEPS)}, got {','.join(self.sweeps)!r}"
            )


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
) -> dict[str, Any]:
    """Times ``windows`` windows of ``window_batches`` batches after ``warmup`` batches.

    ``step`` (a training step, say) runs on every batch; CUDA is synchronised
    at each window's edges only. ``batches`` is cycled if it runs out.

    Returns:
        ``{"images_per_s": median, "min": .., "max": .., "windows": [...]}``.
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
    rates = []
    for _ in range(windows):
        _sync(last)
        start, count = time.perf_counter(), 0
        for _ in range(window_batches):
            images, targets = next(stream)
            last = step(images, targets) if step else images
            count += images.shape[0]
        _sync(last)
        rates.append(count / (time.perf_counter() - start))
    return {
        "images_per_s": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "windows": rates,
    }


def feed_format(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec's ``layout``, ``channels_last`` and ``amp``: as given, else the device's defaults.

    On the GPU, DALI and the synthetic ceiling yield NHWC batches, fed to a
    channels-last model under bf16 autocast; on the CPU, NCHW in float32.
    torchvision's DataLoader yields NCHW only. Every combination also runs on
    the CPU, which is how the GPU's branches are tested without a GPU.

    Raises:
        ValueError: an unknown layout or amp, or NHWC from the torchvision loader.
    """
    gpu = spec["device"] == "gpu"
    nhwc = gpu and spec["loader"] != "torchvision"
    layout = spec.get("layout", "NHWC" if nhwc else "NCHW")
    amp = spec.get("amp", "bf16" if gpu else "off")
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    if layout == "NHWC" and spec["loader"] == "torchvision":
        raise ValueError("the torchvision loader yields NCHW batches; use layout 'NCHW'")
    if amp not in ("off", "bf16"):
        raise ValueError(f"amp must be 'off' or 'bf16', got {amp!r}")
    return {"layout": layout, "channels_last": bool(spec.get("channels_last", gpu)), "amp": amp}


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


def _mix_config(name: str, num_classes: int) -> MixConfig | None:
    params = RECIPE_MIX if name == "recipe" else MIXES[name]
    return None if params is None else MixConfig(num_classes=num_classes, **params)


def _augment_config(name: str) -> AugmentConfig | None:
    params = AUGMENTS[name].augment
    return None if params is None else AugmentConfig(**params)


def _build_loader(spec: dict[str, Any]):
    """The loader a measurement spec names, built in the measuring process."""
    root = Path(spec["root"])
    num_classes = sum(1 for p in root.iterdir() if p.is_dir())
    mix = _mix_config(spec["mix"], num_classes)
    augment = _augment_config(spec.get("augment", "none"))
    if spec["loader"] == "torchvision":
        from pipelines.torchvision_ref import make_torchvision_loader

        return make_torchvision_loader(
            root,
            train=True,
            batch_size=spec["batch_size"],
            workers=spec["workers"],
            mix=mix,
            augment=augment,
            crop_size=spec["crop_size"],
            seed=0,
        )
    from pipelines.imagenet import make_loader

    return make_loader(
        root,
        train=True,
        batch_size=spec["batch_size"],
        device=spec["device"],
        mix=mix,
        augment=augment,
        num_threads=spec["workers"],
        crop_size=spec["crop_size"],
        seed=0,
        output_layout=feed_format(spec)["layout"],
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
    """The ceiling's input: one fixed batch already on the device, in the spec's layout."""
    device = torch.device("cuda" if spec["device"] == "gpu" else "cpu")
    gen = torch.Generator().manual_seed(0)
    size, batch = spec["crop_size"], spec["batch_size"]
    nhwc = feed_format(spec)["layout"] == "NHWC"
    shape = (batch, size, size, 3) if nhwc else (batch, 3, size, size)
    images = torch.randn(shape, generator=gen)
    targets = torch.randint(0, num_classes, (spec["batch_size"],), generator=gen)
    return [(images.to(device), targets.to(device))]


def _memory_figures(device: str) -> dict[str, float]:
    figures = {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    if device == "gpu" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        figures["gpu_used_mb"] = (total - free) / 2**20  # device-wide: DALI's pools included
    return figures


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs one measurement spec in this process (see :func:`_run_isolated`)."""
    torch.manual_seed(0)
    num_classes = sum(1 for p in Path(spec["root"]).iterdir() if p.is_dir())
    warmup = spec["warmup"]
    if spec["loader"] == "torchvision" and spec["kind"] == "loader":
        warmup = max(warmup, 2 * spec["workers"] + 2)  # drain the workers' prefetched batches
    windows = {
        "warmup": warmup,
        "windows": spec["windows"],
        "window_batches": spec["window_batches"],
    }
    if spec["kind"] == "train":
        step = _training_step(spec, num_classes)
        feed = (
            _synthetic_batches(spec, num_classes)
            if spec["loader"] == "synthetic"
            else _build_loader(spec)
        )
        result = measure_windows(feed, step=step, **windows)
    else:
        result = measure_windows(_build_loader(spec), **windows)
    return {**result, **_memory_figures(spec["device"])}


def _run_isolated(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs :func:`measure` in a fresh Python process; returns its result (or the error)."""
    cmd = [sys.executable, "-m", "pipelines.bench", "--measure", json.dumps(spec)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        log.error("%s failed: %s", _label(spec), " | ".join(tail))
        return {**spec, "error": " | ".join(tail)}
    result = {**spec, **json.loads(lines[-1][len("RESULT ") :])}
    log.info(
        "%-44s %8.1f img/s  [%.1f .. %.1f]  (%.0fs)",
        _label(spec),
        result["images_per_s"],
        result["min"],
        result["max"],
        time.perf_counter() - started,
    )
    return result


def _label(spec: dict[str, Any]) -> str:
    name = spec["loader"] if spec["loader"] != "dali" else f"dali-{spec['device']}"
    parts = [
        spec["kind"],
        name,
        f"mix={spec['mix']}",
        *([f"augment={spec['augment']}"] if spec.get("augment", "none") != "none" else []),
        f"w={spec['workers']}",
        f"bs={spec['batch_size']}",
    ]
    return " ".join(parts)


def _specs(config: BenchConfig, root: Path) -> dict[str, list[dict[str, Any]]]:
    """Every measurement of the run, grouped by section (empty for sweeps not asked for)."""
    base = {
        "root": str(root),
        "crop_size": config.crop_size,
        "warmup": config.warmup,
        "windows": config.windows,
        "window_batches": config.window_batches,
        "batch_size": config.batch_size,
        "workers": config.workers,
        "kind": "loader",
        "augment": "none",
    }
    feeds = [("torchvision", "cpu")] + [("dali", device) for device in config.devices]
    asked = set(config.sweeps) - ({"training"} if config.skip_training else set())
    sections = {
        "loaders": [
            {**base, "loader": loader, "device": device, "mix": mix}
            for loader, device in feeds
            for mix in MIXES
        ],
        "training": _training_specs(config, base),
        "scaling": _scaling_specs(config, base, feeds),
        "augment": [
            {**base, "loader": loader, "device": device, "mix": case.mix, "augment": name}
            for loader, device in feeds
            for name, case in AUGMENTS.items()
        ],
    }
    # Recorded in every spec (and so in results.json): how the batches reach the model.
    return {
        name: [{**spec, **feed_format(spec)} for spec in specs] if name in asked else []
        for name, specs in sections.items()
    }


def _scaling_specs(
    config: BenchConfig, base: dict[str, Any], feeds: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    scaling = []
    for loader, device in feeds:
        common = {**base, "loader": loader, "device": device, "mix": "cutmix"}
        scaling += [
            {**common, "workers": threads, "sweep": "workers"} for threads in config.threads_list
        ]
        scaling += [
            {**common, "batch_size": batch_size, "sweep": "batch_size"}
            for batch_size in config.batch_size_list
        ]
    return scaling


def _training_specs(config: BenchConfig, base: dict[str, Any]) -> list[dict[str, Any]]:
    train_device = "gpu" if "gpu" in config.devices else "cpu"
    train_base = {
        **base,
        "kind": "train",
        "arch": config.arch,
        "device": train_device,
        "mix": "cutmix",
        "batch_size": config.train_batch_size,
        "windows": config.train_windows,
        "window_batches": config.train_window_batches,
        "warmup": min(config.warmup, 2),
    }
    return [
        {**train_base, "loader": "synthetic", "mix": "off"},
        {**train_base, "loader": "dali"},
        {**train_base, "loader": "torchvision", "device": train_device},
    ]


def _measurement_key(spec: dict[str, Any]) -> str:
    """What makes two specs the same measurement: all but the section's ``sweep`` label."""
    return json.dumps({k: v for k, v in spec.items() if k != "sweep"}, sort_keys=True)


def measure_sections(
    sections: dict[str, list[dict[str, Any]]],
    run: Callable[[dict[str, Any]], dict[str, Any]],
) -> dict[str, list[dict[str, Any]]]:
    """``run``'s result for every spec, each distinct measurement run once.

    A spec that an earlier one repeats (say, the augmentation sweep's baseline,
    which is the loaders section's ``mix="off"``) gets a copy of that result,
    with its own spec fields and ``measured_in`` naming the section that ran it.
    """
    done: dict[str, tuple[str, dict[str, Any]]] = {}
    results: dict[str, list[dict[str, Any]]] = {}
    for section, specs in sections.items():
        rows = []
        for spec in specs:
            key = _measurement_key(spec)
            if key in done:
                first, result = done[key]
                rows.append({**result, **spec, "measured_in": first})
            else:
                result = run(spec)
                done[key] = (section, result)
                rows.append(result)
        results[section] = rows
    return results


def _derive(results: dict[str, list[dict[str, Any]]]) -> None:
    """Adds ratios: vs torchvision (same mix), CutMix cost, % of the training ceiling."""
    loaders = [r for r in results["loaders"] if "error" not in r]
    by_key = {(r["loader"], r["device"], r["mix"]): r["images_per_s"] for r in loaders}
    for r in loaders:
        baseline = by_key.get(("torchvision", "cpu", r["mix"]))
        if baseline:
            r["vs_torchvision"] = r["images_per_s"] / baseline
        plain = by_key.get((r["loader"], r["device"], "off"))
        if plain and r["mix"] != "off":
            r["mix_cost_pct"] = 100.0 * (plain - r["images_per_s"]) / plain
    training = [r for r in results["training"] if "error" not in r]
    ceiling = next((r["images_per_s"] for r in training if r["loader"] == "synthetic"), None)
    for r in training:
        if ceiling:
            r["pct_of_ceiling"] = 100.0 * r["images_per_s"] / ceiling
    _derive_augment(results.get("augment", []))


def _derive_augment(rows: list[dict[str, Any]]) -> None:
    """Adds each row's ms per batch and, against augment "none" on the same loader, its cost.

    ``added_ms_per_batch`` is the time the augmentation adds to a batch and
    ``cost_pct`` that time as a share of the batch's time without it
    (``100 * (plain_rate / rate - 1)``): +100 % means twice as long per batch.
    ``vs_torchvision`` compares with the torchvision loader doing the same.
    """
    ok = [r for r in rows if "error" not in r]
    rates = {(r["loader"], r["device"], r["augment"]): r["images_per_s"] for r in ok}
    for r in ok:
        rate = r["images_per_s"]
        r["ms_per_batch"] = 1000.0 * r["batch_size"] / rate
        plain = rates.get((r["loader"], r["device"], "none"))
        if plain and r["augment"] != "none":
            r["added_ms_per_batch"] = r["ms_per_batch"] - 1000.0 * r["batch_size"] / plain
            r["cost_pct"] = 100.0 * (plain / rate - 1.0)
        baseline = rates.get(("torchvision", "cpu", r["augment"]))
        if baseline:
            r["vs_torchvision"] = rate / baseline


def _environment() -> dict[str, Any]:
    import nvidia.dali
    import torchvision

    env = {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "dali": nvidia.dali.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def data_root(data: Path) -> Path:
    """The folder measured for ``--data``: its ``train/`` where it has one, else itself."""
    return data / "train" if (data / "train").is_dir() else data


def _dataset(config: BenchConfig) -> tuple[Path, dict[str, Any]]:
    from dali_cutmix.synthetic import SyntheticSpec, dataset_stats, generate

    if config.data is not None:
        root = data_root(config.data)
        source = str(config.data)
    else:
        spec = SyntheticSpec(
            num_classes=config.classes, train_per_class=config.per_class, val_per_class=1
        )
        cache = (
            Path(os.environ.get("DALI_CUTMIX_CACHE", "data"))
            / f"bench-{config.classes}x{config.per_class}"
        )
        root = generate(cache, spec) / "train"
        source = f"generated: {spec.to_dict()}"
    return root, {"source": source, "root": str(root), **dataset_stats(root).to_dict()}


def run_benchmark(config: BenchConfig, command: str) -> dict[str, Any]:
    """Measures every configuration; writes ``results.json`` and ``results.png`` in ``out``."""
    root, dataset = _dataset(config)
    log.info("dataset: %s", json.dumps(dataset))
    results = measure_sections(_specs(config, root), _run_isolated)
    _derive(results)
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
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "results.json").write_text(json.dumps(report, indent=2))
    plot_results(report, config.out / "results.png")
    print(format_table(report))
    return report


def _loader_name(r: dict[str, Any]) -> str:
    return r["loader"] if r["loader"] != "dali" else f"DALI {r['device'].upper()}"


def format_table(report: dict[str, Any]) -> str:
    """The run's figures as Markdown tables (the README shows the same), one per section run."""
    env = report["environment"]
    machine = env.get("gpu", "no GPU") + f", {env['cpu_count']} CPU cores"
    lines = [f"Machine: {machine}; DALI {env['dali']}, torch {env['torch']}"]
    if report["loaders"]:
        lines += _loaders_table(report["loaders"])
    if report["training"]:
        lines += ["", "| training feed | images/s | % of ceiling |", "|---|---:|---:|"]
        for r in report["training"]:
            if "error" in r:
                lines.append(f"| {r['loader']} | failed | |")
                continue
            lines.append(
                f"| {r['arch']} on {r['device']} <- {r['loader']} ({r['mix']}) "
                f"| {r['images_per_s']:.1f} | {r.get('pct_of_ceiling', 0):.0f} % |"
            )
    if report["scaling"]:
        lines += [
            "",
            "| scaling | loader | value | images/s | peak host RSS MB |",
            "|---|---|---:|---:|---:|",
        ]
        for r in report["scaling"]:
            if "error" in r:
                continue
            value = r["workers"] if r["sweep"] == "workers" else r["batch_size"]
            name = r["loader"] if r["loader"] != "dali" else f"dali-{r['device']}"
            rate, rss = r["images_per_s"], r["peak_rss_mb"]
            lines.append(f"| {r['sweep']} | {name} | {value} | {rate:.1f} | {rss:.0f} |")
    if report.get("augment"):
        lines += _augment_table(report["augment"])
    return "\n".join(lines)


def _loaders_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "| loader | mix | images/s (median) | min-max | vs torchvision | mixing cost |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {_label(r)} | failed: {r['error'][:60]} | | | | |")
            continue
        cost = f"{r['mix_cost_pct']:.1f} %" if "mix_cost_pct" in r else "-"
        ratio = f"{r['vs_torchvision']:.2f}x" if "vs_torchvision" in r else "-"
        lines.append(
            f"| {_loader_name(r)} ({r['workers']} w) | {r['mix']} | {r['images_per_s']:.1f} "
            f"| {r['min']:.0f}-{r['max']:.0f} | {ratio} | {cost} |"
        )
    return lines


def _augment_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "| loader | augmentation | images/s (median) | min-max | ms per batch "
        "| added per batch (share of none) | vs torchvision |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        label = AUGMENTS[r["augment"]].label
        if "error" in r:
            lines.append(f"| {_label(r)} | {label} failed: {r['error'][:60]} | | | | | |")
            continue
        added = (
            f"{r['added_ms_per_batch']:+.1f} ms ({r['cost_pct']:+.0f} %)"
            if "cost_pct" in r
            else "-"
        )
        ratio = f"{r['vs_torchvision']:.2f}x" if "vs_torchvision" in r else "-"
        lines.append(
            f"| {_loader_name(r)} ({r['workers']} w) | {label} | {r['images_per_s']:.1f} "
            f"| {r['min']:.0f}-{r['max']:.0f} | {r['ms_per_batch']:.1f} | {added} | {ratio} |"
        )
    return lines


def plot_results(report: dict[str, Any], path: Path) -> None:
    """One panel per section run: loader and training throughput bars (min-max whiskers),
    the two scaling sweeps, the augmentations' throughput."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        panel
        for panel, section in (
            (_plot_loaders, "loaders"),
            (_plot_training, "training"),
            (functools.partial(_plot_scaling, sweep="workers"), "scaling"),
            (functools.partial(_plot_scaling, sweep="batch_size"), "scaling"),
            (_plot_augment, "augment"),
        )
        if report.get(section)
    ]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5 * max(len(panels), 1), 4.5))
    for panel, ax in zip(panels, fig.axes):
        panel(ax, report)
    env = report["environment"]
    fig.suptitle(f"{env.get('gpu', 'CPU only')}, {env['cpu_count']} CPU cores, DALI {env['dali']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _feeds(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (loader, device) pairs among ``rows``, torchvision first."""
    return sorted(
        {(r["loader"], r["device"]) for r in rows}, key=lambda k: (k[0] != "torchvision", k)
    )


def _grouped_bars(ax, rows: list[dict[str, Any]], field: str, groups: list[str]) -> None:
    """Bars of images/s (min-max whiskers), one group per value of ``field``, one bar per feed."""
    names = _feeds(rows)
    width = 0.8 / max(len(names), 1)
    for k, (loader, device) in enumerate(names):
        found = {r[field]: r for r in rows if (r["loader"], r["device"]) == (loader, device)}
        picked = [(i, found[g]) for i, g in enumerate(groups) if g in found]
        ax.bar(
            [i + k * width for i, _ in picked],
            [r["images_per_s"] for _, r in picked],
            width,
            yerr=[
                [r["images_per_s"] - r["min"] for _, r in picked],
                [r["max"] - r["images_per_s"] for _, r in picked],
            ],
            capsize=3,
            label=loader if loader != "dali" else f"DALI {device.upper()}",
        )
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(groups))], groups)
    ax.set_ylabel("images/s (median, min-max)")
    ax.legend(fontsize=8)


def _plot_loaders(ax, report: dict[str, Any]) -> None:
    _grouped_bars(ax, [r for r in report["loaders"] if "error" not in r], "mix", list(MIXES))
    ax.set_title("Loader throughput by mixing")


def _plot_training(ax, report: dict[str, Any]) -> None:
    train = [r for r in report["training"] if "error" not in r]
    bars = ax.bar(
        [r["loader"] for r in train], [r["images_per_s"] for r in train], color="tab:green"
    )
    ax.bar_label(bars, [f"{r.get('pct_of_ceiling', 0):.0f} %" for r in train])
    ax.set_title(f"Training {train[0]['arch']} on {train[0]['device']}" if train else "Training")


def _plot_scaling(ax, report: dict[str, Any], *, sweep: str) -> None:
    rows = [r for r in report["scaling"] if "error" not in r and r["sweep"] == sweep]
    for loader, device in _feeds(rows):
        mine = [r for r in rows if (r["loader"], r["device"]) == (loader, device)]
        xs = [r["workers"] if sweep == "workers" else r["batch_size"] for r in mine]
        ax.plot(xs, [r["images_per_s"] for r in mine], "-o", label=f"{loader}-{device}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("DALI threads / DataLoader workers" if sweep == "workers" else "batch size")
    ax.set_title(f"Scaling with {sweep.replace('_', ' ')} (CutMix on)")
    if rows:
        ax.legend(fontsize=8)


def _plot_augment(ax, report: dict[str, Any]) -> None:
    _grouped_bars(ax, [r for r in report["augment"] if "error" not in r], "augment", list(AUGMENTS))
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_title("Loader throughput by augmentation")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.bench",
        description="Benchmark DALI and torchvision loaders and training.",
    )
    parser.add_argument(
        "--data", type=Path, help="ImageNet-style folder (default: a generated one)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/latest"))
    parser.add_argument("--classes", type=int, default=40)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="DataLoader workers and DALI threads for the side-by-side figures",
    )
    parser.add_argument("--threads-list", type=_int_list, default=None, help="e.g. 1,2,4,8,16")
    parser.add_argument("--batch-size-list", type=_int_list, default=(16, 32, 64))
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--train-batch-size", type=int, default=16)
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window-batches", type=int, default=20)
    parser.add_argument("--train-windows", type=int, default=3)
    parser.add_argument("--train-window-batches", type=int, default=2)
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "gpu", "both"],
        default="auto",
        help="where DALI runs: auto = GPU and CPU when CUDA is there, else CPU",
    )
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument(
        "--sweeps",
        type=lambda text: tuple(name.strip() for name in text.split(",")),
        default=("loaders", "training", "scaling"),
        help=f"comma-separated sections to run, of {','.join(SWEEPS)} (default: all but "
        "augment); augment: each recipe augmentation's cost on each loader",
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one isolated measurement
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    cuda = torch.cuda.is_available()
    if args.device == "gpu" and not cuda:
        raise ValueError("--device gpu needs CUDA, which this machine does not have")
    devices = {
        "auto": ("gpu", "cpu") if cuda else ("cpu",),
        "cpu": ("cpu",),
        "gpu": ("gpu",),
        "both": ("gpu", "cpu"),
    }[args.device]
    threads = args.threads_list or tuple(
        n for n in (1, 2, 4, 8, 16, 32) if n <= (os.cpu_count() or 1)
    )
    return BenchConfig(
        out=args.out,
        data=args.data,
        classes=args.classes,
        per_class=args.per_class,
        batch_size=args.batch_size,
        workers=args.workers,
        threads_list=threads,
        batch_size_list=args.batch_size_list,
        arch=args.arch,
        train_batch_size=args.train_batch_size,
        crop_size=args.crop_size,
        warmup=args.warmup,
        windows=args.windows,
        window_batches=args.window_batches,
        train_windows=args.train_windows,
        train_window_batches=args.train_window_batches,
        devices=devices,
        skip_training=args.skip_training,
        sweeps=args.sweeps,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: 0 when every measurement ran, 1 when some failed.

    A bad value or an unusable ``--data`` or ``--out`` ends it before any
    measurement with one line on stderr and status 2
    (:func:`dali_cutmix.cli.exit_on_user_error`).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.measure:
        print("RESULT " + json.dumps(measure(json.loads(args.measure))), flush=True)
        return 0
    with exit_on_user_error(parser, fields={"devices": "--device"}):
        config = config_from_args(args)
        if config.data is not None:  # found unusable here, not in every measurement
            list_image_folder(data_root(config.data))
        config.out.mkdir(parents=True, exist_ok=True)  # not only after the whole run
    command = " ".join(["python -m pipelines.bench", *(argv if argv is not None else sys.argv[1:])])
    report = run_benchmark(config, command)
    failed = [r for section in SWEEPS for r in report[section] if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
