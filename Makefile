# Two entry points for a newcomer on a fresh machine:
#   make train   -> virtual environment, install, train on the embedded dataset
#   make test    -> virtual environment, install, run the whole test suite (CPU)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test train lint bench preview gpu-check gpu-bundle gpu-bundle-cu120 clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "Installing DALI, PyTorch, torchvision and the dev tools into $(VENV) (about 7 GB;"
	@echo "about 2 minutes from pip's cache, longer on a first download; pip lists each package)."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar on -e '.[dev]'
	@echo "Installed. setuptools' boxed warning above about folders named like the package is"
	@echo "expected: python -m train in this clone runs its train/ folder (README: Development)."
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

train: $(STAMP)
	$(PY) -m train $(ARGS)

bench: $(STAMP)
	$(PY) -m pipelines.bench $(ARGS)

preview: $(STAMP)
	$(PY) -m dali_cutmix.preview $(ARGS)

# On a machine with CUDA: GPU tests, DALI probes, graph cost, short benchmark -> runs/gpu-check
gpu-check: $(STAMP)
	$(PY) -m pipelines.gpu_check $(ARGS)

# For a GPU machine without a package registry: DALI (../shared/device/dali-bundle) plus
# what the GPU check needs beyond torch, as .device/*.tar.xz.NN parts of < 60 MiB.
GPU_PY ?= 3.12
gpu-bundle:
	CUDA=13 ../shared/device/dali-bundle
	rm -rf .device/extra && mkdir -p .device/extra
	$(PYTHON) -m pip install -q --no-deps --only-binary=:all: --target .device/extra \
	  --python-version $(GPU_PY) --implementation cp --platform manylinux2014_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
	  pytest pluggy iniconfig pytest-timeout tqdm matplotlib contourpy cycler fonttools \
	  kiwisolver pyparsing python-dateutil scipy
	tar -C .device/extra -cf - . | xz -T0 -6 | split -b 60M -d - .device/extra.tar.xz.
	rm -rf .device/extra
	ls -l .device

# The cuda120 build the project depends on (5 parts, in .device/cu120/), beside the CUDA 13
# one that gpu-bundle packs (dali-bundle clears .device/dali.tar.xz.*: cu120 goes first).
gpu-bundle-cu120:
	../shared/device/dali-bundle
	rm -rf .device/cu120 && mkdir -p .device/cu120 && mv .device/dali.tar.xz.* .device/cu120/
	CUDA=13 ../shared/device/dali-bundle
	ls -l .device .device/cu120

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
