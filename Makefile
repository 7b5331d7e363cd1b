# Two commands do all set-up on a fresh machine (Python 3.11 + pip):
#   make demo   -> environment, then prune + answer + comparison table + picture on the bundled testbed
#                  (results in out/demo-N.json, written row by row: a rerun resumes where it stopped)
#   make test   -> environment, then the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO_LIMIT ?= 200

.PHONY: env demo test test-all clean

$(BIN)/vlprune: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
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

clean:
	rm -rf $(VENV) out .pytest_cache
