# The README's two commands: `make demo` (set-up, then the pipeline end to end on a small default) and
# `make test` (set-up, the linter, then the test suite, offline). Both create the venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and pinned: this machine's CPU wheel lies on disk, and an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
SHARED ?= ../shared/data
DEMO_OUT ?= out/demo

# Use ../shared (BPE files, FineWeb-Edu sample) when it is there; otherwise the Hub and tiktoken's download.
ifneq ($(wildcard $(SHARED)/gpt2_bpe/gpt2.tiktoken),)
export GPT2_BPE_DIR ?= $(abspath $(SHARED)/gpt2_bpe)
endif
ifneq ($(wildcard $(SHARED)/fineweb_edu_sample),)
DEMO_SOURCE ?= $(SHARED)/fineweb_edu_sample
else
DEMO_SOURCE ?= HuggingFaceFW/fineweb-edu
endif
HELLASWAG_FILE := $(SHARED)/hellaswag/hellaswag_val_llamacpp_preprocessed.jsonl.gz
ifneq ($(wildcard $(HELLASWAG_FILE)),)
HELLASWAG_ARG ?= $(abspath $(HELLASWAG_FILE))
endif
# Without a local file, HellaSwag comes from the Hub (Rowan/hellaswag).
HELLASWAG_TRAIN_FLAG := $(if $(HELLASWAG_ARG),--hellaswag_data $(HELLASWAG_ARG))
HELLASWAG_EVAL_FLAG := $(if $(HELLASWAG_ARG),--data $(HELLASWAG_ARG))

.PHONY: install demo lint test test-fast bench
install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -e ".[dev]"
	touch $@

# The suite's ZeRO-2 test needs DeepSpeed (built from its sdist: ~1-2 min); the demo and `make install` do not.
$(VENV)/.deepspeed: $(VENV)/.installed
	$(BIN)/pip install -e ".[dev,deepspeed]"
	touch $@

# The main job end to end on the CPU demo recipe, in a few minutes: prepare 2M tokens -> train the tiny preset
# (~2 min; plots + model card at the end) -> HellaSwag by our scorer and lm-evaluation-harness (recorded in the
# checkpoint for the card) -> a --dry_run push -> the dry-run folder loaded by repo id, offline, by pipeline().
DEMO_REPO_ID ?= demo-user/gpt2-hf-cpu-demo
demo: install
	$(BIN)/python prepare_data.py --source $(DEMO_SOURCE) --out $(DEMO_OUT)/data \
		--max_tokens 2000000 --shard_size 500000 --val_tokens 100000
	$(BIN)/python train_hf.py configs/train/cpu-demo.yaml --data_dir $(DEMO_OUT)/data \
		--output_dir $(DEMO_OUT)/run --overwrite_output_dir $(HELLASWAG_TRAIN_FLAG)
	$(BIN)/python eval_hellaswag.py --model $(DEMO_OUT)/run $(HELLASWAG_EVAL_FLAG) --limit 500 \
		--backend both --output $(DEMO_OUT)/hellaswag.json
	$(BIN)/python push_to_hub.py $(DEMO_OUT)/run --repo_id $(DEMO_REPO_ID) --dry_run $(DEMO_OUT)/upload \
		--overwrite --dataset HuggingFaceFW/fineweb-edu
	HF_HUB_OFFLINE=1 HF_HUB_CACHE=$(abspath $(DEMO_OUT)/hub-cache) $(BIN)/python -m modeling.hub $(DEMO_OUT)/upload \
		--repo_id $(DEMO_REPO_ID) --generate "Hello, I'm a language model,"
	@echo
	@echo "Everything is in $(DEMO_OUT)/:"
	@echo "  data/                    token shards + manifest.json"
	@echo "  run/metrics.jsonl        the training log; run/eval.png, run/lr_schedule.png its plots"
	@echo "  run/checkpoint-150/      the model (Transformers folder), README.md (model card), plots, hellaswag_results.json"
	@echo "  hellaswag.json           HellaSwag: ours in both conventions + lm-evaluation-harness"
	@echo "  upload/                  what push_to_hub.py --repo_id $(DEMO_REPO_ID) would upload"
	@echo "  hub-cache/               upload/ as Hub repo $(DEMO_REPO_ID): HF_HUB_OFFLINE=1 HF_HUB_CACHE=$(abspath $(DEMO_OUT)/hub-cache)"

# ruff with a small rule set (pyproject.toml: syntax errors, unused imports/variables, undefined names).
lint: install
	$(BIN)/ruff check --no-cache .

test: install $(VENV)/.deepspeed lint
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest

# The edit loop: every test that starts no process (tests/conftest.py marks the rest slow); make test runs all.
test-fast: install lint
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -m "not slow"

bench: install
	$(BIN)/python bench/prepare_data.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/train_memory.py
	$(BIN)/python bench/hellaswag.py
	$(BIN)/python bench/train_loader_memory.py
