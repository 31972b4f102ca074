"""The command line, parsed once into frozen, validated dataclasses.

``get_args_parser()`` (:mod:`train.cli`, which loads neither torch nor DALI)
returns the parser, as in torchvision's references; ``config_from_args()`` turns
its namespace into a :class:`TrainConfig`,
resolving the defaults that depend on the data (the embedded dataset gets a
small ResNet and small crops so that it trains in minutes on a CPU). Nothing
below this module sees an ``argparse.Namespace``; every check that can fail
runs here, before a single image is read. ``--resume`` takes the configuration
saved in a checkpoint (:func:`resume_config`), ``--config`` the one a run saved as
``config.json`` (:func:`replay_config`); typed flags change them.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import functools
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dali_cutmix.cli import (
    check_folder,
    check_outside,
    exit_on_user_error,
    replace_names,
    typed_dests,
    worker_limit,
    worker_limit_rule,
)
from dali_cutmix.config import (
    MAX_SIDE,
    AugmentConfig,
    AutoAugment,
    Interpolation,
    MixConfig,
    MixMode,
    _check_float32,
    _check_int,
    _enum,
    check_warp_interpolation,
    flatten,
    resolve_device,
    timm_auto_augment,
)
from dali_cutmix.files import DatasetError, class_folders
from dali_cutmix.synthetic import SyntheticSpec, cache_dir, cache_source

from . import pipelines_module
from .cli import ARCHS, Device, LoaderKind, Precision, Schedule, get_args_parser
from .status import ExitStatus, resume_command

__all__ = [
    "ALIASES",
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "EMBEDDED_SPEC",
    "FLAGS",
    "check_ranks",
    "RESUME_MAY_CHANGE",
    "DataConfig",
    "Device",
    "LoaderKind",
    "OptimConfig",
    "Precision",
    "Schedule",
    "TrainConfig",
    "claims_run_dir",
    "config_from_args",
    "default_workers",
    "drop_unused_run_dir",
    "first_missing",
    "get_args_parser",
    "name_flags",
    "parse_config",
    "replay_config",
    "resume_config",
    "typed_flags",
]

logger = logging.getLogger(__name__)

# The files of a run in its output folder (with config.json).
CHECKPOINT_NAME = "checkpoint.pth"
RANKS_KEY = "world_size"  # config.json's rank count, beside the configuration's fields
METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
LOCK_NAME = ".lock"  # held by rank 0 while the run trains (train.utils.folder_lock)

# The embedded default dataset: 10 learnable classes of small ImageNet-like JPEGs.
EMBEDDED_SPEC = SyntheticSpec(
    num_classes=10, train_per_class=160, val_per_class=40, seed=0, size_scale=0.25
)


def _positive(name: str, value: Any, *, zero: bool = False) -> None:
    """A finite number > 0 (>= 0 with ``zero``): ``--lr inf`` trained to NaN and wrote
    NaN into metrics.jsonl, which strict JSON readers refuse."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (value >= 0 if zero else value > 0):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _count(name: str, value: Any) -> None:
    """An int >= 1 (a --config file can hold 2.5 where the flag takes only ints)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are loaded.

    Attributes:
        root: folder with ``train/`` and ``val/`` class folders; ``None`` means
            the embedded dataset generated under ``cache_dir``.
        embedded: the generator spec of the embedded dataset (when ``root`` is None).
        classes: class names in label order (sorted folder names).
        loader: ``dali`` or ``torchvision``.
        batch_size: images per step and rank.
        train_crop_size: side of the square random-resized training crops.
        val_crop_size: side of the square validation centre crops.
        val_resize_size: the shorter side of validation images before the centre crop.
        interpolation: resampling of the resizes and of the automatic augmentations' warps.
        workers: DALI threads or DataLoader worker processes per rank.
        cache_dir: where the embedded dataset is generated.
        train_list, val_list: ``path label`` files (``python -m dali_cutmix.scan``'s
            ``files.txt``) read instead of listing ``train/`` / ``val/``; relative
            paths in them are relative to that folder. ``None``: list the folder.
    """

    root: Path | None
    classes: tuple[str, ...]
    embedded: SyntheticSpec | None = None
    loader: LoaderKind = LoaderKind.DALI
    batch_size: int = 256
    train_crop_size: int = 224
    val_crop_size: int = 224
    val_resize_size: int = 256
    interpolation: Interpolation = Interpolation.BILINEAR
    workers: int = 2
    cache_dir: Path = Path("data")
    train_list: Path | None = None
    val_list: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "loader", _enum(LoaderKind, "loader", self.loader))
        object.__setattr__(
            self, "interpolation", _enum(Interpolation, "interpolation", self.interpolation)
        )
        for name in ("batch_size", "workers"):
            _check_int(name, getattr(self, name), 1)
        for name in ("train_crop_size", "val_crop_size", "val_resize_size"):
            _check_int(name, getattr(self, name), 1, MAX_SIDE)
        if self.val_resize_size < self.val_crop_size:
            raise ValueError(
                f"val_resize_size ({self.val_resize_size}) must be >= val_crop_size "
                f"({self.val_crop_size})"
            )
        if not self.classes:
            raise ValueError("the dataset has no classes")
        if (self.root is None) == (self.embedded is None):
            raise ValueError("give exactly one of root (a folder) and embedded (a spec)")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def dataset_dir(self) -> Path:
        """The folder the loaders read: ``root``, or the embedded dataset's cache folder."""
        if self.root is not None:
            return self.root
        digest = hashlib.sha1(json.dumps(self.embedded.to_dict(), sort_keys=True).encode())
        return self.cache_dir / f"embedded-{digest.hexdigest()[:8]}"


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """SGD with momentum and Nesterov, weight decay and a warmed-up schedule.

    The learning rate is per-iteration: linear warmup from ``lr * 0.01`` over
    ``warmup_epochs``, then cosine decay to 0, or step decay by ``gamma``
    every ``step_size`` epochs (the CutMix paper: 0.1 every 75 epochs).
    """

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    schedule: Schedule = Schedule.COSINE
    warmup_epochs: float = 0.0
    step_size: int = 30
    gamma: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", _enum(Schedule, "schedule", self.schedule))
        _positive("lr", self.lr)
        _positive("weight_decay", self.weight_decay, zero=True)
        # torch's SGD takes both as float32 (1e39 ended in a traceback)
        _check_float32("lr", self.lr, off=False)
        _check_float32("weight_decay", self.weight_decay)
        _positive("warmup_epochs", self.warmup_epochs, zero=True)
        _count("step_size", self.step_size)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("Nesterov needs momentum > 0; pass --no-nesterov or --momentum")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one run needs; saved as ``config.json`` beside its metrics.

    Attributes:
        arch: torchvision ResNet name (``resnet50``, ``resnet18``, ...).
        epochs: number of epochs in the schedule.
        device: ``cpu`` or ``gpu`` (``auto`` is resolved by the parser).
        precision: autocast dtype; ``off`` is float32.
        channels_last: NHWC memory format for the model and the loader output.
        seed: seeds the model's initialisation, the loader's order and its mixing.
        deterministic: ``torch.use_deterministic_algorithms(True)``, no cudnn autotuning.
        mix: mixing and label smoothing (``mix.enabled`` False means plain labels).
        augment: automatic augmentation and RandomErasing of the training images.
        model_ema: keep an exponential moving average of the weights (torchvision's
            ``--model-ema``), evaluated beside the model after every epoch.
        model_ema_steps: optimizer steps between two updates of the average.
        model_ema_decay: the average's decay per update before torchvision's
            adjustment to the batch size, the steps and the epochs (see ``train.ema``).
        output_dir: where metrics, config, checkpoints and the plot go.
        resume: checkpoint to continue from (mid-epoch exactly).
        print_freq: steps between progress updates, the only host syncs in a step.
        stop_after_steps: stop (and checkpoint, as on Ctrl-C) after this many steps.
        test_only: evaluate the checkpoint ``resume`` (and its average) and stop.
    """

    data: DataConfig
    optim: OptimConfig
    mix: MixConfig
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    arch: str = "resnet50"
    epochs: int = 90
    device: Device = Device.CPU
    precision: Precision = Precision.FP32
    channels_last: bool = False
    seed: int = 0
    deterministic: bool = False
    output_dir: Path = Path("runs")
    resume: Path | None = None
    print_freq: int = 10
    stop_after_steps: int | None = None
    model_ema: bool = False
    model_ema_steps: int = 32
    model_ema_decay: float = 0.99998
    test_only: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", _enum(Device, "device", self.device))
        if self.device is Device.AUTO:  # a run's configuration says where it trained
            raise ValueError("device must be resolved to 'cpu' or 'gpu', got 'auto'")
        object.__setattr__(self, "precision", _enum(Precision, "precision", self.precision))
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        _count("epochs", self.epochs)
        _count("print_freq", self.print_freq)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.stop_after_steps is not None:
            _count("stop_after_steps", self.stop_after_steps)
        if self.mix.num_classes != self.data.num_classes:
            raise ValueError(
                f"mix.num_classes ({self.mix.num_classes}) != number of classes "
                f"({self.data.num_classes})"
            )
        if self.data.batch_size == 1 and self.data.train_crop_size <= 32 and not self.test_only:
            # ResNet's last feature map is 1x1 there: one value per BatchNorm channel.
            raise ValueError(
                f"batch_size 1 with train_crop_size {self.data.train_crop_size}: BatchNorm "
                "needs more than one value per channel in training, and at 32 px or less "
                "ResNet's last feature map is 1 x 1; use a batch of 2 or more, or a larger crop"
            )
        if self.precision is Precision.FP16 and self.device is Device.CPU:
            raise ValueError("--amp fp16 needs a GPU (it uses a GradScaler); use bf16 or off")
        if self.data.loader is LoaderKind.TORCHVISION and self.mix.enabled:
            _check_torchvision_mix(self.mix)
        if self.optim.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.optim.warmup_epochs}) must be <= epochs ({self.epochs})"
            )
        _check_augment(self.augment, self.data)
        self._check_ema()
        if self.test_only and self.resume is None:
            raise ValueError("test_only evaluates a checkpoint: give --resume CHECKPOINT")

    def _check_ema(self) -> None:
        if isinstance(self.model_ema_steps, bool) or not isinstance(self.model_ema_steps, int):
            raise ValueError(f"model_ema_steps must be an int >= 1, got {self.model_ema_steps!r}")
        _count("model_ema_steps", self.model_ema_steps)
        if not 0.0 <= self.model_ema_decay <= 1.0:  # 1 is refused for new runs (their flags)
            raise ValueError(f"model_ema_decay must be in [0, 1], got {self.model_ema_decay!r}")

    def to_dict(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, enum.Enum):
                return value.value
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        return plain(dataclasses.asdict(self))

    def to_json(self, *, world_size: int | None = None) -> str:
        """The configuration as JSON; ``world_size`` adds the run's rank count (``config.json``
        holds it: a ``--config`` replay on another count derives the default lr again)."""
        saved = self.to_dict() | ({} if world_size is None else {RANKS_KEY: world_size})
        return json.dumps(saved, indent=2, sort_keys=True)


def _check_torchvision_mix(mix: MixConfig) -> None:
    """torchvision's CutMix/MixUp draw once per batch and know no box limits."""
    if mix.mode is not MixMode.BATCH:
        raise ValueError(
            f"--loader torchvision mixes per batch only (torchvision.transforms.v2.CutMix); "
            f"--mix-mode {mix.mode.value} needs --loader dali"
        )
    if mix.cutmix_minmax is not None:
        raise ValueError("--cutmix-minmax needs --loader dali (torchvision's CutMix has no minmax)")
    if not mix.correct_lam:
        raise ValueError("torchvision's CutMix always corrects lambda; drop --no-correct-lam")


