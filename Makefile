# One-word entry points. `make demo` and `make test` each set up .venv first (once; again when
# pyproject.toml changes), so on a fresh machine with only Python they are the whole story.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, pinned: on CPU-only machines here this is the CPU wheel already on disk; elsewhere pip
# picks the platform's build. The project's own `torch>=2.4` is then satisfied and left alone.
TORCH  ?= torch==2.13.0
DEMO   ?= demo_out

.PHONY: setup browser demo test bench clean

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

# Debian's chromium and chromium-driver: the report test opens the HTML report in it, headless, and the
# explorer tests drive it through Selenium. Installed once, as root.
browser:
	@(command -v chromium >/dev/null && command -v chromedriver >/dev/null) || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
		echo "could not install Debian's chromium and chromium-driver (needs root and apt): the browser tests will be skipped"

test: setup browser
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python benchmarks/store_bench.py
	$(BIN)/python benchmarks/extract_bench.py
	$(BIN)/python benchmarks/score_bench.py

clean:
	rm -rf $(VENV) $(DEMO) benchmarks/scratch
