# playground: the two commands of the README are `make run` and `make test`.
# Everything is installed into .venv from pyproject.toml, pinned by constraints.txt.

PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 8000
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PY := $(BIN)/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test test-fast lint fmt bench lock clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python >= 3.11 is needed")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt $(VENV)/.installed
	$(PIP) install --quiet -c constraints.txt -e ".[test]"
	touch $@

# A local .env with a generated secret key, written once and never overwritten.
.env:
	$(PYTHON) -c 'import secrets; print("SECRET_KEY=" + secrets.token_urlsafe(50))' > .env
	@echo "Wrote .env with a new SECRET_KEY (see .env.example for every setting)."

var:
	mkdir -p var

run: $(VENV)/.installed .env | var
	$(PY) manage.py migrate --noinput --verbosity 0
	$(PY) manage.py prepare_offline_model
	@echo "Serving http://$(HOST):$(PORT)/"
	$(BIN)/uvicorn playground.asgi:application --host $(HOST) --port $(PORT) --lifespan on

test: $(VENV)/.installed-test | var
	$(PY) manage.py prepare_offline_model
	$(BIN)/pytest

# The quick loop while developing: everything but the browser tests.
test-fast: $(VENV)/.installed-test | var
	$(BIN)/pytest -m "not browser"

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(VENV)/.installed-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(VENV)/.installed-test | var
	$(PY) -m bench

# Re-pin every dependency to the newest versions pyproject.toml allows.
lock:
	rm -rf /tmp/playground-lock && $(PYTHON) -m venv /tmp/playground-lock
	/tmp/playground-lock/bin/pip install --quiet ".[test]"
	/tmp/playground-lock/bin/pip freeze --exclude playground > constraints.txt
	rm -rf /tmp/playground-lock

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .ruff_cache
