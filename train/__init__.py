"""The ResNet training application.

In the repository it is the top-level package ``train`` (``python -m train``);
the wheel installs it as ``dali_cutmix.train`` (``dali-cutmix-train``), beside
``dali_cutmix.pipelines``, so that it never shadows a user's own ``train``.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def pipelines_module(name: str) -> ModuleType:
    """The module ``NAME`` of the ready pipelines, wherever this package was imported from:
    ``pipelines.NAME`` in the repository, ``dali_cutmix.pipelines.NAME`` once installed."""
    parent = __name__.rpartition(".")[0]
    return importlib.import_module(f"{parent}.pipelines.{name}" if parent else f"pipelines.{name}")
