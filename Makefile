# serkit: `make demo` runs the main job on real data; `make test` runs the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch (a wheel on disk here); set TORCH=torch for a CUDA build elsewhere.
TORCH ?= torch==2.13.0

.PHONY: install demo test docs bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test,whisper,asr]"
	touch $@

demo: install
	bash scripts/demo.sh

test: install
	$(BIN)/python -m pytest -q

docs: install
	DISABLE_MKDOCS_2_WARNING=true $(BIN)/python -m mkdocs build --strict    # site/ (make test builds it too)

bench: install
	$(BIN)/python bench/train_benchmark.py --corpus ravdess
	$(BIN)/python bench/train_benchmark.py --corpus emodb

clean:
	rm -rf $(VENV) runs .pytest_cache
