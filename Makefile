# pedstream: `make demo` runs the main job on embedded defaults, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PEDSTREAM_DATA ?= $(abspath ../shared/data)
export PEDSTREAM_DATA

.PHONY: venv demo test test-unit bench-ingest clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e ".[edge,trainer,dev]"
	touch $@

demo: venv
	$(VENV)/bin/pedstream demo

test: venv
	$(VENV)/bin/python -m pytest -ra

test-unit: venv
	$(VENV)/bin/python -m pytest -ra tests/unit

bench-ingest: venv
	$(VENV)/bin/pedstream bench ingest --cameras 8 --fps 5 --seconds 20 --json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
