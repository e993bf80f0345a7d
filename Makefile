# d1tile: two commands set everything up on a fresh machine.
#   make demo   build the environment if needed, then run the demo
#   make test   build the environment if needed, then run the test suite
# Everything comes from PyPI, pinned in pyproject.toml and requirements.lock.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.d1tile-installed
PYTEST_ARGS ?=

.PHONY: all demo test .venv clean lock

all: test

.venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11+ is needed)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip==26.3"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[test,sweep]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/d1tile demo

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# Regenerate requirements.lock (the pinned versions of every transitive dependency).
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable --exclude d1tile > requirements.lock

clean:
	rm -rf build .pytest_cache
