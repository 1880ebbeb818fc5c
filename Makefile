# One-word entry points. `make demo` and `make test` each set up .venv first (once; again when
# pyproject.toml changes), so on a fresh machine with only Python they are the whole story.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, pinned: on CPU-only machines here this is the CPU wheel already on disk; elsewhere pip
# picks the platform's build. The project's own `torch>=2.4` is then satisfied and left alone.
TORCH  ?= torch==2.13.0
DEMO   ?= demo_out

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq "$(TORCH)"
	$(BIN)/python -m pip install -qq -e ".[test]"
	touch $@

demo: setup
	$(BIN)/actstore demo --out $(DEMO)

test: setup
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python benchmarks/store_bench.py
	$(BIN)/python benchmarks/extract_bench.py

clean:
	rm -rf $(VENV) $(DEMO) benchmarks/scratch
