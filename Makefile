# maskgen: every target creates/updates the virtualenv in .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?= test

.PHONY: install demo test bench bench-video clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

## the main job on the built-in sample faces
demo: install
	$(BIN)/maskgen mask assets/faces/aligned -o out/demo --aligned --type random --seed 0
	$(BIN)/maskgen preview out/demo -o out/demo/preview.png

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/maskgen bench

bench-video: install
	$(BIN)/python -m maskgen.video.bench

clean:
	rm -rf out .pytest_cache
