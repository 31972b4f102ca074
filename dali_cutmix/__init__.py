"""dali-cutmix: CutMix, MixUp and Cutout inside NVIDIA DALI pipelines."""

from dali_cutmix.config import MixConfig, MixMode
from dali_cutmix.mixing import cutmix, cutout, mix, mixup, soft_targets

__all__ = ["MixConfig", "MixMode", "cutmix", "cutout", "mix", "mixup", "soft_targets"]
__version__ = "0.1.0"
