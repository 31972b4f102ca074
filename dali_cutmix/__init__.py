"""dali-cutmix: CutMix, MixUp and Cutout inside NVIDIA DALI pipelines."""

from dali_cutmix.config import MixConfig, MixMode
from dali_cutmix.mixing import cutmix, cutout, mix, mixup, soft_targets

__all__ = ["MixConfig", "MixMode", "cutmix", "cutout", "mix", "mixup", "soft_targets"]
__version__ = "0.1.0"

# The PyTorch-facing loader and the dataset errors it raises (issue 3).
from dali_cutmix.files import BadImageError, DatasetError  # noqa: E402
from dali_cutmix.loader import DaliLoader, LastBatch  # noqa: E402

__all__ += ["BadImageError", "DaliLoader", "DatasetError", "LastBatch"]
