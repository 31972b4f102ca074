"""What the benchmark measures: the settings compared and one spec per measurement.

A *spec* is a flat JSON-able dict naming one measurement (loader, device,
mixing, augmentation, batch size, workers, timing windows ...); it travels to
the process that measures it (:func:`pipelines.bench.measure.run_isolated`)
and its fields come back in the result rows. :func:`plan_sections` gives the
specs of every section a run asks for; a configuration that two sections share
is measured once (:func:`pipelines.bench.measure.measure_sections` keys them
by :func:`measurement_key`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from dali_cutmix.config import MAX_SIDE

__all__ = [
    "AUGMENTS",
    "BAD_FILE",
    "AugmentCase",
    "BenchConfig",
    "MIXES",
    "RECIPE_MIX",
    "SETTLE_STEPS",
    "SWEEPS",
    "buffered_batches",
    "feed_format",
    "spec_label",
    "measurement_key",
    "plan_sections",
    "short_epochs",
]

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

# The line by which a measuring process reports a file that does not decode.
BAD_FILE = "BAD_FILE "
# The line by which it reports any other error: its type and message, for the table
# (the last lines of its traceback were a line of code, not the error).
FAILED = "FAILED "


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
    """What to measure. ``file_list`` is the files read (``path label`` lines: every image
    under ``data`` without it); the other ``*_list`` fields are the scaling sweeps."""

    out: Path
    data: Path | None = None
    file_list: Path | None = None
    classes: int = 40
    per_class: int = 180
    batch_size: int = 32
    workers: int = 2
    threads_list: tuple[int, ...] = (1, 2)
    batch_size_list: tuple[int, ...] = (16, 32, 64)
    hw_decoder_loads: tuple[float, ...] = (0.0, 0.5, 0.75, 0.99)
    arch: str = "resnet50"
    train_batch_size: int = 16
    crop_size: int = 224
    warmup: int = 10
    windows: int = 5
    window_batches: int = 20
    train_windows: int = 3
    train_window_batches: int = 10
    devices: tuple[str, ...] = ("cpu",)
    skip_training: bool = False
    sweeps: tuple[str, ...] = ("loaders", "training", "scaling")

    @property
    def asked_sections(self) -> set[str]:
        """The sections to run: ``sweeps``, less training with ``skip_training``."""
        return set(self.sweeps) - ({"training"} if self.skip_training else set())

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
        if self.crop_size > MAX_SIDE:  # each loader's row failed on it, after the dataset
            raise ValueError(f"crop_size must be at most {MAX_SIDE}, got {self.crop_size}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.file_list is not None and self.data is None:
            raise ValueError(
                "file_list must come with data (the folder whose classes its labels number, "
                "and that its relative paths start from)"
            )
        for load in self.hw_decoder_loads:
            if not 0.0 <= load <= 1.0:
                raise ValueError(f"hw_decoder_loads must be in [0, 1], got {load!r}")
        for device in self.devices:
            if device not in ("cpu", "gpu"):
                raise ValueError(f"devices must be cpu and/or gpu, got {device!r}")
        unknown = [name for name in self.sweeps if name not in SWEEPS]
        if unknown or not self.sweeps:
            raise ValueError(
                f"sweeps must be one or more of {', '.join(SWEEPS)}, got {','.join(self.sweeps)!r}"
            )
        if not self.asked_sections:  # it measured nothing, wrote empty results, and exited 0
            raise ValueError(
                "sweeps (training) with skip_training leaves nothing to measure; drop one of them"
            )


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


def spec_label(spec: dict[str, Any]) -> str:
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


def plan_sections(config: BenchConfig, root: Path) -> dict[str, list[dict[str, Any]]]:
    """Every measurement of the run, grouped by section (empty for sweeps not asked for)."""
    base = {
        "root": str(root),
        **({"file_list": str(config.file_list)} if config.file_list is not None else {}),
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
    asked = config.asked_sections
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
        name: [{**spec, **feed_format(spec), **_same_warmup(spec)} for spec in specs]
        if name in asked
        else []
        for name, specs in sections.items()
    }


def _same_warmup(spec: dict[str, Any]) -> dict[str, Any]:
    """A loader row's warm-up: the one the DataLoader of its worker count needs (its buffer),
    for DALI's row too. DALI's own was its 3 batches, so with 16 workers the DataLoader ran
    134 batches to DALI's 110, and only its windows could cross an epoch's start."""
    if spec["kind"] != "loader":
        return {}
    longest = buffered_batches({"loader": "torchvision", "workers": spec["workers"]})
    return {"warmup": max(spec["warmup"], longest)}


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
        if (loader, device) == ("dali", "gpu"):  # the share of JPEGs on the hardware decoder
            scaling += [
                {**common, "hw_decoder_load": load, "sweep": "hw_decoder_load"}
                for load in config.hw_decoder_loads
            ]
    return scaling


# Steps run untimed after a drain (see pipelines.bench.measure.measure_windows): in them a
# loader faster than the model refills its buffer, and one slower stays empty, as in the
# steady state.
SETTLE_STEPS = 2


def buffered_batches(spec: dict[str, Any]) -> int:
    """Batches a spec's loader can hold ready before timing starts: the DataLoader's workers
    prefetch 2 each (+2 in flight), DALI ``prefetch_queue_depth`` (2, +1 in flight)."""
    return {"torchvision": 2 * spec["workers"] + 2, "dali": 3}.get(spec["loader"], 0)


def _training_specs(config: BenchConfig, base: dict[str, Any]) -> list[dict[str, Any]]:
    train_device = "gpu" if "gpu" in config.devices else "cpu"
    # The three rows are compared (% of the ceiling): one timing for all, the one the
    # DataLoader's buffer needs (windows at least a buffer long).
    longest = buffered_batches({"loader": "torchvision", "workers": config.workers})
    train_base = {
        **base,
        "kind": "train",
        "arch": config.arch,
        "device": train_device,
        "mix": "cutmix",
        "batch_size": config.train_batch_size,
        "windows": config.train_windows,
        "window_batches": max(config.train_window_batches, longest),
        "warmup": config.warmup,
    }
    return [
        {**train_base, "loader": "synthetic", "mix": "off"},
        {**train_base, "loader": "dali"},
        {**train_base, "loader": "torchvision", "device": train_device},
    ]


def short_epochs(result: dict[str, Any]) -> bool:
    """Whether a measurement's loader ran through more epochs than the run it models would.

    Each epoch start (DALI's reset, the DataLoader's new iterator and its refilled
    prefetch) costs, and an ImageNet epoch (5,005 batches of 256) hides it; a set whose
    epoch is shorter than the warm-up and windows together times several epoch starts.
    """
    timing = result.get("timing")
    if not timing or "epoch_batches" not in result:
        return False
    drain = timing.get("drain", 0)
    timed = timing["warmup"] + drain + SETTLE_STEPS * (drain > 0)
    timed += timing["windows"] * timing["window_batches"]
    return result["epoch_batches"] < timed


def measurement_key(spec: dict[str, Any]) -> str:
    """What makes two specs the same measurement: all but the section's ``sweep`` label."""
    return json.dumps({k: v for k, v in spec.items() if k != "sweep"}, sort_keys=True)
