"""dali-cutmix: CutMix, MixUp, Cutout and the recipes' augmentations inside NVIDIA DALI pipelines,
feeding PyTorch."""

from dali_cutmix.config import (
    AugmentConfig,
    AutoAugment,
    EraseMode,
    Interpolation,
    MixConfig,
    MixMode,
)
from dali_cutmix.files import BadImageError, DatasetError
from dali_cutmix.loader import DaliLoader, LastBatch
from dali_cutmix.mixing import cutmix, cutout, mix, mixup, soft_targets

__all__ = [
    "AugmentConfig",
    "AutoAugment",
    "BadImageError",
    "DaliLoader",
    "DatasetError",
    "EraseMode",
    "Interpolation",
    "LastBatch",
    "MixConfig",
    "MixMode",
    "cutmix",
    "cutout",
    "mix",
    "mixup",
    "soft_targets",
]
__version__ = "0.1.0"
