"""``python -m pipelines.bench``: see :mod:`pipelines.bench.cli`."""

from .cli import entry

if __name__ == "__main__":
    entry()
