# Two commands set everything up on a fresh machine:  make demo  /  make test
# Both install exactly what requirements.lock names (the whole environment, torch included); `make lock` is the
# one deliberate way to move to newer versions.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := build/demo
LOCKVENV := build/lock-venv

.PHONY: demo test lint install lock bench clean

# The venv is made once; the install reruns only when the lock or pyproject.toml changes. pip and setuptools come
# from the lock too, and the project is built without isolation so no unpinned build tool is fetched.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$$(grep -E '^pip==' requirements.lock)"
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# preprocess -> fit -> orbit render on the bundled sample; prints where the mp4 is
demo: $(STAMP)
	$(PY) -m monodyn_cli preprocess samples/synth_scene/input.mp4 --workspace $(DEMO)
	$(PY) -m monodyn_cli fit --method dpdy --workspace $(DEMO) --minutes 3
	$(PY) -m monodyn_cli render --orbit 90 --frames 24 --workspace $(DEMO) --depth --side-by-side --output $(DEMO)/renders/orbit90.mp4
	@echo "demo video: $(DEMO)/renders/orbit90.mp4 (and orbit90-depth.mp4, orbit90-sbs.mp4 beside it)"

# lint first (seconds), then the suite
test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(PY) -m ruff check .

# Re-resolve pyproject.toml's ranges in a scratch venv, run lint and the suite there, and replace requirements.lock
# only if they pass. Review `git diff requirements.lock` and commit it.
lock:
	rm -rf $(LOCKVENV)
	$(PYTHON) -m venv $(LOCKVENV)
	$(LOCKVENV)/bin/python -m pip install -q --upgrade pip setuptools
	$(LOCKVENV)/bin/python -m pip install -q torch==2.13.0
	$(LOCKVENV)/bin/python -m pip install -q --no-build-isolation -e '.[test,decord]'
	{ sed -n '/^#/p' requirements.lock; \
	  $(LOCKVENV)/bin/python -m pip freeze --all --exclude-editable | sed -e 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/' \
	    -e 's/^\(decord==.*\)$$/\1 ; platform_machine == "x86_64"/'; } > $(LOCKVENV)/requirements.lock
	$(LOCKVENV)/bin/python -m ruff check .
	MONODYN_LOCK=$(LOCKVENV)/requirements.lock $(LOCKVENV)/bin/python -m pytest -q -n 2 --dist loadfile
	mv $(LOCKVENV)/requirements.lock requirements.lock
	@echo "requirements.lock updated: review 'git diff requirements.lock', then commit it"

bench: $(STAMP)
	$(PY) bench/bench_pipeline.py

clean:
	rm -rf build
