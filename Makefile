# make demo: train the embedded tiny model on CPU and draw its curves (fresh machine: ~10 min).
# make test: the test suite.  Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# On this project's machines torch==2.13.0 is a CPU wheel on local disk; override for another build,
# e.g. make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test lint clean

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/python train.py recipes/tiny_cpu.yaml run.name=demo run.resume=false run.overwrite=true
	@echo "curves: runs/demo/curves.png   metrics: runs/demo/metrics.jsonl"

test: install
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs
