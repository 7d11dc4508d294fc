# Two commands: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: setup run test test-slow bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

# The main job on its embedded default configuration.
run: setup
	$(PY) scripts/run.py

# The whole suite except tests marked slow (budget: under 15 minutes on 2 cores).
test: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Tests marked slow (multi-process, long training runs); CI runs them after `make test`.
# pytest exits 5 when nothing is marked slow yet: that is not a failure.
test-slow: setup
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
