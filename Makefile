# The README's two commands: `make demo` (set-up, then the pipeline end to end on a small default) and
# `make test` (set-up, then the test suite, offline). Both create the venv on first use.
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

.PHONY: install demo test bench
install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -e ".[dev]"
	touch $@

demo: install
	$(BIN)/python prepare_data.py --source $(DEMO_SOURCE) --out $(DEMO_OUT)/data \
		--max-tokens 2000000 --shard-size 500000 --val-tokens 100000

test: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/prepare_data.py
