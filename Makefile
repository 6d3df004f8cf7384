# `make demo` and `make test` set everything up on a fresh machine, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/textloc: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# A pinned torch takes the CPU wheel on disk; an unpinned one would pull GBs of CUDA.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

demo: $(BIN)/textloc
	$(BIN)/textloc layers --model tiny-random-sdxl

test: $(BIN)/textloc
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) build *.egg-info
