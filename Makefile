# Two entry points for a newcomer on a fresh machine:
#   make train   -> virtual environment, install, train on the embedded dataset
#   make test    -> virtual environment, install, run the whole test suite (CPU)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test train lint bench preview clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
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

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
