"""The package's face: every public name resolves, and importing it stays light."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

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


REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("train", "bench", "scan", "preview")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the repository, installed (without its dependencies,
    which this environment has) into a folder of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "dali_cutmix", "pipelines", "train"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "-w", tmp / "dist", source]
    done = subprocess.run(build, capture_output=True, text=True)
    if done.returncode and "No matching distribution found for setuptools" in done.stderr:
        pytest.skip("no package index here to install the build backend (setuptools) from")
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("dali_cutmix-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    assert tops == {"dali_cutmix", wheel.name.rsplit("-", 3)[0] + ".dist-info"}
    target = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", target, wheel], check=True)
    return target


def _run_installed(site: Path, cwd: Path, *command: str | Path) -> subprocess.CompletedProcess:
    """A command run where only the installed package is importable (not the repository)."""
    env = os.environ | {"PYTHONPATH": str(site)}
    return subprocess.run(
        list(map(str, command)), cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_wheel_installs_no_top_level_train_or_pipelines(installed: Path, tmp_path: Path):
    assert sorted(p.name for p in installed.iterdir() if p.suffix != ".dist-info") == [
        "bin",
        "dali_cutmix",
    ]
    for name in ("train", "pipelines"):
        done = _run_installed(installed, tmp_path, sys.executable, "-c", f"import {name}")
        assert f"No module named '{name}'" in done.stderr
    code = "import dali_cutmix.train.cli, dali_cutmix.pipelines.bench.cli as b; print(b.__file__)"
    done = _run_installed(installed, tmp_path, sys.executable, "-c", code)
    assert done.stdout.strip() == str(installed / "dali_cutmix/pipelines/bench/cli.py")


@pytest.mark.parametrize("command", SCRIPTS)
def test_each_console_script_answers_help_under_its_own_name(
    installed: Path, tmp_path: Path, command: str
) -> None:
    done = _run_installed(installed, tmp_path, installed / "bin" / f"dali-cutmix-{command}", "-h")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: dali-cutmix-{command} ")


@pytest.mark.slow
def test_the_installed_trainer_trains_and_says_how_to_continue(installed: Path, tmp_path: Path):
    from dali_cutmix.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(num_classes=3, train_per_class=8, val_per_class=3, seed=0, size_scale=0.15)
    data = generate(tmp_path / "tiny", spec, workers=1, progress=False)
    script = installed / "bin" / "dali-cutmix-train"
    args = ("--data", data, "-b", "4", "--stop-after-steps", "2", "--output-dir", "run")
    done = _run_installed(installed, tmp_path, script, *args)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "dali_cutmix.pipelines.imagenet: training loader" in done.stderr
    assert done.stderr.endswith("continue with: dali-cutmix-train --resume run/checkpoint.pth\n")