def _check_augment(augment: AugmentConfig, data: DataConfig) -> None:
    """What the loaders cannot honour, refused before a single image is read."""
    if augment.auto_augment is not None:
        check_warp_interpolation(data.interpolation)
    if data.loader is LoaderKind.TORCHVISION and augment.enabled:
        make_transforms = pipelines_module("torchvision_ref").make_transforms
        try:  # the torchvision loader's own checks, so that both always agree
            make_transforms(
                train=True,
                crop_size=data.train_crop_size,
                resize_size=data.val_resize_size,
                augment=augment,
                interpolation=data.interpolation,
            )
        except ValueError as error:
            raise ValueError(f"--loader torchvision: {error}") from None


def _list_classes(root: Path) -> tuple[str, ...]:
    """Class folder names of ``root/train``, checked against ``root/val`` (listing only)."""
    if not root.is_dir():
        raise ValueError(f"--data {root}: {'not a folder' if root.exists() else 'no such folder'}")
    splits = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            hint = ""
            if root.name in ("train", "val") and (root.parent / split).is_dir():
                hint = f"; --data takes the folder above train/ and val/: --data {root.parent}"
            raise ValueError(f"--data {root}: no {split}/ folder (expected {folder}){hint}")
        try:
            splits[split] = tuple(class_folders(folder))
        except DatasetError as error:  # no class folders, or split folders one level too deep
            raise ValueError(f"--data {root}: {error}") from None
    if splits["train"] != splits["val"]:
        missing = sorted(set(splits["train"]) ^ set(splits["val"]))
        empty = [
            root / split / name
            for name in missing
            for split in ("train", "val")
            if name in splits[split] and not any((root / split / name).iterdir())
        ]
        if empty:  # a stray empty folder, rather than a class missing on the other side
            raise ValueError(
                f"--data {root}: class folder {empty[0]} is empty (and has no match in the "
                "other split); remove it"
            )
        raise ValueError(
            f"--data {root}: train/ and val/ have different classes, e.g. {missing[:5]}"
        )
    if len(splits["train"]) < 2:  # trained to 100 % top-1 at a loss of 0, learning nothing
        raise ValueError(
            f"--data {root}: one class folder ({splits['train'][0]!r}) in train/ and val/; a "
            "classifier needs at least 2 classes (with one, the loss is 0 from the first step)"
        )
    return splits["train"]


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _resolve_precision(name: str, device: Device) -> Precision:
    if name != "auto":
        return Precision(name)
    if device is Device.CPU:
        return Precision.FP32
    import torch

    return Precision.BF16 if torch.cuda.is_bf16_supported() else Precision.FP16


def default_workers(loader: LoaderKind, device: Device) -> int:
    """``-j``'s default: this rank's share of the CPU cores, at most 8 for DALI on the GPU.

    For ``--loader dali`` it is :func:`pipelines.imagenet.default_num_threads`:
    on the GPU path DALI's threads only feed the decoder, and more than ~8 per
    GPU stop paying. DataLoader workers do all the work, so they get every core.
    """
    imagenet = pipelines_module("imagenet")
    if loader is LoaderKind.DALI:
        return imagenet.default_num_threads(gpu=device is Device.GPU)
    # the cores this rank may use, shared with the node's other ranks (WORLD_SIZE counted
    # every node's ranks: 2 workers a rank on 16 nodes of 8 GPUs and 32 cores)
    return imagenet.default_num_threads(gpu=False)


def _file_list(flag: str, path: Path | None) -> Path | None:
    if path is None:
        return None
    if path.is_dir():
        raise ValueError(f"{flag} {path}: a folder; give a file of 'path label' lines")
    if not path.is_file():
        raise ValueError(f"{flag} {path}: no such file")
    return path.resolve()


