"""The command line of ``python -m train``: the parser and the choices it offers.

This module imports neither torch nor DALI, so that ``--help`` and a mistyped
flag answer at once; :mod:`train.config` turns the parsed flags into the run's
configuration.
"""

from __future__ import annotations

import argparse
import enum

from dali_cutmix.cli import add_count, command_name, path_arg
from dali_cutmix.config import AutoAugment, Device, EraseMode, Interpolation, MixMode
from dali_cutmix.synthetic import CACHE_ENV

from .status import EXIT_STATUS_HELP

__all__ = ["ARCHS", "Device", "LoaderKind", "Precision", "Schedule", "get_args_parser"]

# torchvision's ResNet family (torchvision.models.list_models(), checked in the tests).
ARCHS = (
    "resnet101",
    "resnet152",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "resnext50_32x4d",
    "wide_resnet101_2",
    "wide_resnet50_2",
)


class LoaderKind(str, enum.Enum):
    DALI = "dali"
    TORCHVISION = "torchvision"


class Precision(str, enum.Enum):
    """Autocast dtype; FP16 also uses a GradScaler."""

    FP32 = "off"
    BF16 = "bf16"
    FP16 = "fp16"


class Schedule(str, enum.Enum):
    COSINE = "cosine"
    STEP = "step"


