# The two commands: `make run` (install, then the quickstart) and `make test` (install, then the tests).
# TORCH pins the CPU build that a machine without a GPU resolves locally; a GPU user installs
# the CUDA build of torch first (PyTorch's own instructions) and sets TORCH=torch.
PYTHON ?= python3
TORCH ?= torch==2.13.0

.PHONY: install run test test-slow bench
install:
	$(PYTHON) -m pip install -q $(TORCH) -e ".[dev]"

run: install
	layerwise run

test: install
	$(PYTHON) -m pytest -q

test-slow: install
	$(PYTHON) -m pytest -q -m slow