def _data_config(args: argparse.Namespace, workers: int) -> DataConfig:
    embedded = args.data is None
    crop = _given(args.crop_size, 64 if embedded else 224)
    val_crop = _given(args.val_crop_size, crop)
    return DataConfig(
        root=None if embedded else args.data.expanduser().resolve(),  # resumable from elsewhere
        classes=tuple(EMBEDDED_SPEC.classes if embedded else _list_classes(args.data)),
        embedded=EMBEDDED_SPEC if embedded else None,
        loader=args.loader,
        batch_size=_given(args.batch_size, 64 if embedded else 256),
        train_crop_size=_given(args.train_crop_size, crop),
        val_crop_size=val_crop,
        # timm's crop_pct 0.875 (floor(crop / 0.875)): 256 for 224, 182 for 160
        val_resize_size=_given(args.val_resize_size, val_crop * 8 // 7),
        interpolation=args.interpolation,
        workers=workers,
        cache_dir=cache_dir(args.cache_dir),
        train_list=_file_list("--train-list", args.train_list),
        val_list=_file_list("--val-list", args.val_list),
    )


def _default_warmup_epochs(epochs: int, *, embedded: bool) -> float:
    """``--warmup-epochs``' default: 1 epoch on the embedded set, 5 otherwise, at most 1/5."""
    return min(1.0 if embedded else 5.0, max(epochs, 0) / 5)  # a bad --epochs is named as such


def _default_lr(batch_size: int, world_size: int, *, embedded: bool) -> float:
    """``--lr``'s default: 0.1 on the embedded set, else 0.1 per 256 images of global batch."""
    return 0.1 if embedded else 0.1 * batch_size * world_size / 256


def _optim_config(args: argparse.Namespace, data: DataConfig, epochs: int) -> OptimConfig:
    embedded = data.root is None
    default_lr = _default_lr(data.batch_size, _world_size(), embedded=embedded)
    return OptimConfig(
        lr=default_lr if args.lr is None else args.lr,
        momentum=args.momentum,
        nesterov=args.nesterov,
        weight_decay=args.weight_decay,
        schedule=args.lr_schedule,
        warmup_epochs=_given(args.warmup_epochs, _default_warmup_epochs(epochs, embedded=embedded)),
        step_size=args.lr_step_size,
        gamma=args.lr_gamma,
    )


def _mix_config(args: argparse.Namespace, data: DataConfig) -> MixConfig:
    default_mode = MixMode.ELEM if data.loader is LoaderKind.DALI else MixMode.BATCH
    return MixConfig(
        num_classes=data.num_classes,
        mixup_alpha=args.mixup_alpha,
        cutmix_alpha=args.cutmix_alpha,
        cutmix_minmax=tuple(args.cutmix_minmax) if args.cutmix_minmax else None,
        prob=args.mix_prob,
        switch_prob=args.switch_prob,
        mode=args.mix_mode or default_mode,
        correct_lam=args.correct_lam,
        label_smoothing=args.label_smoothing,
    )


# The fields that --auto-augment / --aa set together, and those of --random-erase / --reprob.
_AUTO_AUGMENT_FIELDS = (
    "auto_augment",
    "ra_num_ops",
    "ra_magnitude",
    "num_magnitude_bins",
    "ra_increasing",
    "max_translate_rel",
    "fill_value",
)
_ERASE_FIELDS = ("random_erase", "erase_mode", "erase_scale", "erase_ratio")
# RandomErasing's box: torchvision's defaults, and timm's (min_area, max_area, min_aspect).
TORCHVISION_ERASE = {"erase_mode": "const", "erase_scale": (0.02, 0.33), "erase_ratio": (0.3, 3.3)}
TIMM_ERASE = {"erase_mode": "pixel", "erase_scale": (0.02, 1 / 3), "erase_ratio": (0.3, 1 / 0.3)}


def _policy(name: str) -> AutoAugment:
    try:
        return AutoAugment(name)
    except ValueError:
        supported = ", ".join(p.value for p in AutoAugment)
        raise ValueError(
            f"--auto-augment {name} is not supported; supported: {supported}"
        ) from None


def _auto_augment_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The automatic augmentation's fields that the flags set (all of them, or none)."""
    if args.aa is not None and args.auto_augment is not None:
        raise ValueError("--aa and --auto-augment both choose the automatic augmentation; give one")
    defaults = AugmentConfig().to_dict()
    group = {name: defaults[name] for name in _AUTO_AUGMENT_FIELDS}
    if args.aa is not None:
        if args.ra_magnitude is not None:
            raise ValueError(
                "--ra-magnitude goes with --auto-augment ra; --aa gives the magnitude in its "
                "spec (rand-m9)"
            )
        return group | timm_auto_augment(args.aa)
    # --ra-magnitude alone changes the magnitude of a resumed run's RandAugment.
    fields = (
        {} if args.auto_augment is None else group | {"auto_augment": _policy(args.auto_augment)}
    )
    if args.ra_magnitude is not None:
        fields["ra_magnitude"] = args.ra_magnitude
    return fields


def _erase_fields(args: argparse.Namespace) -> dict[str, Any]:
    """RandomErasing's fields that the flags set: torchvision's or timm's meaning."""
    if args.random_erase is not None and args.reprob is not None:
        raise ValueError(
            "--random-erase and --reprob both set RandomErasing's probability; give one"
        )
    fields: dict[str, Any] = {}
    if args.random_erase is not None:
        fields = {**TORCHVISION_ERASE, "random_erase": args.random_erase}
    elif args.reprob is not None:
        fields = {**TIMM_ERASE, "random_erase": args.reprob}
    if args.remode is not None:
        fields["erase_mode"] = args.remode
    return fields


def _augment_config(args: argparse.Namespace, base: AugmentConfig) -> AugmentConfig:
    """``base`` (the defaults, or a checkpoint's) with what the augmentation flags set.

    Raises:
        ValueError: both spellings of one setting, an unsupported policy or spec, or a
            flag that would change nothing (``--ra-magnitude`` without RandAugment,
            ``--remode`` without RandomErasing).
    """
    fields = base.to_dict() | _auto_augment_fields(args) | _erase_fields(args)
    augment = AugmentConfig.from_dict(fields)
    if args.ra_magnitude is not None and augment.auto_augment is not AutoAugment.RA:
        raise ValueError("--ra-magnitude is RandAugment's: it needs --auto-augment ra")
    if args.remode is not None and not augment.erasing:
        raise ValueError("--remode is RandomErasing's: it needs --reprob or --random-erase > 0")
    return augment


def config_from_args(
    args: argparse.Namespace, *, saved_augment: AugmentConfig | None = None
) -> TrainConfig:
    """Resolves data-dependent defaults and builds the validated :class:`TrainConfig`.

    Every value is checked before torch and DALI load (seconds), so that a bad one
    answers at once; ``--device auto``, ``--amp auto``, ``--channels-last`` and the
    workers' default are resolved after.

    Args:
        saved_augment: the augmentation of the checkpoint being resumed, which the
            augmentation flags in ``args`` (``None`` where not typed) change.

    Raises:
        ValueError: a flag or a combination of flags is invalid.
    """
    checked = _checked_config(args, saved_augment or AugmentConfig())
    device = resolve_device(args.device)
    workers = _given(args.workers, default_workers(checked.data.loader, device))
    if workers > worker_limit():
        # -j 100000 ended in DALI's thread pool ("terminate called without an active
        # exception", SIGABRT), leaving runs/<time>/ behind; as many DataLoader processes
        # would exhaust the memory
        raise ValueError(
            f"workers must be at most {worker_limit()} ({worker_limit_rule()}: no more "
            f"threads or worker processes than that can be busy), got {workers}"
        )
    return dataclasses.replace(
        checked,
        data=dataclasses.replace(checked.data, workers=workers),
        device=device,
        precision=_resolve_precision(args.amp, device),
        channels_last=device is Device.GPU if args.channels_last is None else args.channels_last,
    )


def _new_run_dir() -> Path:
    """``runs/<date-time>``, or ``runs/<date-time>-N`` where a run started in that second
    already made it (as timm's output folders). Only a name: :func:`claim_run_dir` makes it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, count = Path("runs") / stamp, 1
    while folder.exists():
        count += 1
        folder = Path("runs") / f"{stamp}-{count}"
    return folder


def claim_run_dir(folder: Path) -> Path:
    """Makes the default output folder ``folder`` (:func:`_new_run_dir`'s), or the next
    ``-N`` name no other run made first, and returns it.

    Two runs that start in the same second both name ``runs/<date-time>`` while they
    parse their flags; making the folder is atomic, so the one that makes it second
    takes ``-2`` instead of appending its epochs to the other's metrics.
    """
    base, count = folder.name, 1
    if base.count("-") == 2:  # <date>-<time>-N
        base, _, number = base.rpartition("-")
        count = int(number)
    while True:
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            count += 1
            folder = folder.parent / f"{base}-{count}"


def _checked_config(args: argparse.Namespace, saved_augment: AugmentConfig) -> TrainConfig:
    """The configuration with what needs torch or DALI to resolve left as any valid value.

    ``--device auto`` is checked as the GPU, which allows every precision; the
    device's own checks come once it is resolved.
    """
    embedded = args.data is None
    data = _data_config(args, workers=_given(args.workers, 1))
    epochs = _given(args.epochs, 6 if embedded else 90)
    return TrainConfig(
        data=data,
        optim=_optim_config(args, data, epochs),
        mix=_mix_config(args, data),
        augment=_augment_config(args, saved_augment),
        arch=args.arch or ("resnet18" if embedded else "resnet50"),
        epochs=epochs,
        device=Device.CPU if args.device == Device.CPU.value else Device.GPU,
        precision=Precision.FP32 if args.amp == "auto" else args.amp,
        channels_last=bool(args.channels_last),
        seed=args.seed,
        deterministic=args.deterministic,
        output_dir=args.output_dir or _new_run_dir(),
        resume=args.resume,
        print_freq=args.print_freq,
        stop_after_steps=args.stop_after_steps,
        model_ema=args.model_ema,
        model_ema_steps=args.model_ema_steps,
        model_ema_decay=args.model_ema_decay,
        test_only=args.test_only,
    )


# ----------------------------------------------------------------------------- flags and fields

# The flag that sets each configuration field: field path -> (argparse dest, flag). Errors
# about a field name its flag, and --resume maps a checkpoint's configuration onto the flags.
FLAGS: dict[str, tuple[str, str]] = {
    "data.root": ("data", "--data"),
    "data.cache_dir": ("cache_dir", "--cache-dir"),
    "data.train_list": ("train_list", "--train-list"),
    "data.val_list": ("val_list", "--val-list"),
    "data.loader": ("loader", "--loader"),
    "data.batch_size": ("batch_size", "--batch-size"),
    "data.train_crop_size": ("train_crop_size", "--train-crop-size"),
    "data.val_crop_size": ("val_crop_size", "--val-crop-size"),
    "data.val_resize_size": ("val_resize_size", "--val-resize-size"),
    "data.interpolation": ("interpolation", "--interpolation"),
    "data.workers": ("workers", "--workers"),
    "optim.lr": ("lr", "--lr"),
    "optim.momentum": ("momentum", "--momentum"),
    "optim.nesterov": ("nesterov", "--nesterov"),
    "optim.weight_decay": ("weight_decay", "--wd"),
    "optim.schedule": ("lr_schedule", "--lr-schedule"),
    "optim.warmup_epochs": ("warmup_epochs", "--warmup-epochs"),
    "optim.step_size": ("lr_step_size", "--lr-step-size"),
    "optim.gamma": ("lr_gamma", "--lr-gamma"),
    "mix.mixup_alpha": ("mixup_alpha", "--mixup-alpha"),
    "mix.cutmix_alpha": ("cutmix_alpha", "--cutmix-alpha"),
    "mix.cutmix_minmax": ("cutmix_minmax", "--cutmix-minmax"),
    "mix.prob": ("mix_prob", "--mix-prob"),
    "mix.switch_prob": ("switch_prob", "--switch-prob"),
    "mix.mode": ("mix_mode", "--mix-mode"),
    "mix.correct_lam": ("correct_lam", "--correct-lam"),
    "mix.label_smoothing": ("label_smoothing", "--label-smoothing"),
    "augment.auto_augment": ("auto_augment", "--auto-augment"),
    "augment.ra_magnitude": ("ra_magnitude", "--ra-magnitude"),
    "augment.random_erase": ("random_erase", "--random-erase"),
    "augment.erase_mode": ("remode", "--remode"),
    "arch": ("arch", "--arch"),
    "epochs": ("epochs", "--epochs"),
    "device": ("device", "--device"),
    "precision": ("amp", "--amp"),
    "channels_last": ("channels_last", "--channels-last"),
    "seed": ("seed", "--seed"),
    "deterministic": ("deterministic", "--deterministic"),
    "output_dir": ("output_dir", "--output-dir"),
    "resume": ("resume", "--resume"),
    "print_freq": ("print_freq", "--print-freq"),
    "stop_after_steps": ("stop_after_steps", "--stop-after-steps"),
    "model_ema": ("model_ema", "--model-ema"),
    "model_ema_steps": ("model_ema_steps", "--model-ema-steps"),
    "model_ema_decay": ("model_ema_decay", "--model-ema-decay"),
    "test_only": ("test_only", "--test-only"),
}
_CROP = ("crop_size", "--crop-size")
_AA = ("aa", "--aa")
_AUTO = FLAGS["augment.auto_augment"]
_REPROB = ("reprob", "--reprob")
_RANDOM_ERASE = FLAGS["augment.random_erase"]
# The other flags that set a field: shorthands (--crop-size), timm's spellings (--aa,
# --reprob) and the flags that set a group of fields together. Errors and --resume name
# the one typed, the field's own flag in FLAGS first.
ALIASES: dict[str, tuple[tuple[str, str], ...]] = {
    "data.train_crop_size": (_CROP,),
    "data.val_crop_size": (_CROP,),
    "augment.auto_augment": (_AA,),
    "augment.random_erase": (_REPROB,),
    "augment.erase_mode": (_REPROB, _RANDOM_ERASE),
    **{f"augment.{name}": (_AA, _AUTO) for name in _AUTO_AUGMENT_FIELDS[1:]},
    **{f"augment.{name}": (_REPROB, _RANDOM_ERASE) for name in _ERASE_FIELDS[2:]},
}
# Fields that --resume takes from the command line rather than the checkpoint; every other
# field must keep the checkpoint's value. `epochs` may only grow (checked apart).
RESUME_MAY_CHANGE = frozenset(
    {
        "resume",
        "output_dir",
        "print_freq",
        "stop_after_steps",
        "deterministic",
        "epochs",
        "data.workers",
        "data.cache_dir",
        "data.train_list",
        "data.val_list",
        "test_only",
    }
)
_MAY_CHANGE = (
    "on resume only --data (a folder of the same classes elsewhere), --epochs (upward), "
    "--train-list, --val-list, -j/--workers, --print-freq, --output-dir, --stop-after-steps, "
    "--cache-dir, --deterministic and --test-only may change"
)
_PATH_DESTS = frozenset({"data", "cache_dir", "train_list", "val_list", "output_dir", "resume"})


def _spelling(options: Sequence[str], argv: Sequence[str]) -> str:
    """Which of a flag's ``options`` the command line used (argparse expands prefixes)."""
    for token in argv:
        if token == "--":
            break
        name = token.split("=", 1)[0]
        for option in options:
            long_prefix = name.startswith("--") and len(name) > 2 and option.startswith(name)
            short = not option.startswith("--") and token.startswith(option)
            if name == option or long_prefix or short:
                return option
    return max(options, key=len)


def typed_flags(argv: Sequence[str]) -> dict[str, str]:
    """The flags the user typed: argparse ``dest`` -> the flag as spelled (``-b``, ``--wd``).

    Raises:
        SystemExit: ``argv`` does not parse (argparse's message, status 2).
    """
    parser = get_args_parser()
    typed = typed_dests(parser, argv)
    return {a.dest: _spelling(a.option_strings, argv) for a in parser._actions if a.dest in typed}


def _setters(field: str) -> tuple[tuple[str, str], ...]:
    """The (dest, flag) pairs that set ``field``: its own flag first, then its aliases."""
    own = (FLAGS[field],) if field in FLAGS else ()
    return own + ALIASES.get(field, ())


def _typed_setter(field: str, typed: Mapping[str, str]) -> str | None:
    """The dest of the first flag setting ``field`` that the user typed, if any."""
    return next((dest for dest, _ in _setters(field) if dest in typed), None)


# Only fields with a flag of their own are named in messages: "ra_magnitude must be <
# num_magnitude_bins (31)" keeps the second name, which no single flag sets.
_BY_NAME = {field.rsplit(".", 1)[-1]: field for field in FLAGS}


def name_flags(message: str, typed: Mapping[str, str]) -> str:
    """``message`` with each configuration field it names replaced by the field's flag.

    ``"prob must be in [0.0, 1.0], got 2.0"`` becomes ``"--mix-prob must be ..."``;
    the flag is spelled as the user typed it (``typed``, from :func:`typed_flags`),
    but a switch typed as ``--no-x`` is named ``--x``, as the messages speak of the setting
    (``"correct_lam cannot be turned off"``), not of what was typed.
    """

    def flag(name: str) -> str:
        field = _BY_NAME[name]
        dest = _typed_setter(field, typed)
        spelled = FLAGS[field][1] if dest is None else typed[dest]
        return "--" + spelled[len("--no-") :] if spelled.startswith("--no-") else spelled

    return replace_names(message, _BY_NAME, flag)


# ----------------------------------------------------------------------------- resuming


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, float) and len(repr(value)) > 10:  # 1 / 0.3, not 3.3333333333333335
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return " ".join(map(_shown, value)) if len(value) <= 4 else f"{len(value)} entries"
    return str(value)


# Flags whose value only counts beside another setting: --ra-magnitude with --auto-augment
# ra, --remode with random erasing (as config_from_args refuses them alone).
_APPLIES = {
    "augment.ra_magnitude": lambda flat: flat.get("augment.auto_augment") == "ra",
    "augment.erase_mode": lambda flat: bool(flat.get("augment.random_erase")),
}


def _named_fields(fields: Iterable[str], flat: Mapping[str, Any], own: str = "") -> list[str]:
    """The ``fields`` that have a flag of their own and count in the configuration ``flat``
    (or are set by the flag of dest ``own``): those a message names (``augment.fill_value``,
    which ``--aa`` sets, has no flag)."""
    return [
        f
        for f in fields
        if f in FLAGS and (FLAGS[f][0] == own or _APPLIES.get(f, lambda _: True)(flat))
    ]


def _group_refusal(
    dest: str,
    fields: Sequence[str],
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    typed: Mapping[str, str],
    value: Any,
) -> str:
    """One reason for a typed flag that sets several fields (``--crop-size``, ``--aa``,
    ``--reprob``) and changed ``fields``: the checkpoint's values named by their flags."""
    said = (
        typed[dest]
        if value is None or isinstance(value, bool)
        else f"{typed[dest]} {_shown(value)}"
    )
    named = _named_fields(fields, old) or _named_fields(fields, new)
    if named:
        held = ", ".join(f"{FLAGS[f][1]} {_shown(old.get(f))}" for f in named)
        return f"{said} differs from the checkpoint's {held}"
    # only settings without a flag of their own changed (timm's erasing box, say)
    changes = ", ".join(
        f"{f.rsplit('.', 1)[-1]} from {_shown(old.get(f))} to {_shown(new.get(f))}" for f in fields
    )
    return f"{said} changes settings of the checkpoint that have no flag of their own: {changes}"


def _refusal(field: str, old: Any, new: Any, typed: Mapping[str, str]) -> str:
    dest = _typed_setter(field, typed)
    if dest is None:  # not set by a flag (the dataset's classes, say)
        return f"{field} is {_shown(old)} in the checkpoint but {_shown(new)} here"
    if dest != FLAGS.get(field, (None,))[0]:  # set by a shorthand or with other fields
        return f"{typed[dest]} changes {field} from the checkpoint's {_shown(old)} to {_shown(new)}"
    if field == "data.root" and old is None:
        return f"{typed[dest]} {_shown(new)}: the checkpoint trained on the embedded dataset"
    if isinstance(new, bool):  # --flag / --no-flag
        flag = FLAGS[field][1]
        return f"{typed[dest]} differs from the checkpoint's {flag if old else '--no-' + flag[2:]}"
    return f"{typed[dest]} {_shown(new)} differs from the checkpoint's {_shown(old)}"


def resume_changes(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    typed: Mapping[str, str],
    *,
    may_change: frozenset[str] = frozenset(),
    values: Mapping[str, Any] | None = None,
) -> list[str]:
    """Why a run configured as ``current`` cannot continue the checkpoint's ``saved`` one.

    Args:
        saved, current: ``TrainConfig.to_dict()`` of the checkpoint and of this command.
        typed: the flags the user typed (:func:`typed_flags`), named in the reasons.
        may_change: fields that may change besides :data:`RESUME_MAY_CHANGE` (``device``
            and ``precision`` for ``--test-only --device cpu``).
        values: the typed flags' values by dest, shown beside a flag that sets several
            fields (``--crop-size 72 differs from the checkpoint's --train-crop-size 64,
            --val-crop-size 64``; fields without a flag of their own are not named).

    Returns:
        One reason per setting outside :data:`RESUME_MAY_CHANGE` that differs,
        and one if ``epochs`` shrank; empty when the run may continue. Where a typed
        flag changes a setting, only the typed flags' changes: the rest follow from
        them (another ``--data`` has other classes, no embedded set, ...).
    """
    old, new = flatten(saved), flatten(current)
    reasons, derived = [], []
    if new["epochs"] < old.get("epochs", 0):
        reasons.append(
            f"{typed.get('epochs', '--epochs')} {new['epochs']} is fewer than the checkpoint's "
            f"{old['epochs']}"
        )
    moved = _moved_data(old, new, typed)
    if moved:  # another place of the dataset with other classes: that alone is the reason
        return [moved]
    may_change = RESUME_MAY_CHANGE | may_change | ({"data.root"} if moved == "" else set())
    grouped: dict[str, list[str]] = {}  # a typed shorthand's dest -> the fields it changed
    said: set[str | None] = set()  # the dests whose own field changed
    for field in sorted(old.keys() | new.keys()):
        if field in may_change or old.get(field) == new.get(field):
            continue
        dest = _typed_setter(field, typed)
        if dest is not None and dest != FLAGS.get(field, (None,))[0]:  # --crop-size, --aa
            if dest not in grouped:
                reasons.append(dest)  # its place, filled below
            grouped.setdefault(dest, []).append(field)
            continue
        reason = _refusal(field, old.get(field), new.get(field), typed)
        (derived if dest is None else reasons).append(reason)
        said.add(dest)
    values = values or {}
    reasons = [  # a flag whose own setting changed says it once (--auto-augment ta_wide)
        _group_refusal(r, grouped[r], old, new, typed, values.get(r)) if r in grouped else r
        for r in reasons
        if r not in grouped or r not in said
    ]
    return reasons or derived


def _moved_data(
    old: Mapping[str, Any], new: Mapping[str, Any], typed: Mapping[str, str]
) -> str | None:
    """A typed ``--data`` that moves a folder-trained run to another folder: ``""`` when it
    holds the checkpoint's classes (the run goes on there), else why not; ``None`` when
    ``--data`` is not such a move (untyped, unchanged, or to or from the embedded set).
    Why not, too, when the checkpoint's own folder has other classes now (a class folder
    renamed, added or removed: the refusal was "data.classes is 10 entries in the
    checkpoint but 10 entries here; on resume only --data ... may change")."""
    before, after = old.get("data.root"), new.get("data.root")
    if before is None or after is None or (before != after and "data" not in typed):
        return None
    saved, here = tuple(old.get("data.classes") or ()), tuple(new.get("data.classes") or ())
    if saved == here:
        return "" if before != after else None
    only = sorted(set(saved) ^ set(here))  # class names are sorted: sets differ too
    counts = (
        f"({len(here)} against {len(saved)}; in one only: {', '.join(only[:5])}"
        f"{', ...' * (len(only) > 5)})"
    )
    if before == after:
        return (
            f"the class folders of {after} changed since the checkpoint was written {counts}; "
            "a run goes on with the classes it was trained on only: put them back, or start "
            "a new run"
        )
    return (
        f"{typed['data']} {after} has other classes than the checkpoint's {before} {counts}; "
        "a run goes on in another folder of the same classes only"
    )


def _saved_ranks(state: Mapping[str, Any]) -> int:
    """The number of ranks a checkpoint ``state`` trained on (older ones: its loader states)."""
    return int(state.get("world_size", len(state["loader"]) or 1))


def check_ranks(state: Mapping[str, Any], path: Path, world: int) -> None:
    """A run stopped mid-epoch continues on as many ranks: each rank's shard depends on them.

    Raises:
        ValueError: the checkpoint ``state`` stopped mid-epoch on another number
            of ranks than ``world``; the message gives the command to use.
    """
    ranks = _saved_ranks(state)
    if state["step"] and ranks != world:
        raise ValueError(
            f"--resume {path} stopped mid-epoch (epoch {state['epoch'] + 1}, step "
            f"{state['step']}) on {ranks} rank{'s' * (ranks > 1)} and this run has {world}; "
            f"resume it with the same number: {resume_command(path, ranks)}"
        )


def _tell_of_other_ranks(state: Mapping[str, Any], saved: Mapping[str, Any], path: Path) -> None:
    """Logs (rank 0) that a run resumed between epochs on another number of ranks keeps its
    learning rate, which the default derived from the old global batch: the flag that sets
    it cannot change on resume, and nothing said the batch had changed under it."""
    ranks, world = _saved_ranks(state), _world_size()
    data, optim = saved.get("data") or {}, saved.get("optim") or {}
    batch, lr = data.get("batch_size"), optim.get("lr")
    if ranks == world or not isinstance(batch, int) or not isinstance(lr, (int, float)):
        return
    if os.environ.get("RANK", "0") != "0":
        return
    note = ""
    if data.get("root") is not None and lr == _default_lr(batch, ranks, embedded=False):
        now = _default_lr(batch, world, embedded=False)
        note = (
            f" (the default for a global batch of {batch * ranks}; {now:g} for "
            f"{batch * world}, but --lr cannot change on resume)"
        )
    logger.warning(
        "--resume %s: the run trained on %d rank%s (global batch %d) and goes on on %d "
        "(global batch %d) with its learning rate %g%s",
        path,
        ranks,
        "s" * (ranks > 1),
        batch * ranks,
        world,
        batch * world,
        lr,
        note,
    )


def _upgrade(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's configuration in today's fields; older ones lack some.

    Before the augmentations, one ``crop_size`` was the training and validation crop
    and ``resize_size`` the validation resize; what was missing had today's defaults.
    """
    data = dict(saved["data"])
    if "crop_size" in data:
        crop = data.pop("crop_size")
        data |= {"train_crop_size": crop, "val_crop_size": crop}
    if "resize_size" in data:
        data["val_resize_size"] = data.pop("resize_size")
    data.setdefault("interpolation", Interpolation.BILINEAR.value)
    defaults = {
        "augment": AugmentConfig().to_dict(),
        **{name: getattr(TrainConfig, name) for name in ("model_ema_steps", "model_ema_decay")},
        "model_ema": False,
        "test_only": False,
    }
    return defaults | dict(saved) | {"data": data}


def _saved_args(
    saved: Mapping[str, Any], args: argparse.Namespace, typed: Mapping[str, str]
) -> dict[str, Any]:
    """The flags' values (argparse dests) that reproduce a saved configuration, then the typed.

    The augmentation is not among them: it is the saved ``augment`` as saved (timm's
    ``--aa`` sets fields that no flag gives back), changed by typed flags only. A setting
    the file lacks takes its flag's default, as in timm's partial ``-c`` files.
    """
    flat = flatten(saved)
    values: dict[str, Any] = {dest: None for setters in ALIASES.values() for dest, _ in setters}
    for field, (dest, _) in FLAGS.items():
        if field.startswith("augment."):
            value = None
        else:  # the parser's default where the file lacks it ("got None" errors before)
            value = flat[field] if field in flat else getattr(args, dest)
        values[dest] = Path(value) if dest in _PATH_DESTS and value is not None else value
    values |= {dest: getattr(args, dest) for dest in typed}
    for field, setters in ALIASES.items():  # a typed --crop-size sets both crops again
        own = FLAGS[field][0] if field in FLAGS else None
        if own is not None and own not in typed and any(dest in typed for dest, _ in setters):
            values[own] = None
    return values


def _check_gpu(saved: Mapping[str, Any], path: Path) -> None:
    if saved.get("device") == Device.GPU.value:
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                f"--resume {path}: the run trained on the GPU and CUDA is not available here; "
                "resume it on a machine with a GPU, or evaluate its model here on the CPU: "
                f"{resume_command(path, 1, '--test-only', '--device', 'cpu')}"
            )


def _clashing_flags(
    saved: Mapping[str, Any],
    args: argparse.Namespace,
    typed: Mapping[str, str],
    saved_augment: AugmentConfig,
    fixed_values: Mapping[str, Any],
) -> list[str]:
    """The typed flags that may not change on resume, if leaving them out makes the saved
    configuration build again (they caused its error); else none (another flag did)."""
    fixed = {
        dest
        for field in (FLAGS.keys() | ALIASES.keys()) - RESUME_MAY_CHANGE
        for dest, _ in _setters(field)
        if dest in typed
    }
    if not fixed:
        return []
    others = {dest: flag for dest, flag in typed.items() if dest not in fixed}
    values = _saved_args(saved, args, others) | dict(fixed_values)
    try:
        config_from_args(argparse.Namespace(**values), saved_augment=saved_augment)
    except ValueError:
        return []
    return sorted(typed[dest] for dest in fixed)


def _clash(
    flag: str, saved: Mapping[str, Any], args: argparse.Namespace, typed: Mapping[str, str]
) -> str:
    """``"--crop-size 300 differs from the checkpoint's --train-crop-size 224,
    --val-crop-size 224"``: a typed fixed flag, its value and the saved values it sets;
    ``""`` where it gives the saved values again."""
    dest = next(dest for dest, spelt in typed.items() if spelt == flag)
    flat = flatten(saved)
    fields = sorted(
        field
        for field in FLAGS.keys() | ALIASES.keys()
        if field in flat and any(d == dest for d, _ in _setters(field))
    )
    named = _named_fields(fields, flat, own=dest)
    held = ", ".join(f"{FLAGS[f][1]} {_shown(flat[f])}" for f in named)
    value = getattr(args, dest)
    if named and all(_shown(flat[f]) == _shown(value) for f in named):
        return ""  # the checkpoint's own value: not a change (--remode const alone)
    typed_as = flag if isinstance(value, bool) else f"{flag} {_shown(value)}"
    return (
        f"{typed_as} differs from the checkpoint's {held}" if held else f"{typed_as} cannot change"
    )


def resume_config(args: argparse.Namespace, typed: Mapping[str, str]) -> TrainConfig:
    """The configuration of ``--resume``: the checkpoint's, with the flags that may change.

    Not carried over: ``--stop-after-steps`` (given again or not at all) and
    ``--output-dir`` (default: the checkpoint's folder).

    Raises:
        ValueError: no such checkpoint; it stopped mid-epoch on another number of
            ranks; its dataset folder or file list is gone (the flag that gives the new
            place named); its ``-j`` is above this machine's limit; or a typed flag changes
            a setting that cannot change (each named; ``--data`` may name a folder of the
            same classes, ``--device cpu`` with ``--test-only``).
    """
    path = args.resume
    if path.is_dir():  # a run's folder: the checkpoint it holds
        if not (path / CHECKPOINT_NAME).is_file():
            message = (
                f"--resume {path}: a folder without a {CHECKPOINT_NAME}; give the checkpoint "
                "file of a run (RUN_DIR/checkpoint.pth) or its folder"
            )
            if (path / METRICS_NAME).is_file():
                message += (
                    f" (its {METRICS_NAME} is of a run that ended before its first checkpoint "
                    "was written whole: there is nothing to continue)"
                )
            raise ValueError(message)
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise ValueError(f"--resume {path}: no such checkpoint file")
    from .checkpoint import load_checkpoint  # torch: only once the flags parsed

    state = load_checkpoint(path)
    saved = state.get("config")
    if not saved:
        raise ValueError(f"--resume {path}: the checkpoint holds no configuration")
    sections = ("data", "optim", "mix")
    if not isinstance(saved, dict) or not all(isinstance(saved.get(k), dict) for k in sections):
        raise ValueError(
            f"--resume {path}: its configuration has no data, optim and mix settings; "
            + _OTHER_VERSION
        )
    if not args.test_only:  # evaluating does not continue the epoch's shards
        check_ranks(state, path, _world_size())
        _tell_of_other_ranks(state, saved, path)
    saved = _upgrade(saved)
    # --test-only --device cpu: a GPU run's model evaluated here, on the CPU, in fp32
    on_cpu = bool(args.test_only and "device" in typed and args.device == Device.CPU.value)
    if not on_cpu:
        _check_gpu(saved, path)
    run_values = {
        "resume": path,
        "stop_after_steps": args.stop_after_steps,
        "output_dir": args.output_dir or path.parent,
    }
    values = _saved_args(saved, args, typed) | run_values
    if on_cpu and "amp" not in typed:
        values["amp"] = Precision.FP32.value  # fp16 needs a GPU; bf16 would round the figures
    _check_saved_paths(values, typed, path)
    workers = values.get("workers")
    if "workers" not in typed and isinstance(workers, int) and workers > worker_limit():
        # a run from a larger machine: it was blamed on "another version" of train
        raise ValueError(
            f"--resume {path}: the run's -j {workers} is more than this machine allows "
            f"({worker_limit()}, {worker_limit_rule()}); give -j/--workers, which may change "
            "on resume"
        )
    try:
        saved_augment = AugmentConfig.from_dict(saved["augment"])
    except (TypeError, ValueError, AttributeError) as error:
        raise ValueError(
            f"--resume {path}: its augment settings cannot be read ({error}); " + _OTHER_VERSION
        ) from None
    try:
        config = config_from_args(argparse.Namespace(**values), saved_augment=saved_augment)
    except (TypeError, AttributeError) as error:  # a value of the wrong kind in the file
        raise ValueError(
            f"--resume {path}: its configuration cannot be read ({error}); " + _OTHER_VERSION
        ) from None
    except ValueError:
        epochs = values.get("epochs")
        if isinstance(epochs, int) and 1 <= epochs < saved["epochs"]:
            # what made the saved settings fail (--warmup-epochs 5 > --epochs 2): name it,
            # not the untyped flag
            shrunk = f"{typed.get('epochs', '--epochs')} {epochs}"
            raise ValueError(
                f"{path}: {shrunk} is fewer than the checkpoint's {saved['epochs']}; " + _MAY_CHANGE
            ) from None
        # A typed flag that may not change can clash with a saved value (--crop-size 48
        # against the saved resize of 37): name the flag, not the saved setting.
        fixed = _clashing_flags(saved, args, typed, saved_augment, run_values)
        clashes = [c for c in (_clash(flag, saved, args, typed) for flag in fixed) if c]
        if clashes:
            raise ValueError(f"{path}: {'; '.join(clashes)}; {_MAY_CHANGE}") from None
        untyped = {"stop_after_steps": None, "output_dir": path.parent}
        as_saved = _saved_args(saved, args, {}) | run_values | untyped
        try:  # no typed flag at all: then the saved values themselves are at fault
            config_from_args(argparse.Namespace(**as_saved), saved_augment=saved_augment)
        except (ValueError, TypeError, AttributeError) as error:
            raise ValueError(
                f"--resume {path}: its configuration cannot be read ({error}); " + _OTHER_VERSION
            ) from None
        raise
    unknown = _unknown_settings(saved, config.to_dict())
    if unknown:  # they would read as settings changed on resume ("x is on ... none here")
        raise ValueError(
            f"--resume {path}: its configuration has settings this version does not know "
            f"({', '.join(unknown)}); " + _OTHER_VERSION
        )
    also = frozenset({"device", "precision"}) if on_cpu else frozenset()
    values_typed = {dest: getattr(args, dest, None) for dest in typed}
    reasons = resume_changes(saved, config.to_dict(), typed, may_change=also, values=values_typed)
    if reasons:
        raise ValueError(f"{path}: {'; '.join(reasons)}; {_MAY_CHANGE}")
    return config


# The saved places a run reads its files from: (argparse dest, flag, what it is).
_SAVED_PLACES = (
    ("data", "--data", "folder"),
    ("train_list", "--train-list", "file"),
    ("val_list", "--val-list", "file"),
)


def _gone_saved_place(
    values: Mapping[str, Any], typed: Mapping[str, str]
) -> tuple[str, str] | None:
    """``("--data", "--data X is gone (no such folder)")`` for the first saved (untyped)
    dataset folder or file list of ``values`` that is not there (moved, unmounted); ``None``
    if none is."""
    for dest, flag, what in _SAVED_PLACES:
        place = values.get(dest)
        if dest in typed or not isinstance(place, Path):
            continue
        if not (place.is_dir() if what == "folder" else place.is_file()):
            return flag, f"{flag} {place} is gone (no such {what})"
    return None


def _check_saved_paths(values: Mapping[str, Any], typed: Mapping[str, str], path: Path) -> None:
    """The dataset folder and file lists of a resume, checked before the configuration is
    rebuilt (whose fallback would blame the checkpoint): a saved one that is gone (moved,
    unmounted) is named with the flag that gives its new place.

    Raises:
        ValueError: the ``--data`` folder (saved or typed) is missing or not a dataset, or a
            saved ``--train-list``/``--val-list`` is missing.
    """
    gone = _gone_saved_place(values, typed)
    if gone is not None:
        flag, gone_text = gone
        same = " of the same classes" if flag == "--data" else ""
        again = resume_command(path, _world_size(), flag, "NEW_PLACE")
        raise ValueError(
            f"--resume {path}: the run's {gone_text}; restore it, or give its new place"
            f"{same}: {again}"
        )
    if isinstance(values.get("data"), Path):
        try:
            _list_classes(values["data"])
        except ValueError as error:  # "--data ROOT: no val/ folder (expected ...)"
            raise ValueError(
                str(error) if "data" in typed else f"--resume {path}: the run's {error}"
            ) from None


def _unknown_settings(saved: Mapping[str, Any], known: Mapping[str, Any]) -> list[str]:
    """The dotted names of ``saved`` that no field of ``known`` (a configuration's
    ``to_dict()``) holds: a saved ``data.embedded.seed`` is known where ``data.embedded``
    is ``None`` (a ``--data`` folder instead of the embedded set), and a saved
    ``data.embedded`` of ``None`` where ``known`` has its fields."""
    fields = flatten(known).keys()
    sections = {name.rsplit(".", n)[0] for name in fields for n in range(1, name.count(".") + 1)}

    def held(name: str) -> bool:
        parts = name.split(".")
        within = any(".".join(parts[:n]) in fields for n in range(1, len(parts) + 1))
        return within or name in sections

    return sorted(name for name in flatten(saved) if not held(name))


# Why a checkpoint's configuration cannot be read: not a flag to change.
_OTHER_VERSION = (
    "it was written by another version of python -m train, or edited: resume it with the "
    "version that wrote it"
)


def _read_config(path: Path) -> dict[str, Any]:
    """A run's ``config.json`` (:meth:`TrainConfig.to_json`), in today's fields, with its rank
    count as ``RANKS_KEY`` (1 in files written before it was saved)."""
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"--config {path}: not a run's config.json ({error})") from None
    sections = ("data", "optim", "mix")
    if not isinstance(saved, dict):
        raise ValueError(f"--config {path}: not a run's config.json (no JSON object of settings)")
    missing = [k for k in sections if not isinstance(saved.get(k), dict)]
    if missing:  # it said "no data, optim and mix settings" of a file lacking one of them
        raise ValueError(
            f"--config {path}: not a run's config.json (it has no {' or '.join(missing)} "
            f"section); a partial file has all three of data, optim and mix, empty ones "
            f'included ("optim": {{}})'
        )
    ranks = saved.get(RANKS_KEY, 1)
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise ValueError(f"--config {path}: {RANKS_KEY} must be an int >= 1, got {ranks!r}")
    saved = _upgrade({k: v for k, v in saved.items() if k != RANKS_KEY})
    unknown = sorted(saved.keys() - {field.name for field in dataclasses.fields(TrainConfig)})
    if unknown:  # a misspelt key would otherwise be dropped without a word
        raise ValueError(f"--config {path}: unknown setting(s) {', '.join(unknown)}")
    return saved | {RANKS_KEY: ranks}


# Defaults derived from other flags (argparse dests): a replay derives them again when one
# of those is typed.
_DERIVED = {
    "warmup_epochs": {"epochs"},
    "lr": {"data", "batch_size", RANKS_KEY},
    # each loader's own (DALI's per sample, torchvision's per batch): a DALI run's file
    # replayed with --loader torchvision was refused for the saved "elem" it never typed
    "mix_mode": {"loader"},
}


def _saved_default(saved: Mapping[str, Any], dest: str) -> bool:
    """Whether a saved configuration's ``dest`` (``warmup_epochs``, ``lr`` or ``mix_mode``)
    is the default that its other values derive."""
    try:
        data, optim = saved["data"], saved["optim"]
        embedded = data["root"] is None
        if dest == "warmup_epochs":
            default = _default_warmup_epochs(int(saved["epochs"]), embedded=embedded)
            return float(optim["warmup_epochs"]) == default
        if dest == "mix_mode":
            dali = data.get("loader", LoaderKind.DALI.value) == LoaderKind.DALI.value
            return saved["mix"]["mode"] == (MixMode.ELEM if dali else MixMode.BATCH).value
        ranks = int(saved[RANKS_KEY])
        return float(optim["lr"]) == _default_lr(int(data["batch_size"]), ranks, embedded=embedded)
    except (KeyError, TypeError, ValueError, AttributeError):
        return False  # not a run's config.json: config_from_args names what is wrong


# --device, --amp, --channels-last and -j: resolved for the machine (auto), not replayed.
_MACHINE_DESTS = frozenset({"device", "amp", "channels_last", "workers"})


def replay_config(args: argparse.Namespace, typed: Mapping[str, str]) -> TrainConfig:
    """``--config RUN/config.json``: that run's configuration, with the typed flags' values.

    A new run starts (timm's ``-c``): not replayed are ``resume``, ``test_only``,
    ``stop_after_steps`` and ``output_dir`` (a new ``runs/<time>`` unless given), nor
    the machine's settings (``device``, ``precision``, ``channels_last``, ``workers``),
    which follow this machine as on a first run unless typed.

    Raises:
        ValueError: ``--resume`` given too; the file cannot be read as a run's
            configuration; or a value (saved or typed) is invalid.
    """
    path = args.config
    if args.resume is not None:
        raise ValueError(
            "--config and --resume both give the configuration; give one: --resume continues "
            "a run, --config starts a new one with a run's configuration"
        )
    saved = _read_config(path)
    # a switch's value that is no bool: "model_ema": "no" turned the average on, as any
    # non-empty string is true (the other kinds are checked with the values)
    default = json.loads(parse_config([], claim=False).to_json())
    wrong = _wrong_kind(saved, default, only=bool)
    if wrong:
        raise ValueError(f"--config {path}: {wrong}")
    # a misspelt key inside a section ("mixup_alpah") was dropped without a word, and the
    # run took the default
    unknown = _unknown_settings({k: v for k, v in saved.items() if k != RANKS_KEY}, default)
    if unknown:
        raise ValueError(f"--config {path}: unknown setting(s) {', '.join(unknown)}")
    values = _saved_args(saved, args, typed)
    # The machine's settings are this machine's, as on a first run, unless typed: a GPU
    # run's file replayed on a CPU node refused its saved --device gpu, then ran bf16 and
    # NHWC on the CPU, or refused its 16 workers; a CPU run's ran on the CPU of a GPU node.
    for dest in _MACHINE_DESTS - typed.keys():
        values[dest] = getattr(args, dest)
    # The saved values are kept as they are, except the validation resize: a typed crop
    # derives it again (crop * 8 / 7) unless it is typed too, as on a first run.
    if {"crop_size", "val_crop_size"} & typed.keys() and "val_resize_size" not in typed:
        values["val_resize_size"] = None
    # So are the warmup (from --epochs) and the learning rate (from the batch, ranks and
    # dataset) where the saved run had their defaults: kept, a saved 1-epoch warmup made a
    # replay with --epochs 1 all warmup and no decay, at the embedded set's lr on another.
    # The rank count changes as a typed flag does: a default lr (0.1 per 256 images of the
    # global batch) follows a replay on other ranks.
    changed = typed.keys() | ({RANKS_KEY} if saved[RANKS_KEY] != _world_size() else set())
    for dest, derived_from in _DERIVED.items():
        if derived_from & changed and dest not in typed and _saved_default(saved, dest):
            values[dest] = None
    gone = _gone_saved_place(values, typed)
    if gone is not None:  # it said "--config RUN/config.json: --data X: no such folder"
        flag, gone_text = gone
        raise ValueError(f"--config {path}: the run's {gone_text}; give {flag} with its new place")
    values |= {
        "resume": None,
        "test_only": args.test_only,
        "stop_after_steps": args.stop_after_steps,
        "output_dir": args.output_dir,
    }
    try:
        saved_augment = AugmentConfig.from_dict(saved["augment"])
        config = config_from_args(argparse.Namespace(**values), saved_augment=saved_augment)
    except (TypeError, AttributeError) as error:  # a value of the wrong kind in the file
        # it said "not a run's config.json ('>' not supported between 'int' and 'str')"
        what = _wrong_kind(saved, default) or f"not a run's config.json ({error})"
        raise ValueError(f"--config {path}: {what}") from None
    except ValueError as error:
        raise ValueError(f"--config {path}: {error}") from None
    return config


_KINDS = (
    (bool, "true or false"),
    (int, "an int"),
    (float, "a number"),
    (str, "a string"),
    (list, "a list"),
)


def _wrong_kind(
    saved: Mapping[str, Any],
    reference: Mapping[str, Any],
    at: str = "",
    *,
    only: type | None = None,
) -> str | None:
    """``"<setting> must be <kind>, got <value>"`` for the first of ``saved``'s values whose
    JSON kind differs from ``reference``'s (a default configuration's), ``None`` if none;
    with ``only``, of the settings of that kind alone."""
    for key, value in saved.items():
        ref = reference.get(key)
        if isinstance(ref, dict) and isinstance(value, dict):
            found = _wrong_kind(value, ref, f"{at}{key}.", only=only)
            if found:
                return found
            continue
        if ref is None or value is None:
            continue
        kind, name = next((k, n) for k, n in _KINDS if isinstance(ref, k))
        if only is not None and kind is not only:
            continue
        accepted = (int, float) if kind is float else kind  # an int is a number too
        # a bool is an int to isinstance: it fits where, and only where, one is expected
        if not isinstance(value, accepted) or isinstance(value, bool) != (kind is bool):
            return f"{at}{key} must be {name}, got {value!r}"
    return None


def _check_ema_flags(args: argparse.Namespace, typed: Mapping[str, str]) -> None:
    """The average's settings are refused without an average (on resume they must repeat)."""
    settings = [typed[dest] for dest in ("model_ema_steps", "model_ema_decay") if dest in typed]
    if settings and not args.model_ema:
        raise ValueError(f"{' and '.join(settings)} need{'s' * (len(settings) == 1)} --model-ema")
    # 1: the average never leaves the first weights, and is evaluated every epoch; refused
    # here, for new runs only: a checkpoint saved with it resumes
    decay = args.model_ema_decay
    if args.model_ema and not 0 <= decay < 1:
        raise ValueError(
            f"{typed.get('model_ema_decay', '--model-ema-decay')} must be in [0, 1), got {decay!r}"
        )


def _check_mix_flags(args: argparse.Namespace, typed: Mapping[str, str]) -> None:
    """The mixing's settings are refused where nothing mixes (``--cutmix-alpha 0
    --mixup-alpha 0 --mix-prob 0.5`` trained without a word), as ``--remode`` is; for new
    runs only: a checkpoint saved with them resumes."""
    if args.cutmix_minmax and max(args.cutmix_minmax) == 0:  # every box empty
        raise ValueError(
            f"{typed['cutmix_minmax']} must have max > 0 (every box would be empty), got "
            f"{tuple(args.cutmix_minmax)}"
        )
    if args.mixup_alpha or args.cutmix_alpha or args.cutmix_minmax:
        return
    dests = ("mix_prob", "switch_prob", "mix_mode", "correct_lam")
    settings = [typed[dest] for dest in dests if dest in typed]
    if settings:
        raise ValueError(
            f"{' and '.join(settings)} need{'s' * (len(settings) == 1)} --cutmix-alpha or "
            "--mixup-alpha > 0 (both are 0: nothing is mixed)"
        )


def parse_config(argv: Sequence[str] | None = None, *, claim: bool = False) -> TrainConfig:
    """Parses ``argv`` (default ``sys.argv[1:]``), with ``--resume``'s configuration if given.

    An invalid value ends the process with one line on stderr naming the flag as
    typed, and exit status 2 (:class:`train.status.ExitStatus.USAGE`).

    Args:
        claim: make the default output folder once the flags are good
            (:func:`claim_run_dir`), which may give it another ``-N`` name; ``python -m
            train`` claims on rank 0, whose folder every rank then takes. Without it
            the default folder is only named.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = get_args_parser()
    args = parser.parse_args(argv)
    typed = typed_flags(argv)
    named = functools.partial(name_flags, typed=typed)
    with exit_on_user_error(parser, name_flags=named, status=ExitStatus.USAGE, catch=(ValueError,)):
        if args.config is not None:
            config = replay_config(args, typed)
        elif args.resume is not None:
            config = resume_config(args, typed)
        else:
            _check_ema_flags(args, typed)
            _check_mix_flags(args, typed)
            config = config_from_args(args)
        _check_folders(config)
        if claim and not _names_output_dir(args):
            config = dataclasses.replace(config, output_dir=claim_run_dir(config.output_dir))
        return config


def _names_output_dir(args: argparse.Namespace) -> bool:
    """The command names its output folder: ``--output-dir``, or ``--resume``'s own folder."""
    return args.output_dir is not None or args.resume is not None


def claims_run_dir(argv: Sequence[str]) -> bool:
    """Whether ``parse_config(argv, claim=True)`` makes a new ``runs/<date-time>`` folder
    (``argv`` names none); ``argv`` parsed already, so it parses again without a word."""
    return not _names_output_dir(get_args_parser().parse_args(list(argv)))


def first_missing(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist (what making it
    makes), or ``None`` where ``folder`` exists."""
    folder = folder.absolute()
    if folder.exists():
        return None
    while not folder.parent.exists():
        folder = folder.parent
    return folder


def drop_unused_run_dir(folder: Path, made: Path | None = None) -> bool:
    """Removes ``folder``, which this command made (a ``runs/<date-time>`` it claimed, a
    new ``--output-dir``), if its run wrote nothing there but ``config.json``, and the
    folders above it up to ``made`` that it made too and that are empty (``runs/``);
    returns whether it removed ``folder``.

    A run that fails or is aborted before its first epoch (a missing dataset, a bad
    file in the first batches, a batch larger than the data, Ctrl-C while it starts)
    then leaves no folder behind for each attempt; the error line's scan writes into a
    folder of its own making.
    """
    from .utils import folder_unlocked  # torch: imported by then

    try:
        if any(entry.name not in ("config.json", LOCK_NAME) for entry in folder.iterdir()):
            return False
        with folder_unlocked(folder) as free:
            # another run's lock (started with the same new --output-dir, it made the folder
            # and trains there, while this one was refused as "another run is writing"):
            # its folder, kept; removing its lock and config.json crashed it an epoch later
            if not free:
                return False
            (folder / "config.json").unlink(missing_ok=True)
            (folder / LOCK_NAME).unlink(missing_ok=True)  # this run's, released
            folder.rmdir()
    except OSError:  # gone already, or something written there meanwhile: keep it
        return False
    folder = folder.absolute()
    while made is not None and folder != made and folder.is_relative_to(made):
        folder = folder.parent
        try:
            folder.rmdir()
        except OSError:  # not empty (another run's folder there): kept
            break
    return True


def _check_folders(config: TrainConfig) -> None:
    """The output folder (and the embedded dataset's) can be made, and the output folder
    holds no other run: a second run there would append its epochs to the first's metrics
    and overwrite its checkpoint."""
    out = config.output_dir
    if config.data.embedded is not None:
        # read only is fine where the embedded set is there already; generate() checks
        # not "--cache-dir" where $DALI_CUTMIX_CACHE or the default gave it
        source = cache_source(config.data.cache_dir)
        check_folder(config.data.cache_dir, source, probe_existing=False)
    check_folder(out, "--output-dir")
    for split in ("train", "val"):  # its plot, a .png, would be read as an image there
        check_outside(out, "--output-dir", config.data.dataset_dir / split, "the split folder")
    if config.test_only:  # writes test.json only
        return
    held = [name for name in (METRICS_NAME, CHECKPOINT_NAME) if (out / name).exists()]
    if not held:
        return
    checkpoint = out / CHECKPOINT_NAME
    resume = config.resume
    if resume is not None and (
        _same_file(resume, checkpoint)  # a link to a checkpoint on another disk, too
        or resume.absolute().parent == out.absolute()
        or resume.resolve().parent == out.resolve()
    ):
        if CHECKPOINT_NAME not in held or _same_file(resume, checkpoint):
            return  # the run's own checkpoint (or the one it has, renamed)
        # a copy kept beside it (ep1.pth): continuing overwrote the run's newer checkpoint
        # and dropped its later epochs from metrics.jsonl, said to be "not written"
        raise ValueError(
            f"--resume {config.resume} is not {checkpoint}, the checkpoint of the run in that "
            "folder, which continuing it there would overwrite (with the run's later epochs in "
            f"{METRICS_NAME}); continue it in another folder with --output-dir NEW_FOLDER, or "
            f"continue the run itself with: {resume_command(checkpoint, _world_size())}"
        )
    if held == [METRICS_NAME]:  # killed before its first checkpoint was whole (SIGKILL, OOM)
        raise ValueError(
            f"--output-dir {out} already holds a run that wrote no {CHECKPOINT_NAME} ("
            f"{METRICS_NAME} only: it ended before its first checkpoint was written whole, "
            "so it cannot be continued); give another folder, or delete that one to start "
            "again there"
        )
    files = " and ".join(held)
    message = f"--output-dir {out} already holds a run ({files}); give another folder"
    if CHECKPOINT_NAME in held:
        message += f", or continue that run with: {resume_command(checkpoint, _world_size())}"
    raise ValueError(message)


def _same_file(path: Path, other: Path) -> bool:
    try:
        return os.path.samefile(path, other)
    except OSError:  # one of them gone: checked elsewhere
        return False
