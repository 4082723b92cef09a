# Two entry points for a fresh machine: `make demo` and `make test`. Both create/refresh .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: setup demo test test-slow lint typecheck bench docs dist clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first, alone and pinned (constraints.txt): the local CPU wheel instead of CUDA packages.
	$(PIP) torch
	$(PIP) -e ".[all,dev]"
	@# open_clip's own ClipLoss is the tests' oracle (tests/open_clip_reference.py loads open_clip/loss.py,
	@# which needs only torch). Without --no-deps pip would also install torchvision, timm and ftfy: the
	@# loss needs none of them, and torchvision must match a torch build that is not the CPU wheel above.
	$(PIP) --no-deps "open-clip-torch>=2.20"
	@touch $(STAMP)

$(DOCS_STAMP): $(STAMP)
	$(PIP) -e ".[all,dev,docs]"
	@touch $(DOCS_STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hardneg compare --config configs/digits_demo.yaml --overwrite

# the lint runs first: a broken layer contract fails the tests as a failing test would
test: lint
	$(PY) -m pytest -q

test-slow: $(DOCS_STAMP)
	$(PY) -m pytest -m slow

# ruff; the layer order of docs/design.md §4 as import-linter contracts (pyproject.toml); dead code
# (vulture; names only frameworks call are listed in dev/vulture_whitelist.py); the types (mypy over the
# installed package, `make typecheck`)
lint: typecheck
	$(VENV)/bin/ruff check src tests benchmarks reproduce
	PYTHONPATH=src:. $(VENV)/bin/lint-imports
	$(VENV)/bin/vulture src reproduce dev/vulture_whitelist.py --min-confidence 60

# mypy over the installed package ([tool.mypy] in pyproject.toml); part of `lint`
typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/loss_speed.py

# API reference site (mkdocs + Material + mkdocstrings) into site/; warnings are errors
docs: $(DOCS_STAMP)
	$(VENV)/bin/mkdocs build --strict

# sdist and wheel into dist/, checked by twine
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(VENV)/bin/twine check --strict dist/*

clean:
	rm -rf $(VENV) runs .pytest_cache site dist build
