"""``python -m pipelines.bench``: see :mod:`pipelines.bench.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
