# `make demo` and `make test` set everything up on a fresh machine, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test floor bench docs clean

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
	$(BIN)/textloc --threads 1 localize --model $(DEMO_MODEL) --pairs 3 --num-inference-steps 15 --out $(DEMO_OUT)/localize
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

# The lowest versions pyproject.toml allows, in .venv-floor: uv's lowest-direct resolution of textloc's own
# requirements (wheels only; torch the one .venv has), on the tests that failed where a floor was too low:
# the engine's CFG branches and text units (SD; diffusers' cache_context: FLUX.2 Klein; its guiders:
# HunyuanImage; the newest text encoders: Ideogram 4, GLM-Image), a LoRA reloaded by diffusers (peft),
# textloc-tiny's images (its saved CLIP keys) and a resumed training's seeds (NumPy).
FLOOR := .venv-floor
# Where pip finds the torch wheel .venv took (this machine's CPU wheel on disk), for uv, which reads no pip config.
FIND_LINKS = $(or $(PIP_FIND_LINKS),$(shell $(BIN)/python -m pip config get global.find-links 2>/dev/null))
FLOOR_ROW_TEST := tests/test_engine.py::test_a_row_that_reads_every_text_unit_of_another_row_is_that_row
FLOOR_TESTS := $(foreach arch,sd15 flux2-klein hunyuan-image ideogram4 glm-image,"$(FLOOR_ROW_TEST)[$(arch)]") \
	"tests/test_finetune.py::test_only_the_lora_trains_and_plain_diffusers_reloads_it[sd15]" \
	tests/test_finetune.py::test_a_resumed_run_ends_where_an_uninterrupted_one_does \
	tests/test_inversion.py::test_textloc_tiny_reconstructs_a_rendered_sign
$(FLOOR)/installed: pyproject.toml $(BIN)/textloc
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv venv -q --allow-existing --python $(BIN)/python $(FLOOR)
	$(BIN)/uv pip install -q --python $(FLOOR)/bin/python --resolution lowest-direct --no-build \
		$(foreach links,$(FIND_LINKS),--find-links $(links)) "torch==$$($(BIN)/python -c 'import torch; print(torch.__version__)')" \
		-e . "pytest>=8.4"
	touch $@

floor: $(FLOOR)/installed
	$(BIN)/uv pip list --python $(FLOOR)/bin/python | grep -E "^(torch|diffusers|transformers|peft|accelerate|numpy) "
	$(FLOOR)/bin/python -m pytest -p no:cacheprovider $(FLOOR_TESTS)

# The docs site into site/ (mkdocs.yml; the generated pages are made by docs/hooks.py), warnings as errors.
docs: $(BIN)/textloc
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

bench: $(BIN)/textloc
	$(BIN)/python bench/bench_engine.py
	$(BIN)/python bench/bench_localize.py
	$(BIN)/python bench/bench_finetune.py

clean:
	rm -rf $(VENV) $(FLOOR) build *.egg-info
