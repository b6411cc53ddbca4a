# pedstream: `make demo` runs the main job on embedded defaults, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PEDSTREAM_DATA ?= $(abspath ../shared/data)
PEDSTREAM_MODELS ?= $(abspath ../shared/models)
export PEDSTREAM_DATA PEDSTREAM_MODELS

# `make lint`: ruff (lint, import order, formatting) and mypy, as CI runs them before the tests.
.PHONY: venv lint demo test test-unit bench-ingest bench-detector bench-pipeline bench-train bench-loop student clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e ".[edge,tune,trainer,dev]"
	touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

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

bench-train: venv
	$(VENV)/bin/pedstream bench train --workers 1,2 --mode async,sync --json

bench-loop: venv
	$(VENV)/bin/pedstream bench loop --json

# Student v0: teacher labels of PETS09-S2L1 frames 1-397, async PS with 2 trainers, scored on
# frames 398-795 against the ground truth; the result is the bundled `--model student`.
STUDENT_FLAGS ?= --labels teacher --frames 1:397 --holdout-frames 398:795 --updates 3000 --workers 2 --mode async
student: venv
	$(VENV)/bin/pedstream train $(STUDENT_FLAGS) --version student-v0 --out runs/student-v0 --json
	cp runs/student-v0/student.onnx detectors/models/student.onnx
	cp runs/student-v0/weights.npz detectors/models/student.weights.npz
	$(VENV)/bin/pedstream eval --model student --sequence $(PEDSTREAM_DATA)/PETS09-S2L1 --frames 398:795 --json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
