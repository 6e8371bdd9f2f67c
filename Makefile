# The README's two commands: `make demo` (the main job) and `make test` (lint, types, layering,
# tests).
VENV ?= .venv
# The interpreter the venv is made with: 3.11 to 3.13 (e.g. PYTHON=python3.13 VENV=.venv-3.13).
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Exactly the locked versions, hash-checked: the project's dependencies with its dev and beam
# extras (the tools, and Apache Beam for index.beam_embed, tested too), for Python 3.11-3.13.
LOCK := requirements/lock.txt

.PHONY: install demo test lint format lock clean

# The lock first, then the project alone (--no-deps), built with the locked setuptools.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	PYTHON="$(CURDIR)/$(PY)" PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash docker/entrypoint.sh all

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy vsepp training index service
	$(VENV)/bin/lint-imports

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: lint
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Moves the pins on purpose: what pyproject.toml's ranges resolve to now, with hashes
# (requirements/lock.sh says which file is for what; the Docker build installs from
# requirements/image.lock.txt), then installs them and runs the fast lane on them.
lock: install
	test -x $(VENV)/bin/uv || $(PY) -m pip install --quiet 'uv>=0.9,<1'
	UV=$(VENV)/bin/uv PYTHON=$(PY) bash requirements/lock.sh
	$(MAKE) test PYTEST_ARGS='-m "not slow"'

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
