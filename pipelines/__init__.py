"""Ready DALI pipeline definitions, built from the ``dali_cutmix`` graph functions."""

from pipelines.imagenet import make_loader

__all__ = ["make_loader"]
