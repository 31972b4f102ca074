"""Ready DALI pipeline definitions, built from the ``dali_cutmix`` graph functions.

``make_loader`` is imported on first use, so that a command of this package
(``python -m pipelines.bench --help``, say) starts without importing torch and DALI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_loader"]


def __getattr__(name: str) -> Any:
    if name == "make_loader":
        from .imagenet import make_loader

        return make_loader
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
