# Two commands set everything up on a fresh machine:  make demo  /  make test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := build/demo

.PHONY: demo test lint install bench clean

# The venv is made once; the install reruns only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,decord]' || $(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# preprocess -> fit -> orbit render on the bundled sample; prints where the mp4 is
demo: $(STAMP)
	$(PY) -m monodyn_cli preprocess samples/synth_scene/input.mp4 --workspace $(DEMO)
	$(PY) -m monodyn_cli fit --method dpdy --workspace $(DEMO) --minutes 3
	$(PY) -m monodyn_cli render --orbit 90 --frames 24 --workspace $(DEMO) --depth --side-by-side --output $(DEMO)/orbit90.mp4
	@echo "demo video: $(DEMO)/orbit90.mp4 (and orbit90-depth.mp4, orbit90-sbs.mp4)"

# lint first (seconds), then the suite
test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) bench/bench_pipeline.py

clean:
	rm -rf build
