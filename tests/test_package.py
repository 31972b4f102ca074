"""The package's face: every public name resolves, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import dali_cutmix


def test_every_public_name_resolves_to_its_module() -> None:
    assert sorted(dali_cutmix.__all__) == sorted(dali_cutmix._HOME)
    for name in dali_cutmix.__all__:
        value = getattr(dali_cutmix, name)
        assert value.__module__ == f"dali_cutmix.{dali_cutmix._HOME[name]}"


def test_importing_the_package_loads_neither_torch_nor_dali() -> None:
    heavy = ("torch", "torchvision", "nvidia.dali", "matplotlib")
    code = (
        "import sys, dali_cutmix, dali_cutmix.cli; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
