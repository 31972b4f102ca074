"""dali-cutmix: CutMix, MixUp, Cutout and the recipes' augmentations inside NVIDIA DALI pipelines,
feeding PyTorch.

The names below load their module on first use (PEP 562), so that a command's
``--help`` or a bad flag answers without importing torch and DALI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs; at run time see __getattr__
    from dali_cutmix.config import (
        AugmentConfig,
        AutoAugment,
        Device,
        EraseMode,
        Interpolation,
        MixConfig,
        MixMode,
        resolve_device,
    )
    from dali_cutmix.files import BadImageError, DatasetError
    from dali_cutmix.loader import DaliLoader, LastBatch
    from dali_cutmix.mixing import cutmix, cutout, mix, mixup, soft_targets

# Each public name and the module it lives in.
_HOME = {
    "AugmentConfig": "config",
    "AutoAugment": "config",
    "Device": "config",
    "EraseMode": "config",
    "Interpolation": "config",
    "MixConfig": "config",
    "MixMode": "config",
    "resolve_device": "config",
    "BadImageError": "files",
    "DatasetError": "files",
    "DaliLoader": "loader",
    "LastBatch": "loader",
    "cutmix": "mixing",
    "cutout": "mixing",
    "mix": "mixing",
    "mixup": "mixing",
    "soft_targets": "mixing",
}
__all__ = [
    "AugmentConfig",
    "AutoAugment",
    "BadImageError",
    "DaliLoader",
    "DatasetError",
    "Device",
    "EraseMode",
    "Interpolation",
    "LastBatch",
    "MixConfig",
    "MixMode",
    "cutmix",
    "cutout",
    "mix",
    "mixup",
    "resolve_device",
    "soft_targets",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"dali_cutmix.{_HOME[name]}"), name)
    raise AttributeError(f"module 'dali_cutmix' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
