# pedstream: `make demo` runs the main job on embedded defaults, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PEDSTREAM_DATA ?= $(abspath ../shared/data)
PEDSTREAM_MODELS ?= $(abspath ../shared/models)
export PEDSTREAM_DATA PEDSTREAM_MODELS

# `make lint`: ruff (lint, import order, formatting) and mypy, as CI runs them before the tests.
.PHONY: venv lint demo test test-unit student-v1 bench-generalize bench-capacity bench-ingest bench-detector bench-pipeline bench-train bench-loop student clean

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

# Student v1 (issue 12, not yet the bundled one): the stock SSDLite's pretrained MobileNetV2 trunk, strong
# augmentation, human labels of PETS09-S2L1 1-397, TUD-Campus and coco128-person, teacher labels of
# Market-cam6 and the unlabelled clips; scored on PETS09-S2L1 398-795, which nothing was trained on.
STUDENT_V1_FLAGS ?= --trunk ssdlite --augment strong --labels oracle --frames 1:397 --every 2 \
	--holdout-frames 398:795 --holdout-every 8 \
	--dataset $(PEDSTREAM_DATA)/TUD-Campus --dataset $(PEDSTREAM_DATA)/coco128-person \
	--teacher-video $(PEDSTREAM_DATA)/Market-cam6/Market-cam6.mp4:10 \
	$(foreach v,$(wildcard $(PEDSTREAM_DATA)/unlabelled/*.mp4),--teacher-video $(v):15) \
	--updates 3000 --workers 2 --mode async
student-v1: venv
	$(VENV)/bin/pedstream train $(STUDENT_V1_FLAGS) --version student-v1 --out runs/student-v1 --json
	$(VENV)/bin/pedstream eval --model runs/student-v1/student.onnx --sequence $(PEDSTREAM_DATA)/PETS09-S2L1 --frames 398:795 --json

bench-generalize: venv
	$(VENV)/bin/pedstream bench generalize --json

bench-capacity: venv
	$(VENV)/bin/pedstream bench capacity --model student --json
