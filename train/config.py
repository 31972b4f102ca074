"""The command line, parsed once into frozen, validated dataclasses.

``get_args_parser()`` returns the parser (as in torchvision's references);
``config_from_args()`` turns its namespace into a :class:`TrainConfig`,
resolving the defaults that depend on the data (the embedded dataset gets a
small ResNet and small crops so that it trains in minutes on a CPU). Nothing
below this module sees an ``argparse.Namespace``; every check that can fail
runs here, before a single image is read.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torchvision

from dali_cutmix.config import MixConfig, MixMode
from dali_cutmix.synthetic import SyntheticSpec
from train.checkpoint import load_checkpoint
from train.status import EXIT_STATUS_HELP, ExitStatus, resume_command

__all__ = [
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
    "config_from_args",
    "default_workers",
    "get_args_parser",
    "name_flags",
    "parse_config",
    "resume_config",
    "typed_flags",
]

# The embedded default dataset: 10 learnable classes of small ImageNet-like JPEGs.
EMBEDDED_SPEC = SyntheticSpec(
    num_classes=10, train_per_class=160, val_per_class=40, seed=0, size_scale=0.25
)
CACHE_ENV = "DALI_CUTMIX_CACHE"
ARCHS = tuple(
    name
    for name in torchvision.models.list_models(module=torchvision.models)
    if name.startswith(("resnet", "resnext", "wide_resnet"))
)


class LoaderKind(str, enum.Enum):
    DALI = "dali"
    TORCHVISION = "torchvision"


class Device(str, enum.Enum):
    CPU = "cpu"
    GPU = "gpu"


class Precision(str, enum.Enum):
    """Autocast dtype; FP16 also uses a GradScaler."""

    FP32 = "off"
    BF16 = "bf16"
    FP16 = "fp16"


class Schedule(str, enum.Enum):
    COSINE = "cosine"
    STEP = "step"


def _enum(kind: type[enum.Enum], name: str, value: Any) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in kind)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}") from None


def _positive(name: str, value: Any, *, zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (value >= 0 if zero else value > 0):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


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
        crop_size: side of the square training and validation crops.
        resize_size: validation images are resized to this before the centre crop.
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
    crop_size: int = 224
    resize_size: int = 256
    workers: int = 2
    cache_dir: Path = Path("data")
    train_list: Path | None = None
    val_list: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "loader", _enum(LoaderKind, "loader", self.loader))
        for name in ("batch_size", "crop_size", "resize_size", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.resize_size < self.crop_size:
            raise ValueError(
                f"resize_size ({self.resize_size}) must be >= crop_size ({self.crop_size})"
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
        _positive("warmup_epochs", self.warmup_epochs, zero=True)
        _positive("step_size", self.step_size)
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
        output_dir: where metrics, config, checkpoints and the plot go.
        resume: checkpoint to continue from (mid-epoch exactly).
        print_freq: steps between progress updates, the only host syncs in a step.
        stop_after_steps: stop (and checkpoint, as on Ctrl-C) after this many steps.
    """

    data: DataConfig
    optim: OptimConfig
    mix: MixConfig
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", _enum(Device, "device", self.device))
        object.__setattr__(self, "precision", _enum(Precision, "precision", self.precision))
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        _positive("epochs", self.epochs)
        _positive("print_freq", self.print_freq)
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.stop_after_steps is not None:
            _positive("stop_after_steps", self.stop_after_steps)
        if self.mix.num_classes != self.data.num_classes:
            raise ValueError(
                f"mix.num_classes ({self.mix.num_classes}) != number of classes "
                f"({self.data.num_classes})"
            )
        if self.precision is Precision.FP16 and self.device is Device.CPU:
            raise ValueError("--amp fp16 needs a GPU (it uses a GradScaler); use bf16 or off")
        if self.data.loader is LoaderKind.TORCHVISION and self.mix.enabled:
            _check_torchvision_mix(self.mix)
        if self.optim.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.optim.warmup_epochs}) must be <= epochs ({self.epochs})"
            )

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

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


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


# ----------------------------------------------------------------------------- command line


