# `make demo` and `make test` set everything up on a fresh machine, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/textloc: pyproject.toml
	$(PY) -m venv $(VENV)
	# A pinned torch takes the CPU wheel on disk; an unpinned one would pull GBs of CUDA.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# The demo model. Switch to textloc-tiny once its weights ship in textloc/tiny/weights/; until
# then a random-init SDXL-layout pipeline shows the commands work (its images are noise).
DEMO_MODEL ?= tiny-random-sdxl
DEMO_PROMPT := A sign that says "HELLO".

demo: $(BIN)/textloc
	$(BIN)/textloc layers --model $(DEMO_MODEL)
	$(BIN)/textloc generate --model $(DEMO_MODEL) '$(DEMO_PROMPT)' --num 4 --out runs/demo/generate.png

test: $(BIN)/textloc
	$(BIN)/python -m pytest tests

bench: $(BIN)/textloc
	$(BIN)/python bench/bench_engine.py
	$(BIN)/python bench/bench_localize.py

clean:
	rm -rf $(VENV) build *.egg-info