RESUME_HELP = """\
resuming:
  --resume RUN/checkpoint.pth (or RUN) alone continues a run: the configuration is the
  one saved in the checkpoint. Beside it may be given: --data (the dataset moved: a
  folder of the same classes), --epochs (more than before; the schedule is recomputed
  for the new length), --train-list / --val-list (e.g. a scan's clean list),
  -j/--workers, --print-freq, --output-dir, --stop-after-steps, --cache-dir,
  --deterministic and --test-only. Any other flag must repeat the checkpoint's value. A
  run stopped mid-epoch resumes with the same number of ranks. --resume CHECKPOINT
  --test-only evaluates the checkpoint's model (and its --model-ema average) on the
  validation set, prints top-1 / top-5 and writes them to OUTPUT_DIR/test.json (with
  --device cpu: a GPU run's model, on the CPU in fp32).
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each flag's default once, after its help, and the epilog's tables as written.

    A default resolved later (``None``) is described by the flag's own help; a
    switch that is off unless typed (``--deterministic``) shows none.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        if "(default:" in help_text or default in (None, argparse.SUPPRESS):
            return help_text
        if isinstance(action, argparse._StoreTrueAction):
            return help_text
        shown = ("on" if default else "off") if isinstance(default, bool) else default
        return f"{help_text} (default: {shown})"


def get_args_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m train`` (torchvision's references' name)."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # a prefix (--epoch) is refused, not taken for a flag
        prog=command_name(__package__),
        description="Train a torchvision ResNet with CutMix/MixUp mixed inside a DALI pipeline.\n"
        "Without --data, trains resnet18 at 64 px on an embedded dataset generated on first use.",
        epilog=RESUME_HELP + "\n" + EXIT_STATUS_HELP,
        formatter_class=_HelpFormatter,
    )
    _add_data_args(parser.add_argument_group("data"))
    _add_optim_args(parser.add_argument_group("model and optimisation"))
    _add_mix_args(parser.add_argument_group("mixing (timm's names)"))
    _add_augment_args(
        parser.add_argument_group(
            "augmentation (torchvision's names; timm's --aa, --reprob and --remode too)"
        )
    )
    _add_ema_args(parser.add_argument_group("weight averaging and evaluation (torchvision's)"))
    _add_run_args(parser.add_argument_group("run"))
    return parser


def _add_data_args(data: argparse._ArgumentGroup) -> None:
    data.add_argument(
        "--data",
        type=path_arg,
        default=None,
        metavar="FOLDER",
        help="ImageNet-style folder with train/ and val/ (default: the embedded dataset)",
    )
    data.add_argument(
        "--cache-dir",
        type=path_arg,
        default=None,
        metavar="FOLDER",
        help=f"where the embedded dataset is generated (default: ${CACHE_ENV} or ./data)",
    )
    for split in ("train", "val"):
        data.add_argument(
            f"--{split}-list",
            type=path_arg,
            default=None,
            metavar="FILE",
            help=f"'path label' lines to read instead of listing {split}/ (e.g. the files.txt "
            f"of python -m dali_cutmix.scan DATA/{split}); relative paths are under DATA/{split}",
        )
    data.add_argument(
        "--loader",
        default="dali",
        choices=[k.value for k in LoaderKind],
        help="DALI pipeline, or torchvision's DataLoader and transforms (the baseline)",
    )
    data.add_argument(
        "-b",
        "--batch-size",
        type=int,
        default=None,
        help="images per step and rank (default: 256 with --data, 64 embedded)",
    )
    _add_crop_args(data)
    data.add_argument(
        "-j",
        "--workers",
        type=int,
        default=None,
        help="DALI threads / DataLoader workers per rank "
        "(default: CPUs per rank, at most 8 DALI threads on the GPU)",
    )


def _add_crop_args(data: argparse._ArgumentGroup) -> None:
    data.add_argument(
        "--crop-size",
        type=int,
        default=None,
        help="training and validation crop (default: 224 with --data, 64 embedded)",
    )
    data.add_argument(
        "--train-crop-size", type=int, default=None, help="training crop (default: --crop-size)"
    )
    data.add_argument(
        "--val-crop-size",
        type=int,
        default=None,
        help="validation centre crop (default: --crop-size)",
    )
    data.add_argument(
        "--val-resize-size",
        "--resize-size",
        dest="val_resize_size",
        type=int,
        default=None,
        help="validation resize of the shorter side (default: floor(val crop * 8 / 7), "
        "timm's crop_pct 0.875)",
    )
    data.add_argument(
        "--interpolation",
        default="bilinear",
        choices=[i.value for i in Interpolation],
        help="resampling of the resizes and of the automatic augmentations' warps",
    )


def _add_optim_args(model: argparse._ArgumentGroup) -> None:
    model.add_argument(
        "--arch",
        default=None,
        choices=ARCHS,
        metavar="ARCH",
        help=f"torchvision model: {', '.join(ARCHS)} (default: resnet50 with --data, "
        "resnet18 embedded)",
    )
    model.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs of the schedule (default: 90 with --data, 6 embedded)",
    )
    model.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate (default: 0.1 * global batch / 256, 0.1 embedded)",
    )
    model.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    model.add_argument(
        "--nesterov",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Nesterov momentum",
    )
    model.add_argument(
        "--wd",
        "--weight-decay",
        dest="weight_decay",
        type=float,
        default=1e-4,
        help="SGD weight decay (on every parameter)",
    )
    model.add_argument(
        "--lr-schedule",
        default="cosine",
        choices=[s.value for s in Schedule],
        help="after the warmup, per step: cosine to 0, or step (x --lr-gamma every "
        "--lr-step-size epochs)",
    )
    model.add_argument(
        "--warmup-epochs",
        type=float,
        default=None,
        help="linear warmup, in epochs (default: 5 with --data, 1 embedded, and at most "
        "--epochs / 5; a value given may be up to --epochs)",
    )
    add_count(
        model,
        "--lr-step-size",
        30,
        "epochs between decays for --lr-schedule step (paper: 75)",
        type=int,
    )
    model.add_argument(
        "--lr-gamma",
        type=float,
        default=0.1,
        help="learning-rate factor of each decay of --lr-schedule step",
    )


def _add_mix_args(mix: argparse._ArgumentGroup) -> None:
    mix.add_argument("--cutmix-alpha", type=float, default=1.0, help="0 turns CutMix off")
    mix.add_argument("--mixup-alpha", type=float, default=0.0, help="0 turns MixUp off")
    mix.add_argument(
        "--cutmix-minmax",
        type=float,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="CutMix box sides as fractions of the image's, drawn uniformly in [MIN, MAX] "
        "instead of from --cutmix-alpha (default: off)",
    )
    mix.add_argument(
        "--mix-prob",
        type=float,
        default=1.0,
        help="probability of mixing an image (--mix-mode elem, pair) or a batch (batch)",
    )
    mix.add_argument(
        "--switch-prob", type=float, default=0.5, help="probability of CutMix when both are on"
    )
    mix.add_argument(
        "--mix-mode",
        default=None,
        choices=[m.value for m in MixMode],
        help="what one draw mixes: each image, pairs of images or the whole batch "
        "(default: elem with --loader dali, batch with torchvision)",
    )
    mix.add_argument(
        "--correct-lam",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="CutMix's label weight is the box's area after clipping at the border, not the "
        "drawn lambda",
    )
    mix.add_argument(
        "--label-smoothing",
        "--smoothing",
        dest="label_smoothing",
        type=float,
        default=0.0,
        help="label smoothing of the targets (timm's, inside the mixed targets when mixing)",
    )


def _add_augment_args(augment: argparse._ArgumentGroup) -> None:
    policies = ", ".join(p.value for p in AutoAugment)
    augment.add_argument(
        "--auto-augment",
        default=None,
        metavar="POLICY",
        help=f"automatic augmentation after the crop: {policies} (TrivialAugmentWide, "
        "RandAugment, AutoAugment's ImageNet policy; default: none)",
    )
    augment.add_argument(
        "--ra-magnitude",
        type=int,
        default=None,
        help="RandAugment's magnitude bin of 31, with --auto-augment ra (default: 9)",
    )
    augment.add_argument(
        "--aa",
        default=None,
        metavar="SPEC",
        help="timm's automatic augmentation instead, e.g. rand-m9-n2-inc1 or original "
        "(default: none)",
    )
    augment.add_argument(
        "--random-erase",
        type=float,
        default=None,
        metavar="P",
        help="RandomErasing's probability, torchvision's: area 0.02-0.33, ratio 0.3-3.3, zeros "
        "(default: none)",
    )
    augment.add_argument(
        "--reprob",
        type=float,
        default=None,
        metavar="P",
        help="RandomErasing's probability, timm's: area 0.02-1/3, ratio 0.3-1/0.3 (default: none)",
    )
    augment.add_argument(
        "--remode",
        default=None,
        choices=[m.value for m in EraseMode],
        help="erased pixels: zeros, a normal value per channel or per pixel "
        "(default: pixel with --reprob, const with --random-erase)",
    )


def _add_ema_args(ema: argparse._ArgumentGroup) -> None:
    ema.add_argument(
        "--model-ema",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep an exponential moving average of the weights, evaluated after every epoch",
    )
    add_count(
        ema, "--model-ema-steps", 32, "optimizer steps between two updates of the average", type=int
    )
    ema.add_argument(
        "--model-ema-decay",
        type=float,
        default=0.99998,
        help="decay per update before the adjustment to batch, steps and epochs",
    )
    ema.add_argument(
        "--test-only",
        action="store_true",
        help="evaluate the model of --resume CHECKPOINT (and its average) and stop",
    )


def _add_run_args(run: argparse._ArgumentGroup) -> None:
    run.add_argument(
        "--device",
        default="auto",
        choices=[d.value for d in Device],
        help="where the model and the DALI pipeline run (auto: gpu when CUDA is available)",
    )
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
    add_count(
        run,
        "--seed",
        0,
        "seeds the model's initialisation, the data order and the mixing",
        type=int,
    )
    run.add_argument(
        "--deterministic",
        action="store_true",
        help="torch.use_deterministic_algorithms(True) and no cudnn autotuning",
    )
    run.add_argument(
        "--output-dir",
        type=path_arg,
        default=None,
        metavar="FOLDER",
        help="where the checkpoint, metrics, config.json and curves go "
        "(default: runs/<time>, or the folder of --resume)",
    )
    run.add_argument(
        "--config",
        type=path_arg,
        default=None,
        metavar="RUN/config.json",
        help="start a new run with a saved run's configuration; typed flags override it, "
        "a default --lr follows this run's batch and ranks, and --device, --amp, "
        "--channels-last and -j follow this machine unless typed (not with --resume)",
    )
    run.add_argument(
        "--resume",
        type=path_arg,
        default=None,
        metavar="CHECKPOINT",
        help="continue the run saved in CHECKPOINT (a checkpoint.pth, or the run's folder "
        "holding one), with its configuration (see below)",
    )
    add_count(
        run,
        "--print-freq",
        10,
        "steps between progress updates (the only host syncs of a step)",
        type=int,
    )
    run.add_argument(
        "--stop-after-steps",
        type=int,
        default=None,
        help="checkpoint and stop after this many steps, as on Ctrl-C (default: no limit)",
    )
