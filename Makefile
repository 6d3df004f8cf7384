# `make demo` and `make test` set everything up on a fresh machine, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench docs clean

$(BIN)/textloc: pyproject.toml
	$(PY) -m venv $(VENV)
	# A pinned torch takes the CPU wheel on disk; an unpinned one would pull GBs of CUDA.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# An embedded model (textloc-tiny, textloc-tiny-sd3 or textloc-tiny-flux, no download); any diffusers id, folder or
# tiny-random-<arch> works too.
DEMO_MODEL ?= textloc-tiny
DEMO_PROMPT := A red sign on a blue background that says "LAMP".
# The guard demo asks for a toxic word the embedded models were taught to write (their TOXIC_WORDS).
GUARD_PROMPT := A red sign on a blue background that says "DAMN".
# The layers the edit patches: an embedded model's shipped localization (samples/tiny/localize,
# samples/tiny-sd3/localize); on any other model, all of them.
DEMO_LAYERS ?= $(or $(wildcard samples/$(patsubst textloc-%,%,$(DEMO_MODEL))/localize),all)
# runs/demo for the default model, runs/demo-<model> for any other (a LoRA run resumes only its own model).
DEMO_OUT ?= runs/demo$(if $(filter textloc-tiny,$(DEMO_MODEL)),,-$(DEMO_MODEL))

demo: $(BIN)/textloc
	$(BIN)/textloc --threads 1 layers --model $(DEMO_MODEL)
	$(BIN)/textloc --threads 1 generate --model $(DEMO_MODEL) '$(DEMO_PROMPT)' --num 8 --out $(DEMO_OUT)/generate.png
	$(BIN)/textloc --threads 1 localize --model $(DEMO_MODEL) --pairs 6 --num-inference-steps 15 --out $(DEMO_OUT)/localize
	$(BIN)/textloc --threads 1 edit --model $(DEMO_MODEL) --prompt '$(DEMO_PROMPT)' --new-text FISH --layers $(DEMO_LAYERS) --out $(DEMO_OUT)/edit
	$(BIN)/textloc --threads 1 guard --model $(DEMO_MODEL) --prompt '$(GUARD_PROMPT)' --layers $(DEMO_LAYERS) --out $(DEMO_OUT)/guard
	# A short LoRA run on the text layers (--resume: a second `make demo` continues it, not refuses it).
	$(BIN)/textloc --threads 1 finetune --model $(DEMO_MODEL) --layers $(DEMO_LAYERS) --data textloc-tiny --max-train-steps 10 --batch-size 4 --lr 1e-3 --resume --out $(DEMO_OUT)/finetune
ifeq ($(DEMO_MODEL),textloc-tiny)
	# The LoRA shipped in samples/tiny/finetune (bench/bench_finetune.py, task A), beside the base model's images above.
	$(BIN)/textloc --threads 1 generate --model $(DEMO_MODEL) '$(DEMO_PROMPT)' --num 8 --lora samples/tiny/finetune --out $(DEMO_OUT)/generate-lora.png
endif

test: $(BIN)/textloc
	# Two workers, one per core: every test runs torch on one thread (tests/conftest.py). Work stealing:
	# a worker that runs out takes half of the other's queue, so a few minute-long tests (the embedded
	# models' held-out checks) cannot leave a core idle at the end as --dist load's fixed chunks do.
	$(BIN)/python -m pytest -n 2 --dist worksteal tests

# The docs site into site/ (mkdocs.yml; the generated pages are made by docs/hooks.py), warnings as errors.
docs: $(BIN)/textloc
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

bench: $(BIN)/textloc
	$(BIN)/python bench/bench_engine.py
	$(BIN)/python bench/bench_localize.py
	$(BIN)/python bench/bench_finetune.py

clean:
	rm -rf $(VENV) build *.egg-info
