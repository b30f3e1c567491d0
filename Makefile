# Two set-up commands: `make serve` runs the gateway on its built-in default,
# `make test` runs the whole test suite. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

.PHONY: serve test demo lint
serve: $(STAMP)
	$(VENV)/bin/labgate serve $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

demo: $(STAMP)
	$(VENV)/bin/labgate demo $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
