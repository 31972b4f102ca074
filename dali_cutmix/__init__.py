"""dali-cutmix: CutMix, MixUp and Cutout inside NVIDIA DALI pipelines, feeding PyTorch."""

from dali_cutmix.config import MixConfig, MixMode
from dali_cutmix.files import BadImageError, DatasetError
from dali_cutmix.loader import DaliLoader, LastBatch
from dali_cutmix.mixing import cutmix, cutout, mix, mixup, soft_targets

__all__ = [
    "BadImageError",
    "DaliLoader",
    "DatasetError",
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
