# The two commands of the README: `make book` and `make test`. Everything else is a helper.
# Each creates .venv on first use and installs the pinned versions of constraints.txt.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
STAMP  := $(VENV)/.installed
# The venv's python, jupyter-book and kernels come first on PATH (the book's kernel is "python").
export PATH := $(abspath $(VENV))/bin:$(PATH)
# The book's size profile: smoke, quick (default) or full. See ddpmkit/profile.py.
export DDPMKIT_PROFILE ?= quick
# Where MNIST lives (see README "Images"): the course's ../shared/data when it is beside the
# repository (it holds the test split), else torchvision's download folder.
export DDPMKIT_DATA ?= $(if $(wildcard ../shared/data/MNIST/raw),$(abspath ../shared/data),$(HOME)/.cache/ddpmkit/data)

.PHONY: book check-book test install bench nbval-refs clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip -q
	$(VENV)/bin/pip install -c constraints.txt -e ".[book,dev]"
	touch $(STAMP)

install: $(STAMP)

## Execute every chapter and write the HTML book to _build/html.
book: $(STAMP)
	$(VENV)/bin/jupyter-book build . --all --warningiserror --keep-going
	@echo "Book written to _build/html/index.html (profile: $(DDPMKIT_PROFILE))"

## Open every built page in headless Chromium (Debian's `chromium`), network off, and fail on what a
## reader would see wrong: raw TeX, outside requests, warnings, tracebacks, broken images or alt text,
## tiny figures, sideways scrolling at 1280 px, widgets (tests/rendered/check_pages.py). Run after `make book`.
check-book: $(STAMP)
	DDPMKIT_BOOK_HTML=$(abspath _build/html) $(VENV)/bin/python -m pytest tests/rendered -p no:cacheprovider -q

## The linter (ruff, configured in pyproject.toml), then the whole test suite, chapters included (nbval, smoke profile).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	DDPMKIT_PROFILE=smoke $(VENV)/bin/python -m pytest tests --nbval-lax -p no:cacheprovider

## Speed of training and sampling on this machine (see benchmarks/README.md).
bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_mlp.py
	$(VENV)/bin/python benchmarks/bench_unet.py
	$(VENV)/bin/python benchmarks/bench_grading.py
	$(VENV)/bin/python benchmarks/bench_samplers.py

## Re-execute the chapters in smoke and store their checked outputs for nbval.
nbval-refs: $(STAMP)
	DDPMKIT_PROFILE=smoke $(VENV)/bin/python tests/make_nbval_refs.py

clean:
	rm -rf _build
