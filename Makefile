# medtl: the two set-up commands of the README.
#   make demo   install medtl and train on the built-in synthetic DICOM demo
#   make test   install medtl with the dev extras and run the whole test suite
#   make review (after make demo) an HTML review of the most recent run: review/review_<run id>.html
PYTHON ?= python3
VENV ?= .venv
# A CPU build of torch where the package index offers one; set TORCH_SPEC to choose another.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test review install install-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"

demo: install
	$(BIN)/python -m medtl.train +experiment=chest_xray

review: install
	$(BIN)/python -m pip install -q -e ".[notebooks]"
	$(BIN)/python -m medtl.review

# Pyflakes checks (unused imports, undefined names), then the tests.
# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: install-dev
	$(BIN)/ruff check --select F,E9 medtl tests benchmarks
	$(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status
