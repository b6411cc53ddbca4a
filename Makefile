# pedstream: `make demo` runs the main job on embedded defaults, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PEDSTREAM_DATA ?= $(abspath ../shared/data)
PEDSTREAM_MODELS ?= $(abspath ../shared/models)
export PEDSTREAM_DATA PEDSTREAM_MODELS

.PHONY: venv demo test test-unit bench-ingest bench-detector bench-pipeline clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e ".[edge,tune,trainer,dev]"
	touch $@

demo: venv
	$(VENV)/bin/pedstream demo

test: venv
	$(VENV)/bin/python -m pytest -ra

test-unit: venv
	$(VENV)/bin/python -m pytest -ra tests/unit

bench-ingest: venv
	$(VENV)/bin/pedstream bench ingest --cameras 8 --fps 5 --seconds 20 --json

bench-detector: venv
	$(VENV)/bin/pedstream bench detector --model $(PEDSTREAM_MODELS)/nanodet.onnx --backends ort,tvm --batch 1,4 --json

bench-pipeline: venv
	$(VENV)/bin/pedstream bench pipeline --cameras 8 --fps 5 --seconds 30 --json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