RESUME_HELP = """\
resuming:
  --resume RUN/checkpoint.pth alone continues a run: the configuration is the one saved
  in the checkpoint. Beside it may be given: --epochs (more than before; the schedule is
  recomputed for the new length), --train-list / --val-list (e.g. a scan's clean list),
  -j/--workers, --print-freq, --output-dir, --stop-after-steps, --cache-dir and
  --deterministic. Any other flag must repeat the checkpoint's value. A run stopped
  mid-epoch resumes with the same number of ranks.
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Flag defaults in the help, and the epilog's tables as written."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train a torchvision ResNet with CutMix/MixUp mixed inside a DALI pipeline.\n"
        "Without --data, trains resnet18 at 64 px on an embedded dataset generated on first use.",
        epilog=RESUME_HELP + "\n" + EXIT_STATUS_HELP,
        formatter_class=_HelpFormatter,
    )
    _add_data_args(parser.add_argument_group("data"))
    _add_optim_args(parser.add_argument_group("model and optimisation"))
    _add_mix_args(parser.add_argument_group("mixing (timm's names)"))
    _add_run_args(parser.add_argument_group("run"))
    return parser


def _add_data_args(data: argparse._ArgumentGroup) -> None:
    data.add_argument(
        "--data",
        type=Path,
        default=None,
        help="ImageNet-style folder with train/ and val/ (default: embedded dataset)",
    )
    data.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"where the embedded dataset is generated (default: ${CACHE_ENV} or ./data)",
    )
    for split in ("train", "val"):
        data.add_argument(
            f"--{split}-list",
            type=Path,
            default=None,
            metavar="FILE",
            help=f"'path label' lines to read instead of listing {split}/ (e.g. the files.txt "
            f"of python -m dali_cutmix.scan DATA/{split}); relative paths are under DATA/{split}",
        )
    data.add_argument("--loader", default="dali", choices=[k.value for k in LoaderKind])
    data.add_argument(
        "-b",
        "--batch-size",
        type=int,
        default=None,
        help="per rank (default: 256 with --data, 64 embedded)",
    )
    data.add_argument(
        "--crop-size", type=int, default=None, help="default: 224 with --data, 64 embedded"
    )
    data.add_argument(
        "--resize-size",
        type=int,
        default=None,
        help="validation resize (default: crop_size * 8 / 7)",
    )
    data.add_argument(
        "-j",
        "--workers",
        type=int,
        default=None,
        help="DALI threads / DataLoader workers per rank "
        "(default: CPUs per rank, at most 8 DALI threads on the GPU)",
    )


def _add_optim_args(model: argparse._ArgumentGroup) -> None:
    model.add_argument(
        "--arch",
        default=None,
        choices=ARCHS,
        help="default: resnet50 with --data, resnet18 embedded",
    )
    model.add_argument(
        "--epochs", type=int, default=None, help="default: 90 with --data, 6 embedded"
    )
    model.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate (default: 0.1 * global batch / 256, 0.1 embedded)",
    )
    model.add_argument("--momentum", type=float, default=0.9)
    model.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True)
    model.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=1e-4)
    model.add_argument("--lr-schedule", default="cosine", choices=[s.value for s in Schedule])
    model.add_argument(
        "--warmup-epochs",
        type=float,
        default=None,
        help="linear warmup (default: 5 with --data, 1 embedded; <= epochs / 5)",
    )
    model.add_argument(
        "--lr-step-size",
        type=int,
        default=30,
        help="epochs between decays for --lr-schedule step (paper: 75)",
    )
    model.add_argument("--lr-gamma", type=float, default=0.1)


def _add_mix_args(mix: argparse._ArgumentGroup) -> None:
    mix.add_argument("--cutmix-alpha", type=float, default=1.0, help="0 turns CutMix off")
    mix.add_argument("--mixup-alpha", type=float, default=0.0, help="0 turns MixUp off")
    mix.add_argument("--cutmix-minmax", type=float, nargs=2, default=None, metavar=("MIN", "MAX"))
    mix.add_argument("--mix-prob", type=float, default=1.0)
    mix.add_argument(
        "--switch-prob", type=float, default=0.5, help="probability of CutMix when both are on"
    )
    mix.add_argument(
        "--mix-mode",
        default=None,
        choices=[m.value for m in MixMode],
        help="default: elem with --loader dali, batch with torchvision",
    )
    mix.add_argument("--correct-lam", action=argparse.BooleanOptionalAction, default=True)
    mix.add_argument(
        "--label-smoothing", "--smoothing", dest="label_smoothing", type=float, default=0.0
    )


def _add_run_args(run: argparse._ArgumentGroup) -> None:
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    run.add_argument(
        "--amp",
        default="auto",
        choices=["auto"] + [p.value for p in Precision],
        help="autocast dtype (auto: bf16 on a GPU that has it, else fp16; off on CPU)",
    )
    run.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NHWC model and loader output (default: on GPU)",
    )
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--deterministic", action="store_true")
    run.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="default: runs/<time>, or the folder of --resume",
    )
    run.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="continue the run saved in CHECKPOINT, with its configuration (see below)",
    )
    run.add_argument("--print-freq", type=int, default=10)
    run.add_argument(
        "--stop-after-steps",
        type=int,
        default=None,
        help="checkpoint and stop after this many steps, as on Ctrl-C",
    )


def _list_classes(root: Path) -> tuple[str, ...]:
    """Class folder names of ``root/train``, checked against ``root/val`` (listing only)."""
    splits = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise ValueError(f"--data {root}: no {split}/ folder (expected {folder})")
        splits[split] = tuple(sorted(e.name for e in os.scandir(folder) if e.is_dir()))
        if not splits[split]:
            raise ValueError(f"--data {root}: {folder} has no class folders")
    if splits["train"] != splits["val"]:
        missing = sorted(set(splits["train"]) ^ set(splits["val"]))[:5]
        raise ValueError(f"--data {root}: train/ and val/ have different classes, e.g. {missing}")
    return splits["train"]


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _resolve_device(name: str) -> Device:
    import torch

    if name == "auto":
        return Device.GPU if torch.cuda.is_available() else Device.CPU
    if name == "gpu" and not torch.cuda.is_available():
        raise ValueError("--device gpu: CUDA is not available; use --device cpu or auto")
    return Device(name)


def _resolve_precision(name: str, device: Device) -> Precision:
    import torch

    if name != "auto":
        return Precision(name)
    if device is Device.CPU:
        return Precision.FP32
    return Precision.BF16 if torch.cuda.is_bf16_supported() else Precision.FP16


def default_workers(loader: LoaderKind, device: Device) -> int:
    """``-j``'s default: this rank's share of the CPU cores, at most 8 for DALI on the GPU.

    For ``--loader dali`` it is :func:`pipelines.imagenet.default_num_threads`:
    on the GPU path DALI's threads only feed the decoder, and more than ~8 per
    GPU stop paying. DataLoader workers do all the work, so they get every core.
    """
    if loader is LoaderKind.DALI:
        from pipelines.imagenet import default_num_threads

        return default_num_threads(gpu=device is Device.GPU)
    return max(1, (os.cpu_count() or 1) // _world_size())


def _file_list(flag: str, path: Path | None) -> Path | None:
    if path is None:
        return None
    if not path.is_file():
        raise ValueError(f"{flag} {path}: no such file")
    return path.resolve()


def _data_config(args: argparse.Namespace, device: Device) -> DataConfig:
    embedded = args.data is None
    crop = _given(args.crop_size, 64 if embedded else 224)
    loader = _enum(LoaderKind, "loader", args.loader)
    return DataConfig(
        root=None if embedded else args.data,
        classes=tuple(EMBEDDED_SPEC.classes if embedded else _list_classes(args.data)),
        embedded=EMBEDDED_SPEC if embedded else None,
        loader=loader,
        batch_size=_given(args.batch_size, 64 if embedded else 256),
        crop_size=crop,
        resize_size=_given(args.resize_size, round(crop * 8 / 7)),
        workers=_given(args.workers, default_workers(loader, device)),
        cache_dir=args.cache_dir or Path(os.environ.get(CACHE_ENV, "data")),
        train_list=_file_list("--train-list", args.train_list),
        val_list=_file_list("--val-list", args.val_list),
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Resolves data-dependent defaults and builds the validated :class:`TrainConfig`.

    Raises:
        ValueError: a flag or a combination of flags is invalid.
    """
    embedded = args.data is None
    device = _resolve_device(args.device)
    data = _data_config(args, device)
    default_lr = 0.1 if embedded else 0.1 * data.batch_size * _world_size() / 256
    epochs = _given(args.epochs, 6 if embedded else 90)
    optim = OptimConfig(
        lr=default_lr if args.lr is None else args.lr,
        momentum=args.momentum,
        nesterov=args.nesterov,
        weight_decay=args.weight_decay,
        schedule=args.lr_schedule,
        warmup_epochs=_given(args.warmup_epochs, min(1.0 if embedded else 5.0, epochs / 5)),
        step_size=args.lr_step_size,
        gamma=args.lr_gamma,
    )
    default_mode = MixMode.ELEM if args.loader == LoaderKind.DALI.value else MixMode.BATCH
    mix = MixConfig(
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
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return TrainConfig(
        data=data,
        optim=optim,
        mix=mix,
        arch=args.arch or ("resnet18" if embedded else "resnet50"),
        epochs=epochs,
        device=device,
        precision=_resolve_precision(args.amp, device),
        channels_last=device is Device.GPU if args.channels_last is None else args.channels_last,
        seed=args.seed,
        deterministic=args.deterministic,
        output_dir=args.output_dir or Path("runs") / stamp,
        resume=args.resume,
        print_freq=args.print_freq,
        stop_after_steps=args.stop_after_steps,
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
    "data.crop_size": ("crop_size", "--crop-size"),
    "data.resize_size": ("resize_size", "--resize-size"),
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
    }
)
_MAY_CHANGE = (
    "on resume only --epochs (upward), --train-list, --val-list, -j/--workers, --print-freq, "
    "--output-dir, --stop-after-steps, --cache-dir and --deterministic may change"
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
    actions = parser._actions  # argparse has no public list of its actions
    for action in actions:
        action.default = argparse.SUPPRESS  # so that only typed flags reach the namespace
    typed = vars(parser.parse_args(argv))
    return {a.dest: _spelling(a.option_strings, argv) for a in actions if a.dest in typed}


def _name_pattern(name: str) -> str:
    alone = rf"(?<![\w./'\"-]){re.escape(name)}(?![\w./'\"-])"
    # Snake-case names never occur in prose; a plain word only where a message names a value.
    return alone if "_" in name else alone + r"(?= must| \()"


_BY_NAME = {field.rsplit(".", 1)[-1]: (dest, flag) for field, (dest, flag) in FLAGS.items()}
_NAMES = re.compile("|".join(_name_pattern(n) for n in sorted(_BY_NAME, key=len, reverse=True)))


def name_flags(message: str, typed: Mapping[str, str]) -> str:
    """``message`` with each configuration field it names replaced by the field's flag.

    ``"prob must be in [0.0, 1.0], got 2.0"`` becomes ``"--mix-prob must be ..."``;
    the flag is spelled as the user typed it (``typed``, from :func:`typed_flags`).
    """

    def flag(match: re.Match) -> str:
        dest, name = _BY_NAME[match.group(0)]
        return typed.get(dest, name)

    return _NAMES.sub(flag, message)


# ----------------------------------------------------------------------------- resuming


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if len(value) <= 4 else f"{len(value)} entries"
    return str(value)


def _refusal(field: str, old: Any, new: Any, typed: Mapping[str, str]) -> str:
    dest, _ = FLAGS.get(field, (None, None))
    if dest not in typed:  # not set by a flag (the dataset's classes, say)
        return f"{field} is {_shown(old)} in the checkpoint but {_shown(new)} here"
    if isinstance(new, bool):  # --flag / --no-flag
        flag = FLAGS[field][1]
        return f"{typed[dest]} differs from the checkpoint's {flag if old else '--no-' + flag[2:]}"
    return f"{typed[dest]} {_shown(new)} differs from the checkpoint's {_shown(old)}"


def resume_changes(
    saved: Mapping[str, Any], current: Mapping[str, Any], typed: Mapping[str, str]
) -> list[str]:
    """Why a run configured as ``current`` cannot continue the checkpoint's ``saved`` one.

    Args:
        saved, current: ``TrainConfig.to_dict()`` of the checkpoint and of this command.
        typed: the flags the user typed (:func:`typed_flags`), named in the reasons.

    Returns:
        One reason per setting outside :data:`RESUME_MAY_CHANGE` that differs,
        and one if ``epochs`` shrank; empty when the run may continue.
    """
    old, new = _flatten(saved), _flatten(current)
    reasons = []
    if new["epochs"] < old.get("epochs", 0):
        reasons.append(
            f"{typed.get('epochs', '--epochs')} {new['epochs']} is fewer than the checkpoint's "
            f"{old['epochs']}"
        )
    for field in sorted(old.keys() | new.keys()):
        if field in RESUME_MAY_CHANGE or old.get(field) == new.get(field):
            continue
        reasons.append(_refusal(field, old.get(field), new.get(field), typed))
    return reasons


def check_ranks(state: Mapping[str, Any], path: Path, world: int) -> None:
    """A run stopped mid-epoch continues on as many ranks: each rank's shard depends on them.

    Raises:
        ValueError: the checkpoint ``state`` stopped mid-epoch on another number
            of ranks than ``world``; the message gives the command to use.
    """
    ranks = int(state.get("world_size", len(state["loader"]) or 1))
    if state["step"] and ranks != world:
        raise ValueError(
            f"--resume {path} stopped mid-epoch (epoch {state['epoch'] + 1}, step "
            f"{state['step']}) on {ranks} rank{'s' * (ranks > 1)} and this run has {world}; "
            f"resume it with the same number: {resume_command(path, ranks)}"
        )


def _checkpoint_args(saved: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The flags' values (argparse dests) that reproduce the checkpoint's configuration."""
    flat = _flatten(saved)
    values = {}
    for field, (dest, _) in FLAGS.items():
        value = flat.get(field)
        values[dest] = Path(value) if dest in _PATH_DESTS and value is not None else value
    if values["device"] == Device.GPU.value:
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                f"--resume {path}: the run trained on the GPU and CUDA is not available here; "
                "resume it on a machine with a GPU"
            )
    return values


def resume_config(args: argparse.Namespace, typed: Mapping[str, str]) -> TrainConfig:
    """The configuration of ``--resume``: the checkpoint's, with the flags that may change.

    Not carried over: ``--stop-after-steps`` (given again or not at all) and
    ``--output-dir`` (default: the checkpoint's folder).

    Raises:
        ValueError: no such checkpoint; it stopped mid-epoch on another number of
            ranks; or a typed flag changes a setting that cannot change (each named).
    """
    path = args.resume
    if not path.is_file():
        raise ValueError(f"--resume {path}: no such checkpoint file")
    state = load_checkpoint(path)
    saved = state.get("config")
    if not saved:
        raise ValueError(f"--resume {path}: the checkpoint holds no configuration")
    check_ranks(state, path, _world_size())
    values = _checkpoint_args(saved, path)
    values |= {dest: getattr(args, dest) for dest in typed}
    values |= {
        "resume": path,
        "stop_after_steps": args.stop_after_steps,
        "output_dir": args.output_dir or path.parent,
    }
    config = config_from_args(argparse.Namespace(**values))
    reasons = resume_changes(saved, config.to_dict(), typed)
    if reasons:
        raise ValueError(f"{path}: {'; '.join(reasons)}; {_MAY_CHANGE}")
    return config


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parses ``argv`` (default ``sys.argv[1:]``), with ``--resume``'s configuration if given.

    An invalid value ends the process with one line on stderr naming the flag as
    typed, and exit status 2 (:class:`train.status.ExitStatus.USAGE`).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = get_args_parser()
    args = parser.parse_args(argv)
    typed = typed_flags(argv)
    try:
        if args.resume is not None:
            return resume_config(args, typed)
        return config_from_args(args)
    except ValueError as error:
        message = " ".join(name_flags(str(error), typed).split())
        parser.exit(ExitStatus.USAGE, f"{parser.prog}: error: {message}\n")
