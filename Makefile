# The two commands a newcomer needs: `make demo` (install, then run the main job on the bundled
# corpus) and `make test` (install what tests need, then run the suite). Both create .venv when missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KENLM_BIN := .cache/kenlm/bin
# Test processes (pytest-xdist), 2 by default (CI's 2 cores): most tests wait on processes they start, so two
# test processes keep both cores busy; work stealing (--dist worksteal) and the longest modules first
# (tests/conftest.py) make them finish together. TEST_WORKERS=0: one after another in this process;
# TEST_WORKERS=auto: one per core.
TEST_WORKERS ?= 2

.PHONY: demo test install kenlm lint clean-venv

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Python 3.11 is required)" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	$(PY) -m pip install --quiet -e '.[dev,onnx]'
	@touch $(STAMP)

install: $(STAMP)

kenlm: $(KENLM_BIN)/lmplz

$(KENLM_BIN)/lmplz:
	bash tools/build_kenlm.sh $(KENLM_BIN)

demo: install kenlm
	bash tools/demo.sh

test: install kenlm
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=15

lint: install
	$(VENV)/bin/ruff check asr tests tools

clean-venv:
	rm -rf $(VENV)
