# The README's two commands (`make table2`, `make test`) work on a fresh machine with only Python 3.11:
# each bootstraps .venv first. The venv is reinstalled only when pyproject.toml changes (content hash).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.pyproject.sha256
RUN := PATH="$(BIN):$$PATH"
CORES ?= all

.PHONY: help venv bytecode table2 all test test-fast lint format schema report rehearse clean-results

help:
	@echo "make table2     build .venv if needed, then snakemake --cores $(CORES) results/table2.csv"
	@echo "make all        every table and figure of the profile (results/all)"
	@echo "make test       build .venv if needed, then the whole test suite (incl. end-to-end smoke)"
	@echo "make test-fast  tests not marked slow"
	@echo "make lint       ruff check + format check"
	@echo "make report     run results/all, then snakemake --report report.html (tables as HTML pages)"
	@echo "make rehearse   the paper profile rehearsed on synthetic data at paper sizes (results/rehearsal/)"

venv:
	@want=$$(sha256sum pyproject.toml | cut -d' ' -f1); \
	if [ -x "$(BIN)/python" ] && [ -f "$(STAMP)" ] && [ "$$(cat $(STAMP))" = "$$want" ]; then \
		echo "venv: .venv is up to date"; \
	else \
		[ -x "$(BIN)/python" ] || $(PYTHON) -m venv $(VENV); \
		$(BIN)/python -m pip install --quiet --upgrade pip && \
		$(BIN)/python -m pip install --quiet -e '.[dev]' && \
		echo "$$want" > $(STAMP) && echo "venv: installed into .venv"; \
	fi

# Every pipeline job is a fresh Python process. Where PYTHONDONTWRITEBYTECODE is set (as on the
# 2-core machines this project is tested on), each would compile the package's sources again (about
# 1.8 s of CPU per job); compiling them once here (only files changed since the last run) avoids that.
bytecode: venv
	@$(BIN)/python -m compileall -q src

table2: bytecode
	$(RUN) snakemake --cores $(CORES) results/table2.csv

all: bytecode
	$(RUN) snakemake --cores $(CORES) results/all

test: bytecode
	$(RUN) python -m pytest

test-fast: bytecode
	$(RUN) python -m pytest -m "not slow"

lint: venv
	$(RUN) ruff check . && $(RUN) ruff format --check .

format: venv
	$(RUN) ruff check --fix . && $(RUN) ruff format .

schema: venv
	$(RUN) densepred schema

# The DAG runs first, so the report holds only outputs this run made or found up to date.
report: bytecode
	$(RUN) snakemake --cores $(CORES) results/all
	$(RUN) snakemake --cores $(CORES) --report report.html results/all

# The paper profile rehearsed: params/paper.yaml with the override set params/rehearse.yaml (synthetic
# data at the real sizes, 2 steps per stage, 2 trials per sweep), every target of results/all.
rehearse: bytecode
	$(RUN) snakemake --cores $(CORES) --keep-going results/rehearsal/all --configfile params/paper.yaml params/rehearse.yaml
